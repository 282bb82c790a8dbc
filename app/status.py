"""`lantern status`: broker, topics and consumer lag, Feast store, Ray Serve app, model version.

Each probe returns a section: ``{"ok": bool, "detail": str, "rows": [...]}``, never raises for a
component that is down (that is what status is for). Exit code 6 when any probe is not ok.
"""

from __future__ import annotations

import socket
from pathlib import Path

from lantern.settings.kafka import KafkaConfig

KNOWN_GROUPS = ("lantern-scorer", "lantern-score-sink", "lantern-archive")


def _section(ok: bool, detail: str, rows: list | None = None) -> dict:
    return {"ok": ok, "detail": detail, "rows": rows or []}


def kafka_status(cfg: KafkaConfig, timeout_ms: int = 3000) -> dict:
    """Topics (partitions, records) and every lantern consumer group's lag."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.errors import KafkaError

    from streaming.kafka_io import topic_partitions
    from streaming.partitions import log_ends

    try:
        admin = KafkaAdminClient(request_timeout_ms=timeout_ms, **cfg.client_options())
    except (KafkaError, OSError, ValueError) as exc:
        return _section(False, f"broker {cfg.bootstrap} unreachable: {exc}")
    consumer = KafkaConsumer(request_timeout_ms=max(timeout_ms, 3001), **cfg.client_options())
    try:
        rows, ends = [], {}
        topics = [t for t in (cfg.input_topic, cfg.scores_topic, cfg.dlq_topic) if t in consumer.topics()]
        for topic in topics:
            parts = topic_partitions(consumer, topic)
            ends.update(log_ends(consumer, parts))  # high watermarks: right on the embedded broker too
            starts = consumer.beginning_offsets(parts)
            records = sum(ends[tp] - starts[tp] for tp in parts)
            rows.append(("topic", topic, f"{len(parts)} partitions, {records:,} records"))
        for group in _groups(admin):
            committed = admin.list_group_offsets(group).get(group, {})
            mine = {tp: om.offset for tp, om in committed.items() if tp in ends and om.offset >= 0}
            if not mine:
                continue
            on = ", ".join(sorted({tp.topic for tp in mine}))
            rows.append(("group", group, f"lag {sum(ends[tp] - off for tp, off in mine.items()):,} on {on}"))
        missing = {cfg.input_topic, cfg.scores_topic, cfg.dlq_topic} - set(topics)
        detail = f"{cfg.bootstrap}" + (f"; topics not created yet: {', '.join(sorted(missing))}" if missing else "")
        return _section(True, detail, rows)
    except (KafkaError, OSError) as exc:
        return _section(False, f"broker {cfg.bootstrap}: {exc}")
    finally:
        consumer.close()
        admin.close()


def _groups(admin) -> list[str]:
    from kafka.errors import KafkaError

    try:
        listed = [g["group_id"] for g in admin.list_groups()]
    except (KafkaError, KeyError):  # a broker without ListGroups: ask for the groups lantern creates
        listed = []
    return sorted(set(listed) | set(KNOWN_GROUPS))


def feast_status(cfg) -> dict:
    """The feature repo's views and services, and each source view's last materialization."""
    from features.store import open_store

    registry = Path(cfg.repo) / ".feast" / "registry.db"
    if not registry.exists():
        return _section(False, f"{cfg.repo}: not applied yet (lantern features apply --data DIR)")
    try:
        store = open_store(cfg)
        rows = []
        for view in sorted(store.list_feature_views(), key=lambda v: v.name):
            done = [i[1] for i in view.materialization_intervals]
            rows.append(("view", view.name, f"materialized up to {max(done):%Y-%m-%d %H:%M}" if done
                         else "online via push"))
        services = ", ".join(sorted(s.name for s in store.list_feature_services()))
        return _section(True, f"{cfg.repo} ({cfg.online} online store); services: {services}", rows)
    except Exception as exc:  # a broken repo or an unreachable online store is a status, not a crash
        return _section(False, f"{cfg.repo}: {exc}")


def registry_status(registry_root: Path) -> dict:
    from model.registry import Registry

    reg = Registry(registry_root)
    versions = reg.versions()
    if not versions:
        return _section(False, f"{registry_root}: no versions (lantern register / lantern retrain)")
    champion = reg.champion()
    rows = [("version", v, ", ".join(f"{k} {x:.4f}" for k, x in reg.info(v).metrics.items())
             + ("  ← champion" if v == champion else "")) for v in versions[-5:]]
    decisions = reg.decisions()
    if decisions:
        last = decisions[-1]
        rows.append(("last decision", last.action, f"{'accepted' if last.accepted else 'refused'}: {last.reason}"))
    return _section(champion is not None, f"{registry_root}: champion {champion or 'none'}", rows)


def _refuses_connections(address: str, timeout_s: float = 2.0) -> str | None:
    """Why ``[ray://]host:port`` takes no TCP connection, or None (it does, or the address is one
    ``ray.init`` resolves itself, such as ``auto``). ``ray.init`` retries a GCS that is not there
    for minutes; status answers in seconds."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()  # [::1]:6379 too
    except OSError as exc:
        return exc.strerror or repr(exc)
    return None


def serve_status(address: str | None, app_name: str, timeout_s: float = 10.0) -> dict:
    """The Serve applications on the Ray cluster at ``address`` and the version the scorer serves."""
    from ray import serve

    from ray_jobs.cluster import connect, stop

    refused = address and _refuses_connections(address)
    if refused:
        return _section(False, f"no Ray cluster at {address}: {refused}")
    try:
        connect(address or "auto", logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return _section(False, f"no Ray cluster at {address or 'auto'}: {exc}")
    try:
        apps = serve.status().applications
        rows = [("app", name, f"{app.status.value}; " + ", ".join(
            f"{d}: {ds.status.value} {sum(ds.replica_states.values())} replicas" for d, ds in app.deployments.items()))
            for name, app in sorted(apps.items())]
        if app_name not in apps:
            return _section(False, f"Serve app {app_name!r} is not running", rows)
        info = serve.get_app_handle(app_name).info.remote().result(timeout_s=timeout_s)
        rows.append(("serving", info["model_version"], f"device {info['device']}"))
        return _section(apps[app_name].status.value == "RUNNING", f"Ray at {address or 'auto'}", rows)
    except Exception as exc:
        return _section(False, f"Serve on {address or 'auto'}: {exc}")
    finally:
        stop()
