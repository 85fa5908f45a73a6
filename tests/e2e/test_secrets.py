"""Vendors' API keys in the recommended setup: given to the VM from Envoy's
own environment (`vm_config.environment_variables.host_env_keys`), they
reach each vendor and show nowhere else: not in the filter's logs even at
trace, not in stats, not in /config_dump, not in any answer."""

from __future__ import annotations

import json
import urllib.request

from conftest import VENDORS
from harness import Envoy, envoy_config, filter_config

KEYS = {"ANTHROPIC_KEY": "sk-ant-secret-7f3a", "OPENAI_KEY": "sk-oai-secret-91bc", "XAI_KEY": "xai-secret-55d0"}
KEYED = [{**v, "api_key_env": name} for v, name in zip(VENDORS, KEYS)]


def call(envoy, path="/v1/chat/completions", stream=False):
    body = json.dumps({"model": "m", "max_tokens": 5, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(envoy.url + path, data=body.encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.dumps(dict(r.headers)) + r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, json.dumps(dict(e.headers)) + e.read().decode("utf-8", "replace")


def started(vendors, tmp_path, components=""):
    fc = filter_config(KEYED, rescue={"max_attempts": 3, "deadline": "10s"})
    cfg = envoy_config(fc, dict(vendors.ports), host_env=list(KEYS))
    return Envoy(cfg, log_level="trace", workdir=tmp_path, env=KEYS, components=components).start()


def test_keys_from_the_host_environment_show_only_to_their_vendor(vendors, tmp_path):
    envoy = started(vendors, tmp_path)
    try:
        answers = [call(envoy), call(envoy, "/v1/messages"), call(envoy, stream=True)]
        vendors.set_fault("anthropic", mode="status", status=503, count=2)
        answers += [call(envoy), call(envoy, "/v1/messages")]  # rescued
        vendors.set_fault("anthropic", mode="status", status=503)
        vendors.set_fault("openai", mode="status", status=503)
        vendors.set_fault("xai", mode="status", status=503)
        answers += [call(envoy) for _ in range(6)]  # failed everywhere, then ejected
        assert vendors.requests("anthropic")[0]["headers"]["authorization"] == "Bearer sk-ant-secret-7f3a"
        exposed = {
            "log (wasm at trace)": envoy.log(),
            "stats": envoy._get("/stats"),
            "prometheus": envoy.prometheus(),
            "config_dump": envoy._get("/config_dump?include_eds"),
            "answers": "\n".join(text for _, text in answers),
        }
        for name, text in exposed.items():
            for key in KEYS.values():
                assert key not in text, f"{key} shows in {name}"
        assert "host_env_keys" in exposed["config_dump"], "the names show, the values do not"
    finally:
        envoy.stop()


def test_envoys_own_debug_logging_prints_upstream_request_headers_with_the_keys(vendors, tmp_path):
    """Why the README warns against Envoy's debug logging in production."""
    envoy = started(vendors, tmp_path, components="router:debug")
    try:
        call(envoy)
        assert KEYS["ANTHROPIC_KEY"] in envoy.log()
    finally:
        envoy.stop()
