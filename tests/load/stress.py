#!/usr/bin/env python3
"""`make stress`: no outcome is lost when many workers write the shared state at once.

Envoy with the filter at `--concurrency 4`, 200 client connections (wrk),
100,000 requests in total (`--requests`, `STRESS_REQUESTS`) spread over three
vendors of equal priority and weight; one of them (`bad`) always answers 503.
Upstreams are `direct_response` listeners of one upstream Envoy, so the run
is fast. The filter is configured so nothing ejects and nothing leaves the
window during the run (1 h window, trip rules that cannot fire, no rescue).

After the load and two refresh intervals it reads the per-vendor
`window_requests` / `window_failures` gauges and `requests` / `failures`
counters: the windows must hold exactly the requests wrk completed (2xx and
503s alike), and the failures exactly the failing vendor's. It also reports
`cas_retries` (compare-and-swap writes that lost a race and were recomputed)
and `store_errors` (give-ups). See tests/load/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import LoadError  # noqa: E402

VENDORS = ["good1", "good2", "bad"]
FAILING = "bad"
PATH = "/v1/chat/completions"
REQUEST_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}]},
                          separators=(",", ":"))
OK_BODY = json.dumps({
    "id": "chatcmpl-stress", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}, separators=(",", ":"))
FAIL_BODY = json.dumps({"error": {"message": "stress: simulated 503", "type": "server_error", "param": None,
                                  "code": None}}, separators=(",", ":"))
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
MAX_MIN_REQUESTS = 1_000_000  # the filter's cap on trip.min_requests


def filter_config(requests: int, refresh: str) -> dict:
    """Nothing may eject or leave the window while `requests` requests run."""
    return {
        "cluster_header": common.harness.CLUSTER_HEADER,
        "vendor_header": common.harness.VENDOR_HEADER,
        "vendors": [{"name": v, "cluster": v, "priority": 0, "weight": 1} for v in VENDORS],
        "window": {"length": "1h", "buckets": 120},
        "trip": {"min_requests": MAX_MIN_REQUESTS, "failure_ratio": 1, "consecutive_failures": 0},
        "rescue": {"max_attempts": 1},
        "slow": {"first_byte": "off", "stall": "off"},
        "refresh_interval": refresh,
    }


def upstream_listener(name: str, status: int, body: str) -> dict:
    """A direct_response listener on port 0. The buffer filter reads the whole
    request first; without it direct_response answers before the body and
    closes the connection (see bench/README.md)."""
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "generate_request_id": False,
        "route_config": {"name": name, "virtual_hosts": [{
            "name": name, "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": status, "body": {"inline_string": body}},
                        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.buffer",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                              "max_request_bytes": 65536}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def upstream_config() -> dict:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [upstream_listener("ok", 200, OK_BODY),
                                               upstream_listener("fail", 503, FAIL_BODY)]}}


# --------------------------------------------------------------------------
# wrk with an exact request budget


def wrk_script(directory: Path, total: int, threads: int) -> Path:
    """wrk runs for a time, not a count. This script gives each wrk thread a
    budget: `delay()` (called before every request, also a connection's first)
    lets a request go only while the thread's budget lasts and parks the
    connection otherwise; when the thread has its budget of answers it prints
    DONE, and the driver stops wrk with SIGINT (wrk's main thread otherwise
    sleeps for the whole -d duration). No request is left in flight, so what
    Envoy saw is exactly what wrk counted."""
    body = REQUEST_BODY.replace("\\", "\\\\").replace('"', '\\"')
    path = directory / "stress.lua"
    path.write_text(f"""-- generated by tests/load/stress.py
wrk.method = "POST"
wrk.body = "{body}"
wrk.headers["Content-Type"] = "application/json"

local total, threads, index = {total}, {threads}, 0
function setup(thread)
  index = index + 1
  thread:set("id", index)
  thread:set("total", total)
  thread:set("threads", threads)
end

local sent, done, finished = 0, 0, false
local budget = nil

local function my_budget()
  if budget == nil then
    local threads = tonumber(wrk.thread:get("threads"))
    local id, all = tonumber(wrk.thread:get("id")), tonumber(wrk.thread:get("total"))
    budget = math.floor(all / threads)
    if id <= all % threads then budget = budget + 1 end
  end
  return budget
end

function delay()
  if sent < my_budget() then
    sent = sent + 1
    return 0
  end
  return 3600000
end

function response(status, headers, body)
  done = done + 1
  if done >= my_budget() and not finished then
    finished = true
    io.write("DONE " .. wrk.thread:get("id") .. " " .. done .. "\\n")
    io.flush()
    wrk.thread:stop()
  end
end
""")
    return path


def run_wrk(wrk: str, script: Path, url: str, threads: int, connections: int, total: int,
            timeout: float) -> tuple[str, float]:
    """Runs wrk until every thread has its budget; returns its output and the wall time."""
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{int(timeout)}s", "--latency", "--timeout", "10s",
           "-s", str(script), url]
    t0 = time.monotonic()
    proc = common.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, done = [], 0
    try:
        for line in proc.stdout:  # wrk prints only DONE lines until SIGINT, then its report
            lines.append(line)
            if line.startswith("DONE "):
                done += 1
                if done == threads:
                    proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        common.kill(proc)
    wall = time.monotonic() - t0
    out = "".join(lines)
    if done < threads:
        raise LoadError(f"wrk stopped before its {total} requests were answered (only {done} of {threads} "
                        f"threads finished in {timeout:.0f}s):\n{out}")
    return out, wall


def parse_wrk(out: str) -> dict:
    res: dict = {"requests": None, "rps": None, "socket_errors": {}, "non_2xx": 0, "latency_us": {}}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if m:
        res["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non_2xx"] = int(m.group(1))
    units = {"us": 1.0, "ms": 1e3, "s": 1e6}
    dist = out.split("Latency Distribution", 1)[-1] if "Latency Distribution" in out else ""
    for pct, num, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s)\s*$", dist, re.M):
        res["latency_us"][pct] = float(num) * units[unit]
    return res


# --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=100_000, help="requests in total (default 100000)")
    p.add_argument("--connections", type=int, default=200, help="client connections (default 200)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--concurrency", type=int, default=4, help="Envoy worker threads (default 4)")
    p.add_argument("--refresh", default="500ms", help="the filter's refresh_interval (default 500ms)")
    p.add_argument("--read-after", type=float, metavar="SECONDS",
                   help="read the stats this long after the load (default: two refresh intervals + 0.2 s)")
    p.add_argument("--max-seconds", type=float, default=600, help="give up on wrk after this long (default 600)")
    p.add_argument("--output", help="results JSON (default tests/load/results/stress.json)")
    args = p.parse_args(argv)
    if args.requests < args.connections or args.requests >= MAX_MIN_REQUESTS:
        p.error(f"--requests must be at least --connections and below {MAX_MIN_REQUESTS:,} "
                "(the filter's cap on trip.min_requests, which must stay above the run)")
    if args.threads < 1 or args.connections < args.threads:
        p.error("--threads must be at least 1 and at most --connections")
    return args


def refresh_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if not m:
        raise LoadError(f"--refresh {text!r}: use e.g. 500ms or 1s")
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    common.check_wasm()
    wrk = shutil.which("wrk")
    if not wrk:
        raise LoadError("wrk not found on PATH (Debian/Ubuntu: apt-get install -y wrk)")
    refresh_s = refresh_seconds(args.refresh)
    d = common.workdir("stress")

    upstream = common.Envoy("upstream", upstream_config(), d, concurrency=1)
    common.validate(upstream)
    upstream.start().wait_ready()
    ports = {v: upstream.ports["fail" if v == FAILING else "ok"] for v in VENDORS}
    fcfg = filter_config(args.requests, args.refresh)
    envoy = common.Envoy("filter", common.filter_envoy_config(fcfg, ports, route_timeout="30s"), d,
                         concurrency=args.concurrency)
    common.validate(envoy)
    envoy.start().wait_ready()
    url = f"http://127.0.0.1:{envoy.port}{PATH}"
    print(f"Envoy {common.envoy_version()} --concurrency {args.concurrency} with {common.WASM.name}; "
          f"upstream: direct_response (200 for {', '.join(v for v in VENDORS if v != FAILING)}, 503 for {FAILING})")
    print(f"wrk -t{args.threads} -c{args.connections}: {args.requests:,} requests ...", flush=True)

    out, wall = run_wrk(wrk, wrk_script(d, args.requests, args.threads), url, args.threads, args.connections,
                        args.requests, args.max_seconds)
    envoy.check_alive()
    w = parse_wrk(out)
    if w["requests"] is None or w["rps"] is None:
        raise LoadError(f"cannot parse wrk's output:\n{out}")

    # Quiet successes are batched per worker and written on its tick; gauges are
    # refreshed on the tick after: read after two refresh intervals.
    wait = args.read_after if args.read_after is not None else 2 * refresh_s + 0.2
    time.sleep(wait)
    fs = envoy.filter_stats()
    per = {v: common.vendor_stats(fs, v) for v in VENDORS}
    later = []
    for _ in range(5):  # only to tell a late write from a lost one, if they differ
        time.sleep(refresh_s)
        s = envoy.filter_stats()
        later.append({v: [s.get(f"vendor.{v}.window_requests", 0), s.get(f"vendor.{v}.window_failures", 0)]
                      for v in VENDORS})
    cluster_stats = envoy.stats(r"^cluster\.[^.]+\.upstream_rq_")
    # upstream_rq_completed, not _total: _total also counts the filter's cluster-existence
    # checks at start-up (a CONNECT callout per worker, never encoded).
    upstream_rq = {v: cluster_stats.get(f"cluster.{v}.upstream_rq_completed") for v in VENDORS}
    traps = envoy.trap_lines()

    completed = w["requests"]
    non_2xx = w["non_2xx"]
    sock_err = sum(w["socket_errors"].values())
    win_req = {v: per[v].get("window_requests", 0) for v in VENDORS}
    win_fail = {v: per[v].get("window_failures", 0) for v in VENDORS}
    req_ctr = {v: per[v].get("requests", 0) for v in VENDORS}
    fail_ctr = {v: per[v].get("failures", 0) for v in VENDORS}
    ejections = {v: per[v].get("ejections", 0) for v in VENDORS}
    cas_retries = fs.get("cas_retries", 0)
    store_errors = fs.get("store_errors", 0)

    checks = [
        ("wrk completed the requested count", completed == args.requests, f"{completed:,} of {args.requests:,}"),
        ("no socket errors", sock_err == 0, json.dumps(w["socket_errors"])),
        ("windows hold every completed request", sum(win_req.values()) == completed,
         f"{sum(win_req.values()):,} in the windows vs {completed:,} completed"),
        ("window failures = the failing vendor's requests", win_fail[FAILING] == win_req[FAILING]
         and sum(win_fail.values()) == win_fail[FAILING], f"{FAILING}: {win_fail[FAILING]:,} of {win_req[FAILING]:,}"),
        ("window failures = client-visible 503s", sum(win_fail.values()) == non_2xx,
         f"{sum(win_fail.values()):,} vs wrk non-2xx {non_2xx:,}"),
        ("requests counters = windows", req_ctr == win_req, f"counters {req_ctr}"),
        ("failures counters = windows", fail_ctr == win_fail, f"counters {fail_ctr}"),
        ("upstream answers per cluster = windows", all(upstream_rq.get(v) == win_req[v] for v in VENDORS),
         f"clusters {dict((v, upstream_rq.get(v)) for v in VENDORS)}"),
        ("nothing ejected", not any(ejections.values()), f"ejections {ejections}"),
        ("no wasm trap in Envoy's log", not traps, traps[0][:200] if traps else "none"),
        ("Envoy still up", envoy.alive(), ""),
    ]
    ok = all(c[1] for c in checks)

    rps = w["rps"]
    elapsed = time.monotonic() - started
    print(f"\n== stress: {completed:,} requests, {args.connections} connections, Envoy --concurrency "
          f"{args.concurrency}, {rps:,.0f} req/s (wrk), load {wall:.1f} s ==")
    print(f"  {'vendor':<7} {'window_requests':>16} {'requests':>10} {'window_failures':>16} {'failures':>9} "
          f"{'upstream answers':>17}")
    for v in VENDORS:
        print(f"  {v:<7} {win_req[v]:>16,} {req_ctr[v]:>10,} {win_fail[v]:>16,} {fail_ctr[v]:>9,} "
              f"{upstream_rq.get(v) or 0:>17,}")
    print(f"  {'total':<7} {sum(win_req.values()):>16,} {sum(req_ctr.values()):>10,} {sum(win_fail.values()):>16,} "
          f"{sum(fail_ctr.values()):>9,}")
    print(f"  wrk: {completed:,} answers ({non_2xx:,} non-2xx), socket errors {w['socket_errors']}, "
          f"p50 {w['latency_us'].get('50', 0) / 1000:.2f} ms, p99 {w['latency_us'].get('99', 0) / 1000:.2f} ms")
    print(f"  cas_retries {cas_retries:,} ({cas_retries / max(completed, 1) * 100:.2f} per 100 requests), "
          f"store_errors {store_errors:,}; read {wait:.1f} s after the load "
          f"(refresh_interval {args.refresh})")
    if sum(win_req.values()) != completed:
        print(f"  later reads of [window_requests, window_failures] (every {args.refresh}): {later}")
    for name, passed, detail in checks:
        print(f"  [{'ok' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    md = "\n".join([
        f"Envoy {common.envoy_version()} `--concurrency {args.concurrency}`, wrk `-t{args.threads} "
        f"-c{args.connections}`, {completed:,} requests over three vendors of equal weight "
        f"(one answers 503), `direct_response` upstreams, {common.meta([])['cpus']} shared CPUs:",
        "",
        "| requests completed (wrk) | in the windows | window failures | 503s seen by clients | "
        "cas_retries | store_errors | req/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {completed:,} | {sum(win_req.values()):,} | {sum(win_fail.values()):,} | {non_2xx:,} | "
        f"{cas_retries:,} | {store_errors:,} | {rps:,.0f} |",
    ])
    print("\nmarkdown (for a README):\n")
    print(md)

    result = {
        "meta": common.meta(argv), "ok": ok, "elapsed_s": elapsed, "load_s": wall,
        "config": {"requests": args.requests, "connections": args.connections, "threads": args.threads,
                   "concurrency": args.concurrency, "filter": fcfg},
        "wrk": w, "wrk_output": out,
        "vendors": {v: {"window_requests": win_req[v], "window_failures": win_fail[v], "requests": req_ctr[v],
                        "failures": fail_ctr[v], "upstream_rq_completed": upstream_rq.get(v), "stats": per[v]}
                    for v in VENDORS},
        "cas_retries": cas_retries, "store_errors": store_errors, "later_reads": later,
        "filter_stats": fs, "cluster_stats": cluster_stats, "traps": traps,
        "checks": [{"name": n, "ok": p, "detail": dt_} for n, p, dt_ in checks],
        "markdown": md,
    }
    print(f"\nresults: {common.write_results('stress', result, args.output)}  (Envoy logs: {d})")
    print(f"took {elapsed:.0f} s")
    if not ok:
        failed = [n for n, p, _ in checks if not p]
        common.banner("STRESS FAILED: " + "; ".join(failed))
        print(f"Envoy log tail ({envoy.log_path}):\n{common.tail(envoy.log_path)}")
        return 1
    print("stress: PASSED (no lost updates)")
    return 0


if __name__ == "__main__":
    common.run_main(main, "stress")
