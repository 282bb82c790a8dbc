"""Single-process training: masked-response modelling with early stopping on validation F1.

``train_epoch`` and ``masked_bce`` are shared with the Ray Train loop (ray_jobs/train.py).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lantern.dataset.io import Dataset
from model.checkpoint import build_model
from model.config import TrainConfig
from model.data import (
    EncodedData,
    SourceRows,
    encode_dataset,
    hide_questions,
    joined_sources,
    model_config,
    split_users,
    to_batch,
)
from model.encoding import FeatureSpec
from model.evaluate import HiddenSet, hidden_set, predict, rare_keys
from model.metrics import prf


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, K)
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


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
    key_question = np.asarray(ds.questionnaire.key_question)
    val = hidden_set(data.take(val_idx), key_question, tc.hide_fraction, tc.eval_seed)
    test = hidden_set(data.take(test_idx), key_question, tc.hide_fraction, tc.eval_seed + 1)
    return Prepared(ds, features, data, train_idx, val, test, key_question,
                    rare_keys(data.take(train_idx), ds.questionnaire))


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
                rng: np.random.Generator, device, bar=None) -> float:
    """One pass in random order; returns the mean loss."""
    model.train()
    losses, s = [], data.survey
    for idx in length_bucketed_batches((s.q_idx > 0).sum(1), tc.batch_size, rng):
        q_in, sel_in, mask = hide_questions(s.q_idx[idx], s.sel[idx], key_question, tc.hide_fraction, rng)
        batch = to_batch(q_in, sel_in, [src.take(idx) for src in data.sources], device)
        y = torch.as_tensor(s.y[idx], dtype=torch.float32, device=device)
        loss = masked_bce(model(batch), y, torch.as_tensor(mask, dtype=torch.float32, device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
    return float(np.mean(losses))


def make_optimizer(model: nn.Module, tc: TrainConfig, steps_per_epoch: int):
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch,
                                                pct_start=0.1)
    return opt, sched


def fit(prep: Prepared, tc: TrainConfig, progress: bool = True,
        on_epoch: Callable[[int, dict, nn.Module], None] | None = None) -> tuple[nn.Module, dict]:
    """Train one variant; early-stop on validation F1; return the best model and its history."""
    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    model = build_model(model_config(prep.dataset.questionnaire, prep.features, tc.variant, tc.preset)).to(device)
    train = prep.data.take(prep.train_idx)
    steps = math.ceil(len(train) / tc.batch_size)
    opt, sched = make_optimizer(model, tc, steps)
    rng = np.random.default_rng(tc.seed)
    best_f1, best_state, bad, history = -1.0, None, 0, []
    t0 = time.perf_counter()
    with tqdm(total=tc.epochs * steps, desc=f"train {tc.variant}", disable=not progress, leave=False,
              mininterval=1.0) as bar:
        for epoch in range(tc.epochs):
            loss = train_epoch(model, opt, sched, train, prep.key_question, tc, rng, device, bar)
            probs = predict(model, prep.val, device=device)
            f1 = prf(probs, prep.val.y, prep.val.loss_mask)["f1"]
            row = {"epoch": epoch + 1, "loss": loss, "val_f1": f1, "elapsed_s": time.perf_counter() - t0}
            history.append(row)
            bar.set_postfix(loss=f"{loss:.4f}", val_f1=f"{f1:.4f}")
            if on_epoch:
                on_epoch(epoch, row, model)
            if f1 > best_f1:
                best_f1, best_state, bad = f1, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
                if bad >= tc.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"config": asdict(tc), "history": history, "best_val_f1": best_f1,
                   "train_sessions": int(len(train)), "seconds": time.perf_counter() - t0}
