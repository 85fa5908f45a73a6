"""Health and rate limits per model, also on vendors that pass models
through (their model units), and context windows without route groups, in
real Envoy 1.40 (--concurrency 2) with the official SDKs as clients."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

MODEL_UNITS = 8
PLAIN = [
    {"name": "anthropic", "cluster": "anthropic", "priority": 0},
    {"name": "openai", "cluster": "openai", "priority": 1},
    {"name": "xai", "cluster": "xai", "priority": 2},
]
CONTEXT_400 = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
}


def model_hash(model: str) -> int:
    """The filter's hash of a model name (FNV-1a, 64 bits, never 0)."""
    h = 0xCBF29CE484222325
    for b in model.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return max(h, 1)


def apart() -> tuple[str, str]:
    """Two model names that land in different model units."""
    a = "claude-sonnet"
    b = next(f"model-{i}" for i in range(100) if model_hash(f"model-{i}") % MODEL_UNITS != model_hash(a) % MODEL_UNITS)
    return a, b


def oai(envoy):
    return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="k", max_retries=0, timeout=20)


def served_by(envoy, model: str) -> str:
    raw = oai(envoy).chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return raw.headers["x-llm-failover-vendor"]


def test_a_429_on_one_model_leaves_the_vendors_other_models_on_it(vendors, make_envoy):
    a, b = apart()
    envoy = make_envoy(vendor_list=PLAIN)
    vendors.set_fault("anthropic", mode="status", status=429, headers={"retry-after": "30"}, model=a)
    with pytest.raises(openai.RateLimitError):
        oai(envoy).chat.completions.create(model=a, messages=[{"role": "user", "content": "hi"}])
    # Model a is skipped at anthropic for its reset; model b is not.
    assert served_by(envoy, a) == "openai"
    assert served_by(envoy, b) == "anthropic"
    for _ in range(4):  # both workers
        assert served_by(envoy, b) == "anthropic"
    assert envoy.vendor_stat("anthropic", "rate_limited") == 1


def test_an_outage_of_one_model_ejects_that_model_only(vendors, make_envoy):
    a, b = apart()
    envoy = make_envoy(vendor_list=PLAIN)
    vendors.set_fault("anthropic", mode="status", status=529, model=a)
    for _ in range(5):
        with pytest.raises(openai.APIStatusError):
            oai(envoy).chat.completions.create(model=a, messages=[{"role": "user", "content": "hi"}])
    assert served_by(envoy, a) == "openai"
    assert served_by(envoy, b) == "anthropic"
    changes = envoy.state_changes()
    unit = model_hash(a) % MODEL_UNITS
    assert any(f"vendor anthropic/{a}#{unit}: closed -> open" in c for c in changes), changes
    time.sleep(0.5)
    assert envoy.vendor_stat("anthropic", "models_ejected") == 1
    assert envoy.vendor_stat("anthropic", "state") == 0


def test_a_context_overflow_moves_to_a_larger_window_without_a_route_group(vendors, make_envoy):
    vendor_list = [
        {**PLAIN[0], "context_window": 200000},
        {**PLAIN[1]},  # no window declared: never a candidate for an overflow
        {**PLAIN[2], "models": {"*": {"model": "grok-4", "context_window": 2000000}}},
    ]
    envoy = make_envoy(vendor_list=vendor_list, rescue={"max_attempts": 3, "deadline": "10s"})
    vendors.set_fault("anthropic", mode="status", status=400, body=CONTEXT_400)
    client = anthropic.Anthropic(base_url=envoy.url, api_key="k", max_retries=0)
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet", max_tokens=16, messages=[{"role": "user", "content": "a very long prompt"}]
    )
    msg = raw.parse()
    assert raw.headers["x-llm-failover-tried"] == "anthropic,xai"
    assert msg.model == "grok-4"
    assert vendors.stats("openai")["requests"] == 0
    assert envoy.vendor_stat("anthropic", "failures") == 0, "the client's doing"


def test_a_group_pattern_routes_a_family_of_models(vendors, make_envoy):
    groups = [{"models": ["gpt-*"], "targets": [{"vendor": "openai"}, {"vendor": "xai", "model": "grok-4"}]}]
    envoy = make_envoy(vendor_list=PLAIN, groups=groups, rescue={"max_attempts": 3, "deadline": "10s"})
    vendors.set_fault("openai", mode="status", status=503, count=1)
    raw = oai(envoy).chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-llm-failover-tried"] == "openai,xai"
    assert raw.parse().model == "grok-4"
    assert served_by(envoy, "claude-sonnet") == "anthropic", "outside the pattern: by priority"
