"""`lantern status` against a real broker, a real Feast store and a registry; no Ray cluster at the
address it is given (a free port: other tests' Ray clusters on this machine are not its business)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from app.status import _refuses_connections, serve_status
from devtools.broker import launch_broker
from devtools.servers import free_port
from streaming.kafka_io import KafkaConfig, ensure_topics, replay, run_group
from streaming.loop import LoopOptions
from tests.features.conftest import recent_ds, sqlite_store  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.slow


def test_status_shows_topics_lag_store_registry_and_exits_6_without_serve(sqlite_store, tmp_path):  # noqa: F811
    from model.registry import Registry

    _, feast_cfg = sqlite_store
    tag = uuid.uuid4().hex[:8]
    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP")) as broker:
        cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                          dlq_topic=f"dlq-{tag}", group_id=f"lantern-scorer-{tag}", partitions=2)
        ensure_topics(cfg)
        replay(cfg, [(b"k", b"v%d" % i) for i in range(10)], progress=False)
        # the idle clock runs through the group join, which is slow on a busy machine: wait long enough
        assert run_group(cfg, cfg.group_id, lambda records: None, opts=LoopOptions(max_events=10, idle_exit_s=60)) == 10
        env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap, "LANTERN_KAFKA__INPUT_TOPIC": cfg.input_topic,
               "LANTERN_KAFKA__SCORES_TOPIC": cfg.scores_topic, "LANTERN_KAFKA__DLQ_TOPIC": cfg.dlq_topic,
               "LANTERN_FEATURES__REPO": str(feast_cfg.repo), "COLUMNS": "220"}
        env["RAY_ADDRESS"] = f"127.0.0.1:{free_port()}"
        run = subprocess.run([sys.executable, "-m", "app.cli", "status", "--registry", str(tmp_path / "reg")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 6, run.stdout + run.stderr  # no champion, no Ray: down, said so
    text = run.stdout
    assert f"in-{tag}" in text and "2 partitions" in text and "records" in text
    assert cfg.group_id in text and "lag 0 " in text  # consumed all 10 and committed
    assert "lantern_v1" in text and "materialized up to" in text
    assert "no versions" in text and f"no Ray cluster at {env['RAY_ADDRESS']}" in text
    assert Registry(tmp_path / "reg").versions() == []


def test_serve_status_of_an_address_nobody_listens_on_says_so_without_waiting_for_ray():
    address = f"127.0.0.1:{free_port()}"
    for given in (address, f"ray://{address}"):  # ray.init alone retries such an address for minutes
        section = serve_status(given, "lantern")
        assert not section["ok"] and section["detail"].startswith(f"no Ray cluster at {given}: "), section


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_an_address_that_takes_connections_goes_on_to_ray(host, family):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine: the [host]:port notation is not exercised")
    with socket.create_server((host, 0), family=family) as listening:
        port = listening.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        for given in (f"{shown}:{port}", f"ray://{shown}:{port}"):
            assert _refuses_connections(given) is None, given
    assert _refuses_connections("auto") is None  # ray.init resolves it itself
