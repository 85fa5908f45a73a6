#!/usr/bin/env python3
"""`make fleet`: three Envoy replicas, one outage of the preferred vendor.

Three Envoy processes (each `--concurrency 2`, its own admin port) run the
demo's filter configuration (envoy/envoy.yaml, with `ejection.base` 2s) in
front of one shared set of mock vendors. Each replica gets its own steady
load (~20 req/s, OpenAI and Anthropic formats, JSON and streams). Then the
preferred vendor (anthropic) answers 503 to everything for 10 s and heals.

Shared data is per process, so every replica has to find out from its own
traffic. Per replica it reports how many requests the dead vendor received
(failed vendor attempts: Envoy's `failures` counter, cross-checked with the
mock's request log, which tells replicas apart by a header each replica's
route adds), the time to eject, the time from heal until the vendor is back,
and client-visible errors; then the fleet total, and per replica × 3 as the
formula for N replicas. See tests/load/README.md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import LoadError  # noqa: E402

VENDORS = ["anthropic", "openai", "xai"]
DEAD = "anthropic"  # the demo's preferred vendor
REPLICA_HEADER = "x-load-replica"
KINDS = ["openai", "anthropic", "openai-stream", "anthropic-stream"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3, help="Envoy replicas (default 3)")
    p.add_argument("--rate", type=float, default=20, help="requests/s per replica (default 20)")
    p.add_argument("--clients", type=int, default=2, help="client threads per replica (default 2)")
    p.add_argument("--warmup", type=float, default=8, help="seconds of steady load before the outage (default 8)")
    p.add_argument("--outage", type=float, default=10, help="seconds the vendor answers 503 (default 10)")
    p.add_argument("--status", type=int, default=503, help="what the dead vendor answers (default 503)")
    p.add_argument("--after", type=float, default=25,
                   help="at most this long after the heal, waiting for every replica to use the vendor again "
                        "(default 25)")
    p.add_argument("--ejection-base", default="2s", help="the filter's ejection.base (default 2s)")
    p.add_argument("--output", help="results JSON (default tests/load/results/fleet.json)")
    args = p.parse_args(argv)
    if args.replicas < 1 or args.rate <= 0 or args.clients < 1:
        p.error("--replicas, --rate and --clients must be positive")
    return args


def failures_in(detail: str) -> int | None:
    m = re.search(r"window: \d+ requests, (\d+) failures", detail)
    return int(m.group(1)) if m else None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    common.check_wasm()
    d = common.workdir("fleet")
    fcfg = common.demo_filter_config()
    fcfg["ejection"] = {**fcfg.get("ejection", {}), "base": args.ejection_base}

    mock = common.MockVendors(VENDORS, d).start()
    names = [f"r{i + 1}" for i in range(args.replicas)]
    envoys = {}
    for name in names:
        cfg = common.filter_envoy_config(fcfg, mock.ports, route_headers={REPLICA_HEADER: name},
                                         route_timeout="30s", failure_policy="FAIL_RELOAD", env=common.DEMO_ENV)
        envoys[name] = common.Envoy(name, cfg, d, concurrency=2)
    common.validate(envoys[names[0]])
    for e in envoys.values():
        e.start()
    for e in envoys.values():
        e.wait_ready()
    print(f"Envoy {common.envoy_version()}: {args.replicas} replicas × --concurrency 2, demo filter config "
          f"(ejection.base {args.ejection_base}), one set of mock vendors; "
          f"{args.rate:g} req/s per replica from {args.clients} clients ({', '.join(KINDS)})", flush=True)

    clients = {n: common.Clients(envoys[n].port, args.rate, args.clients, KINDS, name=n).start() for n in names}
    poller = common.RecordPoller(mock, [DEAD], 1.0, REPLICA_HEADER).start()
    try:
        time.sleep(args.warmup)
        for e in envoys.values():
            e.check_alive()
        before = {n: common.vendor_stats(envoys[n].filter_stats(), DEAD) for n in names}
        before_all = {n: envoys[n].filter_stats() for n in names}
        t_out = time.time()
        mock.fault(DEAD, {"mode": "status", "status": args.status})
        print(f"outage: {DEAD} answers {args.status} for {args.outage:g} s ...", flush=True)
        time.sleep(max(0.0, t_out + args.outage - time.time()))
        mock.heal(DEAD)
        t_heal = time.time()
        print("healed; waiting for every replica to use it again ...", flush=True)
        deadline = t_heal + args.after
        while time.time() < deadline:
            time.sleep(0.5)
            back = [any(t["vendor"] == DEAD and t["to"] == "closed" and t["time"] > t_heal
                        for t in envoys[n].transitions()) for n in names]
            if all(back):
                time.sleep(3)  # a little steady traffic after the return
                break
        t_end = time.time()
    finally:
        for c in clients.values():
            c.stop()
        poller.stop()

    rows, checks = {}, []
    for n in names:
        e = envoys[n]
        e.check_alive()
        fs = e.filter_stats()
        after = common.vendor_stats(fs, DEAD)
        trans = [t for t in e.transitions() if t["vendor"] == DEAD and t["time"] >= t_out]
        ejects = [t for t in trans if t["to"] == "open"]
        first = ejects[0] if ejects else None
        closed = [t for t in trans if t["to"] == "closed" and t["time"] > t_heal]
        times = [r[0] for r in poller.select(DEAD, n)]
        during = [t for t in times if t_out <= t < t_heal]
        burst = [t for t in during if first and t <= first["time"] + 0.5]
        after_heal = [t for t in times if t >= t_heal]
        cl = clients[n].snapshot()
        failed = after.get("failures", 0) - before[n].get("failures", 0)
        trip = failures_in(first["detail"]) if first else None
        rows[n] = {
            "failed_attempts": failed,
            "mock_requests_during_outage": len(during),
            "to_trip": trip,
            "after_trip": failed - trip if trip is not None else None,
            "ejections": len(ejects),
            "failed_probe_rounds": len([t for t in ejects if t["from"] == "half-open"]),
            "eject_s": first["time"] - t_out if first else None,
            "last_request_s": burst[-1] - t_out if burst else None,
            "first_request_after_heal_s": after_heal[0] - t_heal if after_heal else None,
            "back_s": closed[0]["time"] - t_heal if closed else None,
            "client_errors": common.summarize_clients(cl)["errors"],
            "client_errors_during_outage": common.summarize_clients(cl, t_out, t_heal + 1)["errors"],
            "client_requests": len(cl),
            "client_problems": common.summarize_clients(cl)["problems"],
            "rescued": fs.get("rescued", 0) - before_all[n].get("rescued", 0),
            "transitions": [{"t": round(t["time"] - t_out, 3), "change": f"{t['from']} -> {t['to']}",
                             "detail": t["detail"]} for t in trans],
            "traps": e.trap_lines(),
            "wasm_vms": common.wasm_vm_counters(e),
        }
        r = rows[n]
        checks += [
            (f"{n}: ejected {DEAD} during the outage", first is not None and first["time"] < t_heal + 1, ""),
            (f"{n}: {DEAD} closed again after the heal", bool(closed),
             f"{r['back_s']:.2f} s after" if closed else f"not within {args.after:g} s"),
            (f"{n}: no client-visible errors (rescue on)", r["client_errors"] == 0, str(r["client_problems"])),
            (f"{n}: no wasm trap", not r["traps"], r["traps"][0][:200] if r["traps"] else ""),
        ]
    fleet_failed = sum(r["failed_attempts"] for r in rows.values())
    per = fleet_failed / len(names)
    trip_total = sum(r["to_trip"] or 0 for r in rows.values())
    elapsed = time.monotonic() - started

    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    print(f"\n== fleet: {args.replicas} replicas, {DEAD} answered {args.status} for {t_heal - t_out:.1f} s "
          f"(ejection.base {args.ejection_base}) ==")
    head = ["replica", "failed attempts", "to trip", "after trip", "mock saw", "eject", "last req",
            "back after heal", "client errors", "rescued"]
    table = [head] + [[n, str(r["failed_attempts"]), f(r["to_trip"], "d"), f(r["after_trip"], "d"),
                       str(r["mock_requests_during_outage"]), f(r["eject_s"]) + " s", f(r["last_request_s"]) + " s",
                       f(r["back_s"]) + " s", str(r["client_errors"]), str(r["rescued"])] for n, r in rows.items()]
    table.append(["fleet", str(fleet_failed), str(trip_total), "", str(sum(r["mock_requests_during_outage"]
                                                                         for r in rows.values())),
                  "", "", "", str(sum(r["client_errors"] for r in rows.values())),
                  str(sum(r["rescued"] for r in rows.values()))])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        print("  " + "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if i == 0 or i == len(table) - 2:
            print("  " + "  ".join("-" * w for w in widths))
    print(f"  fleet: {fleet_failed} failed attempts at {DEAD} = {len(names)} replicas × {per:.1f} per replica "
          f"(for N replicas: about N × {per:.1f}; of which to trip: N × {trip_total / len(names):.1f})")
    print("  columns: failed attempts = the replica's Envoy counter vendor.anthropic.failures during the run; "
          "to trip = failures in the window when it ejected (from the log line); after trip = requests in "
          "flight and failed probes; mock saw = requests the mock logged from that replica during the outage; "
          "eject = outage start to the ejection; last req = the last request of the burst before the ejection; "
          "back = heal to half-open -> closed")
    for n, r in rows.items():
        print(f"  {n} state changes: " + "; ".join(f"+{t['t']:.2f}s {t['change']}" for t in r["transitions"]))
    for name, passed, detail in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
    if poller.error:
        print(f"  note: reading the mock's request log failed at times: {poller.error}")

    md_lines = [
        f"{args.replicas} Envoy {common.envoy_version()} replicas (`--concurrency 2` each, demo config, "
        f"`ejection.base` {args.ejection_base}, rescue on), {args.rate:g} req/s each; the preferred vendor "
        f"answered {args.status} for {t_heal - t_out:.0f} s:",
        "",
        "| replica | failed attempts at the vendor | of which to trip | time to eject | back after heal | "
        "client errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n, r in rows.items():
        md_lines.append(f"| {n} | {r['failed_attempts']} | {f(r['to_trip'], 'd')} | {f(r['eject_s'])} s | "
                        f"{f(r['back_s'])} s | {r['client_errors']} |")
    md_lines.append(f"| fleet | {fleet_failed} (= {len(names)} × {per:.1f}) | {trip_total} | | | "
                    f"{sum(r['client_errors'] for r in rows.values())} |")
    md_lines += ["", f"Each replica detects the outage from its own traffic: N replicas cost about "
                     f"N × {per:.1f} failed attempts (N × {trip_total / len(names):.1f} to trip, the rest "
                     "in flight and failed probes)."]
    md = "\n".join(md_lines)
    print("\nmarkdown (for a README):\n")
    print(md)

    ok = all(c[1] for c in checks)
    result = {
        "meta": common.meta(argv), "ok": ok, "elapsed_s": elapsed,
        "config": {**vars(args), "filter": fcfg},
        "timeline": {"outage_start": t_out, "heal": t_heal, "end": t_end},
        "replicas": rows, "fleet": {"failed_attempts": fleet_failed, "per_replica": per, "to_trip": trip_total},
        "mock_totals": mock.totals(),
        "checks": [{"name": n, "ok": p, "detail": dt_} for n, p, dt_ in checks],
        "markdown": md,
    }
    print(f"\nresults: {common.write_results('fleet', result, args.output)}  (Envoy logs: {d})")
    print(f"took {elapsed:.0f} s")
    if not ok:
        common.banner("FLEET FAILED: " + "; ".join(n for n, p, _ in checks if not p))
        for n in names:
            print(f"Envoy {n} log tail ({envoys[n].log_path}):\n{common.tail(envoys[n].log_path, 15)}")
        return 1
    print("fleet: PASSED")
    return 0


if __name__ == "__main__":
    common.run_main(main, "fleet")
