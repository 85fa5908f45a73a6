"""Live-streamed rescue in real Envoy 1.40 (--concurrency 2): the same module
as an upstream filter on each vendor cluster hands a failed answer back to
the router as an internal redirect, and the next vendor's stream reaches the
client as it is produced; the official SDKs are the clients."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import time

import anthropic
import openai
import pytest

from harness import RELAY_HEADER, VENDOR_HEADER, Envoy, EnvoyFailed, envoy_config, filter_config

KEYS = {"ANTHROPIC_KEY": "sk-ant-vendor", "OPENAI_KEY": "sk-openai-vendor", "XAI_KEY": "xai-vendor"}
CLIENT_KEY = "sk-client-must-not-leak"

VENDORS = [
    {
        "name": "anthropic",
        "host": "api.anthropic.test",
        "api_key_env": "ANTHROPIC_KEY",
        "models": {"sonnet": "claude-sonnet-4-5", "*": "claude-haiku-4-5"},
    },
    {
        "name": "openai",
        "priority": 1,
        "host": "api.openai.test",
        "api_key_env": "OPENAI_KEY",
        "paths": {"openai": "/openai/v1/chat/completions"},
        # Keyed by the client's model name: the next vendor maps the
        # original name, not the first vendor's.
        "models": {"sonnet": "gpt-4.1", "*": "gpt-4.1-mini"},
    },
    {"name": "xai", "priority": 2, "api_key_env": "XAI_KEY", "models": {"*": "grok-4"}},
]
RESCUE = {"max_attempts": 3, "deadline": "10s", "relay": True}
# Events 100 ms apart: a whole healthy stream takes about 0.7 s.
INTERVAL = 0.1


@pytest.fixture
def gateway(vendors, make_envoy):
    def make(rescue=None, envoy=None, **overrides):
        return make_envoy(
            vendor_list=VENDORS,
            rescue=rescue or RESCUE,
            envoy={"env": KEYS, "relay": True, **(envoy or {})},
            **overrides,
        )

    return make


def oai(envoy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def ant(envoy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def timed_openai_stream(envoy, model="sonnet"):
    """(first chunk s, whole s, text, answer model, headers) of one openai SDK stream."""
    started = time.monotonic()
    first = None
    text = ""
    with oai(envoy).chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        for chunk in raw.parse():
            if first is None:
                first = time.monotonic() - started
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            model_seen = chunk.model
        headers = raw.headers
    return first, time.monotonic() - started, text, model_seen, headers


def timed_anthropic_stream(envoy, model="sonnet"):
    started = time.monotonic()
    first = None
    text = ""
    with ant(envoy).messages.with_streaming_response.create(
        model=model, max_tokens=32, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        for event in raw.parse():
            if first is None:
                first = time.monotonic() - started
            if event.type == "content_block_delta":
                text += event.delta.text
            if event.type == "message_start":
                model_seen = event.message.model
        headers = raw.headers
    return first, time.monotonic() - started, text, model_seen, headers


def stat(envoy, name):
    return envoy.stats().get(f"wasmcustom.llm_failover.{name}", 0)


@pytest.mark.parametrize("status", [503, 529, 500])
def test_a_rescued_openai_stream_streams_from_the_next_vendor(status, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=status)
    vendors.set_fault("openai", mode="ok", interval=INTERVAL)
    first, whole, text, model, headers = timed_openai_stream(envoy)
    assert (text, model) == ("Hello from openai", "gpt-4.1")
    # Live: the first event arrived long before the last (not held whole).
    assert first < whole - 3 * INTERVAL, f"first chunk at {first:.3f}s of {whole:.3f}s"
    assert headers[VENDOR_HEADER] == "openai"
    assert headers["x-llm-failover-attempts"] == "2"
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert (stat(envoy, "relayed"), stat(envoy, "rescue_attempts")) == (1, 0)
    assert envoy.vendor_stat("anthropic", "failures") == 1


def test_a_rescued_anthropic_stream_streams_from_a_vendor_that_speaks_it(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=529)
    vendors.set_fault("xai", mode="ok", interval=INTERVAL)
    first, whole, text, model, headers = timed_anthropic_stream(envoy)
    # openai serves no Anthropic format: xai does, at the client's path.
    assert (text, model) == ("Hello from xai", "grok-4")
    assert first < whole - 3 * INTERVAL, f"first event at {first:.3f}s of {whole:.3f}s"
    assert headers["x-llm-failover-tried"] == "anthropic,xai"
    assert vendors.requests("xai")[-1]["path"] == "/v1/messages"
    assert vendors.stats("openai")["requests"] == 0
    assert stat(envoy, "relayed") == 1


def test_each_vendor_gets_its_own_model_key_path_and_nothing_of_the_relay(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503)
    raw = oai(envoy).chat.completions.with_raw_response.create(
        model="sonnet", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content == "Hello from openai"
    a, o = vendors.requests("anthropic")[-1], vendors.requests("openai")[-1]
    assert a["body"]["model"] == "claude-sonnet-4-5"
    assert o["body"]["model"] == "gpt-4.1", "the client's model, mapped by the next vendor"
    assert o["path"] == "/openai/v1/chat/completions"
    assert o["headers"]["host"] == "api.openai.test"
    assert o["headers"]["authorization"] == "Bearer sk-openai-vendor"
    for r in (a, o):
        seen = json.dumps(r["headers"]).lower()
        assert CLIENT_KEY not in seen
        assert RELAY_HEADER not in seen and "x-envoy-original-url" not in seen
    assert "sk-ant-vendor" not in json.dumps(o["headers"]), "the first vendor's key stays with it"
    assert raw.headers.get(RELAY_HEADER) is None


def test_a_rate_limit_moves_at_once_and_is_counted_as_one(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=429, headers={"retry-after": "30"})
    model, text = None, None
    with oai(envoy).chat.completions.with_streaming_response.create(
        model="sonnet", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        chunks = list(raw.parse())
        model = chunks[0].model
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (model, text) == ("gpt-4.1", "Hello from openai")
    assert envoy.vendor_stat("anthropic", "rate_limited") == 1
    assert envoy.vendor_stat("anthropic", "failures") == 0
    # The vendor is skipped for the wait it asked for: the next request
    # goes straight to openai.
    chat = oai(envoy).chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hi"}])
    assert chat.model == "gpt-4.1"
    assert vendors.stats("anthropic")["requests"] == 1


def test_every_vendor_failing_ends_with_the_filters_503_naming_them(vendors, gateway):
    envoy = gateway()
    for v in ("anthropic", "openai", "xai"):
        vendors.set_fault(v, mode="status", status=503)
    with pytest.raises(openai.APIStatusError) as raised:
        oai(envoy).chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hi"}])
    r = raised.value.response
    assert r.status_code == 503
    assert r.headers["x-llm-failover-tried"] == "anthropic,openai,xai"
    assert [vendors.stats(v)["requests"] for v in ("anthropic", "openai", "xai")] == [1, 1, 1]
    assert stat(envoy, "relayed") == 2
    # One request failing everywhere charges only its first attempt.
    assert (envoy.vendor_stat("openai", "failures"), envoy.vendor_stat("xai", "failures")) == (0, 0)
    assert stat(envoy, "failed_everywhere") == 1


def test_a_stream_whose_first_event_is_an_error_is_still_rescued(vendors, gateway):
    # The upstream filter cannot hold a 200's headers (Envoy 1.40 stalls
    # such a stream): the downstream filter holds it and rescues with a
    # callout, as without the relay.
    envoy = gateway()
    vendors.set_fault("anthropic", mode="stream_error", events=0, count=1)
    first, whole, text, model, headers = timed_openai_stream(envoy)
    assert (text, model, headers[VENDOR_HEADER]) == ("Hello from openai", "gpt-4.1", "openai")
    assert (stat(envoy, "relayed"), stat(envoy, "rescue_attempts")) == (0, 1)


def test_without_a_redirect_policy_the_hand_back_is_rescued_by_a_callout(vendors, gateway):
    envoy = gateway(envoy={"redirect_policy": False})
    vendors.set_fault("anthropic", mode="status", status=503)
    chat = oai(envoy).chat.completions.create(model="sonnet", messages=[{"role": "user", "content": "hi"}])
    assert (chat.model, chat.choices[0].message.content) == ("gpt-4.1", "Hello from openai")
    assert stat(envoy, "relays_not_followed") == 1
    assert stat(envoy, "rescue_attempts") == 1
    assert "did not follow the upstream filter's redirect" in envoy.log()


def test_a_clients_relay_header_is_ignored_and_never_forwarded(vendors, gateway):
    envoy = gateway()
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    body = json.dumps({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]})
    for forged in ("0123456789abcdef;s503", "0123456789abcdef;sfp;http://evil/x", "x" * 300):
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"content-type": "application/json", RELAY_HEADER: forged},
        )
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader(VENDOR_HEADER) == "anthropic"
    assert all(RELAY_HEADER not in json.dumps(q["headers"]).lower() for q in vendors.requests("anthropic"))
    assert stat(envoy, "relayed") == 0


def test_a_vendors_own_redirect_is_not_followed(vendors, gateway):
    envoy = gateway()
    vendors.set_fault(
        "anthropic", mode="status", status=307, headers={"location": "http://127.0.0.1:1/steal", RELAY_HEADER: "x"}
    )
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    body = json.dumps({"model": "sonnet", "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    assert r.status == 307, "the vendor's answer, as it gave it"
    assert r.getheader("location") is None and r.getheader(RELAY_HEADER) is None
    assert vendors.stats("openai")["requests"] == 0


def test_concurrent_rescues_all_stream_and_every_attempt_is_counted(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503, count=12)

    def one(i):
        if i % 2:
            return timed_openai_stream(envoy)[2]
        return oai(envoy).chat.completions.create(
            model="sonnet", messages=[{"role": "user", "content": "hi"}]
        ).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(24)))
    assert all(t.startswith("Hello from") for t in texts)
    served = sum(vendors.stats(v)["requests"] for v in ("anthropic", "openai", "xai"))
    failed = vendors.stats("anthropic")["requests"]  # each failed (it is ejected after 5)
    assert 5 <= failed <= 12
    assert stat(envoy, "relayed") == failed
    assert served == 24 + failed, "each request once, plus one more for each failed first attempt"
    time.sleep(1.2)  # batched successes are written on the next refresh
    total = sum(envoy.vendor_stat(v, "requests") for v in ("anthropic", "openai", "xai"))
    assert total == served, "every attempt recorded once, none twice"


def test_both_roles_in_one_vm_are_refused(vendors, tmp_path):
    fc = filter_config(VENDORS, rescue=RESCUE)
    cfg = envoy_config(fc, dict(vendors.ports), env=KEYS, relay=True)
    for c in cfg["static_resources"]["clusters"]:
        opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        up = opts["http_filters"][0]["typed_config"]["config"]
        up["vm_config"] = dict(up["vm_config"], vm_id="llm_failover", environment_variables={"key_values": KEYS})
    envoy = Envoy(cfg, concurrency=2, workdir=tmp_path / "envoy")
    # Envoy refuses it where its configuration is checked, or, where the
    # roles first meet in a worker's VM, the worker's plugin fails (closed).
    try:
        envoy.start()
    except EnvoyFailed:
        pass
    log = envoy.log()
    envoy.stop()
    assert "config field `role`: the downstream and the upstream filter cannot share a VM" in log
    assert "panic" not in log


def test_an_upstream_filter_with_a_downstream_field_is_refused(vendors, tmp_path):
    fc = filter_config(VENDORS, rescue=RESCUE)
    cfg = envoy_config(fc, dict(vendors.ports), env=KEYS, relay=True)
    c = cfg["static_resources"]["clusters"][0]
    opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    opts["http_filters"][0]["typed_config"]["config"]["configuration"]["value"] = json.dumps(
        {"role": "upstream", "vendors": []}
    )
    envoy = Envoy(cfg, concurrency=2, workdir=tmp_path / "envoy")
    with pytest.raises(EnvoyFailed):
        envoy.start()
    log = envoy.log()
    envoy.stop()
    assert "config field `vendors`: is not taken by an upstream filter" in log
