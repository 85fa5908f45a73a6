"""Fixtures: the built filter, mock vendors on loopback, and Envoys around them."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "mock"))

from harness import ROOT, WASM, Envoy, envoy_config, filter_config  # noqa: E402
from vendors import MockVendors  # noqa: E402

# Each vendor as a whole (one unit of health for all its models): the
# failover and signal tests watch vendors. tests/e2e/test_models.py
# covers the per-model units vendors have by default.
VENDORS = [
    {"name": "anthropic", "cluster": "anthropic", "priority": 0, "model_units": 0},
    {"name": "openai", "cluster": "openai", "priority": 1, "model_units": 0},
    {"name": "xai", "cluster": "xai", "priority": 2, "model_units": 0},
]


@pytest.fixture(scope="session", autouse=True)
def built_wasm() -> Path:
    if not WASM.exists():
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip1"], cwd=ROOT, check=True)
    return WASM


@pytest.fixture
def vendors():
    mock = MockVendors({"anthropic": 0, "openai": 0, "xai": 0})
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def make_envoy(vendors, tmp_path):
    """make_envoy(**filter_overrides, envoy={...envoy_config kwargs},
    ports={vendor: port} to point a vendor's cluster elsewhere) -> started Envoy."""
    started: list[Envoy] = []

    def make(envoy: dict | None = None, concurrency: int = 2, vendor_list=None, ports=None, **overrides) -> Envoy:
        fc = filter_config(vendor_list or VENDORS, **overrides)
        cfg = envoy_config(fc, {**vendors.ports, **(ports or {})}, **(envoy or {}))
        e = Envoy(cfg, concurrency=concurrency, workdir=tmp_path / f"envoy{len(started)}")
        started.append(e)
        return e.start()

    yield make
    for e in started:
        e.stop()


class Client:
    """A keep-alive HTTP/1.1 client that speaks OpenAI chat completions."""

    def __init__(self, port: int, timeout: float = 15):
        self.port = port
        self.timeout = timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def chat(self, model: str = "claude-sonnet", stream: bool = False, headers: dict | None = None):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        h = {"content-type": "application/json", "authorization": "Bearer client-key"}
        h.update(headers or {})
        try:
            self.conn.request("POST", "/v1/chat/completions", body=body, headers=h)
            r = self.conn.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            # The answer was a broken connection; the next request gets a fresh one.
            self.reconnect()
            raise
        if r.getheader("connection", "").lower() == "close":
            self.reconnect()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def reconnect(self):
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def close(self):
        self.conn.close()


@pytest.fixture
def client_for():
    clients: list[Client] = []

    def make(envoy: Envoy, timeout: float = 15) -> Client:
        c = Client(envoy.port, timeout)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
