"""Operating the filter during an incident, in real Envoy 1.40 (--concurrency
2): the status document (JSON, and a plain HTML page read in headless
Chromium) served by every worker to the token's bearer only, drains that
move traffic on every worker at once, configuration reloads through Envoy's
real update path (file-based LDS) that keep what the filter learned, and
secrets that show nowhere."""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import VENDORS
from harness import ROOT, Envoy, envoy_config, filter_config, with_file_lds

TOKEN = "adm-tok-5c1e9b7d0a2f4e68"
KEYS = {"ANTHROPIC_KEY": "sk-ant-secret-1d4e", "OPENAI_KEY": "sk-oai-secret-8a2c", "XAI_KEY": "xai-secret-3f9b"}
ENV = {**KEYS, "LLMF_ADMIN_TOKEN": TOKEN}
KEYED = [{**v, "api_key_env": name} for v, name in zip(VENDORS, KEYS)]
ADMIN = {"path": "/llm-failover", "token_env": "LLMF_ADMIN_TOKEN"}
ARTIFACTS = ROOT / "target" / "test-artifacts"


def settings(**overrides):
    base = dict(
        admin=ADMIN,
        rescue={"max_attempts": 3, "deadline": "10s"},
        ejection={"base": "30s", "max": "60s", "decay": "60s"},
    )
    base.update(overrides)
    return base


def start(vendors, tmp_path, lds=False, **overrides) -> Envoy:
    cfg = envoy_config(filter_config(KEYED, **settings(**overrides)), dict(vendors.ports), host_env=list(ENV))
    if lds:
        listener = cfg["static_resources"]["listeners"][0]
        # A fixed port, as a real listener has: an update takes over its address.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            listener["address"]["socket_address"]["port_value"] = s.getsockname()[1]
        envoy = Envoy(with_file_lds(cfg), workdir=tmp_path, env=ENV, log_level="trace", components="wasm:trace")
        envoy.write_listeners([listener])
        envoy.listener = listener
    else:
        envoy = Envoy(cfg, workdir=tmp_path, env=ENV, log_level="trace", components="wasm:trace")
    return envoy.start()


def request(envoy, method, path, token=TOKEN, headers=None, body=None):
    """(status, headers, body) on a new connection (so both workers serve)."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    h = dict(headers or {})
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def chat(envoy):
    """The vendor that served one chat completion, on a new connection."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    status, headers, _ = request(envoy, "POST", "/v1/chat/completions", token=None,
                                 headers={"content-type": "application/json"}, body=body)
    assert status == 200
    return headers.get("x-llm-failover-vendor")


def units(doc):
    return {u["unit"]: u for u in doc["units"]}


def test_status_shows_the_real_state_from_every_worker(vendors, tmp_path):
    envoy = start(vendors, tmp_path)
    try:
        vendors.set_fault("anthropic", mode="status", status=503)
        for _ in range(6):
            chat(envoy)  # rescued by openai; anthropic trips after 5
        docs, workers = [], set()
        for _ in range(30):
            status, headers, body = request(envoy, "GET", "/llm-failover")
            assert status == 200 and headers["content-type"] == "application/json"
            workers.add(headers["x-llm-failover-worker"])
            docs.append(json.loads(body))
        assert len(workers) == 2, f"both workers answered: {workers}"
        for doc in docs:
            a = units(doc)["anthropic"]
            assert a["state"] == "open"
            # An ejection starts a fresh window; the lifetime counts keep the story.
            assert a["ejections"] == 1 and a["backoff_level"] == 1
            assert a["ejected_until_ms"] > doc["now_ms"]
            assert a["window"]["length_ms"] == 10_000
            assert units(doc)["openai"]["state"] == "closed"
            failures = dict(next(v for v in doc["vendors"] if v["name"] == "anthropic")["failures_by_reason"])
            assert failures["status"] >= 5
        strip = lambda d: json.dumps({**d, "now_ms": 0}, sort_keys=True)  # noqa: E731
        assert len({strip(d) for d in docs}) == 1, "the same document from every worker"
    finally:
        envoy.stop()


def test_anyone_without_the_token_gets_what_a_missing_path_gets(vendors, tmp_path):
    envoy = start(vendors, tmp_path)
    try:
        missing = request(envoy, "GET", "/no-such-path", token=None)
        for token in (None, "wrong-token-000000000", TOKEN[:-1], TOKEN + "x"):
            for method, path in (("GET", "/llm-failover"), ("POST", "/llm-failover/drain?vendor=anthropic")):
                status, _, body = request(envoy, method, path, token=token)
                assert status == 404 == missing[0], (token, method, path, body)
                assert json.loads(body).keys() == json.loads(missing[2]).keys()
        assert chat(envoy) == "anthropic", "nothing was drained"
        assert "wrong-token-000000000" not in envoy.log()
    finally:
        envoy.stop()


def test_a_drain_moves_all_traffic_at_once_and_an_undrain_brings_it_back(vendors, tmp_path):
    envoy = start(vendors, tmp_path)
    try:
        assert chat(envoy) == "anthropic"
        status, _, body = request(envoy, "POST", "/llm-failover/drain?vendor=anthropic")
        assert status == 200, body
        drained_at = time.monotonic()
        served = [chat(envoy) for _ in range(20)]
        assert time.monotonic() - drained_at < 5
        assert "anthropic" not in served, "no request reached the drained vendor, on either worker"
        assert envoy.vendor_stat("anthropic", "drained") == 1
        status, _, body = request(envoy, "GET", "/llm-failover")
        doc = json.loads(body)
        assert next(v for v in doc["vendors"] if v["name"] == "anthropic")["drained"] == "api"
        assert [d["vendor"] for d in doc["drains"]] == ["anthropic"]
        assert envoy.log().count("anthropic: drained by an operator") == 1, "one log line"
        # Drain the next, then the last: refused unless forced.
        assert request(envoy, "POST", "/llm-failover/drain?vendor=openai")[0] == 200
        status, _, body = request(envoy, "POST", "/llm-failover/drain?vendor=xai")
        assert status == 409 and b"would leave no vendor to serve" in body
        assert chat(envoy) == "xai"
        assert request(envoy, "POST", "/llm-failover/undrain?vendor=openai")[0] == 200
        assert request(envoy, "POST", "/llm-failover/undrain?vendor=anthropic")[0] == 200
        undrained_at = time.monotonic()
        served = [chat(envoy) for _ in range(10)]
        assert served == ["anthropic"] * 10 and time.monotonic() - undrained_at < 5
        assert envoy.vendor_stat("anthropic", "drained") == 0
    finally:
        envoy.stop()


def test_a_model_drain_leaves_the_vendors_other_models(vendors, tmp_path):
    envoy = start(vendors, tmp_path)
    try:
        assert request(envoy, "POST", "/llm-failover/drain?vendor=anthropic&model=m")[0] == 200
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        other = json.dumps({"model": "n", "messages": [{"role": "user", "content": "hi"}]})
        h = {"content-type": "application/json"}
        assert request(envoy, "POST", "/v1/chat/completions", None, h, body)[1]["x-llm-failover-vendor"] == "openai"
        assert request(envoy, "POST", "/v1/chat/completions", None, h, other)[1]["x-llm-failover-vendor"] == "anthropic"
    finally:
        envoy.stop()


def test_a_reload_under_traffic_keeps_an_ejection_and_a_new_window_starts_clean(vendors, tmp_path):
    envoy = start(vendors, tmp_path, lds=True)
    stop = threading.Event()
    seen: list[str | None] = []

    def traffic():
        while not stop.is_set():
            try:
                seen.append(chat(envoy))
            except (AssertionError, OSError, http.client.HTTPException):
                seen.append("error")
            time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    try:
        vendors.set_fault("anthropic", mode="status", status=503)
        for _ in range(6):
            chat(envoy)
        vendors.heal("anthropic")  # healthy again, but ejected for 30 s
        worker.start()
        until = units(json.loads(request(envoy, "GET", "/llm-failover")[2]))["anthropic"]["ejected_until_ms"]
        # A changed configuration (another trip rule, a changed vendor list order
        # of preference is not touched), written while traffic flows.
        changed = json.loads(json.dumps(envoy.listener))
        wasm = next(f for f in changed["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                    if f["name"] == "envoy.filters.http.wasm")
        wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(
            filter_config(KEYED, **settings(trip={"min_requests": 20, "failure_ratio": 0.6, "consecutive_failures": 4})))
        before = envoy.stats().get("listener_manager.lds.update_success", 0)
        envoy.write_listeners([changed])
        deadline = time.time() + 10
        while envoy.stats().get("listener_manager.lds.update_success", 0) <= before and time.time() < deadline:
            time.sleep(0.05)
        assert envoy.stats().get("listener_manager.lds.update_success", 0) > before, "the reload was applied"
        time.sleep(1.0)
        stop.set()
        worker.join()
        assert "error" not in seen and "anthropic" not in seen, "still ejected through the reload"
        doc = json.loads(request(envoy, "GET", "/llm-failover")[2])
        assert units(doc)["anthropic"]["state"] == "open"
        assert units(doc)["anthropic"]["ejected_until_ms"] == until, "the same ejection, kept"
        # A new window shape is new state: the vendor starts clean.
        wasm["typed_config"]["config"]["configuration"]["value"] = json.dumps(
            filter_config(KEYED, **settings(window={"length": "20s", "buckets": 10})))
        before = envoy.stats().get("listener_manager.lds.update_success", 0)
        envoy.write_listeners([changed])
        deadline = time.time() + 10
        while envoy.stats().get("listener_manager.lds.update_success", 0) <= before and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert chat(envoy) == "anthropic"
        assert units(json.loads(request(envoy, "GET", "/llm-failover")[2]))["anthropic"]["state"] == "closed"
    finally:
        stop.set()
        envoy.stop()


class _Forward(http.server.BaseHTTPRequestHandler):
    """Adds the bearer token a browser cannot be told to send, and forwards to Envoy."""

    target: tuple[str, int]

    def do_GET(self):  # noqa: N802 (http.server's name)
        conn = http.client.HTTPConnection(*self.target, timeout=10)
        conn.request("GET", self.path, headers={"authorization": f"Bearer {TOKEN}", "accept": self.headers.get("accept", "")})
        r = conn.getresponse()
        body = r.read()
        self.send_response(r.status)
        self.send_header("content-type", r.getheader("content-type", "text/plain"))
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_html_status_page_reads_in_a_browser(vendors, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "make setup installs chromium"
    envoy = start(vendors, tmp_path)
    _Forward.target = ("127.0.0.1", envoy.port)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vendors.set_fault("anthropic", mode="status", status=503)
        for _ in range(6):
            chat(envoy)
        assert request(envoy, "POST", "/llm-failover/drain?vendor=xai")[0] == 200
        url = f"http://127.0.0.1:{server.server_address[1]}/llm-failover"
        browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + str(tmp_path / "chrome")]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60).stdout
        text = dom.replace("\n", " ")
        assert "llm-failover status" in text
        vendors_table = text[text.index("<h2>Vendors</h2>"):text.index("<h2>Units</h2>")]
        for vendor, state in (("anthropic", "open"), ("openai", "closed"), ("xai", "closed")):
            row = vendors_table[vendors_table.index(f"<td>{vendor}</td>"):].split("</tr>")[0]
            assert f"<td>{state}</td>" in row, (vendor, state, row)
        assert "yes (api)" in text, "xai's drain shows"
        assert "<script" not in dom
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1400,900", url],
                       capture_output=True, timeout=60)
        assert shot.exists() and shot.stat().st_size > 10_000, "the screenshot is kept"
    finally:
        server.shutdown()
        envoy.stop()


def test_the_token_and_the_keys_show_nowhere(vendors, tmp_path):
    envoy = start(vendors, tmp_path)
    try:
        answers = [request(envoy, "GET", "/llm-failover"), request(envoy, "GET", "/llm-failover?format=html"),
                   request(envoy, "POST", "/llm-failover/drain?vendor=nope"),
                   request(envoy, "POST", "/llm-failover/drain?vendor=anthropic"),
                   request(envoy, "GET", "/llm-failover", token="a-wrong-token-1234567")]
        vendors.set_fault("openai", mode="status", status=503)
        answers += [request(envoy, "POST", "/v1/chat/completions", None, {"content-type": "application/json"},
                            json.dumps({"model": "m", "messages": []})) for _ in range(3)]
        exposed = {
            "log (wasm at trace)": envoy.log(),
            "stats": envoy._get("/stats"),
            "prometheus": envoy.prometheus(),
            "config_dump": envoy._get("/config_dump?include_eds"),
            "answers": "\n".join(json.dumps(h) + b.decode("utf-8", "replace") for _, h, b in answers),
        }
        for name, text in exposed.items():
            for secret in (TOKEN, *KEYS.values()):
                assert secret not in text, f"a secret shows in {name}"
    finally:
        envoy.stop()
