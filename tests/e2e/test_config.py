"""Configuration in real Envoy: bad filter config is refused at load with a
log line naming the field, and every Envoy config shipped under envoy/ passes
`envoy --mode validate`."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import VENDORS
from harness import ROOT, WASM, Envoy, EnvoyFailed, envoy_config, filter_config, validate, with_file_lds

BAD = [
    ({"trip": {"failure_ratio": 1.5}}, "trip.failure_ratio"),
    ({"window": {"length": "10s", "buckets": 3}}, "window.buckets"),
    ({"ejection": {"base": "1m", "max": "10s"}}, "ejection.max"),
    ({"vendors": []}, "vendors"),
    ({"vendors": [{"name": "a"}, {"name": "a"}]}, "vendors[1].name"),
    ({"all_down": "maybe"}, "all_down"),
    ({"retries": 3}, "retries"),
]


@pytest.mark.parametrize("overrides,field", BAD, ids=[f for _, f in BAD])
def test_bad_config_is_refused_and_the_log_names_the_field(overrides, field, tmp_path):
    cfg = envoy_config(filter_config(VENDORS, **overrides), {"anthropic": 1, "openai": 2, "xai": 3})
    envoy = Envoy(cfg, workdir=tmp_path)
    with pytest.raises(EnvoyFailed):
        envoy.start(timeout=20)
    log = envoy.log()
    assert f"config field `{field}`" in log, log[-2000:]


def test_invalid_json_is_refused(tmp_path):
    cfg = envoy_config("{not json", {"anthropic": 1})
    envoy = Envoy(cfg, workdir=tmp_path)
    with pytest.raises(EnvoyFailed):
        envoy.start(timeout=20)
    assert "is not valid JSON" in envoy.log()


def shipped_configs() -> list[Path]:
    return sorted((ROOT / "envoy").glob("*.yaml"))


def test_every_shipped_envoy_config_is_checked():
    names = {p.name for p in shipped_configs()}
    assert {"envoy.yaml", "envoy-compose.yaml"} <= names, names


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: p.name)
def test_shipped_config_passes_envoy_validate(path: Path, tmp_path):
    text = path.read_text()
    if "docker-compose" in path.name:
        pytest.skip("docker-compose file, not an Envoy config")
    # Configs written for the container load the filter from /etc/envoy; point
    # them at the build output instead so the filter itself is validated too.
    text = re.sub(r"/etc/envoy/llm_failover\.wasm", str(WASM), text)
    candidate = tmp_path / path.name
    candidate.write_text(text)
    result = validate(candidate)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr
    # The filter really parsed its configuration during validation.
    assert "configured; routing header" in result.stdout + result.stderr


def wasm_filter_of(listener: dict) -> dict:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")


# (filter JSON overrides, the field the refusal must name)
REFUSED = [
    ({"vendors": []}, "vendors"),
    ({"vendors": "anthropic"}, "vendors"),
    ({"vendors": [7]}, "vendors[0]"),
    ({"vendors": [{}]}, "vendors[0].name"),
    ({"vendors": [{"name": "Open AI"}]}, "vendors[0].name"),
    ({"vendors": [{"name": "a"}, {"name": "a"}]}, "vendors[1].name"),
    ({"vendors": [{"name": "a", "cluster": ""}]}, "vendors[0].cluster"),
    ({"vendors": [{"name": "a", "priority": -1}]}, "vendors[0].priority"),
    ({"vendors": [{"name": "a", "weight": 0}]}, "vendors[0].weight"),
    ({"vendors": [{"name": "a", "host": "bad host"}]}, "vendors[0].host"),
    ({"vendors": [{"name": "a", "api_key_env": "NOT_SET_ANYWHERE"}]}, "vendors[0].api_key_env"),
    ({"vendors": [{"name": "a", "paths": {}}]}, "vendors[0].paths"),
    ({"vendors": [{"name": "a", "paths": {"openai": "v1/chat"}}]}, "vendors[0].paths.openai"),
    ({"vendors": [{"name": "a", "models": {}}]}, "vendors[0].models"),
    ({"vendors": [{"name": "a", "color": "red"}]}, "vendors[0].color"),
    ({"groups": {}}, "groups"),
    ({"groups": [{"targets": [{"vendor": "anthropic"}]}]}, "groups[0].models"),
    ({"groups": [{"models": ["m"], "targets": []}]}, "groups[0].targets"),
    ({"groups": [{"models": ["m"], "targets": [{"vendor": "nobody"}]}]}, "groups[0].targets[0].vendor"),
    ({"groups": [{"models": ["m"], "targets": [{"vendor": "anthropic", "context_window": 0}]}]}, "groups[0].targets[0].context_window"),
    ({"rescue": {"max_attempts": 0}}, "rescue.max_attempts"),
    ({"rescue": {"deadline": "0s"}}, "rescue.deadline"),
    ({"rescue": {"max_body_bytes": -1}}, "rescue.max_body_bytes"),
    ({"rescue": {"first_token_timeout": "soon"}}, "rescue.first_token_timeout"),
    ({"rescue": {"max_answer_bytes": 10}}, "rescue.max_answer_bytes"),
    ({"window": {"length": "10s", "buckets": 3}}, "window.buckets"),
    ({"window": {"length": "1d"}}, "window.length"),
    ({"trip": {"min_requests": 0}}, "trip.min_requests"),
    ({"trip": {"failure_ratio": 1.5}}, "trip.failure_ratio"),
    ({"trip": {"consecutive_failures": "5"}}, "trip.consecutive_failures"),
    ({"ejection": {"base": "1m", "max": "10s"}}, "ejection.max"),
    ({"ejection": {"decay": "0s"}}, "ejection.decay"),
    ({"recovery": {"probes": 2, "successes": 3}}, "recovery.successes"),
    ({"recovery": {"probe_timeout": "1ms"}}, "recovery.probe_timeout"),
    ({"failure_statuses": [600]}, "failure_statuses[0]"),
    ({"slow": {"ratio": 0}}, "slow.ratio"),
    ({"slow": {"first_byte": "fast"}}, "slow.first_byte"),
    ({"rate_limit": {"default_cooldown": "2m", "max_cooldown": "1m"}}, "rate_limit.max_cooldown"),
    ({"all_down": "maybe"}, "all_down"),
    ({"refresh_interval": "1ms"}, "refresh_interval"),
    ({"cluster_header": "X-Upper"}, "cluster_header"),
    ({"vendor_header": "x-llm-failover-cluster"}, "vendor_header"),
    ({"retries": 3}, "retries"),
]


def test_every_kind_of_bad_config_is_refused_by_a_running_envoy_which_keeps_serving(vendors, tmp_path):
    """Each bad filter JSON arrives as a listener update through Envoy's real
    update path (file-based LDS): Envoy refuses the update, logs the field,
    and goes on serving with the configuration it had."""
    cfg = envoy_config(filter_config(VENDORS), dict(vendors.ports))
    listener = cfg["static_resources"]["listeners"][0]
    envoy = Envoy(with_file_lds(cfg), workdir=tmp_path)
    envoy.write_listeners([listener])
    envoy.start()
    try:
        assert len(REFUSED) >= 30
        for n, (overrides, field) in enumerate(REFUSED, start=1):
            bad = json.loads(json.dumps(listener))
            config = wasm_filter_of(bad)["typed_config"]["config"]
            config["configuration"]["value"] = json.dumps(filter_config(VENDORS, **overrides))
            envoy.write_listeners([bad])
            deadline = time.time() + 10
            while envoy.stats().get("listener_manager.lds.update_rejected", 0) < n and time.time() < deadline:
                time.sleep(0.05)
            assert envoy.stats().get("listener_manager.lds.update_rejected", 0) == n, (field, envoy.log()[-2000:])
            assert f"config field `{field}`" in envoy.log(), (field, envoy.log()[-2000:])
            assert envoy.proc is not None and envoy.proc.poll() is None, "Envoy is still running"
        # Still serving with the good configuration.
        r = urllib.request.urlopen(
            urllib.request.Request(
                envoy.url + "/v1/chat/completions",
                data=b'{"model":"m","messages":[]}',
                headers={"content-type": "application/json"},
            ),
            timeout=10,
        )
        assert r.status == 200 and r.headers["x-llm-failover-vendor"] == "anthropic"
    finally:
        envoy.stop()
