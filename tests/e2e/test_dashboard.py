"""envoy/grafana-dashboard.json queries only metrics and labels that Envoy
really exposes: the filter in real Envoy (stats_tags as in envoy/envoy.yaml),
a few requests with failures, then every metric name and label in the
dashboard's PromQL is looked up in /stats/prometheus."""

from __future__ import annotations

import json
import re
import time

from harness import ROOT, envoy_config

DASHBOARD = ROOT / "envoy" / "grafana-dashboard.json"

# Metric families of the filter and of Envoy itself, as /stats/prometheus names them.
METRIC_RE = re.compile(r"\b(?:llm_failover|envoy)_[A-Za-z0-9_:]*")
SELECTOR_RE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
LABEL_VALUES_RE = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)")
# Labels Prometheus adds to every series when it scrapes a target.
SCRAPE_LABELS = {"instance", "job"}
# The labels the shipped stats_tags make, which the dashboard must use.
TAG_LABELS = {"vendor", "reason", "error_type", "unit"}


def exposition(text: str) -> dict[str, list[dict[str, str]]]:
    """/stats/prometheus -> {metric name: [labels of each sample]}."""
    out: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+", line)
        assert m, f"unparsable exposition line {line!r}"
        labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append(labels)
    return out


def walk(node, key: str):
    """Every value stored under `key` anywhere in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(dashboard: dict) -> list[dict]:
    """Each PromQL query: its expression and, for panel targets, its legend."""
    qs = []
    for panel in all_panels(dashboard):
        for t in panel.get("targets", []):
            qs.append({"where": f"panel {panel['title']!r} target {t.get('refId')}", "expr": t["expr"],
                       "legend": t.get("legendFormat", "")})
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            qs.append({"where": f"variable ${var['name']}", "expr": q, "legend": ""})
    return qs


def stats_tags_of_envoy_yaml() -> list[tuple[str, str]]:
    """(tag_name, regex) of envoy/envoy.yaml's stats_config, read as text."""
    text = (ROOT / "envoy" / "envoy.yaml").read_text()
    return re.findall(r"-\s*tag_name:\s*(\w+)\s*\n\s*regex:\s*'([^']*)'", text)


def test_harness_uses_the_shipped_stats_tags():
    shipped = stats_tags_of_envoy_yaml()
    assert [t for t, _ in shipped] == ["vendor", "reason", "error_type", "unit"]
    harness_tags = envoy_config({}, {"anthropic": 1})["stats_config"]["stats_tags"]
    assert [(t["tag_name"], t["regex"]) for t in harness_tags] == shipped


def test_dashboard_shape():
    d = json.loads(DASHBOARD.read_text())
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["vendor"]["type"] == "query"
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels(d):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        uids = {ds["uid"] for ds in walk(panel, "datasource") if isinstance(ds, dict)}
        assert uids == {"${datasource}"}, f"panel {panel['title']!r} must use the $datasource variable"
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    assert any(p["type"] == "state-timeline" and "llm_failover_vendor_state" in p["targets"][0]["expr"]
               for p in all_panels(d))


def test_dashboard_metrics_and_labels_exist_in_envoy(make_envoy, vendors, client_for):
    started = time.monotonic()
    e = make_envoy(rescue={"max_attempts": 3})
    c = client_for(e)
    for _ in range(3):
        assert c.chat()[0] == 200
    # One failure by status, one in-stream error (for the error_type label);
    # each rescued by the next vendor.
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    status, headers, _ = c.chat()
    assert status == 200 and headers["x-llm-failover-vendor"] == "openai"
    vendors.set_fault("anthropic", mode="stream_error", events=0, count=1)  # before any content
    status, headers, _ = c.chat(stream=True)
    assert status == 200 and headers["x-llm-failover-vendor"] == "openai"
    time.sleep(0.5)  # past a refresh_interval (200 ms): the gauges are set

    exposed = exposition(e.prometheus())
    labels_of = {name: set().union(*(s.keys() for s in samples)) for name, samples in exposed.items()}
    assert {s["vendor"] for s in exposed["llm_failover_vendor_state"]} == {"anthropic", "openai", "xai"}
    assert {"vendor": "anthropic", "reason": "status"} in exposed["llm_failover_vendor_failures_by_reason"]
    assert {"vendor": "anthropic", "error_type": "server_error"} in exposed["llm_failover_vendor_stream_errors"]

    d = json.loads(DASHBOARD.read_text())
    used_metrics: set[str] = set()
    used_labels: set[str] = set()
    problems: list[str] = []
    for q in queries(d):
        expr, where = q["expr"], q["where"]
        metrics = set(METRIC_RE.findall(expr))
        if not metrics:
            problems.append(f"{where}: no llm_failover_/envoy_ metric in {expr!r}")
        for m in sorted(metrics):
            if m not in exposed:
                problems.append(f"{where}: metric {m} is not in /stats/prometheus")
        used_metrics |= metrics
        # Label matchers: the label must be on that metric.
        for metric, matchers in SELECTOR_RE.findall(expr):
            for label in MATCHER_RE.findall(matchers):
                used_labels.add(label)
                if label not in labels_of.get(metric, set()):
                    problems.append(f"{where}: {metric} has no label {label!r}")
        # Grouping and legends: the label must be on a metric of the query
        # (or added by Prometheus at scrape time).
        grouped = {l.strip() for g in GROUPING_RE.findall(expr) for l in g.split(",") if l.strip()}
        grouped |= set(LEGEND_RE.findall(q["legend"]))
        for metric, label in LABEL_VALUES_RE.findall(expr):
            grouped.add(label)
            if label not in labels_of.get(metric, set()):
                problems.append(f"{where}: label_values of {metric}: no label {label!r}")
        for label in grouped - SCRAPE_LABELS:
            used_labels.add(label)
            if not any(label in labels_of.get(m, set()) for m in metrics):
                problems.append(f"{where}: no metric of {sorted(metrics)} has label {label!r}")
    assert not problems, "\n".join(problems)
    assert TAG_LABELS <= used_labels, f"labels never used: {sorted(TAG_LABELS - used_labels)}"

    # Every stat the filter exposes has a place on the dashboard.
    missing = sorted(n for n in exposed if n.startswith("llm_failover_") and n not in used_metrics)
    assert not missing, f"filter stats not on the dashboard: {missing}"
    assert time.monotonic() - started < 20
