"""The images' health check and the Grafana dashboard, against a real agent's endpoints.

An agent (fake runtime, one model) runs in a thread; the health check script probes its live
and ready endpoints as the images' HEALTHCHECK does. Every PromQL expression of the dashboard
must parse (promql-parser), and every metric it names must be among the series the agent's
/metrics actually exposes, every label among those the agent sets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import load_settings
from agent.runtimes.registry import RuntimeRegistry
from tests.agent.fakes import FakeRuntime, write_fake_model
from tests.agent.harness import AgentThread
from tests.deploy.deploy_files import (
    DEPLOY,
    load_documents,
)

HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"
DASHBOARD = DEPLOY / "grafana" / "edgefleet-agent.json"


@dataclass(frozen=True)
class ScrapedAgent:
    """A running agent's port and the names of the series its /metrics exposes."""

    port: int
    series: frozenset[str]


@pytest.fixture(scope="module")
def scraped_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedAgent]:
    """An agent serving one fake model, after one inference, and its scraped /metrics."""
    directory = tmp_path_factory.mktemp("agent")
    model = write_fake_model(directory / "m.fake")
    overrides: dict[str, dict[str, Any]] = {
        "": {"state_dir": str(directory / "state")},
        "selection": {"budget_s": 0.05},
    }
    settings = load_settings(None, {}, overrides, {"m": {"paths": [str(model)]}})
    agent = AgentThread(settings, RuntimeRegistry([FakeRuntime()])).start(timeout=60)
    try:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
        request = urllib.request.Request(
            f"http://{agent.url}/v2/models/m/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://{agent.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        series = frozenset(
            sample.name
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )
        yield ScrapedAgent(agent.port, series)
    finally:
        agent.stop()


def healthcheck(port: int, path: str) -> subprocess.CompletedProcess[str]:
    """Run the images' health check as their HEALTHCHECK does, the port from the variable."""
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--port-env", "PROBE_PORT", "--port", "1", path],
        env={**os.environ, "PROBE_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_healthcheck_tells_healthy_from_not(scraped_agent: ScrapedAgent) -> None:
    assert healthcheck(scraped_agent.port, "/v2/health/live").returncode == 0
    assert healthcheck(scraped_agent.port, "/v2/health/ready").returncode == 0
    missing = healthcheck(scraped_agent.port, "/v2/health/nothing")
    assert missing.returncode == 1
    assert "404" in missing.stderr
    closed = healthcheck(9, "/v2/health/live")  # discard port: nothing listens
    assert closed.returncode == 1
    assert "unhealthy" in closed.stderr


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


@dataclass(frozen=True)
class QueryParts:
    """What a dashboard's PromQL refers to, read from the parsed expressions."""

    metrics: frozenset[str]
    labels: frozenset[str]  # in matchers, `by (...)` and label_values()


# Grafana replaces these before Prometheus sees a query; any valid stand-in parses the same.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*", "$model": ".*"}
GRAFANA_VARIABLES |= {"$version": ".*", "$backend": ".*"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*), *(?P<label>\w+)\)$")


def dashboard_queries() -> QueryParts:
    """Parse every PromQL expression of the dashboard (panels and variables) with a parser."""
    board = dashboard()
    expressions = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    labels: set[str] = set()
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":  # Grafana's label_values(SELECTOR, LABEL)
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match is not None, variable["query"]["query"]
            expressions.append(match["selector"])
            labels.add(match["label"])
    metrics: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            metrics.add(node.name or "")
            labels.update(m.name for m in node.matchers.matchers)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)

    for expression in expressions:
        for variable, stand_in in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, stand_in)
        try:
            tree = promql_parser.parse(expression)
        except ValueError as error:
            raise AssertionError(f"not PromQL: {expression}: {error}") from None
        promql_parser.walk(tree, visit)
    return QueryParts(frozenset(metrics), frozenset(labels))


def test_dashboard_queries_only_metrics_the_agent_exports(scraped_agent: ScrapedAgent) -> None:
    used = dashboard_queries().metrics
    assert used - scraped_agent.series == set()
    # Request rate, failures by reason, latency, queue vs compute, batches, pending, readiness.
    assert {
        "edgefleet_inference_request_success_total",
        "edgefleet_inference_request_failure_total",
        "edgefleet_inference_request_latency_seconds_bucket",
        "edgefleet_inference_queue_duration_us_total",
        "edgefleet_inference_compute_infer_duration_us_total",
        "edgefleet_inference_batch_size_bucket",
        "edgefleet_inference_pending_request_count",
        "edgefleet_model_ready",
    } <= used


def test_dashboard_uses_only_labels_the_agent_sets() -> None:
    # The agent's labels (agent/server/metrics.py), the histogram's, and Prometheus' target.
    known = {"model", "version", "backend", "reason", "le", "instance"}
    assert dashboard_queries().labels <= known


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
    (provider,) = load_documents(
        DEPLOY / "grafana" / "provisioning" / "dashboards" / "edgefleet.yaml"
    )
    assert provider["providers"][0]["options"]["path"].startswith("/var/lib/grafana/dashboards")
