"""LLM-aware failure signals in real Envoy 1.40 (--concurrency 2), driven by
the official `openai` and `anthropic` Python SDKs (their own retries off).

Each test asserts what the SDK returned or raised, what the vendors saw, and
what the filter made of it (its stats and state-change log).
"""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from harness import VENDOR_HEADER

CONTEXT_LENGTH_BODY = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def oai(envoy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="client-key", max_retries=0, timeout=20)


def ant(envoy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url, api_key="client-key", max_retries=0, timeout=20)


def ask_openai(envoy, stream=False):
    """One chat completion; returns (text, vendor) or raises what the SDK raised."""
    client = oai(envoy)
    messages = [{"role": "user", "content": "hi"}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model="gpt-x", messages=messages)
        answer = raw.parse()
        return answer.choices[0].message.content, raw.headers.get(VENDOR_HEADER)
    with client.chat.completions.with_streaming_response.create(model="gpt-x", messages=messages, stream=True) as raw:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
        return text, raw.headers.get(VENDOR_HEADER)


def ask_anthropic(envoy, stream=False):
    client = ant(envoy)
    kwargs = dict(model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
    if not stream:
        raw = client.messages.with_raw_response.create(**kwargs)
        return raw.parse().content[0].text, raw.headers.get(VENDOR_HEADER)
    with client.messages.with_streaming_response.create(stream=True, **kwargs) as raw:
        text = "".join(
            event.delta.text for event in raw.parse() if event.type == "content_block_delta"
        )
        return text, raw.headers.get(VENDOR_HEADER)


def stat(envoy, vendor, name):
    return envoy.vendor_stat(vendor, name)


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s")


# Errors inside 200 streams ----------------------------------------------------


def test_anthropic_overloaded_error_mid_stream_raises_and_counts(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="stream_error", count=1)
    with pytest.raises(anthropic.APIStatusError) as raised:
        ask_anthropic(envoy, stream=True)
    assert "overloaded_error" in str(raised.value)
    assert stat(envoy, "anthropic", "failures_by_reason.stream_error") == 1
    assert stat(envoy, "anthropic", "stream_errors.overloaded_error") == 1
    # The next stream is whole.
    assert ask_anthropic(envoy, stream=True) == ("Hello from anthropic", "anthropic")


def test_openai_error_chunk_mid_stream_raises_and_counts(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="stream_error", count=1)
    with pytest.raises(openai.APIError) as raised:
        ask_openai(envoy, stream=True)
    assert "mid-stream" in str(raised.value)
    assert stat(envoy, "anthropic", "failures_by_reason.stream_error") == 1
    assert stat(envoy, "anthropic", "stream_errors.server_error") == 1


def test_repeated_in_stream_errors_move_traffic(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="stream_error")
    for _ in range(5):
        with pytest.raises(anthropic.APIStatusError):
            ask_anthropic(envoy, stream=True)
    assert ask_anthropic(envoy, stream=True) == ("Hello from openai", "openai")
    assert any("anthropic: closed -> open" in c for c in envoy.state_changes())


# Truncated streams ---------------------------------------------------------


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_stream_cut_before_its_end_marker_makes_the_sdk_raise(sdk, vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="truncate", count=1)
    ask = ask_openai if sdk == "openai" else ask_anthropic
    error = openai.APIError if sdk == "openai" else anthropic.APIStatusError
    with pytest.raises(error) as raised:
        ask(envoy, stream=True)
    assert "ended before its end marker" in str(raised.value)
    assert stat(envoy, "anthropic", "failures_by_reason.truncated") == 1
    assert stat(envoy, "anthropic", "truncations_closed") == 1
    # Whole streams are left alone.
    assert ask(envoy, stream=True) == ("Hello from anthropic", "anthropic")
    assert stat(envoy, "anthropic", "truncations_closed") == 1


# Rate limits -------------------------------------------------------------------


def test_429_with_retry_after_skips_the_vendor_for_that_long(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="status", status=429, headers={"retry-after": "2"}, count=1)
    with pytest.raises(openai.RateLimitError):
        ask_openai(envoy)
    limited_at = time.time()
    # Skipped: the next vendor answers, the limited one sees nothing.
    before = vendors.stats("anthropic")["requests"]
    served = []
    while time.time() - limited_at < 4:
        served.append((time.time() - limited_at, ask_openai(envoy)[1]))
        time.sleep(0.05)
    first_back = next(t for t, v in served if v == "anthropic")
    assert all(v == "openai" for t, v in served if t < first_back)
    assert 1.8 <= first_back <= 2.4, first_back
    assert vendors.stats("anthropic")["requests"] > before
    # Kept apart from health: no failure, no ejection.
    assert stat(envoy, "anthropic", "rate_limited") == 1
    assert stat(envoy, "anthropic", "failures") == 0
    assert stat(envoy, "anthropic", "ejections") == 0
    assert any("anthropic: closed -> rate-limited" in c for c in envoy.state_changes())
    print(f"\n429 retry-after: 2 -> vendor skipped for {first_back:.2f}s")


def test_429_without_headers_gets_the_default_cooldown(vendors, make_envoy):
    envoy = make_envoy(rate_limit={"default_cooldown": "1s", "max_cooldown": "10s"})
    vendors.set_fault("anthropic", mode="status", status=429, count=1)
    with pytest.raises(anthropic.RateLimitError):
        ask_anthropic(envoy)
    limited_at = time.time()
    assert ask_anthropic(envoy)[1] == "openai"
    wait_for(lambda: ask_anthropic(envoy)[1] == "anthropic", timeout=5)
    back_after = time.time() - limited_at
    assert 0.9 <= back_after <= 1.6, back_after
    assert stat(envoy, "anthropic", "failures") == 0


def test_anthropic_rate_limit_reset_headers_are_understood(vendors, make_envoy):
    envoy = make_envoy()
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3))
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    vendors.set_fault("anthropic", mode="status", status=429, headers=headers, count=1)
    with pytest.raises(anthropic.RateLimitError):
        ask_anthropic(envoy)
    time.sleep(1)
    assert ask_anthropic(envoy)[1] == "openai", "still inside the announced reset"


# Slow and stalled vendors ----------------------------------------------------


def test_a_slow_first_byte_counts_toward_the_slow_ratio(vendors, make_envoy):
    envoy = make_envoy(
        slow={"first_byte": "300ms", "stall": "off", "ratio": 1.0},
        trip={"min_requests": 3, "failure_ratio": 0.5, "consecutive_failures": 5},
    )
    vendors.set_fault("anthropic", mode="slow_first_byte", delay=0.5)
    for _ in range(3):
        text, vendor = ask_openai(envoy)
        assert (text, vendor) == ("Hello from anthropic", "anthropic"), "slow, but the answer is whole"
    assert stat(envoy, "anthropic", "slow") == 3
    # Three slow of three: ejected, the next request goes elsewhere.
    assert ask_openai(envoy)[1] == "openai"
    changes = envoy.state_changes()
    assert any("anthropic: closed -> open" in c and "3 slow" in c for c in changes), changes


def test_a_stream_that_stalls_then_resumes_counts_as_slow(vendors, make_envoy):
    envoy = make_envoy(slow={"first_byte": "off", "stall": "300ms", "ratio": 1.0})
    vendors.set_fault("anthropic", mode="stall", delay=0.6, count=1)
    assert ask_openai(envoy, stream=True) == ("Hello from anthropic", "anthropic")
    assert stat(envoy, "anthropic", "slow") == 1
    assert stat(envoy, "anthropic", "failures") == 0


def test_a_stream_stalled_past_envoys_idle_timeout_is_cut_and_counted(vendors, make_envoy):
    envoy = make_envoy(envoy={"route_idle_timeout": "1s"})
    vendors.set_fault("anthropic", mode="stall", delay=5, count=1)
    started = time.time()
    with pytest.raises((openai.APIError, openai.APIConnectionError)) as raised:
        ask_openai(envoy, stream=True)
    print(f"\nstalled stream: the SDK raised {type(raised.value).__module__}.{type(raised.value).__name__}")
    assert time.time() - started < 4, "Envoy's idle timeout cut the silent stream"
    wait_for(lambda: stat(envoy, "anthropic", "failures_by_reason.stalled") == 1, timeout=3)
    vendors.heal("anthropic")


# Client errors -----------------------------------------------------------------


def test_context_length_exceeded_leaves_the_vendor_healthy(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="status", status=400, body=CONTEXT_LENGTH_BODY)
    for _ in range(12):
        with pytest.raises(openai.BadRequestError) as raised:
            ask_openai(envoy)
        assert raised.value.code == "context_length_exceeded"
    assert vendors.stats("anthropic")["requests"] == 12, "every one went to the same, healthy vendor"
    assert stat(envoy, "anthropic", "client_errors") == 12
    assert stat(envoy, "anthropic", "failures") == 0
    assert stat(envoy, "anthropic", "state") == 0
    vendors.heal("anthropic")
    assert ask_openai(envoy)[1] == "anthropic"


@pytest.mark.parametrize("status", [404, 413, 422])
def test_other_client_errors_leave_the_vendor_healthy(status, vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="status", status=status)
    for _ in range(8):
        with pytest.raises(anthropic.APIStatusError):
            ask_anthropic(envoy)
    assert stat(envoy, "anthropic", "failures") == 0
    assert stat(envoy, "anthropic", "ejections") == 0


def test_a_refused_key_is_an_outage(vendors, make_envoy):
    envoy = make_envoy()
    vendors.set_fault("anthropic", mode="status", status=401)
    for _ in range(5):
        with pytest.raises(anthropic.AuthenticationError):
            ask_anthropic(envoy)
    assert stat(envoy, "anthropic", "failures_by_reason.auth") == 5
    assert ask_anthropic(envoy)[1] == "openai"


def test_whole_answers_in_both_formats_pass_untouched(vendors, make_envoy):
    envoy = make_envoy()
    assert ask_openai(envoy) == ("Hello from anthropic", "anthropic")
    assert ask_openai(envoy, stream=True) == ("Hello from anthropic", "anthropic")
    assert ask_anthropic(envoy) == ("Hello from anthropic", "anthropic")
    assert ask_anthropic(envoy, stream=True) == ("Hello from anthropic", "anthropic")
    assert stat(envoy, "anthropic", "failures") == 0
    assert stat(envoy, "anthropic", "truncations_closed") == 0
