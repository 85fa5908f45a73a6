"""Same-vendor retries in real Envoy 1.40 (--concurrency 2) with the official
SDKs: a transient failure is tried once more on its vendor after a short
jittered back-off, a 429 with a short reset is waited out on its vendor, a
long one moves at once; never more than two attempts on a vendor. Each case
runs with the live-streamed rescue (the retry goes through the router) and
without it (the retry is a callout)."""

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


@pytest.fixture(params=[True, False], ids=["relay", "callout"])
def gateway(request, vendors, make_envoy):
    relay = request.param

    def make(trip=None, **rescue):
        # The defaults, written out (the harness turns them off otherwise).
        settings = {"max_attempts": 3, "deadline": "10s", "relay": relay, "retry_backoff": "100ms", "rate_limit_wait": "1s"}
        settings.update(rescue)
        extra = {"trip": trip} if trip else {}
        return make_envoy(vendor_list=VENDORS, rescue=settings, envoy={"relay": relay}, **extra)

    return make


def oai(envoy) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="k", max_retries=0, timeout=20)


def ant(envoy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=envoy.url, api_key="k", max_retries=0, timeout=20)


def openai_stream(envoy):
    with oai(envoy).chat.completions.with_streaming_response.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as raw:
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, raw.headers


def anthropic_message(envoy):
    raw = ant(envoy).messages.with_raw_response.create(
        model="m", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    return raw.parse().content[0].text, raw.headers


def stat(envoy, name):
    return envoy.stats().get(f"wasmcustom.llm_failover.{name}", 0)


def test_a_transient_503_is_retried_once_on_the_same_vendor(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    text, headers = openai_stream(envoy)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from anthropic", "anthropic")
    assert headers["x-llm-failover-tried"] == "anthropic,anthropic"
    assert vendors.stats("anthropic")["requests"] == 2
    assert vendors.stats("openai")["requests"] == 0
    assert stat(envoy, "same_vendor_retries") == 1


def test_a_vendor_gets_two_attempts_at_most_then_the_request_moves(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=529)
    text, headers = anthropic_message(envoy)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert headers["x-llm-failover-tried"] == "anthropic,anthropic,openai"
    assert vendors.stats("anthropic")["requests"] == 2


def test_a_short_429_is_waited_out_on_the_same_vendor(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=429, headers={"retry-after": "1"}, count=1)
    started = time.monotonic()
    text, headers = anthropic_message(envoy)
    took = time.monotonic() - started
    assert (text, headers[VENDOR_HEADER]) == ("Hello from anthropic", "anthropic")
    assert took >= 1.0, f"the reset was waited out ({took:.2f}s)"
    assert vendors.stats("openai")["requests"] == 0
    assert envoy.vendor_stat("anthropic", "rate_limited") == 1


def test_a_long_429_moves_at_once(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=429, headers={"retry-after": "20"})
    started = time.monotonic()
    text, headers = openai_stream(envoy)
    took = time.monotonic() - started
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert took < 0.5, f"no wait for a 20 s reset ({took:.2f}s)"
    assert vendors.stats("anthropic")["requests"] == 1


def test_a_vendor_its_failure_ejected_is_not_retried(vendors, gateway):
    envoy = gateway(trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 1})
    vendors.set_fault("anthropic", mode="status", status=503)
    text, headers = openai_stream(envoy)
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert vendors.stats("anthropic")["requests"] == 1


def test_a_reset_before_headers_is_retried_on_the_same_vendor(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="reset", count=1)
    text, headers = openai_stream(envoy)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from anthropic", "anthropic")
    assert vendors.stats("anthropic")["requests"] == 2


def test_retries_turned_off_move_at_once(vendors, gateway):
    envoy = gateway(retry_backoff="off", rate_limit_wait="off")
    vendors.set_fault("anthropic", mode="status", status=503, count=1)
    text, headers = openai_stream(envoy)
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert stat(envoy, "same_vendor_retries") == 0


def test_a_second_failure_in_a_row_moves_at_once(vendors, gateway):
    envoy = gateway()
    vendors.set_fault("anthropic", mode="status", status=503)
    _, first = openai_stream(envoy)
    assert first["x-llm-failover-tried"] == "anthropic,anthropic,openai", "a blip is retried"
    text, second = openai_stream(envoy)
    assert (text, second[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert second["x-llm-failover-tried"] == "anthropic,openai", "a run of failures is not"
    assert vendors.stats("anthropic")["requests"] == 3
    assert stat(envoy, "same_vendor_retries") == 1


def test_a_retry_whose_vendor_was_ejected_meanwhile_goes_to_the_next(vendors, gateway, request):
    """A waits for its retry; B's failure meanwhile ejects the vendor. A then
    goes to the next vendor without another attempt on the ejected one, by
    the router (streamed live) when the relay is on."""
    import threading

    envoy = gateway(trip={"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 2},
                    retry_backoff="400ms")
    vendors.set_fault("anthropic", mode="status", status=503)
    got = {}

    def first():
        got["a"] = openai_stream(envoy)

    a = threading.Thread(target=first)
    a.start()
    time.sleep(0.1)  # A failed and waits 200-600 ms for its retry
    _, b = openai_stream(envoy)
    a.join(timeout=20)
    text, headers = got["a"]
    assert b["x-llm-failover-tried"] == "anthropic,openai"
    assert (text, headers[VENDOR_HEADER]) == ("Hello from openai", "openai")
    assert headers["x-llm-failover-tried"] == "anthropic,openai"
    assert vendors.stats("anthropic")["requests"] == 2
    if "relay" in request.node.name:
        assert stat(envoy, "rescue_attempts") == 0, "no callout: the router took it"
