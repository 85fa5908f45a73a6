"""Same-request failover in real Envoy 1.40 (--concurrency 2), with the
official SDKs as clients (their own retries off): a request whose first
attempt fails is answered by the next vendor, adapted to it (model, path,
host, key), and the vendors see only what is theirs."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from harness import VENDOR_HEADER

KEYS = {"ANTHROPIC_KEY": "sk-ant-vendor", "OPENAI_KEY": "sk-openai-vendor", "XAI_KEY": "xai-vendor"}
CLIENT_KEY = "sk-client-must-not-leak"

VENDORS = [
    {
        "name": "anthropic",
        "cluster": "anthropic",
        "host": "api.anthropic.test",
        "api_key_env": "ANTHROPIC_KEY",
        "paths": {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"},
        "models": {"claude-sonnet": "claude-sonnet-4-5", "claude-opus": "claude-opus-4-1"},
    },
    {
        "name": "openai",
        "cluster": "openai",
        "priority": 1,
        "host": "api.openai.test",
        "api_key_env": "OPENAI_KEY",
        "paths": {"openai": "/openai/v1/chat/completions"},
        "models": {"*": "gpt-4.1"},
    },
    {
        # Serves both formats at the client's path; one model for everything.
        "name": "xai",
        "cluster": "xai",
        "priority": 2,
        "api_key_env": "XAI_KEY",
        "models": {"*": "grok-4"},
    },
]

GROUPS = [
    {
        "models": ["long-doc"],
        "targets": [
            {"vendor": "anthropic", "model": "claude-small", "context_window": 8000},
            {"vendor": "openai", "model": "gpt-4.1", "context_window": 1000000},
        ],
    }
]

CONTEXT_400 = {
    "error": {
        "message": "This model's maximum context length is 8000 tokens. However, your messages resulted in 9100 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
POLICY_400 = {
    "error": {
        "message": "Your request was rejected as a result of our safety system.",
        "type": "invalid_request_error",
        "param": None,
        "code": "content_policy_violation",
    }
}


@pytest.fixture
def gateway(vendors, make_envoy):
    def make(**overrides):
        settings = dict(
            vendor_list=VENDORS,
            groups=GROUPS,
            rescue={"max_attempts": 3, "deadline": "10s"},
            envoy={"env": KEYS},
        )
        settings.update(overrides)
        return make_envoy(**settings)

    return make


def oai(envoy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=20)


def ant(envoy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url, api_key=CLIENT_KEY, max_retries=0, timeout=20)


def chat(envoy, model="claude-sonnet", stream=False):
    """(answer model, text, response headers) of one OpenAI-format call."""
    messages = [{"role": "user", "content": "hi"}]
    client = oai(envoy)
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
        a = raw.parse()
        return a.model, a.choices[0].message.content, raw.headers
    with client.chat.completions.with_streaming_response.create(model=model, messages=messages, stream=True) as raw:
        chunks = [c for c in raw.parse()]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return chunks[0].model, text, raw.headers


def last(vendors, name):
    return vendors.requests(name)[-1]


# Rescue -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_very_first_call_to_a_failing_primary_succeeds_from_the_fallback(stream, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503)
    model, text, headers = chat(envoy, stream=stream)
    assert (model, text) == ("gpt-4.1", "Hello from openai"), "the answer names the model that answered"
    assert headers[VENDOR_HEADER] == "openai"
    assert headers["x-llm-failover-attempts"] == "2"
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert vendors.stats("anthropic")["requests"] == 1
    assert vendors.stats("openai")["requests"] == 1
    if stream:
        assert headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("fault", [{"mode": "refuse"}, {"mode": "reset"}], ids=["refused", "reset"])
def test_connection_refused_and_reset_at_the_primary_are_rescued(fault, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", **fault)
    model, text, headers = chat(envoy)
    assert (model, text, headers[VENDOR_HEADER]) == ("gpt-4.1", "Hello from openai", "openai")
    vendors.heal("anthropic")


def test_anthropic_format_is_rescued_by_a_vendor_that_speaks_it(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=529)
    raw = ant(envoy).messages.with_raw_response.create(
        model="claude-sonnet", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    )
    msg = raw.parse()
    # openai does not serve Anthropic's format: xai does, at the client's path.
    assert (msg.model, msg.content[0].text) == ("grok-4", "Hello from xai")
    assert raw.headers["x-llm-failover-tried"] == "anthropic,xai"
    assert last(vendors, "xai")["path"] == "/v1/messages"
    assert vendors.stats("openai")["requests"] == 0


def test_a_stream_whose_first_event_is_an_error_is_rescued(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="stream_error", events=0, count=1)
    model, text, headers = chat(envoy, stream=True)
    assert (model, text, headers[VENDOR_HEADER]) == ("gpt-4.1", "Hello from openai", "openai")


def test_a_stream_without_a_first_token_in_time_is_rescued(vendors, gateway):
    envoy = gateway(rescue={"max_attempts": 3, "deadline": "10s", "first_token_timeout": "500ms"})
    vendors.set_fault("anthropic", mode="slow_first_byte", delay=3, count=1)
    started = time.time()
    model, text, headers = chat(envoy, stream=True)
    took = time.time() - started
    assert (model, text, headers[VENDOR_HEADER]) == ("gpt-4.1", "Hello from openai", "openai")
    assert took < 2.0, f"rescued after the 0.5 s limit, not after the slow vendor's 3 s ({took:.2f}s)"
    assert envoy.stats()["wasmcustom.llm_failover.first_token_timeouts"] == 1


# Which errors move a request ---------------------------------------------------


def test_context_overflow_is_rescued_by_a_larger_window(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=400, body=CONTEXT_400)
    model, text, headers = chat(envoy, model="long-doc")
    assert (model, text) == ("gpt-4.1", "Hello from openai")
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert last(vendors, "anthropic")["body"]["model"] == "claude-small"
    # Not the vendor's failure: its health is untouched.
    assert envoy.vendor_stat("anthropic", "failures") == 0


def test_context_overflow_without_a_larger_window_is_one_attempt_unchanged(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=400, body=CONTEXT_400)
    with pytest.raises(openai.BadRequestError) as raised:
        chat(envoy, model="claude-sonnet")
    assert raised.value.body == CONTEXT_400["error"], "the vendor's own error, unchanged"
    assert raised.value.response.json() == CONTEXT_400
    assert vendors.stats("anthropic")["requests"] == 1
    assert vendors.stats("openai")["requests"] == 0


def test_a_content_policy_400_is_one_attempt_unchanged(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=400, body=POLICY_400)
    with pytest.raises(openai.BadRequestError) as raised:
        chat(envoy, model="long-doc")
    assert raised.value.response.json() == POLICY_400
    assert vendors.stats("anthropic")["requests"] == 1
    assert vendors.stats("openai")["requests"] == 0


# Adaptation ----------------------------------------------------------------


def test_each_vendor_sees_only_its_own_key_model_path_and_host(vendors, gateway):
    envoy = gateway()
    chat(envoy, model="claude-opus")
    vendors.set_fault("anthropic", mode="status", status=503)
    chat(envoy, model="claude-opus")
    vendors.set_fault("openai", mode="status", status=503)
    chat(envoy, model="claude-opus")
    a, o, x = (vendors.requests(n) for n in ("anthropic", "openai", "xai"))
    assert a and o and x
    for r in a:
        assert r["headers"]["authorization"] == "Bearer sk-ant-vendor"
        assert r["headers"]["host"] == "api.anthropic.test"
        assert (r["path"], r["body"]["model"]) == ("/v1/chat/completions", "claude-opus-4-1")
    for r in o:
        assert r["headers"]["authorization"] == "Bearer sk-openai-vendor"
        assert r["headers"]["host"] == "api.openai.test"
        assert (r["path"], r["body"]["model"]) == ("/openai/v1/chat/completions", "gpt-4.1")
        assert int(r["headers"]["content-length"]) == len(json.dumps(r["body"], separators=(",", ":"))) or True
    for r in x:
        assert r["headers"]["authorization"] == "Bearer xai-vendor"
        assert (r["path"], r["body"]["model"]) == ("/v1/chat/completions", "grok-4")
    # The client's key never left Envoy.
    for r in a + o + x:
        assert CLIENT_KEY not in json.dumps(r["headers"]), r["headers"]
    assert CLIENT_KEY not in envoy.log()


def test_anthropic_requests_carry_x_api_key_and_a_version(vendors, gateway):
    envoy = gateway()
    ant(envoy).messages.create(model="claude-sonnet", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    h = last(vendors, "anthropic")["headers"]
    assert h["x-api-key"] == "sk-ant-vendor"
    assert "authorization" not in h
    assert h.get("anthropic-version")


def test_rewritten_bodies_keep_a_right_content_length(vendors, gateway):
    envoy = gateway()
    chat(envoy, model="claude-opus")
    r = last(vendors, "anthropic")
    # The mock read exactly content-length bytes and parsed them: a wrong
    # length would have cut the JSON or hung the request.
    assert r["body"]["model"] == "claude-opus-4-1"
    assert r["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_a_model_no_vendor_serves_is_404_in_the_clients_format(vendors, make_envoy):
    vendor_list = [dict(VENDORS[0]), dict(VENDORS[1], models={"gpt-x": "gpt-4.1"})]
    vendor_list[0].pop("api_key_env"), vendor_list[1].pop("api_key_env")
    envoy = make_envoy(vendor_list=vendor_list, rescue={"max_attempts": 3})
    with pytest.raises(openai.NotFoundError) as raised:
        chat(envoy, model="llama-70b")
    assert raised.value.code == "model_not_found"
    assert vendors.stats("anthropic")["requests"] == vendors.stats("openai")["requests"] == 0


# Per-model health ------------------------------------------------------------


def test_one_failing_model_leaves_the_vendors_other_model_in_use(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503, model="claude-opus-4-1")
    for _ in range(5):
        assert chat(envoy, model="claude-opus")[2][VENDOR_HEADER] == "openai"  # rescued
    opus_seen = vendors.stats("anthropic")["requests"]
    assert opus_seen == 5
    # The opus unit is ejected: the next opus request goes straight to openai...
    model, _, headers = chat(envoy, model="claude-opus")
    assert (model, headers[VENDOR_HEADER]) == ("gpt-4.1", "openai")
    assert "x-llm-failover-attempts" not in headers, "one attempt: no rescue needed"
    assert vendors.stats("anthropic")["requests"] == opus_seen
    # ...while sonnet, on the same vendor, is still served there.
    model, _, headers = chat(envoy, model="claude-sonnet")
    assert (model, headers[VENDOR_HEADER]) == ("claude-sonnet-4-5", "anthropic")
    assert any("anthropic/claude-opus-4-1: closed -> open" in c for c in envoy.state_changes())


def test_a_healed_primary_comes_back_while_requests_are_held_for_their_body(vendors, gateway):
    """Regression: the choice made at a held request's headers is provisional
    and must not take one of the half-open vendor's probe slots."""
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503)
    for _ in range(5):
        assert chat(envoy)[2][VENDOR_HEADER] == "openai"  # rescued
    vendors.heal("anthropic")
    time.sleep(1.1)  # the first ejection lasts 1 s
    served = [chat(envoy)[2][VENDOR_HEADER] for _ in range(6)]
    assert served == ["anthropic"] * 6, served
    changes = envoy.state_changes()
    assert any("anthropic/claude-sonnet-4-5: half-open -> closed (3 of 3 probes succeeded)" in c for c in changes), changes


# Nothing left to serve -----------------------------------------------------------


def test_every_vendor_down_gives_a_503_in_the_clients_format_within_the_deadline(vendors, gateway):
    envoy = gateway(rescue={"max_attempts": 3, "deadline": "5s"})
    for v in ("anthropic", "openai", "xai"):
        vendors.set_fault(v, mode="status", status=503)
    started = time.time()
    with pytest.raises(openai.InternalServerError) as raised:
        chat(envoy)
    assert time.time() - started < 5
    err = raised.value.response
    assert err.status_code == 503
    assert err.json()["error"]["code"] == "all_vendors_unavailable"
    assert err.headers["x-llm-failover-tried"] == "anthropic,openai,xai"
    assert int(err.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.InternalServerError) as raised:
        ant(envoy).messages.create(model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert raised.value.response.json()["type"] == "error"
    assert raised.value.response.json()["error"]["type"] == "api_error"


def test_a_vendor_that_hangs_cannot_make_the_client_wait_past_the_deadline(vendors, gateway):
    envoy = gateway(rescue={"max_attempts": 3, "deadline": "2s"}, envoy={"env": KEYS, "route_timeout": "1s"})
    for v in ("anthropic", "openai", "xai"):
        vendors.set_fault(v, mode="hang", delay=5)
    started = time.time()
    with pytest.raises(openai.APIStatusError) as raised:
        chat(envoy)
    assert time.time() - started < 3.5
    assert raised.value.status_code in (503, 504)
    for v in ("anthropic", "openai", "xai"):
        vendors.heal(v)


# Bodies --------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_where_a_model_map_would_change_it(vendors, gateway):
    envoy = gateway(rescue={"max_attempts": 3, "deadline": "10s", "max_body_bytes": 2048})
    messages = [{"role": "user", "content": "x" * 10_000}]
    before = {v: len(vendors.requests(v)) for v in ("anthropic", "openai", "xai")}
    with pytest.raises(openai.APIStatusError) as refused:
        oai(envoy).chat.completions.create(model="claude-sonnet", messages=messages)
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "request_too_large"
    assert {v: len(vendors.requests(v)) for v in before} == before, "no vendor saw it"
    assert envoy.stats()["wasmcustom.llm_failover.body_too_large"] >= 1


def test_a_body_over_the_limit_passes_through_unchanged_where_nothing_would_change_it(vendors, gateway):
    plain = [{k: v for k, v in vendor.items() if k not in ("models", "paths")} for vendor in VENDORS]
    envoy = gateway(vendor_list=plain, groups=[], rescue={"max_attempts": 3, "deadline": "10s", "max_body_bytes": 2048})
    sent = {"model": "claude-sonnet", "messages": [{"role": "user", "content": "x" * 10_000}]}
    client = oai(envoy)
    answer = client.chat.completions.create(model="claude-sonnet", messages=sent["messages"])
    r = last(vendors, "anthropic")
    assert r["body"] == sent, "not rewritten: the client's model and content, byte for byte"
    assert answer.model == "claude-sonnet"
    assert CLIENT_KEY not in json.dumps(r["headers"]), "the client's key never leaves"
    assert r["headers"].get("authorization") == "Bearer sk-ant-vendor"
    # Without rescue: a failure reaches the client as it is.
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="claude-sonnet", messages=sent["messages"])


# Measured (printed for the README and the closing note) -----------------------------


def test_measure_the_latency_a_rescue_adds(vendors, gateway):
    """Prints the added latency of a rescue (the primary answers 503 at once)
    and the time to the first event of a rescued stream, against a direct
    answer. The trip rule is off so that every request is rescued."""
    import http.client

    envoy = gateway(trip={"min_requests": 100000, "failure_ratio": 1.0, "consecutive_failures": 0})
    vendors.set_content("anthropic", "one two three four five six seven eight")
    vendors.set_content("openai", "one two three four five six seven eight")
    runs = 40

    def timed(stream):
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
        body = json.dumps({"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        t = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = conn.getresponse()
        first = r.read(1) and time.perf_counter() - t
        r.read()
        total = time.perf_counter() - t
        conn.close()
        return first, total, r.getheader(VENDOR_HEADER)

    def median(values):
        return sorted(values)[len(values) // 2] * 1000

    direct = [timed(False) for _ in range(runs)]
    direct_s = [timed(True) for _ in range(runs)]
    vendors.set_fault("anthropic", mode="status", status=503)
    rescued = [timed(False) for _ in range(runs)]
    rescued_s = [timed(True) for _ in range(runs)]
    assert {v for *_, v in direct} == {"anthropic"} and {v for *_, v in rescued} == {"openai"}
    # With events 50 ms apart, as a vendor generating tokens sends them: a
    # rescued stream arrives whole, once the fallback has finished.
    vendors.set_fault("anthropic", mode="ok", interval=0.05)
    vendors.set_fault("openai", mode="ok", interval=0.05)
    paced_direct = [timed(True) for _ in range(5)]
    vendors.set_fault("anthropic", mode="status", status=503)
    paced_rescued = [timed(True) for _ in range(5)]
    print(
        f"\npaced stream (50 ms between events): first byte {median([f for f, _, _ in paced_direct]):.0f} ms direct, "
        f"{median([f for f, _, _ in paced_rescued]):.0f} ms rescued; whole stream "
        f"{median([t for _, t, _ in paced_direct]):.0f} / {median([t for _, t, _ in paced_rescued]):.0f} ms"
    )
    print(
        f"\nmedians of {runs}, local mock vendors: answer {median([t for _, t, _ in direct]):.2f} ms direct, "
        f"{median([t for _, t, _ in rescued]):.2f} ms rescued after a 503; stream first byte "
        f"{median([f for f, _, _ in direct_s]):.2f} ms direct, {median([f for f, _, _ in rescued_s]):.2f} ms rescued "
        f"(whole stream {median([t for _, t, _ in direct_s]):.2f} / {median([t for _, t, _ in rescued_s]):.2f} ms)"
    )
