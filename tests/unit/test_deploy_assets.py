"""The monitoring and deployment assets in deploy/ agree with the code.

Every ``churnwatch_*`` series that a Grafana panel or a Prometheus alert
queries is one the services really export, and every ``CHURNWATCH_*`` variable
that the Kubernetes manifests or docker-compose.yml set is a real settings
field. Importing the metric modules registers their metrics in the default
``prometheus_client`` registry; nothing connects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "churnwatch-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
YAML_FILES = [
    ROOT / "docker-compose.yml",
    DEPLOY / "prometheus" / "prometheus.yml",
    ALERTS,
    DEPLOY / "grafana" / "dashboards.yml",
    DEPLOY / "grafana" / "datasources" / "prometheus.yml",
    *K8S,
]

# The series a metric family is exposed as, by type: a Counter named ``x`` is
# scraped as ``x_total`` (never as bare ``x``), a Histogram as ``x_bucket``,
# ``x_sum`` and ``x_count``.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
METRIC = re.compile(r"(?<![\w:])churnwatch_[A-Za-z0-9_:]*")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SETTING = re.compile(r"CHURNWATCH_[A-Z0-9_]+")


def exported_metric_names() -> set[str]:
    import prometheus_client

    import services.ingest.metrics
    import services.notifier.metrics
    import services.scorer.api.app
    import services.scorer.metrics  # noqa: F401

    names: set[str] = set()
    for family in prometheus_client.REGISTRY.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def referenced_metrics(expr: str) -> set[str]:
    """``churnwatch_*`` identifiers in a PromQL expression, label values aside.

    >>> sorted(referenced_metrics('churnwatch_a_total{job="churnwatch_x"} / my_churnwatch_b'))
    ['churnwatch_a_total']
    """
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def dashboard_exprs() -> list[str]:
    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v.get("query") for v in dashboard.get("templating", {}).get("list", [])]
    return [*walk(dashboard["panels"]), *(q for q in variables if isinstance(q, str))]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def unknown_metrics(exprs: list[str], exported: set[str]) -> dict[str, set[str]]:
    found = {expr: referenced_metrics(expr) - exported for expr in exprs}
    return {expr: names for expr, names in found.items() if names}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_metric_names()


def test_the_check_catches_names_the_code_does_not_export(exported: set[str]) -> None:
    assert "churnwatch_scorer_events_total" in exported
    assert "churnwatch_ingest_produce_seconds_bucket" in exported
    bad = [
        "rate(churnwatch_scorer_events[5m])",  # a Counter without _total
        "churnwatch_ingest_produce_seconds",  # a Histogram without _bucket/_sum/_count
        "sum(rate(churnwatch_nobody_exports_this_total[5m]))",
    ]
    assert set(unknown_metrics(bad, exported)) == set(bad)


def test_dashboard_queries_use_exported_metrics(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    assert unknown_metrics(exprs, exported) == {}
    for backlog in ("churnwatch_scorer_consumer_lag", "churnwatch_notifier_consumer_lag"):
        assert any(backlog in expr for expr in exprs), backlog


def test_alert_rules_use_exported_metrics(exported: set[str]) -> None:
    exprs = [rule["expr"] for rule in alert_rules()]
    assert unknown_metrics(exprs, exported) == {}


def test_alert_rules_cover_the_pipeline() -> None:
    rules = alert_rules()
    text = " ".join(rule["expr"] for rule in rules)
    for needle in (
        "kafka_consumergroup_lag",
        "churnwatch_scorer_event_time_lag_seconds",
        "sum(churnwatch_scorer_consumer_lag)",
        "sum(churnwatch_notifier_consumer_lag)",
        "churnwatch_scorer_dead_letters_total",
        "churnwatch_notifier_dead_letters_total",
        'status="failed"',
        'churnwatch_model_quality{metric="roc_auc"} < 0.65',
        "sum(increase(churnwatch_scorer_alerts_total[1h])) > 50",
        "churnwatch_model_checkpoint_age_seconds > 900",
        "churnwatch_ingest_unavailable_total",
        'up{job="churnwatch-scorer"} == 0',
    ):
        assert needle in text
    for rule in rules:
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}


def test_prometheus_scrapes_the_four_services_and_loads_the_rules() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "churnwatch-ingest": ["ingest:8000"],
        "churnwatch-api": ["api:8001"],
        "churnwatch-scorer": ["scorer:8002"],
        "churnwatch-notifier": ["notifier:8003"],
    }


def test_dashboard_is_provisionable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 39
    variable = dashboard["templating"]["list"][0]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    provider = yaml.safe_load((DEPLOY / "grafana" / "dashboards.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_compose_wires_grafana_to_its_prometheus_and_kafka_to_host_and_containers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["grafana"]["volumes"])
    assert mounts["./deploy/grafana/datasources"] == "/etc/grafana/provisioning/datasources"
    source = yaml.safe_load((DEPLOY / "grafana" / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = source["datasources"]
    port = compose["prometheus"]["ports"][0].split(":")[-1]
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", f"http://prometheus:{port}")

    kafka = compose["kafka"]["environment"]
    advertised = dict(x.split("://") for x in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    # The host's CLI (the local stack's default bootstrap) and the containers' bootstrap.
    assert advertised["HOST"] == "127.0.0.1:19092"
    assert compose["kafka"]["ports"] == ["19092:19092"]
    bootstrap = compose["ingest"]["environment"]["CHURNWATCH_KAFKA_BOOTSTRAP"]
    assert bootstrap in advertised.values() and bootstrap.startswith("kafka:")


def test_every_yaml_asset_parses() -> None:
    for path in YAML_FILES:
        assert list(yaml.safe_load_all(path.read_text())), path


def settings_env_names() -> set[str]:
    from services.common.settings import CommonSettings
    from services.ingest.config import IngestSettings
    from services.notifier.config import NotifierSettings
    from services.scorer.config import ApiSettings, ScorerSettings

    classes = (CommonSettings, IngestSettings, ScorerSettings, ApiSettings, NotifierSettings)
    return {"CHURNWATCH_" + name.upper() for cls in classes for name in cls.model_fields}


def env_names_set(node: Any) -> Iterator[str]:
    """CHURNWATCH_* names a manifest sets: mapping keys, ``env[].name``, ``KEY=value`` items."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and SETTING.fullmatch(key):
                yield key
            if key == "name" and isinstance(value, str) and SETTING.fullmatch(value):
                yield value
            yield from env_names_set(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str) and (m := re.match(r"(CHURNWATCH_[A-Z0-9_]+)=", item)):
                yield m.group(1)
            yield from env_names_set(item)


@pytest.mark.parametrize("path", [ROOT / "docker-compose.yml", *K8S], ids=lambda p: p.name)
def test_env_variables_are_real_settings(path: Path) -> None:
    names = {n for doc in yaml.safe_load_all(path.read_text()) for n in env_names_set(doc)}
    assert names - settings_env_names() == set()


def k8s_docs() -> list[dict[str, Any]]:
    docs = (doc for path in K8S for doc in yaml.safe_load_all(path.read_text()) if doc)
    return [doc for doc in docs if "metadata" in doc]  # not kustomization.yaml


def test_k8s_workloads_are_wired_to_the_config_and_secret() -> None:
    docs = k8s_docs()
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by_kind[("ConfigMap", "churnwatch-config")]["data"]
    assert config["CHURNWATCH_ENV"] == "production"
    secret_keys = set(by_kind[("Secret", "churnwatch-secrets")]["stringData"])
    workloads = {
        name: d for (kind, name), d in by_kind.items() if kind in {"Deployment", "StatefulSet"}
    }
    assert set(workloads) == {"ingest", "api", "scorer", "notifier"}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "churnwatch-config"}}]
        refs = [
            e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert {r["key"] for r in refs} <= secret_keys, name
        ports = {p["containerPort"] for p in container["ports"]}
        assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) in ports, name
        if name in {"ingest", "api"}:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert ("Service", name) in by_kind
    scorer_env = {
        e["name"]: e
        for e in workloads["scorer"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    worker_name = scorer_env["CHURNWATCH_SCORER_WORKER_NAME"]["valueFrom"]["fieldRef"]
    assert worker_name["fieldPath"] == "metadata.name"
    hpa = by_kind[("HorizontalPodAutoscaler", "scorer")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "scorer"
    # Replicas beyond the partition count would idle.
    assert hpa["maxReplicas"] <= int(config["CHURNWATCH_TOPIC_PARTITIONS"])
