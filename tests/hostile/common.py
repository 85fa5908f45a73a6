"""Shared by the hostile vendor, the hostile client and the run: names,
markers, the filter configuration under test, small SSE/JSON readers.

Standard library only.
"""

from __future__ import annotations

import json
import re

VENDORS = ("anthropic", "openai", "xai")

# The vendors' own keys, given to the VM through vm_config.environment_variables.
VENDOR_KEYS = {
    "anthropic": "hostile-vendor-key-anthropic-7f3a",
    "openai": "hostile-vendor-key-openai-91c2",
    "xai": "hostile-vendor-key-xai-5d0e",
}
KEY_ENV = {name: f"{name.upper()}_API_KEY" for name in VENDORS}

# Models a vendor with a `models` map may receive: the map's targets (and
# the route group's targets on that vendor). Anything else reaching it got
# around the map.
ALLOWED_MODELS = {
    "openai": {"gpt-4.1", "gpt-4.1-mini"},
    "xai": {"grok-4"},
}

# Every client credential value carries a marker naming its request and
# header: `hcred-<request id>-<header>-<random hex>`. The vendor looks for
# the prefix in every header it receives (names and values, raw bytes).
CRED_HEADERS = ("authorization", "x-api-key", "proxy-authorization", "api-key", "x-goog-api-key")
MARKER_PREFIX = b"hcred-"
MARKER_RE = re.compile(rb"hcred-(\d+)-([a-z-]+)-([0-9a-f]+)", re.IGNORECASE)

# Request headers the client adds so the vendor can correlate.
ID_HEADER = "x-hostile-id"
# Response headers the vendor adds: which vendor, which of its answers.
ANSWER_HEADER = "x-hostile-answer"
VENDOR_NAME_HEADER = "x-hostile-vendor"
# The filter's own response headers, which a vendor may forge.
FILTER_HEADERS = ("x-llm-failover-vendor", "x-llm-failover-attempts", "x-llm-failover-tried")
FORGED_MARK = "forged"


# Weather: requests come in blocks of STORM_BLOCK request ids; a block is
# stormy with probability STORM_SHARE (from the seed). In a storm the vendor
# draws from its whole hostile mix (about half its answers fail); in calm
# weather failures are CALM_SCALE times as likely (about one answer in six), so
# vendors stay mostly healthy and a failed first attempt can be rescued.
STORM_BLOCK = 200
STORM_SHARE = 0.3
CALM_SCALE = 0.2


def stormy(seed: int, rid: int) -> bool:
    import random

    return random.Random(f"{seed}|weather|{rid // STORM_BLOCK}").random() < STORM_SHARE


def filter_config(
    route_deadline: str = "5s",
    ejection_base: str = "1s",
) -> dict:
    """The filter configuration under test: the demo's shape (three vendors,
    keys from the environment, model maps with "*", paths, a route group,
    rescue with 3 attempts), with short timings so a run moves through
    ejections and recoveries quickly."""
    return {
        "cluster_header": "x-llm-failover-cluster",
        "vendor_header": "x-llm-failover-vendor",
        "vendors": [
            {
                "name": "anthropic",
                "cluster": "anthropic",
                "priority": 0,
                "api_key_env": KEY_ENV["anthropic"],
                "paths": {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"},
            },
            {
                "name": "openai",
                "cluster": "openai",
                "priority": 1,
                "api_key_env": KEY_ENV["openai"],
                "paths": {"openai": "/v1/chat/completions"},
                "models": {"claude-opus": "gpt-4.1", "*": "gpt-4.1-mini"},
            },
            {
                "name": "xai",
                "cluster": "xai",
                "priority": 2,
                "api_key_env": KEY_ENV["xai"],
                "models": {"*": "grok-4"},
            },
        ],
        "groups": [
            {
                "models": ["long-doc"],
                "targets": [
                    {"vendor": "anthropic", "model": "claude-sonnet-4-5", "context_window": 200000},
                    {"vendor": "openai", "model": "gpt-4.1", "context_window": 1000000},
                ],
            }
        ],
        "rescue": {"max_attempts": 3, "deadline": route_deadline, "max_body_bytes": 524288, "first_token_timeout": "off"},
        "window": {"length": "10s", "buckets": 10},
        "trip": {"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 5},
        "ejection": {"base": ejection_base, "max": "4s", "decay": "10s"},
        "recovery": {"probes": 3, "successes": 3, "probe_timeout": "10s"},
        "failure_statuses": [401, 403, 408, 500, 502, 503, 504, 529],
        "slow": {"first_byte": "1s", "stall": "500ms", "ratio": 1.0},
        "rate_limit": {"default_cooldown": "1s", "max_cooldown": "2s"},
        "all_down": "soonest",
        "refresh_interval": "200ms",
    }


def latin1(b: bytes) -> str:
    """Bytes as a JSON-safe string that maps back to the same bytes."""
    return b.decode("latin-1")


# --------------------------------------------------------------------------
# Server-sent events, as a client reads them
# --------------------------------------------------------------------------


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) of each event in a stream; an event left open at
    the end is returned too (its name prefixed with `~`)."""
    text = body.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    events: list[tuple[str, str]] = []
    name, data, open_ = "", [], False
    for line in text.split("\n"):
        if line == "":
            if open_:
                events.append((name, "\n".join(data)))
            name, data, open_ = "", [], False
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name, open_ = value, True
        elif field == "data":
            data.append(value)
            open_ = True
        else:
            open_ = True
    if open_:
        events.append(("~" + name, "\n".join(data)))
    return events


def is_error_event(name: str, data: str) -> bool:
    if name.lstrip("~") == "error":
        return True
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and (obj.get("error") is not None or obj.get("type") == "error")


def is_end_event(name: str, data: str) -> bool:
    if name.startswith("~"):
        return False
    if name == "message_stop" or data.strip() == "[DONE]":
        return True
    return False


def sse_verdict(body: bytes) -> dict:
    """How a client would read a stream: its events, whether it carries an
    end marker, an error, and whether its last event is an error."""
    events = parse_sse(body)
    errors = [i for i, (n, d) in enumerate(events) if is_error_event(n, d)]
    ends = [i for i, (n, d) in enumerate(events) if is_end_event(n, d)]
    return {
        "events": len(events),
        "end_marker": bool(ends),
        "error": bool(errors),
        "last_is_error": bool(events) and is_error_event(*events[-1]),
        "open_at_end": bool(events) and events[-1][0].startswith("~"),
    }


def json_verdict(body: bytes) -> str:
    """`answer` (a complete OpenAI or Anthropic answer), `error` (an error
    object), `other` (some other JSON), `invalid` (not JSON)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return "invalid"
    if not isinstance(obj, dict):
        return "other"
    if "error" in obj or obj.get("type") == "error":
        return "error"
    if obj.get("object") == "chat.completion" or "choices" in obj:
        return "answer"
    if obj.get("type") == "message":
        return "answer"
    return "other"


def top_level_models(body: bytes) -> list | None:
    """Every value of a top-level `model` key (duplicates and escaped keys
    included, as JSON decodes them); None when the body is not a JSON object."""
    seen: list = []

    def hook(pairs):
        return pairs

    try:
        pairs = json.loads(body, object_pairs_hook=hook)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(pairs, list) or (pairs and not all(isinstance(p, tuple) for p in pairs)):
        return None
    for key, value in pairs:
        if key == "model":
            seen.append(value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)[:80])
    return seen
