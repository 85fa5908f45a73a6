"""Continuing a stream that failed after content reached the client, in real
Envoy 1.40 (--concurrency 2) with the official SDKs: the filter holds the
stream's end, asks the next vendor to go on from the text delivered (an
assistant prefill), and appends its answer as more deltas with one end and
its usage; a refused prefill ends the stream with the original failure."""

from __future__ import annotations

import anthropic
import openai
import pytest

VENDORS = [
    {"name": "anthropic", "model_units": 0},
    # Takes a trailing assistant message in both formats.
    {"name": "openai", "priority": 1, "model_units": 0, "prefill": "assistant"},
    {"name": "xai", "priority": 2, "model_units": 0, "prefill": "none"},
]


@pytest.fixture
def gateway(vendors, make_envoy):
    def make(vendor_list=VENDORS):
        return make_envoy(
            vendor_list=vendor_list, rescue={"max_attempts": 3, "deadline": "10s"}, envoy={"relay": True}
        )

    return make


def anthropic_stream(envoy):
    """(text, final message, events seen) of one Anthropic SDK stream."""
    client = anthropic.Anthropic(base_url=envoy.url, api_key="k", max_retries=0, timeout=20)
    with client.messages.stream(
        model="m", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    return "".join(b.text for b in final.content if b.type == "text"), final, events


def openai_stream(envoy):
    """(text, chunks) of one OpenAI SDK stream."""
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="k", max_retries=0, timeout=20)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# Events 50 ms apart: the first event reaches the client on its own, so the
# failure comes after content was delivered (an error in the first chunk is
# rescued whole, before anything reached the client).


def stat(envoy, name):
    return envoy.stats().get(f"wasmcustom.llm_failover.{name}", 0)


def prefill_sent(vendors, name):
    return vendors.requests(name)[-1]["body"]["messages"][-1]


@pytest.mark.parametrize(
    "fault",
    [{"mode": "truncate", "events": 5, "interval": 0.05}, {"mode": "stream_error", "events": 5, "interval": 0.05}],
    ids=["cut", "error-event"],
)
def test_an_anthropic_stream_that_fails_mid_answer_is_continued_into_one_answer(fault, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", **fault)
    text, final, events = anthropic_stream(envoy)
    # "Hello from" reached the client from anthropic; openai went on from it.
    assert text == "Hello from openai"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens >= 1
    assert events.count("message_stop") == 1
    assert "error" not in events
    assert prefill_sent(vendors, "openai") == {"role": "assistant", "content": "Hello from"}
    assert vendors.requests("openai")[-1]["body"]["stream"] is False
    assert stat(envoy, "continued") == 1
    # The cut is still the first vendor's failure.
    assert envoy.vendor_stat("anthropic", "failures") == 1


@pytest.mark.parametrize(
    "fault",
    [{"mode": "truncate", "events": 3, "interval": 0.05}, {"mode": "stream_error", "events": 3, "interval": 0.05}],
    ids=["cut", "error-event"],
)
def test_an_openai_stream_that_fails_mid_answer_is_continued_into_one_answer(fault, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", **fault)
    text, chunks = openai_stream(envoy)
    assert text == "Hello from openai"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], "one end"
    assert any(c.usage and c.usage.completion_tokens for c in chunks), "its usage"
    assert len({c.id for c in chunks}) == 1, "one answer's id throughout"
    assert prefill_sent(vendors, "openai") == {"role": "assistant", "content": "Hello from"}


def test_a_refused_prefill_ends_with_the_original_error_event(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="stream_error", events=5, interval=0.05)
    vendors.set_fault("openai", mode="ok", prefill="reject")
    with pytest.raises(anthropic.APIStatusError) as raised:
        anthropic_stream(envoy)
    # The vendor's own overloaded_error, not the prefill's 400.
    assert "Overloaded" in str(raised.value)
    assert "prefill" not in str(raised.value)
    assert stat(envoy, "continuations_failed") == 1


def test_a_refused_prefill_after_a_cut_ends_with_the_truncation_error(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="truncate", events=3, interval=0.05)
    vendors.set_fault("openai", mode="ok", prefill="reject")
    with pytest.raises(openai.APIError) as raised:
        openai_stream(envoy)
    assert "ended before its end marker" in str(raised.value)


def test_without_a_vendor_that_takes_a_prefill_the_cut_is_closed_as_before(vendors, gateway):
    no_prefill = [dict(v, prefill="none") for v in VENDORS]
    envoy = gateway(no_prefill)
    vendors.set_fault("anthropic", mode="truncate", events=5, interval=0.05)
    with pytest.raises(anthropic.APIStatusError) as raised:
        anthropic_stream(envoy)
    assert "ended before its end marker" in str(raised.value)
    assert vendors.stats("openai")["requests"] == 0
    assert stat(envoy, "continued") == 0


def test_a_healthy_stream_is_untouched_by_the_follower(vendors, gateway):
    envoy = gateway()
    text, final, events = anthropic_stream(envoy)
    assert text == "Hello from anthropic" and events.count("message_stop") == 1
    text, chunks = openai_stream(envoy)
    assert text == "Hello from anthropic"
    assert vendors.stats("openai")["requests"] == 0
