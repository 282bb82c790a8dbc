"""Each user's external encoding, computed once (when features are materialized) and tied to the
model version that computed it, so the scorer reads it instead of re-encoding the sources for
every event (``Lantern.encode_external``: the source encoders and the wide path's external part).

    blob = MAGIC | version length u16 | version | zero padding to 4 bytes | S u16 | D u16 | K u32
           | per source: event time f64 (NaN = no row), tokens u32 | tokens (Σ, D) f32
           | wide logits per source (S, K) f32

(every part a multiple of 4 bytes, so a batch's blobs joined are one float32 buffer).

Sources are encoded independently and the wide path is linear in them, so each source's part is
kept apart: a source whose row has outlived its view's TTL by scoring time is dropped exactly as
the raw lookup would drop it. Only real tokens are kept (padding is masked anyway), so a batch is
padded to its own longest user. A blob of another model version is refused: its tokens live in
that version's weight space; the tag is the version and a digest of the weights
(:func:`encoding_version`).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import torch

from lantern.errors import ModelError
from model.data import to_batch
from model.encoding import SourceArrays
from model.lantern import ExternalEncoding

MAGIC = b"LXE1"
_HEAD = struct.Struct("<4sH")  # magic, version length
_DIMS = struct.Struct("<HHI")  # sources, d_model, keys
_SOURCE = struct.Struct("<dI")  # per source: event time (NaN = no row), tokens
VALUE_BYTES_TAG = 0x0A  # protobuf Value.bytes_val (field 1, length-delimited): how the online store wraps it


class EncodingVersionMismatch(ModelError):
    """A stored external encoding belongs to another model version."""


@dataclass(frozen=True)
class UserEncoding:
    """One user's external encoding as scoring uses it (expired sources already dropped)."""

    present: np.ndarray  # (S,) bool, the sources it holds
    counts: np.ndarray  # (S,) tokens of each source (0 where absent)
    tokens: np.ndarray  # (n, D) float32, the sources' tokens in source order
    wide: np.ndarray  # (K,) float32, the wide path's external logits of the present sources


def encoding_version(model: torch.nn.Module, version: str) -> str:
    """What a stored encoding is tied to: the model version and a digest of its weights (two
    models saved under one name still refuse each other's encodings)."""
    digest = hashlib.blake2b(digest_size=6)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return f"{version}#{digest.hexdigest()}"


def _encoded_chunks(model: torch.nn.Module, sources: list[SourceArrays], rows: int = 256):
    """Per chunk of ``rows`` users: their row indices, tokens (B, Tk, D), mask (B, Tk), each
    token's source (Tk,) (tokens are in source order) and each source's wide logits (B, S, K)."""
    n = len(sources[0].present) if sources else 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, n, rows):
            idx = np.arange(start, min(start + rows, n))
            batch = to_batch(np.zeros((len(idx), 1), np.int16), np.zeros((len(idx), 1, 1), np.int16),
                             [s.take(idx) for s in sources], device)
            enc = model.encode_external(batch.sources)
            wide = (model.wide.external_logits_by_source(batch.sources) if model.cfg.wide
                    else enc.wide.new_zeros(len(idx), len(sources), model.cfg.n_keys))
            yield (idx, enc.tokens.float().cpu().numpy(), enc.mask.cpu().numpy(),
                   enc.token_source.cpu().numpy().astype(np.uint8), wide.float().cpu().numpy())


def encode_users(model: torch.nn.Module, sources: list[SourceArrays], model_version: str,
                 event_times: np.ndarray | None = None, rows: int = 256) -> list[bytes]:
    """One blob per user (the rows of ``sources``). ``event_times`` (N, S): each source row's event
    time in epoch seconds, for the TTL at scoring time (None: never expires)."""
    S = len(sources)
    present = np.stack([s.present for s in sources], 1) if sources else np.zeros((0, 0), bool)  # (N, S)
    times = np.zeros(present.shape) if event_times is None else np.asarray(event_times, np.float64)
    stamps = np.where(present, times, np.nan)
    head = _HEAD.pack(MAGIC, len(model_version.encode())) + model_version.encode()
    head += b"\0" * (-len(head) % 4)
    blobs = []
    for idx, tokens, mask, token_source, wide in _encoded_chunks(model, sources, rows):
        for j, i in enumerate(idx):
            keep = mask[j]
            counts = np.bincount(token_source[keep], minlength=S)
            table = b"".join(_SOURCE.pack(t, c) for t, c in zip(stamps[i].tolist(), counts.tolist()))
            blobs.append(b"".join([head, _DIMS.pack(S, tokens.shape[2], wide.shape[2]), table,
                                   tokens[j, keep].tobytes(), wide[j].tobytes()]))
    return blobs


def _unwrap(blob) -> memoryview:
    """The payload of a serialized protobuf ``Value(bytes_val=…)``: skip the tag and the varint."""
    view = memoryview(blob)
    if view[0] != VALUE_BYTES_TAG:
        raise ModelError("an online encoding value is not a bytes Value; was it written by lantern?")
    at = 1
    while view[at] & 0x80:
        at += 1
    return view[at + 1:]


def read_many(blobs: list, model_version: str, now: float = np.inf, ttl_s=None,
              wrapped: bool = False) -> tuple[list[UserEncoding | None], list[str]]:
    """A batch of stored blobs (None or empty: none stored) → each user's encoding at ``now``,
    sources older than their TTL dropped, and the tags of the blobs refused for being another
    model's (those users get None). ``wrapped``: each blob is still inside the online store's
    serialized ``Value``. The batch is parsed as one float32 buffer: per user only its header is
    read in Python."""
    version, out, refused = model_version.encode(), [None] * len(blobs), []
    parts, rows, metas, size = [], [], [], 0
    for i, blob in enumerate(blobs):
        if not blob:
            continue
        blob = _unwrap(blob) if wrapped else memoryview(blob)
        magic, n_version = _HEAD.unpack_from(blob)
        if magic != MAGIC:
            raise ModelError(f"not a stored external encoding (magic {bytes(magic)!r})")
        tag = blob[_HEAD.size:_HEAD.size + n_version]
        if tag != version:
            refused.append(bytes(tag).decode(errors="replace"))
            continue
        at = _HEAD.size + n_version + (-(_HEAD.size + n_version) % 4)
        dims = _DIMS.unpack_from(blob, at)
        table = struct.unpack_from("<" + "dI" * dims[0], blob, at + _DIMS.size)
        metas.append((dims, table, (size + at + _DIMS.size + _SOURCE.size * dims[0]) // 4))
        rows.append(i)
        parts.append(blob)
        size += len(blob)
    if not rows:
        return out, refused
    (S, d, k), f32 = metas[0][0], np.frombuffer(b"".join(parts), np.float32)
    if any(m[0] != (S, d, k) for m in metas):
        raise ModelError("stored external encodings of different shapes in one batch")
    stamps = np.array([m[1][0::2] for m in metas], np.float64)  # (m, S)
    counts = np.array([m[1][1::2] for m in metas], np.int64)  # (m, S)
    ttl = np.full(S, np.inf) if ttl_s is None else np.asarray(ttl_s, np.float64)
    with np.errstate(invalid="ignore"):
        present = now - stamps <= ttl  # NaN (no row) compares False
    first = np.array([m[2] for m in metas], np.int64)  # each user's first token float
    wide_at = first + counts.sum(1) * d
    wide = f32[wide_at[:, None] + np.arange(S * k)].reshape(len(rows), S, k)
    wide = np.einsum("ms,msk->mk", present.astype(np.float32), wide)  # (m, K) the present sources'
    kept = np.where(present, counts, 0)
    starts, ends = first.tolist(), (first + counts.sum(1) * d).tolist()
    expired = (kept != counts).any(1).tolist()
    for j, i in enumerate(rows):
        tokens = f32[starts[j]:ends[j]].reshape(-1, d)
        if expired[j]:  # a source past its TTL: drop its tokens
            tokens = tokens[np.repeat(present[j], counts[j])]
        out[i] = UserEncoding(present[j], kept[j], tokens, wide[j])
    return out, refused


def read(blob: bytes, model_version: str, now: float = np.inf, ttl_s: np.ndarray | None = None) -> UserEncoding:
    """One stored blob → the user's encoding at ``now`` (:func:`read_many` for one). Raises
    :class:`EncodingVersionMismatch` for another model's blob."""
    (encoding,), refused = read_many([blob], model_version, now, ttl_s)
    if refused:
        raise EncodingVersionMismatch(f"a stored external encoding is from model {refused[0]!r}, not "
                                      f"{model_version!r}: re-encode the store (lantern features encode)")
    return encoding


def fresh(model: torch.nn.Module, sources: list[SourceArrays]) -> list[UserEncoding]:
    """Encodings computed now from looked-up rows (TTL already applied by the lookup), built
    directly: no blob in between."""
    S, out = len(sources), []
    for idx, tokens, mask, token_source, wide in _encoded_chunks(model, sources):
        for j, i in enumerate(idx):
            present = np.array([s.present[i] for s in sources], bool)
            keep = mask[j]
            out.append(UserEncoding(present, np.bincount(token_source[keep], minlength=S), tokens[j, keep],
                                    wide[j][present].sum(0)))
    return out


def stack(encodings: list[UserEncoding], d_model: int, n_keys: int,
          device: torch.device | str = "cpu") -> ExternalEncoding:
    """Users' encodings → one batch's :class:`ExternalEncoding`, padded to its longest user."""
    width = max([len(e.tokens) for e in encodings], default=0) or 1
    B = len(encodings)
    tokens = np.zeros((B, width, d_model), np.float32)
    mask = np.zeros((B, width), bool)
    source = np.zeros((B, width), np.int64)
    wide = np.zeros((B, n_keys), np.float32)
    for i, e in enumerate(encodings):
        n = len(e.tokens)
        if e.tokens.shape[1] != d_model or len(e.wide) != n_keys:
            raise ModelError(f"a stored external encoding has shape (D={e.tokens.shape[1]}, K={len(e.wide)}), "
                             f"the model needs (D={d_model}, K={n_keys})")
        tokens[i, :n], mask[i, :n], wide[i] = e.tokens, True, e.wide
        source[i, :n] = np.repeat(np.arange(len(e.counts)), e.counts)
    as_t = lambda x: torch.from_numpy(x).to(device)  # noqa: E731
    return ExternalEncoding(as_t(tokens), as_t(mask), as_t(source), as_t(wide))
