"""Every manifest in deploy/ loads, and everything it names exists in the code: import paths,
deployment names, builder args, user_config keys, CLI commands and flags, settings keys, topics."""

from __future__ import annotations

import importlib
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
import typer.main
import yaml

from app.cli import app as cli_app
from lantern.settings import load_settings
from lantern.settings.features import PACKAGE_REPO, FeatureStoreConfig
from lantern.settings.kafka import DLQ_TOPIC, INPUT_TOPIC, SCORES_TOPIC, KafkaConfig
from lantern.settings.scoring import ScoringConfig
from lantern.settings.serve import ServeConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMMANDS = typer.main.get_command(cli_app).commands


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def kind(name: str, k: str) -> list[dict]:
    return [d for d in docs(name) if d["kind"] == k]


@pytest.fixture(scope="module")
def serve_config() -> dict:
    (service,) = kind("kuberay/rayservice.yaml", "RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def apps(serve_config) -> dict:
    return {a["name"]: a for a in serve_config["applications"]}


@pytest.fixture(scope="module")
def topics() -> dict:
    return {d["metadata"]["name"]: d["spec"] for d in kind("kafka/topics.yaml", "KafkaTopic")}


def test_every_manifest_parses_with_api_version_and_kind():
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.parent.name != "feast")
    assert {p.relative_to(DEPLOY).as_posix() for p in files} == {
        "kuberay/rayservice.yaml", "kuberay/rayjob-retrain.yaml", "kafka/topics.yaml", "kubernetes.yaml"}
    for path in files:
        for d in docs(path.relative_to(DEPLOY).as_posix()):
            assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), path


def test_serve_config_is_valid_for_this_ray(serve_config):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config)  # Ray's own schema: field names and types


def _imported(import_path: str):
    module, attr = import_path.split(":")
    return getattr(importlib.import_module(module), attr)


def test_each_app_builds_from_its_import_path_and_names_its_deployments(apps):
    for app in apps.values():
        built = _imported(app["import_path"])(app["args"])
        assert {d["name"] for d in app["deployments"]} == {built._bound_deployment.name}, app["name"]


def test_scorer_app_args_and_user_config_match_the_code(apps):
    scorer = apps["lantern"]
    args = dict(scorer["args"])
    FeatureStoreConfig(**args.pop("features"))  # every key a FeatureStoreConfig field
    scoring = ScoringConfig(**args.pop("scoring"))  # every key a ScoringConfig field
    assert scoring.threshold is None  # each version's tuned threshold, not one pinned for all
    assert 0 <= scoring.abstain_below < 1 and scoring.max_clock_skew_s > 0
    assert set(args) <= {f.name for f in fields(ServeConfig)}
    (dep,) = scorer["deployments"]
    user_config = dep["user_config"]
    assert set(user_config) == set(ServeConfig().user_config(None))  # what reconfigure reads
    ServeConfig(max_batch_size=user_config["max_batch_size"], max_ongoing_requests=dep["max_ongoing_requests"])
    assert dep["ray_actor_options"]["num_gpus"] >= 1 and dep["autoscaling_config"]["max_replicas"] > 1


def test_scorer_app_rejects_unknown_args(apps):
    from lantern.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown serve settings"):
        _imported(apps["lantern"]["import_path"])({**apps["lantern"]["args"], "max_batch_sise": 4})


def test_consumers_match_the_topics_and_the_scorer_app(apps, topics):
    consumers = apps["lantern-consumers"]
    args = dict(consumers["args"])
    assert args.pop("scorer_app") in apps
    cfg = KafkaConfig(**args)
    assert (cfg.input_topic, cfg.scores_topic, cfg.dlq_topic) == (INPUT_TOPIC, SCORES_TOPIC, DLQ_TOPIC)
    assert set(topics) == {INPUT_TOPIC, SCORES_TOPIC, DLQ_TOPIC}
    assert cfg.partitions == topics[INPUT_TOPIC]["partitions"] == topics[SCORES_TOPIC]["partitions"]
    (dep,) = consumers["deployments"]
    assert dep["num_replicas"] <= topics[INPUT_TOPIC]["partitions"]  # more would sit idle
    assert topics[DLQ_TOPIC]["config"]["retention.ms"] >= topics[INPUT_TOPIC]["config"]["retention.ms"]


def test_rayservice_has_gpu_worker_group_and_autoscaling():
    (service,) = kind("kuberay/rayservice.yaml", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    gpu = [g for g in cluster["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and gpu[0]["maxReplicas"] > 1 and gpu[0]["maxReplicas"] >= gpu[0]["minReplicas"]


def _check_cli(argv: list[str]) -> None:
    """``argv`` (after the program) names a lantern command and only flags it has."""
    command = COMMANDS[argv[0]]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in argv[1:]:
        if token.startswith("--"):
            assert token in known, f"lantern {argv[0]} has no {token}"


def _env_settings(monkeypatch, env: dict):
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


def test_rayjob_entrypoint_and_env_exist_in_the_code(monkeypatch):
    (job,) = kind("kuberay/rayjob-retrain.yaml", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lantern", "retrain"]  # the image's console script
    _check_cli(argv[1:])
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    s = _env_settings(monkeypatch, env)
    assert str(s.serve.registry) == env["LANTERN_SERVE__REGISTRY"] and s.features.online == "redis"
    workers = int(argv[argv.index("--workers") + 1])
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == workers and "--gpu" in argv
    assert "nvidia.com/gpu" in group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_kubernetes_consumers_run_real_commands_with_real_settings(monkeypatch, apps):
    (config_map,) = kind("kubernetes.yaml", "ConfigMap")
    env = {k: v for k, v in config_map["data"].items() if k.startswith("LANTERN_")}
    s = _env_settings(monkeypatch, env)
    assert s.features.redis == apps["lantern"]["args"]["features"]["redis"]
    assert config_map["data"]["KAFKA_BOOTSTRAP"] == apps["lantern-consumers"]["args"]["bootstrap"]
    for deployment in kind("kubernetes.yaml", "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][0] == "lantern"
        _check_cli(container["command"][1:])


def test_feast_yaml_is_a_valid_redis_repo_config_matching_the_apps(apps):
    from feast.repo_config import RepoConfig

    raw = yaml.safe_load((DEPLOY / "feast" / "feature_store.yaml").read_text())
    config = RepoConfig(repo_path=DEPLOY / "feast", **raw)
    assert config.online_store.type == "redis"
    assert raw["online_store"]["connection_string"] == apps["lantern"]["args"]["features"]["redis"]
    assert raw["project"] == yaml.safe_load((PACKAGE_REPO / "feature_store.yaml").read_text())["project"]


def test_dockerfile_copies_every_package():
    import tomllib

    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY {package} {package}" in dockerfile, package


def test_prometheus_scrapes_ray_and_lantern_metrics_where_they_are_served(monkeypatch):
    """Every Ray pod exports Ray's endpoint (Serve replicas' lantern metrics included) on the port its
    scrape annotation names; every plain consumer serves lantern's metrics on its annotated port."""
    (service,) = kind("kuberay/rayservice.yaml", "RayService")
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        port = group["rayStartParams"]["metrics-export-port"]
        template = group["template"]
        assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": port}
        (container,) = template["spec"]["containers"]
        assert {"containerPort": int(port), "name": "metrics"} in container["ports"]
    (config_map,) = kind("kubernetes.yaml", "ConfigMap")
    s = _env_settings(monkeypatch, {k: v for k, v in config_map["data"].items() if k.startswith("LANTERN_")})
    assert s.metrics.host == "0.0.0.0" and s.metrics.port
    for deployment in kind("kubernetes.yaml", "Deployment"):
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(s.metrics.port)
        (container,) = template["spec"]["containers"]
        assert {"containerPort": s.metrics.port, "name": "metrics"} in container["ports"]
        assert "--metrics-port" not in container["command"]  # the port comes from the settings
