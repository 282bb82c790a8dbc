"""Single-process training: masked-response modelling, model selection and early stopping on
validation log loss (a proper scoring rule), learning rate warmed up, then held and halved on
every epoch without improvement.

``train_epoch``, ``make_optimizer``, ``EarlyStopping`` and ``validate`` are shared with the Ray
Train loop (ray_jobs/train.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from tqdm.auto import tqdm

from lantern.dataset.io import Dataset
from lantern.settings.model import TrainConfig
from model.checkpoint import build_model
from model.data import (
    EncodedData,
    SourceRows,
    encode_dataset,
    hide_questions,
    joined_sources,
    model_config,
    question_parents,
    split_users,
    to_batch,
)
from model.encoding import FeatureSpec
from model.evaluate import HiddenSet, hidden_set, predict, rare_keys
from model.floor import finish_training
from model.inference import resolve_device
from model.metrics import Layout, decision_f1, log_loss, tune_multi_threshold
from model.outputs import response_loss


def validate(model: nn.Module, hs: HiddenSet, layout: Layout, device="cpu") -> dict:
    """Validation log loss (the selection criterion), the multi-select threshold tuned on these
    sessions, and F1 under the question-kind decision rules at that threshold."""
    probs = predict(model, hs, device=device)
    threshold = tune_multi_threshold(probs, hs.y, hs.loss_mask, layout)
    return {"val_loss": log_loss(probs, hs.y, hs.loss_mask, layout),
            "val_f1": decision_f1(probs, hs.y, hs.loss_mask, layout, threshold)["f1"],
            "multi_threshold": threshold}


@dataclass
class EarlyStopping:
    """Keeps the weights of the epoch with the lowest validation loss; stops after ``patience``
    epochs without improvement (each of which also halves the learning rate)."""

    patience: int
    best_row: dict | None = None  # the kept epoch's history row
    best_state: dict | None = None
    bad: int = 0

    def update(self, row: dict, model: nn.Module, sched) -> bool:
        """Record an epoch; returns True when training should stop."""
        best_loss = math.inf if self.best_row is None else self.best_row["val_loss"]
        if row["val_loss"] < best_loss - 1e-5:
            self.best_row, self.bad = row, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return False
        self.bad += 1
        sched.base_lrs = [lr * 0.5 for lr in sched.base_lrs]  # the plateau: a smaller step
        return self.bad >= self.patience


def batch_rows(tc: TrainConfig, n_train: int) -> int:
    """Rows per optimiser step: ``batch_size``, or fewer so that an epoch has ``min_batches`` steps
    (at least 16 rows)."""
    return max(16, min(tc.batch_size, n_train // max(tc.min_batches, 1)))


def for_run(tc: TrainConfig, n_train: int) -> TrainConfig:
    """``tc`` with this dataset's batch size and number of passes (``tc`` as asked is what a
    training history records)."""
    return replace(tc, batch_size=batch_rows(tc, n_train), epochs=tc.max_epochs(n_train))


@dataclass
class Prepared:
    """Everything every variant shares: encodings, one user split, hidden val/test tasks."""

    dataset: Dataset
    features: FeatureSpec
    data: EncodedData
    train_idx: np.ndarray
    val: HiddenSet
    test: HiddenSet
    key_question: np.ndarray
    rare: np.ndarray
    parent: np.ndarray  # (Q,) the question each is routed on, -1 = none (hidden together)
    val_idx: np.ndarray | None = None  # dataset rows of the validation / test sessions
    test_idx: np.ndarray | None = None


def prepare(ds: Dataset, tc: TrainConfig, features: FeatureSpec | None = None,
            sources: SourceRows | None = None) -> Prepared:
    """Encode ``ds`` and split it by user; fit the feature spec on training users unless given.

    ``sources`` are the sessions' joined external rows (e.g. a Feast training set); by default
    they are joined point-in-time from ``ds.external``."""
    user_ids = ds.sessions.column("user_id").to_numpy(zero_copy_only=False)
    train_idx, val_idx, test_idx = split_users(user_ids, tc.seed)
    sources = joined_sources(ds) if sources is None else sources
    if features is None:  # statistics from training sessions' rows only
        features = FeatureSpec.fit({name: table.take(pa.array(train_idx[present[train_idx]]))
                                    for name, (table, present) in sources.items()})
    data = encode_dataset(ds, features, sources)
    key_question, parent = np.asarray(ds.questionnaire.key_question), question_parents(ds.questionnaire)
    val = hidden_set(data.take(val_idx), key_question, tc.hide_fraction, tc.eval_seed, parent)
    test = hidden_set(data.take(test_idx), key_question, tc.hide_fraction, tc.eval_seed + 1, parent)
    return Prepared(ds, features, data, train_idx, val, test, key_question,
                    rare_keys(data.take(train_idx), ds.questionnaire), parent, val_idx, test_idx)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                            chunk_batches: int = 32) -> list[np.ndarray]:
    """Random batches of similar-length sessions: shuffle, sort within chunks, shuffle batches.
    Batches are trimmed to their longest session, so this removes most padding work."""
    perm, batches = rng.permutation(len(lengths)), []
    chunk = batch_size * chunk_batches
    for start in range(0, len(perm), chunk):
        part = perm[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_epoch(model: nn.Module, opt, sched, data: EncodedData, key_question: np.ndarray, tc: TrainConfig,
                rng: np.random.Generator, device, bar=None, parent: np.ndarray | None = None) -> float:
    """One pass in random order; returns the mean loss."""
    model.train()
    losses, s = [], data.survey
    cfg = getattr(model, "module", model).cfg  # under DDP the model is wrapped
    modality_dropout = cfg.variant == "lantern" and (tc.drop_context or tc.drop_source or tc.drop_survey)
    for idx in length_bucketed_batches((s.q_idx > 0).sum(1), tc.batch_size, rng):
        sources, frac = [src.take(idx) for src in data.sources], tc.hide_fraction
        if modality_dropout:
            frac = drop_modalities(sources, len(idx), tc, rng)
        q_in, sel_in, mask = hide_questions(s.q_idx[idx], s.sel[idx], key_question, frac, rng, parent)
        batch = to_batch(q_in, sel_in, sources, device)
        y = torch.as_tensor(s.y[idx], dtype=torch.float32, device=device)
        loss = response_loss(model(batch), y, torch.as_tensor(mask, dtype=torch.float32, device=device), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
    return float(np.mean(losses))


def drop_modalities(sources: list, n: int, tc: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Modality dropout for one batch (``sources`` are its own copies): rows lose every external
    source (``drop_context``) or single sources (``drop_source``) by their presence flags, which
    every external path of the model reads; rows with ``drop_survey`` get their whole session
    hidden. Returns the per-row fraction of questions to hide, (n, 1)."""
    context = rng.random(n) < tc.drop_context
    for src in sources:
        src.present &= ~context & (rng.random(n) >= tc.drop_source)
    return np.where(rng.random(n) < tc.drop_survey, 1.0, tc.hide_fraction)[:, None]


def make_optimizer(model: nn.Module, tc: TrainConfig, steps_per_epoch: int):
    """AdamW; the learning rate warms up linearly over the first epoch (at least 50 steps), then
    holds — ``EarlyStopping`` halves it on every epoch without improvement."""
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    warmup = max(50, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return opt, sched


def fit(prep: Prepared, tc: TrainConfig, progress: bool = True,
        on_epoch: Callable[[int, dict, nn.Module], None] | None = None) -> tuple[nn.Module, dict]:
    """Train one variant; keep the epoch with the lowest validation loss; return it and its history."""
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    model = build_model(model_config(prep.dataset.questionnaire, prep.features, tc.variant, tc.preset)).to(device)
    train = prep.data.take(prep.train_idx)
    run_tc = for_run(tc, len(train))
    steps = math.ceil(len(train) / run_tc.batch_size)
    opt, sched = make_optimizer(model, run_tc, steps)
    rng = np.random.default_rng(tc.seed)
    stop, history, layout = EarlyStopping(tc.patience), [], Layout.of(prep.dataset.questionnaire)
    t0 = time.perf_counter()
    with tqdm(total=run_tc.epochs * steps, desc=f"train {tc.variant}", disable=not progress, leave=False,
              mininterval=1.0) as bar:
        for epoch in range(run_tc.epochs):
            loss = train_epoch(model, opt, sched, train, prep.key_question, run_tc, rng, device, bar, prep.parent)
            row = {"epoch": epoch + 1, "loss": loss, **validate(model, prep.val, layout, device),
                   "elapsed_s": time.perf_counter() - t0}
            history.append(row)
            bar.set_postfix(loss=f"{loss:.4f}", val_loss=f"{row['val_loss']:.4f}")
            if on_epoch:
                on_epoch(epoch, row, model)
            if stop.update(row, model, sched):
                break
    model.load_state_dict(stop.best_state)
    model.eval()
    best = {**stop.best_row, "epoch_val_loss": stop.best_row["val_loss"],  # the selection; then as saved:
            **finish_training(model, prep.val, layout, device)}
    return model, {"config": asdict(tc), "history": history, "best_epoch": best["epoch"],
                   "best_epoch_val_loss": best["epoch_val_loss"], "best_val_loss": best["val_loss"],
                   "best_val_f1": best["val_f1"],
                   "multi_threshold": best["multi_threshold"], "output_gate": best.get("output_gate"),
                   "train_sessions": int(len(train)),
                   "batch_rows": run_tc.batch_size,
                   "seconds": time.perf_counter() - t0}
