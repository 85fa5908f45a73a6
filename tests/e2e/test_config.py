"""Configuration in real Envoy: bad filter config is refused at load with a
log line naming the field, and every Envoy config shipped under envoy/ passes
`envoy --mode validate`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import VENDORS
from harness import ROOT, WASM, Envoy, EnvoyFailed, envoy_config, filter_config, validate

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
