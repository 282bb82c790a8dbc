"""Picklable builders of the Kafka consumer's scorer: run in the CLI's process or in a Ray actor.
No Ray import at module level, so `lantern score` without Ray starts without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lantern.settings.scoring import ScoringConfig


def local_scorer_factory(model: Path, device_pref: str, features_cfg, use_features: bool,
                         scoring: ScoringConfig) -> Callable:
    """A picklable builder of the in-process scorer (runs in this process or in a Ray actor)."""
    def make():
        from model.checkpoint import load_model, tuned_threshold
        from model.inference import InProcessPredictor, resolve_device
        from streaming.scoring import BatchScorer

        device = resolve_device(device_pref)
        loaded = load_model(model, device)
        client = None
        if use_features:
            from features.lookup import OnlineLookup

            client = OnlineLookup.of(features_cfg)
        version = loaded.version(model)
        return BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, version, device),
                           client, scoring.with_tuned(tuned_threshold(loaded.meta)))
    return make


def serve_scorer_factory(app_name: str) -> Callable:
    """A picklable builder of a scorer that sends micro-batches to the running Serve app."""
    def make():
        from ray import serve

        from ray_jobs.serve import ServeScorer

        return ServeScorer(serve.get_app_handle(app_name))
    return make
