"""Buffered mode in real Envoy 1.40 (--concurrency 2) with the official SDKs:
a request asked for whole (by its header, its route group or its vendor) is
answered only once an answer is complete and valid, so a reset, a cut, an
error event or a stall mid-answer is rescued like a failure before the first
byte."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from harness import VENDOR_HEADER

VENDORS = [
    {"name": "anthropic", "model_units": 0},
    {"name": "openai", "priority": 1, "model_units": 0},
    {"name": "xai", "priority": 2, "model_units": 0},
]
WHOLE = {"x-llm-failover-buffered": "true"}


@pytest.fixture
def gateway(vendors, make_envoy):
    def make(vendor_list=VENDORS, groups=None, **rescue):
        settings = {"max_attempts": 3, "deadline": "10s", "buffered_timeout": "2s"}
        settings.update(rescue)
        extra = {"groups": groups} if groups else {}
        return make_envoy(vendor_list=vendor_list, rescue=settings, envoy={"relay": True}, **extra)

    return make


def oai(envoy, headers=None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{envoy.url}/v1", api_key="k", max_retries=0, timeout=20, default_headers=headers or {}
    )


def ant(envoy, headers=None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=envoy.url, api_key="k", max_retries=0, timeout=20, default_headers=headers or {}
    )


def openai_stream(envoy, model="m", headers=None):
    with oai(envoy, headers).chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, raw.headers


def anthropic_stream(envoy, headers=None):
    with ant(envoy, headers).messages.with_streaming_response.create(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        text = "".join(e.delta.text for e in raw.parse() if e.type == "content_block_delta")
        return text, raw.headers


def stat(envoy, name):
    return envoy.stats().get(f"wasmcustom.llm_failover.{name}", 0)


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "reset_mid_stream", "events": 3},
        {"mode": "truncate", "events": 3},
        {"mode": "stream_error", "events": 3},
        {"mode": "stall", "events": 3, "delay": 5},
    ],
    ids=["reset", "cut", "error-event", "stall"],
)
def test_a_buffered_stream_that_fails_mid_answer_is_answered_whole_by_the_next_vendor(fault, vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", **fault)
    text, headers = openai_stream(envoy, headers=WHOLE)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert stat(envoy, "buffered") == 1
    # The header is the filter's: no vendor sees it.
    assert all("x-llm-failover-buffered" not in r["headers"] for r in vendors.requests("anthropic"))


def test_the_same_fault_without_buffering_reaches_the_client(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="reset_mid_stream", events=3)
    with pytest.raises((openai.APIError, Exception)):
        openai_stream(envoy)
    assert vendors.stats("openai")["requests"] == 0


def test_a_buffered_anthropic_stream_survives_a_reset_mid_answer(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="reset_mid_stream", events=4)
    text, headers = anthropic_stream(envoy, headers=WHOLE)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert headers["content-type"].startswith("text/event-stream")


def test_a_buffered_answer_arrives_whole_once_complete(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="ok", interval=0.1)
    started = time.monotonic()
    first = None
    with oai(envoy, WHOLE).chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        for _ in raw.parse():
            if first is None:
                first = time.monotonic() - started
    whole = time.monotonic() - started
    assert first is not None and first > whole - 0.1, "nothing before the answer was complete"
    assert first > 0.4, f"the stream took ~0.6 s; its first byte came at {first:.2f}s"


def test_a_route_group_and_a_vendor_can_ask_for_buffering(vendors, gateway):
    groups = [{"models": ["batch-*"], "targets": [{"vendor": "anthropic"}, {"vendor": "openai"}], "buffered": True}]
    envoy = gateway(groups=groups)
    vendors.set_fault("anthropic", mode="truncate", events=2)
    text, headers = openai_stream(envoy, model="batch-report")
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    vendors.heal("anthropic")

    buffered_vendor = [dict(VENDORS[0], buffered=True), *VENDORS[1:]]
    envoy = gateway(vendor_list=buffered_vendor)
    vendors.set_fault("anthropic", mode="stream_error", events=2)
    text, headers = openai_stream(envoy)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert stat(envoy, "buffered") == 1


def test_a_buffered_answer_past_the_bound_is_refused_not_held(vendors, gateway):
    envoy = gateway(max_answer_bytes=1024)
    with pytest.raises(openai.APIStatusError) as raised:
        openai_stream(envoy, headers=WHOLE)
    assert raised.value.status_code == 502
    assert "answer_too_large" in raised.value.response.text
