#!/usr/bin/env python3
"""`make soak`: a long run with scheduled vendor faults stays flat.

Envoy `--concurrency 2` with the demo's filter configuration (envoy/envoy.yaml:
three vendors, rescue on, 10 s first ejection), except that the three vendors
share one priority, so each always has traffic of its own (an ejection and a
recovery both need traffic; with the demo's priorities a fallback vendor sees
none while the preferred one is healthy). In front: the mock vendors
(tests/mock/vendors.py, own process). A few client threads send ~50 req/s,
OpenAI and Anthropic formats, JSON and streams, and a route-group model.

A fault schedule repeats every 5 minutes: anthropic answers 529 for 60 s,
openai resets connections for 30 s, xai stalls its answers for 30 s (Envoy's
route idle timeout, 5 s here, cuts them), each then healed. Runs shorter than
one cycle get one compressed cycle.

Every 10 s it samples Envoy's RSS (/proc) and `llm_failover.shared_bytes`.
Checks: after the warm-up (first 10%) RSS stays within 5% of its median;
shared_bytes never exceeds its first value; no wasm trap in Envoy's log and
Envoy stays up; the filter's logged state changes match the schedule (every
outage ejects its vendor, which closes again after the heal; no ejection
outside a vendor's outage, except failed probes before it has recovered).
See tests/load/README.md.
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
KINDS = ["openai", "anthropic", "openai-stream", "anthropic-stream", "openai-group"]
# One cycle: (offset s, vendor, fault, duration s, what).
CYCLE_S = 300
CYCLE = [
    (0, "anthropic", {"mode": "status", "status": 529}, 60, "529"),
    (100, "openai", {"mode": "reset"}, 30, "reset"),
    (170, "xai", {"mode": "stall"}, 30, "stall"),
]
CYCLE_ACTIVE_S = max(o + d for o, _, _, d, _ in CYCLE)  # 200 s: the last heal
FIRST_FAULT_S = 15
TAIL_S = 45  # after the last heal of a run: time to recover, then steady traffic
IDLE_TIMEOUT_S = 5  # Envoy's route idle timeout: a stalled answer fails after this
SAMPLE_S = 10


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30, help="run length (default 30; 2 works for a smoke run)")
    p.add_argument("--rate", type=float, default=50, help="requests/s in total (default 50)")
    p.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--rss-tolerance", type=float, default=5.0, help="percent (default 5)")
    p.add_argument("--output", help="results JSON (default tests/load/results/soak.json)")
    args = p.parse_args(argv)
    if args.minutes < 1.5:
        p.error("--minutes must be at least 1.5 (one compressed fault cycle)")
    return args


def schedule(total_s: float) -> list[dict]:
    """Outage windows: whole cycles while they fit, else one compressed cycle."""
    windows = []
    k = 0
    while FIRST_FAULT_S + k * CYCLE_S + CYCLE_ACTIVE_S + TAIL_S <= total_s:
        for off, vendor, fault, dur, what in CYCLE:
            s = FIRST_FAULT_S + k * CYCLE_S + off
            windows.append({"vendor": vendor, "fault": fault, "what": what, "start": s, "end": s + dur})
        k += 1
    if not windows:
        f = (total_s - FIRST_FAULT_S - TAIL_S) / CYCLE_ACTIVE_S
        for off, vendor, fault, dur, what in CYCLE:
            s = FIRST_FAULT_S + off * f
            windows.append({"vendor": vendor, "fault": fault, "what": what, "start": s,
                            "end": s + max(dur * f, 10.0)})
    return windows


def unit_models(fcfg: dict) -> dict[str, set[str]]:
    """Per vendor, the models that have a health unit of their own (`vendor/model`):
    its `models` map's values and its route-group targets' models."""
    out: dict[str, set[str]] = {v["name"]: set((v.get("models") or {}).values()) for v in fcfg["vendors"]}
    for g in fcfg.get("groups", []):
        for t in g.get("targets", []):
            if t.get("model"):
                out.setdefault(t["vendor"], set()).add(t["model"])
    return out


def judge_transitions(transitions: list[dict], windows: list[dict], t0: float, end: float,
                      ejection_max_s: float, traffic) -> tuple[list[dict], list[str], list[str]]:
    """Matches the logged state changes to the schedule. `traffic(unit, since,
    until)` counts the requests the mock saw for a unit. Returns one row per
    window, the problems found and notes."""
    problems: list[str] = []
    notes: list[str] = []
    rows = []
    probe_allowance = IDLE_TIMEOUT_S + 5
    detect_lag = IDLE_TIMEOUT_S + 3
    for v in VENDORS:
        ws = sorted((w for w in windows if w["vendor"] == v), key=lambda w: w["start"])
        vt = [dict(t, rel=t["time"] - t0) for t in transitions if t["vendor"] == v]
        for i, w in enumerate(ws):
            s, e = w["start"], w["end"]
            nxt = ws[i + 1]["start"] if i + 1 < len(ws) else end
            mine = [t for t in vt if s - 1 <= t["rel"] < nxt - 1]
            ejections = [t for t in mine if t["to"] == "open"]
            first = next((t for t in ejections if t["rel"] <= e + detect_lag), None)
            units = sorted({t["unit"] for t in ejections})
            row = {"vendor": v, "what": w["what"], "start_s": s, "end_s": e,
                   "eject_after_s": first["rel"] - s if first else None,
                   "ejections": len(ejections), "units": units, "closed_after_heal_s": {}, "idle_units": []}
            if first is None:
                problems.append(f"{v}: outage {s:.0f}-{e:.0f} s ({w['what']}) produced no ejection")
            for unit in units:
                ut = [t for t in mine if t["unit"] == unit]
                closed = [t for t in ut if t["to"] == "closed" and t["rel"] > e]
                row["closed_after_heal_s"][unit] = closed[0]["rel"] - e if closed else None
                if not closed:
                    used = traffic(unit, t0 + e, t0 + nxt - 1)
                    last = ut[-1]
                    m = re.search(r"ejected for (\d+) ms", last["detail"])
                    due = last["rel"] + (int(m.group(1)) / 1000 if m else 0)
                    if used == 0 and due < nxt - 1:
                        row["idle_units"].append(unit)
                        notes.append(f"{unit}: no request needed it after the heal at {e:.0f} s (a fallback "
                                     f"target), so nothing probed it; left {last['to']}")
                    elif used == 0:
                        problems.append(f"{unit}: still ejected until {due:.0f} s, past "
                                        f"{'its next outage' if i + 1 < len(ws) else 'the end of the run'}")
                    else:
                        problems.append(f"{unit}: {used} requests after the heal at {e:.0f} s, "
                                        f"but not closed again (left {last['to']})")
                elif ut[-1]["to"] != "closed":
                    problems.append(f"{unit}: ended the outage {s:.0f}-{e:.0f} s {ut[-1]['to']}, not closed")
                recovered_at = closed[0]["rel"] if closed else float("inf")
                for t in ut:
                    if t["to"] != "open" or t["rel"] <= e + detect_lag:
                        continue
                    if t["rel"] < recovered_at and t["rel"] <= e + ejection_max_s + probe_allowance:
                        row.setdefault("probe_failures_after_heal", []).append(round(t["rel"] - e, 2))
                    else:
                        problems.append(f"{unit}: ejected at {t['rel']:.1f} s, {t['rel'] - e:.1f} s after "
                                        f"its outage healed ({t['from']} -> open: {t['detail']})")
            rows.append(row)
        first_start = ws[0]["start"] if ws else end
        for t in vt:
            if t["to"] == "open" and t["rel"] < first_start - 1:
                problems.append(f"{t['unit']}: ejected at {t['rel']:.1f} s, before any outage of {v}")
    for t in transitions:
        if t["to"] == "rate-limited":
            problems.append(f"{t['unit']}: rate-limited at {t['time'] - t0:.1f} s (no 429 was scheduled)")
    return rows, problems, notes


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    common.check_wasm()
    total_s = args.minutes * 60
    warmup_s = total_s * 0.10
    windows = schedule(total_s)
    d = common.workdir("soak")

    fcfg = common.demo_filter_config()
    for v in fcfg["vendors"]:
        v["priority"], v["weight"] = 0, 1
    ejection_max_s = parse_duration(fcfg.get("ejection", {}).get("max", "5m"))
    mock = common.MockVendors(VENDORS, d).start()
    cfg = common.filter_envoy_config(fcfg, mock.ports, route_timeout="60s", route_idle_timeout=f"{IDLE_TIMEOUT_S}s",
                                     stream_idle_timeout="60s", failure_policy="FAIL_RELOAD", env=common.DEMO_ENV)
    envoy = common.Envoy("soak", cfg, d, concurrency=2)
    common.validate(envoy)
    envoy.start().wait_ready()
    t0 = time.time()
    print(f"Envoy {common.envoy_version()} --concurrency 2, demo filter config with equal priorities; "
          f"{args.minutes:g} min, {args.rate:g} req/s from {args.clients} clients ({', '.join(KINDS)})")
    print("fault schedule (s from start): " + "; ".join(f"{w['vendor']} {w['what']} {w['start']:.0f}-{w['end']:.0f}"
                                                       for w in windows), flush=True)

    events = sorted([(w["start"], "fault", w) for w in windows] + [(w["end"], "heal", w) for w in windows],
                    key=lambda x: x[0])
    clients = common.Clients(envoy.port, args.rate, args.clients, KINDS, name="soak")
    poller = common.RecordPoller(mock, VENDORS, 5.0).start()
    samples: list[dict] = []
    vm0 = common.wasm_vm_counters(envoy)
    time.sleep(1.5)  # one refresh: shared_bytes is set
    clients.start()
    next_sample = time.time()
    try:
        while True:
            now = time.time()
            if now - t0 >= total_s:
                break
            while events and t0 + events[0][0] <= now:
                _, what, w = events.pop(0)
                if what == "fault":
                    mock.fault(w["vendor"], w["fault"])
                else:
                    mock.heal(w["vendor"])
                print(f"  {now - t0:7.1f} s  {w['vendor']}: {w['what'] if what == 'fault' else 'healed'}", flush=True)
            if now >= next_sample:
                envoy.check_alive()
                if not mock.alive():
                    raise LoadError(f"mock vendors died:\n{common.tail(mock.log_path)}")
                fs = envoy.filter_stats()
                sample = {"t": round(now - t0, 1), "rss_kib": envoy.rss_kib(), "shared_bytes": fs.get("shared_bytes"),
                          "state": {v: fs.get(f"vendor.{v}.state") for v in VENDORS},
                          "requests": sum(fs.get(f"vendor.{v}.requests", 0) for v in VENDORS)}
                samples.append(sample)
                if len(samples) % 6 == 1:
                    print(f"  {sample['t']:7.1f} s  RSS {sample['rss_kib'] / 1024:.1f} MiB, shared_bytes "
                          f"{sample['shared_bytes']}, states {sample['state']}, {len(clients.snapshot())} requests sent",
                          flush=True)
                next_sample += SAMPLE_S
            wake = min([t0 + total_s, next_sample] + ([t0 + events[0][0]] if events else []))
            time.sleep(max(0.0, min(wake - time.time(), 1.0)))
    finally:
        clients.stop()
        poller.stop()
    t_end = time.time()
    envoy.check_alive()
    time.sleep(2.5)  # two refreshes: final gauges
    fs = envoy.filter_stats()
    vm1 = common.wasm_vm_counters(envoy)
    traps = envoy.trap_lines()
    transitions = envoy.transitions()
    records = clients.snapshot()

    # Memory
    post = [s for s in samples if s["t"] >= warmup_s]
    rss_med = common.median([s["rss_kib"] for s in post])
    rss_dev = max((abs(s["rss_kib"] - rss_med) / rss_med * 100 for s in post), default=0.0)
    sb = [s["shared_bytes"] for s in samples if s["shared_bytes"] is not None]
    sb_first = sb[0] if sb else None
    # Schedule
    own = unit_models(fcfg)

    def traffic(unit: str, since: float, until: float) -> int:
        vendor, _, model = unit.partition("/")
        return sum(1 for r in poller.select(vendor) if since <= r[0] < until
                   and (r[2] == model if model else r[2] not in own.get(vendor, set())))

    rows, problems, notes = judge_transitions(transitions, windows, t0, t_end - t0, ejection_max_s, traffic)
    final_states = {v: fs.get(f"vendor.{v}.state") for v in VENDORS}
    # Clients: errors outside every fault window (with its recovery) are not expected
    quiet = []
    for r in records:
        rel = r[0] - t0
        if not any(w["start"] - 1 <= rel <= w["end"] + 15 for w in windows):
            quiet.append(r)
    cs = common.summarize_clients(records)
    for r in rows:  # each error goes to the outage that started last before it, up to 15 s after its heal
        r["client_errors"] = {}
    for rec in records:
        rel = rec[0] - t0
        if not rec[5]:
            continue
        started_before = [r for r in rows if r["start_s"] - 1 <= rel]
        last = max(started_before, key=lambda r: r["start_s"], default=None)
        if last is not None and rel <= last["end_s"] + 15:
            last["client_errors"][rec[5]] = last["client_errors"].get(rec[5], 0) + 1
    quiet_s = common.summarize_clients(quiet)
    elapsed = time.monotonic() - started

    checks = [
        (f"RSS within {args.rss_tolerance:g}% of its post-warm-up median", bool(post) and rss_dev <= args.rss_tolerance,
         f"median {rss_med / 1024:.1f} MiB, max deviation {rss_dev:.2f}% over {len(post)} samples"),
        ("shared_bytes never above its first value", bool(sb) and max(sb) <= sb_first,
         f"first {sb_first}, max {max(sb) if sb else None}, last {sb[-1] if sb else None}"),
        ("no wasm trap in Envoy's log", not traps, traps[0][:240] if traps else "none"),
        ("no wasm VM reloaded", vm0 == vm1, f"{vm0} -> {vm1}" if vm0 != vm1 else ""),
        ("Envoy stayed up", envoy.alive(), ""),
        ("state changes match the fault schedule", not problems, "; ".join(problems[:6])),
        ("every vendor closed at the end", all(s == 0 for s in final_states.values()), str(final_states)),
    ]
    ok = all(c[1] for c in checks)

    rss = [s["rss_kib"] for s in samples]
    print(f"\n== soak: {args.minutes:g} min, {cs['requests']:,} requests ({cs['requests'] / (t_end - t0):.1f} req/s), "
          f"{len(windows)} outages ==")
    print(f"  RSS: start {rss[0] / 1024:.1f} MiB, post-warm-up median {rss_med / 1024:.1f} MiB, "
          f"min {min(r['rss_kib'] for r in post) / 1024 if post else 0:.1f}, "
          f"max {max(r['rss_kib'] for r in post) / 1024 if post else 0:.1f}, max deviation {rss_dev:.2f}% "
          f"(warm-up {warmup_s:.0f} s, {len(samples)} samples every {SAMPLE_S} s)")
    print(f"  shared_bytes: first {sb_first}, max {max(sb) if sb else None}, last {sb[-1] if sb else None}")
    print(f"  client errors: {cs['errors']:,} in all ({cs['problems']}); outside fault windows (+15 s): "
          f"{quiet_s['errors']} of {quiet_s['requests']:,}")
    print(f"  served by: {cs['served_by']}; filter: rescued {fs.get('rescued', 0)}, rescues_failed "
          f"{fs.get('rescues_failed', 0)}, all_down {fs.get('all_down', 0)}, cas_retries {fs.get('cas_retries', 0)}, "
          f"store_errors {fs.get('store_errors', 0)}")
    print(f"  wasm VMs: {vm1}; traps: {len(traps)}; state changes logged: {len(transitions)}")
    print(f"  {'vendor':<9} {'fault':<6} {'window (s)':>12} {'ejected after':>14} {'ejections':>9}  closed after heal")
    for r in rows:
        closed = ", ".join(f"{u} {common.fmt_s(x)}" for u, x in r["closed_after_heal_s"].items()) or "-"
        extra = f"  (probe failed {r['probe_failures_after_heal']} s after heal)" if r.get(
            "probe_failures_after_heal") else ""
        print(f"  {r['vendor']:<9} {r['what']:<6} {r['start_s']:>5.0f}-{r['end_s']:<6.0f} "
              f"{common.fmt_s(r['eject_after_s']):>14} {r['ejections']:>9}  {closed}{extra}")
    for r in rows:
        if r["client_errors"]:
            print(f"  client errors during the {r['vendor']} {r['what']} outage (until 15 s after, or the next): "
                  f"{r['client_errors']}")
    for n in notes:
        print(f"  note: {n}")
    if poller.error:
        print(f"  note: reading the mock's request log failed at times: {poller.error}")
    for name, passed, detail in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    md = "\n".join([
        f"Envoy {common.envoy_version()} `--concurrency 2`, demo config (equal priorities), mock vendors, "
        f"{args.minutes:g} min at {cs['requests'] / (t_end - t0):.0f} req/s (OpenAI and Anthropic, JSON and "
        f"streams), {len(windows)} scheduled outages (529, resets, stalls):",
        "",
        "| RSS median after warm-up | max deviation | shared_bytes first / max | wasm traps | outages that ejected "
        "| recovered after heal | ejections outside outages | client errors outside outages |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {rss_med / 1024:.1f} MiB | {rss_dev:.2f}% | {sb_first} / {max(sb) if sb else '-'} | {len(traps)} | "
        f"{sum(1 for r in rows if r['eject_after_s'] is not None)} of {len(rows)} | "
        f"{sum(1 for r in rows if any(x is not None for x in r['closed_after_heal_s'].values()))}"
        f" of {len(rows)} | {sum(1 for p in problems if 'after its outage' in p or 'before any outage' in p)} | "
        f"{quiet_s['errors']} of {quiet_s['requests']:,} |",
    ])
    print("\nmarkdown (for a README):\n")
    print(md)

    result = {
        "meta": common.meta(argv), "ok": ok, "elapsed_s": elapsed,
        "config": {**vars(args), "filter": fcfg, "idle_timeout_s": IDLE_TIMEOUT_S, "warmup_s": warmup_s},
        "schedule": windows, "samples": samples, "rss": {"median_kib": rss_med, "max_deviation_pct": rss_dev},
        "shared_bytes": {"first": sb_first, "max": max(sb) if sb else None},
        "transitions": [dict(t, rel=round(t["time"] - t0, 3)) for t in transitions], "windows": rows,
        "problems": problems, "notes": notes, "clients": cs,
        "client_errors": [{"t": round(r[0] - t0, 3), "kind": r[2], "status": r[3], "vendor": r[4], "problem": r[5]}
                          for r in records if r[5]], "clients_outside_outages": quiet_s, "wasm_vms": [vm0, vm1],
        "traps": traps, "final_states": final_states, "filter_stats": fs,
        "checks": [{"name": n, "ok": p, "detail": dt_} for n, p, dt_ in checks], "markdown": md,
    }
    print(f"\nresults: {common.write_results('soak', result, args.output)}  (Envoy log: {envoy.log_path})")
    print(f"took {elapsed:.0f} s")
    if not ok:
        common.banner("SOAK FAILED: " + "; ".join(n for n, p, _ in checks if not p))
        print(f"Envoy log tail ({envoy.log_path}):\n{common.tail(envoy.log_path, 20)}")
        return 1
    print("soak: PASSED")
    return 0


def parse_duration(text: str) -> float:
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text).strip())
    if not m:
        raise LoadError(f"cannot read the duration {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


if __name__ == "__main__":
    common.run_main(main, "soak")
