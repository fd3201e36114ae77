"""A real Prometheus (Debian's ``prometheus``) scrapes ``dockyard serve --workers 2``
through its separate metrics listener, configured from conf/prometheus.yml and loading
conf/prometheus-alerts.yml; skopeo pushes and pulls known images; every figure is read
back through Prometheus's query API and must be what the test caused: pushes counted
once (not once per worker), the images stored equal to what was pushed, the provoked 404
in the error counter. Then every PromQL expression of conf/grafana-dashboard.json and of
the alerting rules must return a series, and ``promtool check rules`` / ``check metrics``
must pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Skopeo, server_events, serving
from tests.imagegen import Image, OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer, free_port
from tests.tools import require_tool
from tests.webhook_receiver import Receiver, hook, webhooks_toml

pytestmark = pytest.mark.e2e

CONF = Path(__file__).resolve().parents[2] / "conf"
TIMEOUT = 30.0  # seconds for a figure to reach Prometheus (scrapes every second)


@dataclass
class Stack:
    dockyard: DockyardServer
    metrics_url: str  # the separate listener
    prometheus: str  # its base URL
    receiver: Receiver


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        doc = r.json()
        assert r.status_code == 200 and doc["status"] == "success", f"{expr}: {r.text}"
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one series' value, None without a series."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, expr: str, expected: float) -> None:
        """Wait until ``expr`` is ``expected`` (Prometheus scrapes every second)."""
        deadline = time.monotonic() + TIMEOUT
        got = self.value(expr)
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.25)
            got = self.value(expr)
        assert got == expected, f"{expr} = {got}, expected {expected}"


def prometheus_config(target: str, rules: Path) -> str:
    """conf/prometheus.yml with the test's target, 1 s intervals and the rules' path."""
    text = (CONF / "prometheus.yml").read_text()
    for old, new in (
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ('targets: ["127.0.0.1:5000"]', f'targets: ["{target}"]'),
        ("- prometheus-alerts.yml", f"- {json.dumps(str(rules))}"),
    ):
        assert old in text, f"conf/prometheus.yml no longer has {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    require_tool("skopeo")
    root = tmp_path_factory.mktemp("prometheus-e2e")
    receiver = Receiver().start()
    listen = f"127.0.0.1:{free_port()}"
    conf = root / "dockyard.toml"
    hooks = [
        hook("good", receiver.url + "/good"),
        # Nothing listens there: every attempt fails, and it never gives up.
        hook("dead", f"http://127.0.0.1:{free_port()}/", max_attempts=1000),
    ]
    conf.write_text(
        '[server]\ninstance = "prom-e2e"\n'
        f"[metrics]\nlisten = {json.dumps(listen)}\ninventory_cache = 0.5\n" + webhooks_toml(hooks)
    )
    server = DockyardServer(root / "data", workers=2, env={"DOCKYARD_CONFIG": str(conf)})
    web_port = free_port()
    (root / "prometheus.yml").write_text(prometheus_config(listen, CONF / "prometheus-alerts.yml"))
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        for _ in serving(server):
            proc = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={root / 'prometheus.yml'}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{web_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{web_port}"
                _wait_ready(url, proc, root / "prometheus.log")
                yield Stack(server, f"http://{listen}", url, receiver)
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        log.close()
        receiver.stop()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited:\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"prometheus did not become ready:\n{log.read_text()[-4000:]}")


def requests(operation: str, outcome: str = "success") -> str:
    """The requests counter of ``operation``, summed over workers."""
    return f'sum(dockyard_http_requests_total{{operation="{operation}", outcome="{outcome}"}})'


@dataclass
class Pushed:
    v1: Image
    v2: Image
    blobs: dict[str, int]  # every distinct blob pushed: digest -> size
    downloads_before_pull: float  # blob GETs counted before the pull (copies fetch configs)


@pytest.fixture(scope="module")
def traffic(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """Two images into e2e/app, one copied on to e2e/other, one pulled back out, a 404,
    an upload session left open."""
    skopeo = Skopeo(require_tool("skopeo"), stack.dockyard)
    layout = OCILayout(tmp_path_factory.mktemp("images") / "layout")
    base = make_layer(700, files=4, file_size=32 * 1024)
    v1 = layout.add_image("v1", build_image([base, *random_layers(701, 2)]))
    v2 = layout.add_image("v2", build_image([base, make_layer(710)]))
    skopeo.copy(layout.ref("v1"), skopeo.docker("e2e/app:v1"), "--preserve-digests")
    skopeo.copy(layout.ref("v2"), skopeo.docker("e2e/app:v2"), "--preserve-digests")
    skopeo.copy(skopeo.docker("e2e/app:v1"), skopeo.docker("e2e/other:v1"), "--preserve-digests")
    prom = Prometheus(stack.prometheus)
    prom.wait_for(requests("manifest_put"), 3)
    time.sleep(2.5)  # two more scrapes: everything before the pull is in
    downloads = prom.value(requests("blob_download")) or 0.0
    out = tmp_path_factory.mktemp("pulled")
    skopeo.copy(skopeo.docker("e2e/app:v1"), f"oci:{out}:v1")
    url = stack.dockyard.url
    assert httpx.post(f"{url}/v2/e2e/app/blobs/uploads/").status_code == 202
    blobs = {
        blob.digest: len(blob.data)
        for image in (v1, v2)
        for blob in (image.config, *(layer.blob for layer in image.layers))
    }
    return Pushed(v1, v2, blobs, downloads)


def test_figures_are_what_the_test_caused(stack: Stack, traffic: Pushed) -> None:
    prom = Prometheus(stack.prometheus)
    dockyard = stack.dockyard

    def requests(operation: str, outcome: str = "success") -> str:
        return f'sum(dockyard_http_requests_total{{operation="{operation}", outcome="{outcome}"}})'

    # Pushes: three manifests (v1, v2, v1 again into e2e/other), counted once across the
    # two workers (each worker's own count summed, not the sum once per worker).
    prom.wait_for(requests("manifest_put"), 3)
    prom.wait_for('sum(dockyard_database_call_duration_seconds_count{call="put_manifest"})', 3)
    prom.wait_for(
        'sum(dockyard_http_request_duration_seconds_count{route="manifests", method="PUT"})', 3
    )
    prom.wait_for(
        'sum(dockyard_http_request_duration_seconds_bucket{route="manifests", method="PUT",'
        ' le="60.0"})',
        3,
    )
    # Images stored: exactly what was pushed, each blob once.
    prom.wait_for("dockyard_repositories", 2)
    prom.wait_for("dockyard_tags", 3)
    prom.wait_for('dockyard_manifests{kind="image"}', 3)
    prom.wait_for('dockyard_manifests{kind="index"}', 0)
    prom.wait_for("dockyard_blobs", len(traffic.blobs))
    prom.wait_for("dockyard_blob_stored_bytes", sum(traffic.blobs.values()))
    prom.wait_for("dockyard_upload_sessions", 1)  # the one left open
    # Mounts (the copy into e2e/other) as the event log recorded them, and dedupe hits.
    events = server_events(dockyard)
    mounts = sum(1 for e in events if e.action == "mount")
    assert mounts > 0
    prom.wait_for(requests("mount"), mounts)
    prom.wait_for('sum(dockyard_dedupe_hits_total{kind="mount"})', mounts)
    head_hits = prom.value('sum(dockyard_dedupe_hits_total{kind="blob_head"})')
    assert head_hits is not None and head_hits >= 1  # v2's base layer was already there
    # Every blob upload that succeeded was one commit in storage.
    uploads = prom.value(requests("blob_upload"))
    assert uploads is not None and uploads >= len(traffic.blobs) - 1
    prom.wait_for(
        'sum(dockyard_storage_operation_duration_seconds_count{operation="commit_upload"})',
        uploads,
    )
    # The pull: config and three layers downloaded, at least their bytes sent.
    prom.wait_for(requests("blob_download"), traffic.downloads_before_pull + 4)
    v1_bytes = len(traffic.v1.config.data) + sum(len(x.blob.data) for x in traffic.v1.layers)
    sent = prom.value('sum(dockyard_http_sent_bytes_total{route="blobs"})')
    assert sent is not None and sent >= v1_bytes
    received = prom.value('sum(dockyard_http_received_bytes_total{route="uploads"})')
    assert received is not None and received >= sum(traffic.blobs.values()) - len(
        traffic.v1.config.data
    )

    # A 404 provoked now lands in the error counter, once.
    errors = 'sum(dockyard_http_errors_total{status="404", code="MANIFEST_UNKNOWN"})'
    time.sleep(2.5)  # two scrapes: whatever skopeo caused is in
    before = prom.value(errors) or 0.0
    assert httpx.get(f"{dockyard.url}/v2/e2e/app/manifests/nope").status_code == 404
    prom.wait_for(errors, before + 1)

    # Webhooks: "good" got every event, "dead" none (its backlog is the whole log).
    last = max(e.id for e in server_events(dockyard))
    prom.wait_for("dockyard_events_last_id", last)
    prom.wait_for('sum(dockyard_webhook_deliveries_total{endpoint="good"})', last)
    prom.wait_for('dockyard_webhook_backlog_events{endpoint="good"}', 0)
    prom.wait_for('dockyard_webhook_backlog_events{endpoint="dead"}', last)
    failed = prom.value('sum(dockyard_webhook_failed_attempts_total{endpoint="dead"})')
    assert failed is not None and failed >= 1
    assert len(stack.receiver.accepted_ids("/good")) >= last

    # Nothing dropped, nobody on the feed, no errors in the database or storage.
    prom.wait_for("sum(dockyard_pull_events_dropped_total)", 0)
    prom.wait_for("dockyard_feed_subscribers", 0)
    prom.wait_for("dockyard_feed_cutoffs_total", 0)
    prom.wait_for("dockyard_database_errors_total", 0)
    prom.wait_for("sum(dockyard_storage_errors_total)", 0)

    # Processes: two live workers, each with its own series; CPU summed.
    prom.wait_for("dockyard_workers", 2)
    prom.wait_for("dockyard_workers_configured", 2)
    prom.wait_for("count(dockyard_process_resident_memory_bytes)", 2)
    prom.wait_for("count(count by (pid) (dockyard_process_open_fds))", 2)
    cpu = prom.value("dockyard_process_cpu_seconds_total")
    assert cpu is not None and cpu > 0


def test_the_metrics_listener_serves_only_metrics(stack: Stack) -> None:
    assert httpx.get(f"{stack.metrics_url}/metrics").status_code == 200
    assert httpx.get(f"{stack.metrics_url}/v2/").status_code == 404
    assert httpx.get(f"{stack.metrics_url}/dashboard/").status_code == 404
    # ... and the main port does not serve metrics.
    assert httpx.get(f"{stack.dockyard.url}/metrics").status_code == 404
    assert httpx.get(f"{stack.dockyard.url}/v2/").status_code == 200


def dashboard_expressions() -> list[str]:
    doc = json.loads((CONF / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 30
    return exprs


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as a query for the last minute of every job."""
    return expr.replace("$__rate_interval", "1m").replace("$job", ".*")


def test_every_dashboard_expression_returns_a_series(stack: Stack, traffic: Pushed) -> None:
    prom = Prometheus(stack.prometheus)
    prom.wait_for("dockyard_repositories", 2)  # the traffic has been scraped
    time.sleep(3)  # and a few scrapes more: every rate has two samples
    empty = [e for e in dashboard_expressions() if not prom.query(grafana_to_promql(e))]
    assert not empty, f"no series for: {empty}"


# The one comparison each rule ends in (conf/prometheus-alerts.yml says so).
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s+(-?[0-9.]+)\s*$")


def evaluated_rules(url: str) -> list[dict[str, Any]]:
    """The rules Prometheus loaded, once each has been evaluated."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        doc = httpx.get(f"{url}/api/v1/rules", timeout=10).json()
        rules = [rule for g in doc["data"]["groups"] for rule in g["rules"]]
        if rules and all(rule["health"] != "unknown" for rule in rules):
            return rules
        assert time.monotonic() < deadline, f"rules not evaluated: {rules}"
        time.sleep(0.25)


def test_every_alert_rule_evaluates_and_returns_a_series(stack: Stack, traffic: Pushed) -> None:
    prom = Prometheus(stack.prometheus)
    prom.wait_for("dockyard_repositories", 2)
    time.sleep(3)
    rules = evaluated_rules(stack.prometheus)
    assert {rule["name"] for rule in rules} >= {
        "DockyardDown",
        "DockyardWorkerDown",
        "DockyardHighErrorRate",
        "DockyardSlowRequests",
        "DockyardWebhookBacklogGrowing",
        "DockyardDatabaseErrors",
        "DockyardStorageErrors",
    }
    unhealthy = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    for rule in rules:
        query = rule["query"]
        found = COMPARISON.search(query)
        assert found is not None, f"{rule['name']}: {query} does not end in a comparison"
        as_bool = f"{query[: found.start()]} {found.group(1)} bool {found.group(2)}"
        assert prom.query(as_bool), f"{rule['name']}: no series for {as_bool}"
    # A healthy registry fires none of them.
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert not firing


def test_promtool_passes_the_rules_and_a_scrape(stack: Stack, traffic: Pushed) -> None:
    promtool = require_tool("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(CONF / "prometheus-alerts.yml")],
        capture_output=True,
        check=False,
    )
    assert rules.returncode == 0, rules.stdout.decode() + rules.stderr.decode()
    scrape = httpx.get(f"{stack.metrics_url}/metrics").content
    assert b"dockyard_http_requests_total" in scrape
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, check=False
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
