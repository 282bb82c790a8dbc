"""Ray Serve: the ``LanternScorer`` deployment, its HTTP routes, and the handle-side scorer.

A replica holds one served version — model, questionnaire, feature spec and a
:class:`streaming.scoring.BatchCodec` — loaded from the registry in ``__init__`` and swapped by
``reconfigure`` when ``user_config["model_version"]`` changes. Encoding lives in the replica
because the feature spec belongs to the model version: a hot swap can never pair one version's
vocabularies with another's weights. Per request (one micro-batch of Kafka records): parse,
dead-letter, look features up, encode; then ``@serve.batch`` joins concurrent requests into one
forward pass per version; every output carries the ``model_version`` that produced it.

Routes: ``POST /score`` (one session event JSON → its scores JSON; 400 with the reason for a bad
event, 413 over the event size limit — checked before the body is read —, 415 for a body that is
not JSON), ``GET /healthz``. Handle: ``score(records)`` → ``ScoredBatch``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lantern.settings.features import FeatureStoreConfig
from lantern.settings.scoring import ScoringConfig
from lantern.settings.serve import ServeConfig, config_from_args
from model.checkpoint import tuned_threshold
from model.inference import Prediction, forward, resolve_device, stored_version
from model.registry import Registry
from streaming.events import MAX_EVENT_BYTES
from streaming.metrics import Metrics
from streaming.scoring import BatchCodec, Encoded, Record, ScoredBatch

log = logging.getLogger(__name__)


@dataclass
class Served:
    version: str
    model: torch.nn.Module
    scorer: BatchCodec  # encodes with this version's questionnaire and feature spec


def _concat(parts: list[Encoded]) -> tuple:
    """Model inputs of several encoded micro-batches as one batch (survey, sources, stored encodings)."""
    q_idx = np.concatenate([p.model_args[0] for p in parts])
    sel = np.concatenate([p.model_args[1] for p in parts])
    sources = [type(src)(*(np.concatenate([getattr(p.data.sources[i], f) for p in parts])
                           for f in src.__dataclass_fields__))
               for i, src in enumerate(parts[0].data.sources)]
    stored = None
    if any(p.stored is not None for p in parts):
        stored = [e for p in parts for e in (p.stored if p.stored is not None else [None] * len(p.events))]
    return q_idx, sel, sources, stored


@serve.deployment(name="LanternScorer")
class LanternScorer:
    def __init__(self, registry: str, model_version: str | None = None, device: str = "auto", half: bool = False,
                 features: dict | None = None, scoring: dict | None = None, threads: int = 1):
        torch.set_num_threads(threads)  # the replica's CPU share (ray_actor_options num_cpus)
        # encoding and forward passes run here, one at a time and off the event loop (requests keep
        # arriving while the model computes), never beside each other (GIL contention)
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.registry = Registry(registry)
        self.device = resolve_device(device)
        self.half = half and self.device.type == "cuda"  # never on CPU
        self.scoring = ScoringConfig(**(scoring or {}))  # threshold None: each version's own tuned one
        self.metrics = Metrics.ray()  # to Ray's Prometheus endpoint, with Serve's replica labels
        self.features = None
        if features is not None:  # the replica's own online lookup (features.lookup.OnlineLookup)
            from features.lookup import OnlineLookup

            self.features = OnlineLookup.of(FeatureStoreConfig(**features))
        self.served = self._load(model_version)

    def _load(self, version: str | None) -> Served:
        loaded = self.registry.load(version, str(self.device))
        version = loaded.meta.get("version", version)
        return Served(version, loaded.model, BatchCodec(loaded.questionnaire, loaded.features, self.features,
                                                         self.scoring.with_tuned(tuned_threshold(loaded.meta)),
                                                         metrics=self.metrics,
                                                         stored_version=stored_version(loaded.model, version)))

    def reconfigure(self, config: dict) -> None:
        """user_config: batching knobs and the model version. In-flight requests keep the version
        they started with (they hold their own reference); new ones get the new version."""
        self._forward.set_max_batch_size(int(config.get("max_batch_size", 8)))
        self._forward.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.002)))
        wanted = config.get("model_version") or self.registry.champion()
        if wanted != self.served.version:
            self.served = self._load(wanted)

    def _forward_now(self, served: Served, q_idx, sel, sources, stored) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        probs, gate = forward(served.model, q_idx, sel, sources, self.device, self.half, stored)
        self.metrics.forwarded(time.perf_counter() - t0)
        return probs, gate

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _forward(self, items: list[tuple[Served, Encoded]]) -> list[Prediction]:
        """HTTP requests (one event each), merged into one forward pass per model version."""
        out: list[Prediction | None] = [None] * len(items)
        for served in {id(s): s for s, _ in items}.values():  # one pass per version (two only mid-swap)
            mine = [i for i, (s, _) in enumerate(items) if s is served]
            parts = [items[i][1] for i in mine]
            probs, gate = await self._in_model_thread(self._forward_now, served, *_concat(parts))
            start = 0
            for i, part in zip(mine, parts):
                n = len(part.events)
                out[i] = Prediction(probs[start:start + n], gate[start:start + n], served.version)
                start += n
        return out

    def _in_model_thread(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    def _score_whole(self, served: Served, records: list[Record]) -> ScoredBatch:
        """A micro-batch from encoding to score records, in the model thread."""
        enc = served.scorer.encode(records)
        pred = None
        if enc.data is not None:
            pred = Prediction(*self._forward_now(served, *_concat([enc])), served.version)
        return served.scorer.finish(enc, pred)

    async def score(self, records: list[Record]) -> ScoredBatch:
        """Handle entry point: one whole micro-batch of records (the Kafka scorer's poll), encoded,
        scored and formatted in the model thread, batch after batch. Encoding in a thread beside
        the forward pass made them fight for the GIL: a parsing thread slowed a 60 ms forward pass
        5x to 117x (docs/performance.md)."""
        served = self.served  # this request's version, whatever reconfigure does meanwhile
        return await self._in_model_thread(self._score_whole, served, records)

    async def _score_one(self, record: Record) -> ScoredBatch:
        """An HTTP request's event: encoded in the model thread, its forward pass merged with
        other requests' (``_forward``)."""
        served = self.served
        enc = await self._in_model_thread(served.scorer.encode, [record])
        pred = await self._forward((served, enc)) if enc.data is not None else None
        return served.scorer.finish(enc, pred)

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 with problem details; the replica serves on
            log.exception("request %s %s failed", request.method, request.url.path)
            return problem(500, "internal", f"{type(exc).__name__}: the scorer failed on this request")

    async def _route(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/healthz"):
            return JSONResponse({"status": "ok", "model_version": self.served.version, "device": str(self.device)})
        if request.method == "POST" and path.endswith("/score"):
            refused = _refuse(request)
            body = None if refused else await _read_capped(request, MAX_EVENT_BYTES)
            if refused or body is None:
                return refused or problem(413, "oversized", f"a session event is at most {MAX_EVENT_BYTES} bytes")
            result = await self._score_one(Record("http", 0, 0, None, body))
            if result.dead:
                error = result.dead[0][1]
                return problem(500 if error.kind == "internal" else 400, error.kind, error.message, error.field)
            return Response(result.scores[0][1], media_type="application/json")
        return problem(404, "not_found", "routes: POST /score, GET /healthz")

    def info(self) -> dict:
        """What `lantern status` shows: the served version and the device."""
        return {"model_version": self.served.version, "device": str(self.device), "pid": os.getpid()}

    def check_health(self) -> None:
        if self.served is None:
            raise RuntimeError("no model loaded")


_TITLES = {400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error"}


def problem(status: int, kind: str, detail: str, field: str = "") -> Response:
    """An RFC 9457 problem details response: ``type`` names the error class (the dead-letter
    topic's, docs/events.md), ``class`` repeats it for clients, ``field`` says where."""
    body = {"type": f"urn:lantern:problem:{kind}", "title": _TITLES.get(status, "Error"), "status": status,
            "detail": detail, "class": kind}
    if field:
        body["field"] = field
    # ASCII-escaped: no text in it (a field path from the input included) can fail to encode
    return Response(json.dumps(body), status_code=status, media_type="application/problem+json")


def _refuse(request: Request) -> Response | None:
    """A 4xx before the body is read: not JSON, or a declared length over the event limit."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json":
        return problem(415, "unsupported_media_type", f"send the event as application/json, not {content_type}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_EVENT_BYTES):
        return problem(413, "oversized", f"a session event is at most {MAX_EVENT_BYTES} bytes (declared {declared})")
    return None


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (chunked uploads have no length to check)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def build_app(cfg: ServeConfig, model_version: str | None = None, features: dict | None = None,
              scoring: ScoringConfig = ScoringConfig()):
    """The Serve application for ``cfg``: placement, autoscaling and user_config from settings."""
    version = model_version or cfg.model_version or Registry(cfg.registry).champion()
    deployment = LanternScorer.options(
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        autoscaling_config=autoscaling_config(cfg),
        user_config=cfg.user_config(version),
    )
    # an absolute registry path: replicas may run with another working directory
    return deployment.bind(str(Path(cfg.registry).resolve()), version, cfg.device, cfg.half, features,
                           asdict(scoring), max(1, int(cfg.num_cpus)))


def autoscaling_config(cfg: ServeConfig) -> dict:
    """Serve's autoscaling_config for the scorer deployment, from settings."""
    return {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas, "initial_replicas": cfg.min_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests, "upscale_delay_s": cfg.upscale_delay_s,
            "downscale_delay_s": cfg.downscale_delay_s, "look_back_period_s": cfg.look_back_period_s,
            "metrics_interval_s": cfg.metrics_interval_s}


def app_builder(args: dict):
    """Serve config entry point (``import_path: ray_jobs.serve:app_builder``, e.g. a KubeRay
    RayService): ``args`` holds ServeConfig fields, plus ``features`` (FeatureStoreConfig fields;
    absent = no external context) and ``scoring`` (ScoringConfig fields: ``threshold``, absent = each
    version's tuned one; ``abstain_below``; ``max_clock_skew_s``). Unknown keys are an error."""
    args = dict(args)
    features, scoring = args.pop("features", None), config_from_args(ScoringConfig, args.pop("scoring", {}), "scoring")
    cfg = config_from_args(ServeConfig, args, "serve")
    if features is not None:
        features = feature_store_options(FeatureStoreConfig(**features))
    return build_app(cfg, features=features, scoring=scoring)


def deploy(cfg: ServeConfig, model_version: str | None = None, features: dict | None = None,
           scoring: ScoringConfig = ScoringConfig(), http: bool = True):
    """Start Serve (HTTP on ``cfg.http_host:http_port``) and run or update the app; returns its handle.
    Re-running with another version is a lightweight update: only user_config changes, replicas
    reconfigure in place."""
    if http:
        serve.start(http_options={"host": cfg.http_host, "port": cfg.http_port})
    else:
        serve.start(proxy_location="Disabled")
    return serve.run(build_app(cfg, model_version, features, scoring), name=cfg.app_name,
                     route_prefix="/" if http else None)


def running_replicas(app: str, deployment: str = "LanternScorer") -> int:
    """Replicas of ``deployment`` in app ``app`` that are running now (0 when the app is gone)."""
    application = serve.status().applications.get(app)
    if application is None or deployment not in application.deployments:
        return 0
    return int(application.deployments[deployment].replica_states.get("RUNNING", 0))


def feature_store_options(cfg) -> dict:
    """A FeatureStoreConfig as replica arguments (absolute repo path: replicas run elsewhere)."""
    return {**asdict(cfg), "repo": str(Path(cfg.repo).resolve())}


class ServeScorer:
    """What the Kafka consumer calls instead of a local BatchScorer: one handle call per micro-batch.
    ``submit`` sends a batch and returns at once (the consumer pipelines: it produces the previous
    batch's scores while the replica computes this one); ``score`` waits for it. A replica that
    dies mid-request fails that call (Serve does not retry): retried with backoff; after the last
    attempt the error propagates, nothing is committed, the batch is redelivered."""

    def __init__(self, handle, attempts: int = 4, backoff_s: float = 0.5):
        self.handle, self.attempts, self.backoff_s = handle, attempts, backoff_s
        self.retries = 0  # calls that failed and were tried again (replica deaths, back-pressure)

    def submit(self, records: list[Record]) -> PendingScore:
        return PendingScore(self, records)

    def score(self, records: list[Record]) -> ScoredBatch:
        return self.submit(records).result()


class PendingScore:
    """One micro-batch sent to the scorer app; :meth:`result` waits for it, retrying failed calls."""

    def __init__(self, scorer: ServeScorer, records: list[Record]):
        self.scorer, self.records = scorer, records
        self.response = scorer.handle.score.remote(records)

    def result(self) -> ScoredBatch:
        import time

        from ray.exceptions import RayError
        from ray.serve.exceptions import BackPressureError

        scorer = self.scorer
        for attempt in range(scorer.attempts):
            try:
                return self.response.result()
            except (RayError, BackPressureError):
                if attempt == scorer.attempts - 1:
                    raise
                scorer.retries += 1
                time.sleep(scorer.backoff_s * 2 ** attempt)
                self.response = scorer.handle.score.remote(self.records)
        raise AssertionError("unreachable")
