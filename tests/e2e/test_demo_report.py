"""scripts/demo_report.py (`make demo-report`) as a short scripted outage: its
data must tell the failover as it happened (the data, not the pixels)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from harness import ROOT

SECONDS, OUTAGE_START, OUTAGE_END = 12, 4, 8
# Short ejections, so the preferred vendor returns inside the short run: the
# 4 s outage ejects it for 1 s, then for 2 s after each failed probe.
EJECTION_BASE, EJECTION_MAX = "1s", "2s"


def seconds_of(duration: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)", duration)
    assert m, duration
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def test_demo_report_short_outage(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo_report.py"),
           "--seconds", str(SECONDS), "--outage-start", str(OUTAGE_START), "--outage-end", str(OUTAGE_END),
           "--ejection-base", EJECTION_BASE, "--ejection-max", EJECTION_MAX,
           "--out", str(out), "--workdir", str(tmp_path / "work")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"

    data = json.loads((out / "failover-timeline.json").read_text())
    cfg, seconds, summary = data["config"], data["seconds"], data["summary"]
    preferred = cfg["preferred"]
    assert preferred == "anthropic"
    assert cfg["ejection"]["base"] == EJECTION_BASE and cfg["ejection"]["max"] == EJECTION_MAX
    assert cfg["rescue"]["max_attempts"] > 1, "the demo config has rescue on"
    assert [s["t"] for s in seconds] == list(range(SECONDS))
    assert all(s["requests"] > 0 for s in seconds), "steady load in every second"
    share = {s["t"]: s["share"][preferred] for s in seconds}
    report = f"{preferred}'s share per second: {share}\n{r.stdout[-2000:]}"

    # Before the outage the preferred vendor serves.
    assert all(share[t] > 0 for t in range(1, OUTAGE_START)), report
    # From 2 s into the outage to its end: none of its answers.
    assert all(share[t] == 0 for t in range(OUTAGE_START + 2, OUTAGE_END)), report
    # Back after the heal, within the longest ejection and a few seconds.
    back_by = OUTAGE_END + seconds_of(cfg["ejection"]["max"]) + 3
    assert any(share[t] > 0 for t in range(OUTAGE_END, min(int(back_by), SECONDS))), report
    assert summary["preferred_back_at"] is not None and OUTAGE_END <= summary["preferred_back_at"] < back_by

    # Rescue on: the clients saw no error at any time, and the counters saw rescues.
    assert [s["client_errors"] for s in seconds] == [0] * SECONDS, report
    assert summary["client_errors"] == 0 and summary["problems"] == {}, summary
    assert summary["rescued"] > 0, summary
    # Envoy's gauges saw the preferred vendor (or its model unit) out during the outage.
    during = [x for x in data["samples"] if OUTAGE_START + 1 <= x["t"] < OUTAGE_END]
    assert during and all(x["state"][preferred] in (1, 2) or x["models_ejected"][preferred] > 0 for x in during)
    assert any(t["vendor"] == preferred and t["to"] == "open" for t in data["transitions"])

    svg = ET.parse(out / "failover-timeline.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
