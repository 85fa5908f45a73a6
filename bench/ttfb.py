#!/usr/bin/env python3
"""Time to first byte of a rescued stream: live (relayed through the
upstream filter and an internal redirect) against a callout, next to the
direct stream and the failed attempt's own time.

Two Envoys 1.40 (`--concurrency 2`) in front of the project's mock vendors:
one with the live-streamed rescue (`rescue.relay`, the upstream filter, the
route's internal redirect policy), one without (the rescue is a callout and
its answer arrives whole). The fallback streams its events 50 ms apart
(about 0.3 s whole). For
each case, REQUESTS requests interleaved; medians (and p90) in ms.

The goal it checks: a relayed stream's first byte no later than the failed
attempt's own time plus the fallback's own first byte plus 10 ms.

    .venv/bin/python bench/ttfb.py [--requests 40] [--fail-latency 0.2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "mock"))

from harness import Envoy, envoy_config, filter_config  # noqa: E402
from vendors import MockVendors  # noqa: E402

VENDORS = [
    {"name": "anthropic", "priority": 0, "model_units": 0},
    {"name": "openai", "priority": 1, "model_units": 0},
]
INTERVAL = 0.05
BODY = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})


def stream_once(port: int, whole: bool = False) -> tuple[float, float, int, str]:
    """(first byte ms, whole ms, status, vendor) of one streamed chat request;
    `whole`: asked for buffered mode."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    headers = {"content-type": "application/json"}
    if whole:
        headers["x-llm-failover-buffered"] = "true"
    conn.request("POST", "/v1/chat/completions", body=BODY, headers=headers)
    r = conn.getresponse()
    first = None
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        if first is None:
            first = time.perf_counter() - started
    whole = time.perf_counter() - started
    conn.close()
    return (first or whole) * 1000, whole * 1000, r.status, r.getheader("x-llm-failover-vendor") or ""


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
    return f"{statistics.median(xs):8.1f} {p90:8.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40, help="requests per case (default 40)")
    p.add_argument("--fail-latency", type=float, default=0.2,
                   help="seconds the failing vendor takes before its 503 (default 0.2; 0 for an instant one)")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "ttfb.json"))
    args = p.parse_args()

    mock = MockVendors({"anthropic": 0, "openai": 0})
    mock.start()
    tmp = Path(tempfile.mkdtemp(prefix="llmf-ttfb-"))
    envoys = {}
    try:
        for name, relay in (("relay", True), ("callout", False)):
            # Trip rules out of the way: every request's first attempt fails.
            fc = filter_config(
                VENDORS,
                rescue={"max_attempts": 2, "deadline": "30s", "relay": relay},
                trip={"min_requests": 1000000, "failure_ratio": 1, "consecutive_failures": 0},
            )
            cfg = envoy_config(fc, dict(mock.ports), relay=relay, route_timeout="30s")
            envoys[name] = Envoy(cfg, concurrency=2, workdir=tmp / name).start()

        mock.set_fault("openai", mode="ok", interval=INTERVAL)
        cases: dict[str, list[tuple[float, float]]] = {
            "direct stream (fallback's own first byte)": [],
            "failed attempt alone (its 503)": [],
            "rescued, live (relay)": [],
            "rescued, callout": [],
            "buffered mode, primary healthy": [],
        }
        direct_port = mock.ports["openai"]
        for i in range(args.requests):
            # Buffered mode on a healthy primary: the cost of waiting for
            # the whole answer.
            mock.set_fault("anthropic", mode="ok", interval=INTERVAL)
            f, w, status, vendor = stream_once(envoys["relay"].port, whole=True)
            assert (status, vendor) == (200, "anthropic"), (status, vendor)
            cases["buffered mode, primary healthy"].append((f, w))
            # The fallback straight from the mock: its own first byte.
            f, w, _, _ = stream_once(direct_port)
            cases["direct stream (fallback's own first byte)"].append((f, w))
            # The failing vendor straight from the mock: the failed attempt's own time.
            mock.set_fault("anthropic", mode="status", status=503, latency=args.fail_latency)
            f, w, status, _ = stream_once(mock.ports["anthropic"])
            assert status == 503, status
            cases["failed attempt alone (its 503)"].append((f, w))
            for name, label in (("relay", "rescued, live (relay)"), ("callout", "rescued, callout")):
                f, w, status, vendor = stream_once(envoys[name].port)
                assert (status, vendor) == (200, "openai"), (name, status, vendor)
                cases[label].append((f, w))
        relayed = envoys["relay"].stats().get("wasmcustom.llm_failover.relayed", 0)
        called = envoys["callout"].stats().get("wasmcustom.llm_failover.rescue_attempts", 0)
    finally:
        for e in envoys.values():
            e.stop()
        mock.stop()

    med = {k: statistics.median([f for f, _ in v]) for k, v in cases.items()}
    print(f"Envoy 1.40 --concurrency 2; fallback streams events {INTERVAL * 1000:.0f} ms apart; "
          f"failing vendor answers 503 after {args.fail_latency * 1000:.0f} ms; {args.requests} requests per case")
    print(f"{'case':45} {'first byte ms':>17} {'whole answer ms':>17}")
    print(f"{'':45} {'median':>8} {'p90':>8} {'median':>8} {'p90':>8}")
    for k, v in cases.items():
        print(f"{k:45} {summary([f for f, _ in v])} {summary([w for _, w in v])}")
    budget = med["failed attempt alone (its 503)"] + med["direct stream (fallback's own first byte)"] + 10
    live = med["rescued, live (relay)"]
    call = med["rescued, callout"]
    print(f"\ngoal: relayed first byte <= failed attempt + fallback's first byte + 10 ms = {budget:.1f} ms")
    print(f"relayed first byte {live:.1f} ms: {'met' if live <= budget else 'NOT met'} "
          f"({live - budget:+.1f} ms against the goal)")
    print(f"callout first byte {call:.1f} ms = {call / live:.1f}x the relayed one")
    direct = med["direct stream (fallback's own first byte)"]
    print(f"buffered mode: first byte {med['buffered mode, primary healthy']:.1f} ms, against "
          f"{direct:.1f} ms for the same stream unbuffered")
    print(f"(the relay Envoy relayed {relayed} times; the other made {called} callouts)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({
        "requests": args.requests,
        "fail_latency_s": args.fail_latency,
        "interval_s": INTERVAL,
        "cases": {k: {"first_byte_ms": [f for f, _ in v], "whole_ms": [w for _, w in v]} for k, v in cases.items()},
        "goal_ms": budget,
        "relayed_first_byte_ms": live,
        "callout_first_byte_ms": call,
    }, indent=1))
    print(f"results: {args.output}")
    return 0 if live <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
