"""Distributed retraining: archived sessions + Feast point-in-time features → Ray Data parquet →
``TorchTrainer`` (DDP) → a new registry version.

The driver joins and encodes once (``model.train.prepare``: user split, feature spec fitted on
training users, hidden val/test tasks) and writes the training rows as parquet (ray_jobs/encoded.py).
Each worker reads its shard, trains with the single-process loop's own pieces
(``train_epoch``, ``make_optimizer``, ``validate``, ``EarlyStopping``) under DDP, with its batch size divided by the
number of workers, so an epoch takes as many optimiser steps as single-process training.
Every epoch rank 0 reports a checkpoint (weights, optimiser, scheduler, early-stopping state:
the epoch with the lowest validation loss);
``FailureConfig(max_failures)`` restarts failed workers from it, and rerunning with the same
run name resumes from it too. Batch order is seeded per (seed, rank, epoch), so a resumed run
repeats nothing and skips nothing.

Ray Job entry point: ``ray job submit -- lantern retrain --data DIR [--archive DIR]``.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from features.store import open_store, point_in_time_sources
from lantern.dataset.io import load_dataset
from lantern.errors import ConfigError
from lantern.settings.model import TrainConfig
from lantern.settings.serve import RetrainConfig
from model.checkpoint import build_model, save_model
from model.data import model_config
from model.evaluate import predict
from model.floor import finish_training
from model.metrics import Layout, decision_f1
from model.registry import Registry
from model.train import EarlyStopping, for_run, make_optimizer, prepare, train_epoch, validate
from ray_jobs.encoded import from_table, shapes, write_encoded
from streaming.archive import read_archive

STATE = "state.pt"


def _train_loop(config: dict) -> None:
    import pyarrow as pa
    import ray
    import ray.train
    import ray.train.torch

    tc: TrainConfig = config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    shard = ray.train.get_dataset_shard("train")
    table = pa.concat_tables(list(shard.iter_batches(batch_size=None, batch_format="pyarrow")))
    data = from_table(table, config["layout"], config["n_sources"])
    rows = config["rows_per_worker"]
    assert len(data) >= rows, (len(data), rows)
    data = data.take(np.arange(rows))  # every worker: the same number of steps (DDP needs it)
    val = ray.get(config["val"])
    key_question, parent = np.asarray(config["key_question"]), np.asarray(config["parent"])
    worker_tc = replace(tc, batch_size=max(1, tc.batch_size // world))

    torch.manual_seed(tc.seed)
    # a batch may leave parameters unused (e.g. no user in it has a sequence source): DDP must allow it
    model = ray.train.torch.prepare_model(build_model(config["model_config"]),
                                          parallel_strategy_kwargs={"find_unused_parameters": True})
    device = ray.train.torch.get_device()
    core = model.module if hasattr(model, "module") else model
    steps = math.ceil(rows / worker_tc.batch_size)
    opt, sched = make_optimizer(model, worker_tc, steps)
    state = {"epoch": 0, "stop": EarlyStopping(tc.patience), "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group or a rerun: continue where it stopped
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE, map_location="cpu", weights_only=False)
        core.load_state_dict(saved.pop("model"))
        opt.load_state_dict(saved.pop("opt"))
        sched.load_state_dict(saved.pop("sched"))
        state = saved

    for epoch in range(state["epoch"], tc.epochs):
        if config.get("before_epoch"):  # a test's hook (fault injection); None in production
            config["before_epoch"](epoch, rank)
        t0 = time.perf_counter()
        rng = np.random.default_rng([tc.seed, rank, epoch])
        loss = train_epoch(model, opt, sched, data, key_question, worker_tc, rng, device, parent=parent)
        row = {"epoch": epoch + 1, "loss": loss, **validate(core, val, config["layout_q"], device),  # same on every rank
               "epoch_s": time.perf_counter() - t0, "samples_per_s": rows * world / (time.perf_counter() - t0)}
        state["history"].append(row)
        done = state["stop"].update(row, core, sched)
        state["epoch"] = epoch + 1
        _report(row, state, core, opt, sched, rank)
        if done:
            break


def _report(row: dict, state: dict, core, opt, sched, rank: int) -> None:
    import ray.train

    if rank != 0:  # every rank reports each epoch; only rank 0 writes the checkpoint
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({**state, "model": core.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                   Path(d) / STATE)
        ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(d))


@dataclass
class RetrainResult:
    model: torch.nn.Module
    prepared: object  # model.train.Prepared
    history: list[dict]
    best: dict  # the selected epoch's row: val_loss, val_f1, multi_threshold
    seconds: float

    @property
    def best_val_f1(self) -> float:
        return self.best["val_f1"]


def _check_resources(rc: RetrainConfig, log) -> None:
    """Fail fast when the cluster can never hold the worker group (Ray Train would wait forever)."""
    import ray

    kind, each = ("GPU", 1.0) if rc.use_gpu else ("CPU", rc.cpus_per_worker)
    need = rc.num_workers * each
    total, free = ray.cluster_resources().get(kind, 0.0), ray.available_resources().get(kind, 0.0)
    if total < need:
        raise ConfigError(f"retrain needs {need:g} {kind} ({rc.num_workers} workers × {each:g}); the Ray cluster "
                          f"has {total:g}: lower retrain.num_workers / retrain.cpus_per_worker or add nodes")
    if free < need:
        log(f"waiting for {need:g} {kind}: {free:g} free now (other Ray work holds the rest)")


def retrain(ds, tc: TrainConfig, rc: RetrainConfig, sources=None, log=print, progress: bool = False,
            before_epoch=None) -> RetrainResult:
    """Prepare on the driver, train on ``rc.num_workers`` Ray Train workers; the best epoch's model.
    ``progress``: a bar in the driver that moves as the workers report epochs. ``before_epoch(epoch,
    rank)`` runs in every worker before each epoch (tests inject worker failures with it)."""
    import ray
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _check_resources(rc, log)
    feed = _EpochFeed.create() if progress else None
    t0 = time.perf_counter()
    prep = prepare(ds, tc, sources=sources)
    train = prep.data.take(prep.train_idx)
    tc = for_run(tc, len(train))  # the same steps per epoch and passes as one process
    storage = Path(rc.storage).resolve()
    encoded = write_encoded(train, storage / rc.run_name / "encoded" / "train.parquet")
    rows = len(train) // rc.num_workers
    cfg = model_config(ds.questionnaire, prep.features, tc.variant, tc.preset)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "train": tc, "model_config": cfg, "layout": shapes(train), "n_sources": len(train.sources),
            "rows_per_worker": rows, "val": ray.put(prep.val), "key_question": prep.key_question.tolist(),
            "parent": prep.parent.tolist(), "layout_q": Layout.of(ds.questionnaire),
            "before_epoch": before_epoch,
        },
        scaling_config=ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu,
                                     resources_per_worker={"CPU": rc.cpus_per_worker}),
        run_config=RunConfig(name=rc.run_name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=rc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[feed.callback()] if feed else None),
        # read before the workers hold the CPUs: on a small cluster the read tasks would wait forever
        datasets={"train": ray.data.read_parquet(str(encoded)).materialize()},
    )
    log(f"training {tc.variant}-{tc.preset} on {rc.num_workers} workers × {rows} sessions")
    result = _fit_with_progress(trainer, tc.epochs, feed) if progress else trainer.fit()
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / STATE, map_location="cpu", weights_only=False)
    model = build_model(cfg)
    model.load_state_dict(saved["stop"].best_state)
    model.eval()
    best = {**saved["stop"].best_row, **finish_training(model, prep.val, Layout.of(ds.questionnaire))}
    return RetrainResult(model, prep, saved["history"], best, time.perf_counter() - t0)


class _EpochFeed:
    """Epoch reports from the Ray Train controller to the driver's progress bar, via a Ray queue."""

    def __init__(self, queue):
        self.queue = queue

    @classmethod
    def create(cls) -> "_EpochFeed":
        from ray.util.queue import Queue

        return cls(Queue(actor_options={"num_cpus": 0}))

    def callback(self):
        from ray.train import UserCallback

        queue = self.queue

        class ReportEpochs(UserCallback):  # runs in the controller process
            def after_report(self, run_context, metrics, checkpoint):
                queue.put(metrics[0])

        return ReportEpochs()


def _fit_with_progress(trainer, epochs: int, feed: _EpochFeed):
    import threading
    from queue import Empty

    from tqdm.auto import tqdm

    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the driver's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)  # daemon: Ctrl-C never waits on it
    thread.start()
    with tqdm(total=epochs, desc="ray train", unit="epoch") as bar:
        while thread.is_alive() or not feed.queue.empty():
            try:
                row = feed.queue.get(timeout=1.0)
            except Empty:
                continue
            bar.n = row["epoch"]
            bar.set_postfix(loss=f"{row['loss']:.4f}", val_loss=f"{row['val_loss']:.4f}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def data_window(sessions) -> dict:
    """What a version was trained on: session count and the completed_at range."""
    import pyarrow.compute as pc

    span = pc.min_max(sessions.column("completed_at"))
    return {"sessions": sessions.num_rows, "from": str(span["min"].as_py()), "to": str(span["max"].as_py())}


def retrain_and_register(settings, archive: Path | None = None, use_features: bool = True, promote: bool = False,
                         log=print) -> dict:
    """`lantern retrain`: dataset (sessions from ``archive`` when given) + Feast point-in-time
    features → Ray Train → a registry version (val/test F1, data window, parent) → optionally promoted."""
    ds = load_dataset(settings.paths.data)
    if archive is not None:
        ds = replace(ds, sessions=read_archive(archive))
        log(f"{ds.sessions.num_rows} archived sessions from {archive}")
    sources = None
    if use_features:  # point-in-time rows from Feast's offline store, not the in-process join
        sources = point_in_time_sources(open_store(settings.features), ds.sessions)
    result = retrain(ds, settings.train, settings.retrain, sources=sources, log=log)
    return register_retrained(settings, ds, result, promote, log)


def register_retrained(settings, ds, result: RetrainResult, promote: bool, log=print) -> dict:
    """A retrained model → its test F1 → a model directory → the next registry version (val/test
    F1, data window, parent) → optionally promoted."""
    rc, prep = settings.retrain, result.prepared
    threshold = result.best["multi_threshold"]
    test_f1 = decision_f1(predict(result.model, prep.test), prep.test.y, prep.test.loss_mask,
                          Layout.of(ds.questionnaire), threshold)["f1"]
    window = data_window(ds.sessions)
    path = save_model(Path(rc.storage) / rc.run_name / "model", result.model, prep.features, ds.questionnaire,
                      {"training": {"history": result.history, "best_val_f1": result.best_val_f1,
                                    "best_val_loss": result.best["val_loss"], "multi_threshold": threshold,
                                    "workers": rc.num_workers}, "data_window": window})
    registry = Registry(settings.serve.registry)
    info = registry.register(path, {"val_f1": result.best_val_f1, "test_f1": test_f1}, window)
    log(f"registered {info.version}: val F1 {result.best_val_f1:.4f}, test F1 {test_f1:.4f}, "
        f"{len(result.history)} epochs in {result.seconds:.0f} s on {rc.num_workers} workers")
    out = {"version": info.version, "val_f1": result.best_val_f1, "test_f1": test_f1, "seconds": result.seconds}
    if promote:
        decision = registry.promote(info.version, settings.serve.promote_metric, settings.serve.promote_min_gain)
        log(f"{'promoted' if decision.accepted else 'not promoted'}: {decision.reason}")
        out["promoted"] = decision.accepted
    return out

