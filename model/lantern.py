"""LANTERN: late fusion of survey tokens (queries) with external tokens (keys/values).

    h_s = f_s(survey tokens)                       # (B, Tq, D) one token per presented question
    e   = [f_e^k(source k tokens) for k]           # (B, Tk, D) tokens of every source, masked if absent
    h_t = CrossAttn_8heads(q=h_s, kv=e)            # (B, Tq, D)
    g   = σ(W [h_s; h_t])                          # (B, Tq, D) per-dimension selective gate
    h   = h_s + g ⊙ (h_t − h_s)                    # g = 0 for users with no external data → survey-only
    u   = LN(dropout(h + noise))                    # (B, Tq, D)
    z   = FF(pool(u)) + R([u; e]) + W·x            # (B, K) every response key:
                                                   #   R a query per question over every token (QuestionReadout),
                                                   #   W·x the wide (linear) path
    p   = softmax per single-select question, σ per multi-select option (model/outputs.py)

Variants from the same code: ``survey_only``, ``external_only``, ``early_fusion`` (one encoder over
both token sets), ``lantern``. Device, optimiser and data handling live outside this file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lantern.settings.model import BASELINES, PRESETS, VARIANTS  # noqa: F401 - re-exported
from model.wide import Wide


@dataclass(frozen=True)
class SourceDims:
    n_num: int
    cat_cards: tuple[int, ...]  # vocabulary size per categorical column (index 0 = unknown extra)
    seq_card: int  # 0 = no sequence
    n_seq_vals: int
    max_len: int


@dataclass(frozen=True)
class LanternConfig:
    n_questions: int
    n_keys: int
    max_selected: int
    sources: tuple[SourceDims, ...] = field(default_factory=tuple)
    variant: str = "lantern"
    d_model: int = 64
    n_heads: int = 8  # the late cross-attention (the paper's 8 heads)
    encoder_heads: int = 8  # self-attention inside the survey / source encoders
    survey_layers: int = 2
    source_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    fusion_noise: float = 0.1
    wide: bool = True  # add the logistic (linear) path to the logits
    gate_bias: float = -2.0  # the gate's initial bias: external context earns its way in
    question_readout: bool = False  # a query per question over every token, beside the mean-pool head
    readout_external: bool = True  # the readout attends over the external tokens too (not only the fused ones)
    external_readout: bool = False  # a readout of its own over the external tokens (a query per question)
    # the output gate (lantern): per question z_s + β_f ⊙ (z − z_s) + β_e ⊙ (z_e − z_s), β fitted on
    # validation data after training (model.floor): the survey's answer where the context does not
    # help a question, the context's where the survey knows little
    output_gate: bool = False
    key_question: tuple[int, ...] = ()  # (K,) question of every response key; () = a sigmoid per key
    single_select: tuple[bool, ...] = ()  # (Q,) True = one option per question (softmax)

    def __post_init__(self):
        assert self.variant in VARIANTS + BASELINES, self.variant
        assert self.d_model % self.n_heads == 0 and self.d_model % self.encoder_heads == 0
        assert not self.key_question or (len(self.key_question) == self.n_keys
                                         and len(self.single_select) == self.n_questions)


@dataclass
class SourceBatch:
    num: torch.Tensor  # (B, n_num) float
    num_missing: torch.Tensor  # (B, n_num) bool
    cat: torch.Tensor  # (B, n_cat) long
    seq_cat: torch.Tensor  # (B, L) long
    seq_val: torch.Tensor  # (B, L, n_val) float
    seq_mask: torch.Tensor  # (B, L) bool
    present: torch.Tensor  # (B,) bool


@dataclass
class ExternalEncoding:
    """What a batch's external rows become before fusion: depends on the rows and the weights only."""

    tokens: torch.Tensor  # (B, Tk, D) every source's encoded tokens
    mask: torch.Tensor  # (B, Tk) bool, True = a real token
    token_source: torch.Tensor  # (Tk,) long, the source of each token
    wide: torch.Tensor  # (B, K) the wide path's external logits (zeros without one)


ENCODES_EXTERNAL = ("lantern", "external_only")  # variants that fuse an encoding of the external rows


@dataclass
class Batch:
    q_idx: torch.Tensor  # (B, T) long, question index + 1, 0 = padding / hidden
    sel: torch.Tensor  # (B, T, M) long, response-key index + 1, 0 = none
    sources: list[SourceBatch]


def n_inputs(cfg: LanternConfig) -> int:
    """Selection indices: padding, the response keys, and (with the question-kind layout) one
    "answered: none of these" per question; models saved before it know only the keys."""
    return cfg.n_keys + 1 + (cfg.n_questions if cfg.key_question else 0)


def _attendable(mask: torch.Tensor) -> torch.Tensor:
    """Rows with no valid key attend everywhere (finite garbage, masked out by the caller)."""
    return mask | ~mask.any(-1, keepdim=True)


class Attention(nn.Module):
    def __init__(self, cfg: LanternConfig, n_heads: int):
        super().__init__()
        d = cfg.d_model
        self.n_heads = n_heads  # no dropout on attention probabilities: residual/MLP dropout only
        self.q, self.kv, self.proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x, ctx, key_mask, need_weights=False):
        B, Tq, D = x.shape  # x (B, Tq, D), ctx (B, Tk, D), key_mask (B, Tk) True = attend
        Tk, H = ctx.shape[1], self.n_heads
        q = self.q(x).view(B, Tq, H, D // H).transpose(1, 2)  # (B, H, Tq, hd)
        k, v = (t.view(B, Tk, H, D // H).transpose(1, 2) for t in self.kv(ctx).split(D, dim=-1))
        # additive mask (B, 1, 1, Tk): lets CPU and GPU use fused attention kernels
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~key_mask, float("-inf"))
        bias = bias[:, None, None, :]
        if need_weights:
            att = ((q @ k.transpose(-2, -1)) / math.sqrt(D // H) + bias).softmax(-1)  # (B, H, Tq, Tk)
            y = att @ v
        else:
            att, y = None, F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, Tq, D)), att


class Block(nn.Module):
    """Pre-LN transformer block (self-attention over one token set)."""

    def __init__(self, cfg: LanternConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1, self.ln2, self.attn = nn.LayerNorm(d), nn.LayerNorm(d), Attention(cfg, cfg.encoder_heads)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x, mask):  # x (B, T, D), mask (B, T)
        h = self.ln1(x)
        x = x + self.attn(h, h, _attendable(mask))[0]
        return x + self.mlp(self.ln2(x))


class SurveyTokens(nn.Module):
    """[CLS] + one token per presented question: question embedding + its selected options."""

    def __init__(self, cfg: LanternConfig):
        super().__init__()
        d = cfg.d_model
        self.q_emb = nn.Embedding(cfg.n_questions + 1, d, padding_idx=0)
        # Σ selected options; after the keys, one "none of these" per question (model.encoding)
        self.key_emb = nn.EmbeddingBag(n_inputs(cfg), d, mode="sum", padding_idx=0)
        self.skip = nn.Parameter(torch.randn(d) * 0.02)  # presented but unanswered
        self.cls = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, q_idx, sel):  # q_idx (B, T), sel (B, T, M)
        B, T, M = sel.shape
        if torch.compiler.is_exporting():  # a gather + sum: an exported EmbeddingBag becomes a slow loop
            picked = F.embedding(sel, self.key_emb.weight, padding_idx=0).sum(2)  # (B, T, D)
        else:
            picked = self.key_emb(sel.reshape(B * T, M)).view(B, T, -1)  # (B, T, D)
        tok = self.q_emb(q_idx) + picked  # (B, T, D)
        skipped = (q_idx > 0) & (sel == 0).all(-1)  # (B, T)
        tok = tok + skipped[..., None] * self.skip
        x = torch.cat([self.cls.expand(B, 1, -1), tok], 1)  # (B, 1+T, D)
        mask = torch.cat([q_idx.new_ones(B, 1, dtype=torch.bool), q_idx > 0], 1)  # (B, 1+T)
        return x, mask


class SourceTokens(nn.Module):
    """One source's row → tokens: a token per numeric and categorical column (value-scaled
    column embeddings, FT-Transformer style), a token per sequence element, and the mean of the
    sequence's element embeddings (a bag-of-elements token: a near-linear route from counts)."""

    def __init__(self, dims: SourceDims, cfg: LanternConfig):
        super().__init__()
        d, self.dims = cfg.d_model, dims
        self.num_w = nn.Parameter(torch.randn(dims.n_num, d) * 0.02)
        self.num_b = nn.Parameter(torch.zeros(dims.n_num, d))
        self.num_missing = nn.Parameter(torch.randn(dims.n_num, d) * 0.02)
        self.cat_emb = nn.ModuleList(nn.Embedding(c + 1, d) for c in dims.cat_cards)
        self.cat_col = nn.Parameter(torch.randn(len(dims.cat_cards), d) * 0.02)
        if dims.seq_card:
            self.seq_emb = nn.Embedding(dims.seq_card + 1, d, padding_idx=0)
            self.seq_val = nn.Linear(dims.n_seq_vals, d) if dims.n_seq_vals else None
            self.seq_pos = nn.Parameter(torch.randn(dims.max_len, d) * 0.02)
            self.bag = nn.Parameter(torch.randn(d) * 0.02)  # marks the sequence's mean token
        self.source = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, s: SourceBatch):
        B = s.present.shape[0]
        parts, masks = [], []
        if self.dims.n_num:
            t = s.num[..., None] * self.num_w + self.num_b  # (B, n_num, D)
            parts.append(torch.where(s.num_missing[..., None], self.num_missing, t))
            masks.append(s.present.new_ones(B, self.dims.n_num))
        if self.dims.cat_cards:
            t = torch.stack([emb(s.cat[:, j]) for j, emb in enumerate(self.cat_emb)], 1)  # (B, n_cat, D)
            parts.append(t + self.cat_col)
            masks.append(s.present.new_ones(B, len(self.dims.cat_cards)))
        if self.dims.seq_card:
            t = self.seq_emb(s.seq_cat)  # (B, L, D), L ≤ max_len
            if self.seq_val is not None:
                t = t + self.seq_val(s.seq_val)
            m = s.seq_mask[..., None].to(t.dtype)
            bag = (t * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1, D)
            parts += [t + self.seq_pos[: t.shape[1]], bag + self.bag]  # batches may trim padding
            masks += [s.seq_mask, s.seq_mask.any(1, keepdim=True)]
        x = torch.cat(parts, 1) + self.source  # (B, Ts, D)
        return x, torch.cat(masks, 1) & s.present[:, None]


class SourceEncoder(nn.Module):
    """f_e for one source: tokens → transformer blocks. A new source is a new instance."""

    def __init__(self, dims: SourceDims, cfg: LanternConfig):
        super().__init__()
        self.tokens = SourceTokens(dims, cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.source_layers))
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, s: SourceBatch):
        x, mask = self.tokens(s)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln(x), mask


def _pool(h, mask):  # masked mean: (B, T, D), (B, T) → (B, D)
    m = mask[..., None].to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class QuestionReadout(nn.Module):
    """Each question's own view of the tokens: a learned query per question attends over every
    token the model has (the fused survey tokens, and the external tokens for variants that
    encode them; one head, the tokens as they are), and each response key reads its question's
    pooled vector with its own output weights. Masked tokens get no weight.

        a_q = softmax_t(⟨query_q, h_t⟩ / √D)      # (B, T, Q) over each session's tokens
        r_q = Σ_t a_q,t h_t                        # (B, Q, D) a mix of layer-normed tokens
        z_k = ⟨u_k, r_q(k)⟩ + b_k                  # (B, K)
    """

    def __init__(self, cfg: LanternConfig):
        super().__init__()
        d = cfg.d_model
        key_question = torch.as_tensor(cfg.key_question, dtype=torch.long)  # (K,)
        assert (key_question.diff() >= 0).all(), "response keys are grouped by question"
        first = torch.searchsorted(key_question, torch.arange(cfg.n_questions))
        slot = torch.arange(cfg.n_keys) - first[key_question]  # each key's place among its question's options
        self.register_buffer("flat", key_question * cfg.max_selected + slot, persistent=False)  # (K,)
        self.query = nn.Parameter(torch.randn(cfg.n_questions, d) * 0.02)  # (Q, D)
        self.out = nn.Parameter(torch.zeros(cfg.n_questions, cfg.max_selected, d))  # (Q, M, D) u_k: no say at first
        self.bias = nn.Parameter(torch.zeros(cfg.n_keys))

    def forward(self, h, mask):  # h (B, T, D) layer-normed tokens, mask (B, T) True = a token
        B, _, D = h.shape
        scores = (h @ self.query.T) / math.sqrt(D)  # (B, T, Q)
        att = scores.masked_fill(~_attendable(mask)[..., None], float("-inf")).softmax(1)
        r = att.transpose(1, 2) @ h  # (B, Q, D)
        z = torch.einsum("bqd,qmd->bqm", r, self.out).reshape(B, -1)  # (B, Q·M) every question's option slots
        return z[:, self.flat] + self.bias  # (B, K)


class Lantern(nn.Module):
    def __init__(self, cfg: LanternConfig):
        super().__init__()
        self.cfg, d = cfg, cfg.d_model
        uses_external = cfg.variant != "survey_only"
        assert not uses_external or cfg.sources, "this variant needs at least one external source"
        self.survey_tokens = SurveyTokens(cfg)
        n_blocks = cfg.survey_layers + (cfg.source_layers if cfg.variant == "early_fusion" else 0)
        self.survey_blocks = nn.ModuleList(Block(cfg) for _ in range(n_blocks))
        self.survey_ln = nn.LayerNorm(d)
        if cfg.variant == "early_fusion":
            self.source_tokens = nn.ModuleList(SourceTokens(s, cfg) for s in cfg.sources)
        elif uses_external:
            self.source_encoders = nn.ModuleList(SourceEncoder(s, cfg) for s in cfg.sources)
            self.cross = Attention(cfg, cfg.n_heads)
        if cfg.variant == "lantern":
            self.gate = nn.Linear(2 * d, d)
            nn.init.constant_(self.gate.bias, cfg.gate_bias)  # starts survey-dominant: σ(−2) ≈ 0.12
        self.drop, self.ln_out = nn.Dropout(cfg.dropout), nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.ff_mult * d, cfg.n_keys))
        if cfg.question_readout:
            assert cfg.key_question, "the question readout needs the key → question layout"
            self.readout = QuestionReadout(cfg)
            if cfg.external_readout and cfg.variant in ENCODES_EXTERNAL:
                self.readout_ext = QuestionReadout(cfg)
        if cfg.wide:  # the survey part unless the variant ignores the survey; the external part unless it has none
            self.wide = Wide(cfg, survey=cfg.variant != "external_only", external=uses_external)
        if cfg.output_gate and cfg.variant == "lantern":
            assert cfg.key_question, "the output gate is per question: it needs the key → question layout"
            self.register_buffer("output_beta", torch.ones(cfg.n_questions))  # (Q,) β_f: 1 = the fused answer as is
            self.register_buffer("output_beta_ext", torch.zeros(cfg.n_questions))  # (Q,) β_e: the context alone
            self.register_buffer("key_q", torch.as_tensor(cfg.key_question, dtype=torch.long), persistent=False)

    def _encode_survey(self, x, mask):
        for blk in self.survey_blocks:
            x = blk(x, mask)
        return self.survey_ln(x)

    def encode_external(self, sources: list[SourceBatch]) -> ExternalEncoding:
        """Every source's encoded tokens and the wide path's external logits: what depends on the
        user's external rows only, so it can be computed once per user and stored (model.materialized)."""
        assert self.cfg.variant in ENCODES_EXTERNAL, f"{self.cfg.variant} has no separate external encoding"
        assert len(sources) == len(self.cfg.sources), "one SourceBatch per configured source"
        outs = [enc(s) for enc, s in zip(self.source_encoders, sources)]
        token_source = torch.cat([torch.full((m.shape[1],), i, device=m.device) for i, (_, m) in enumerate(outs)])
        wide = self.wide.external_logits(sources) if self.cfg.wide else 0.0
        tokens = torch.cat([x for x, _ in outs], 1)  # (B, Tk, D)
        B = tokens.shape[0]
        wide = wide if torch.is_tensor(wide) else tokens.new_zeros(B, self.cfg.n_keys)
        return ExternalEncoding(tokens, torch.cat([m for _, m in outs], 1), token_source, wide)

    def forward(self, batch: Batch, return_aux: bool = False, survey_only_path: bool = False,
                aux_attention: bool = True, external: ExternalEncoding | None = None):
        """Logits (B, K); with ``return_aux`` also a dict of gate / attention diagnostics
        (``aux_attention=False``: no attention weights, so the fused attention kernel runs).
        ``external``: the batch's stored :meth:`encode_external` output, used instead of
        ``batch.sources`` (which may then be empty)."""
        variant, aux = self.cfg.variant, {}
        q_idx = torch.zeros_like(batch.q_idx) if variant == "external_only" else batch.q_idx
        sel = batch.sel * ((q_idx > 0)[..., None] & (batch.sel < n_inputs(self.cfg)))  # (B, T, M)
        if variant in ENCODES_EXTERNAL and not survey_only_path:
            external = external if external is not None else self.encode_external(batch.sources)
        else:
            external = None
        weights = return_aux and aux_attention
        logits = self._logits(q_idx, sel, batch, external, aux if return_aux else None, weights, survey_only_path)
        if external is not None and hasattr(self, "output_beta") and not self.training:
            logits = self._output_gate(logits, q_idx, sel, batch, external)
        return (logits, aux) if return_aux else logits

    def _logits(self, q_idx, sel, batch: Batch, external: ExternalEncoding | None, aux: dict | None = None,
                weights: bool = False, survey_only_path: bool = False) -> torch.Tensor:
        """Survey tokens → encoder → fusion with the external encoding (when given) → logits (B, K)."""
        variant = self.cfg.variant
        x, mask_s = self.survey_tokens(q_idx, sel)  # (B, 1+T, D)
        if variant == "early_fusion":
            toks = [tok(s) for tok, s in zip(self.source_tokens, batch.sources)]
            x = torch.cat([x] + [t for t, _ in toks], 1)
            mask_s = torch.cat([mask_s] + [m for _, m in toks], 1)
        h = self._encode_survey(x, mask_s)  # (B, Tq, D)
        if external is not None:
            has_ext = external.mask.any(-1)[:, None, None]  # (B, 1, 1)
            h_t, att = self.cross(h, external.tokens, _attendable(external.mask), need_weights=weights)  # (B, Tq, D)
            if variant == "lantern":
                g = torch.sigmoid(self.gate(torch.cat([h, h_t], -1))) * has_ext  # (B, Tq, D)
                h = torch.where(has_ext, h + g * (h_t - h), h)
            else:
                g, h = has_ext.expand_as(h).to(h.dtype), torch.where(has_ext, h_t, h)
            if aux is not None:
                aux.update(gate=g.mean(-1), attention=None if att is None else att.mean(1),
                           token_source=external.token_source, survey_mask=mask_s,
                           has_external=has_ext[:, 0, 0])
        if self.training and self.cfg.fusion_noise > 0:
            h = h + self.cfg.fusion_noise * torch.randn_like(h)
        logits = self._readout(h, mask_s, external)  # (B, K)
        if self.cfg.wide:
            logits = logits + self.wide.survey_logits(q_idx, sel)
            if external is not None:
                logits = logits + external.wide
            elif variant == "early_fusion" and not survey_only_path:  # its external part straight from the rows
                logits = logits + self.wide.external_logits(batch.sources)
        return logits

    def _readout(self, h, mask_s, external: ExternalEncoding | None) -> torch.Tensor:
        """Fused tokens (B, Tq, D) → logits (B, K): the pooled head, plus the question readout over
        those tokens (and the external ones, masked where absent: survey-only stays exact)."""
        h = self.ln_out(self.drop(h))
        logits = self.head(_pool(h, mask_s))  # (B, K)
        if self.cfg.question_readout:
            tokens, mask = h, mask_s
            if external is not None and self.cfg.readout_external:
                tokens, mask = torch.cat([h, external.tokens], 1), torch.cat([mask_s, external.mask], 1)
            logits = logits + self.readout(tokens, mask)
            if external is not None and hasattr(self, "readout_ext"):  # zero for a user without external tokens
                has = external.mask.any(-1, keepdim=True)  # (B, 1)
                logits = logits + self.readout_ext(external.tokens, external.mask) * has
        return logits

    def _output_gate(self, z, q_idx, sel, batch: Batch, external: ExternalEncoding) -> torch.Tensor:
        """The output gate, per question (β fitted on validation data, model.floor):

            z_out = z_s + β_f ⊙ (z − z_s) + β_e ⊙ (z_e − z_s)        β ≥ 0, β_f + β_e ≤ 1

        z: the fused logits; z_s: the same weights with every external path closed (the survey
        alone); z_e: the same weights with the survey closed (the context alone, what
        ``TrainConfig.drop_survey`` trains). Users without external data keep z = z_s exactly."""
        beta_f, beta_e = self.output_beta[self.key_q], self.output_beta_ext[self.key_q]  # (K,)
        exporting = torch.compiler.is_exporting()  # no data-dependent branches in an exported graph
        if not exporting and bool((beta_f == 1).all()) and not bool(beta_e.any()):
            return z
        z_s = self._logits(q_idx, sel, batch, None, survey_only_path=True)
        out = z_s + beta_f * (z - z_s)
        if exporting or bool(beta_e.any()):
            empty_q, empty_sel = q_idx[:, :1] * 0, sel[:, :1] * 0  # (B, 1), (B, 1, M): no visible answer
            out = out + beta_e * (self._logits(empty_q, empty_sel, batch, external) - z_s)
        return torch.where(external.mask.any(-1, keepdim=True), out, z)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
