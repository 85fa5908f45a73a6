"""The Istio packaging in envoy/istio/: every EnvoyFilter's patches, applied
the way istiod applies them to an Envoy config shaped like the one Istio
generates for the workload, give a config that the real Envoy accepts
(`envoy --mode validate`), with the filter loaded from the built .wasm and
its configuration parsed; and the result holds what the filter needs.

No Kubernetes or Istio runs here. Three things stand in for istiod, and are
only as faithful as written below:

- `base_config()`: the part of a sidecar's configuration these manifests
  touch: the outbound port 443 listener (an HTTP connection manager whose
  filters end with the router), its route configuration "443" with one
  virtual host per ServiceEntry host (route "default" to
  `outbound|443||<host>`) plus Istio's "allow_any" host, and the vendors'
  clusters with the TLS origination of destinationrules.yaml. Istio's own
  filters (peer metadata, istio.alpn, istio.stats) exist only in Istio's
  proxy build, so the chain keeps the upstream Envoy ones; the route
  configuration is inline where Istio serves it by RDS.
- `apply_envoy_filter()`: EnvoyFilter patches as istiod applies them:
  MERGE is a proto merge (messages merged field by field, repeated fields
  appended, a map's entries and an `Any` replaced whole, setting one member
  of a oneof clears the others); INSERT_BEFORE / INSERT_AFTER / INSERT_FIRST
  place an HTTP filter relative to the matched sub-filter; matches by
  context, listener port, filter chain, filter and sub-filter names, route
  configuration port, virtual host and route names, cluster name (or
  service, port and subset). Anything else raises, so a manifest using an
  operation or match field not modelled here fails loudly instead of
  passing unpatched.
- `render_wasm_plugin()`: the HTTP filter istiod makes of the WasmPlugin,
  inline where Istio sends it by ECDS, with the module at the path the
  istio-agent would have downloaded it to (here: the build output).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness import ROOT, WASM, validate

yaml = pytest.importorskip(
    "yaml", reason="PyYAML is not installed (it is not in tests/requirements.txt): the Istio manifests cannot be read"
)

ISTIO = ROOT / "envoy" / "istio"
NAMESPACE = "my-app"
WORKLOAD_LABELS = {"app": "my-app"}
CONTEXT = "SIDECAR_OUTBOUND"
PORT = 443
HOSTS = ["api.anthropic.com", "api.openai.com", "api.x.ai"]
CLUSTERS = [f"outbound|{PORT}||{h}" for h in HOSTS]
HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MODULE_PATH = "/etc/istio/llm-failover/llm_failover.wasm"
ENVOYFILTERS = sorted(p.name for p in ISTIO.glob("envoyfilter-*.yaml"))
# Stand-ins for the vendors' keys in the proxy's environment; they must not
# show in the configuration or in Envoy's output.
KEYS = {"ANTHROPIC_API_KEY": "sk-test-anthropic-1f3a", "OPENAI_API_KEY": "sk-test-openai-7c2e", "XAI_API_KEY": "xai-test-9b4d"}


def load(name: str) -> list[dict]:
    with open(ISTIO / name) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    # Through JSON: what a YAML alias shares becomes copies (as in Kubernetes).
    return json.loads(json.dumps(docs))


def only(name: str) -> dict:
    docs = load(name)
    assert len(docs) == 1, name
    return docs[0]


# --- the manifests' own fields ------------------------------------------------

# Field names of the Istio APIs used here (istio/api: networking/v1alpha3
# envoy_filter.proto, service_entry.proto, destination_rule.proto;
# extensions/v1alpha1 wasm.proto), as they are spelled in YAML. A misspelt
# field would be refused by the CRD, or worse ignored: caught here.
FIELDS = {
    "EnvoyFilter": {"workloadSelector", "targetRefs", "configPatches", "priority"},
    "workloadSelector": {"labels"},
    "configPatch": {"applyTo", "match", "patch"},
    "match": {"context", "proxy", "listener", "routeConfiguration", "cluster"},
    "listener": {"portNumber", "filterChain", "listenerFilter", "name"},
    "filterChain": {"name", "sni", "transportProtocol", "applicationProtocols", "filter", "destinationPort"},
    "filter": {"name", "subFilter"},
    "subFilter": {"name"},
    "routeConfiguration": {"portNumber", "portName", "gateway", "vhost", "name"},
    "vhost": {"name", "domainName", "route"},
    "route": {"name", "action"},
    "cluster": {"portNumber", "service", "subset", "name"},
    "patch": {"operation", "value", "filterClass"},
    "WasmPlugin": {
        "selector", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret", "pluginConfig",
        "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type",
    },
    "selector": {"matchLabels"},
    "vmConfig": {"env"},
    "env": {"name", "valueFrom", "value"},
    "trafficSelector": {"mode", "ports"},
    "portSelector": {"number"},
    "ServiceEntry": {"hosts", "addresses", "ports", "location", "resolution", "endpoints", "workloadSelector", "exportTo", "subjectAltNames"},
    "servicePort": {"number", "protocol", "name", "targetPort"},
    "DestinationRule": {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"},
    "trafficPolicy": {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel", "proxyProtocol", "retryBudget"},
    "portTrafficPolicy": {"port", "loadBalancer", "connectionPool", "outlierDetection", "tls"},
    "tls": {"mode", "clientCertificate", "privateKey", "caCertificates", "credentialName", "subjectAltNames", "sni", "insecureSkipVerify", "caCrl"},
}
ENUMS = {
    "applyTo": {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "LISTENER_FILTER"},
    "context": {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"},
    "operation": {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE", "MERGE_AND_REPLACE_LIST"},
    "phase": {"UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"},
    "failStrategy": {"FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"},
    "type": {"UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"},
    "imagePullPolicy": {"UNSPECIFIED_POLICY", "IfNotPresent", "Always"},
    "valueFrom": {"INLINE", "HOST"},
    "mode": {"UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"},
    "location": {"MESH_EXTERNAL", "MESH_INTERNAL"},
    "resolution": {"NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"},
    "tlsMode": {"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"},
}


def known(kind: str, obj: dict, where: str) -> None:
    unknown = set(obj) - FIELDS[kind]
    assert not unknown, f"{where}: unknown {kind} field(s) {sorted(unknown)}"


def enum(kind: str, value, where: str) -> None:
    assert value in ENUMS[kind], f"{where}: {kind} {value!r} is not one of {sorted(ENUMS[kind])}"


def check_envoy_filter(doc: dict, name: str) -> None:
    assert doc["apiVersion"] == "networking.istio.io/v1alpha3" and doc["kind"] == "EnvoyFilter", name
    spec = doc["spec"]
    known("EnvoyFilter", spec, name)
    known("workloadSelector", spec["workloadSelector"], name)
    for i, cp in enumerate(spec["configPatches"]):
        where = f"{name} configPatches[{i}]"
        known("configPatch", cp, where)
        enum("applyTo", cp["applyTo"], where)
        match = cp["match"]
        known("match", match, where)
        enum("context", match.get("context", "ANY"), where)
        if "listener" in match:
            known("listener", match["listener"], where)
            chain = match["listener"].get("filterChain", {})
            known("filterChain", chain, where)
            if "filter" in chain:
                known("filter", chain["filter"], where)
                known("subFilter", chain["filter"].get("subFilter", {}), where)
        if "routeConfiguration" in match:
            rc = match["routeConfiguration"]
            known("routeConfiguration", rc, where)
            known("vhost", rc.get("vhost", {}), where)
            known("route", rc.get("vhost", {}).get("route", {}), where)
        if "cluster" in match:
            known("cluster", match["cluster"], where)
        known("patch", cp["patch"], where)
        enum("operation", cp["patch"]["operation"], where)


def check_wasm_plugin(doc: dict) -> None:
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1" and doc["kind"] == "WasmPlugin"
    spec = doc["spec"]
    known("WasmPlugin", spec, "WasmPlugin")
    known("selector", spec["selector"], "WasmPlugin")
    for key in ("phase", "failStrategy", "type", "imagePullPolicy"):
        if key in spec:
            enum(key, spec[key], "WasmPlugin")
    known("vmConfig", spec["vmConfig"], "WasmPlugin")
    for e in spec["vmConfig"]["env"]:
        known("env", e, "WasmPlugin vmConfig.env")
        enum("valueFrom", e.get("valueFrom", "INLINE"), "WasmPlugin vmConfig.env")
    for ts in spec.get("match", []):
        known("trafficSelector", ts, "WasmPlugin match")
        enum("mode", ts.get("mode", "CLIENT_AND_SERVER"), "WasmPlugin match")
        for p in ts.get("ports", []):
            known("portSelector", p, "WasmPlugin match.ports")


def test_manifests_use_the_istio_apis_fields():
    names = {p.name for p in ISTIO.glob("*.yaml")}
    assert {"serviceentries.yaml", "destinationrules.yaml", "wasmplugin.yaml"} <= names, names
    assert ENVOYFILTERS == [
        "envoyfilter-route.yaml", "envoyfilter-strip-header.yaml", "envoyfilter-upstream.yaml", "envoyfilter-wasm.yaml",
    ], ENVOYFILTERS
    for name in ENVOYFILTERS:
        doc = only(name)
        check_envoy_filter(doc, name)
        assert doc["metadata"]["namespace"] == NAMESPACE, name
        assert doc["spec"]["workloadSelector"]["labels"].items() <= WORKLOAD_LABELS.items(), name
    wasm_plugin = only("wasmplugin.yaml")
    check_wasm_plugin(wasm_plugin)
    assert wasm_plugin["spec"]["selector"]["matchLabels"].items() <= WORKLOAD_LABELS.items()
    assert wasm_plugin["spec"]["url"].startswith("oci://")
    assert wasm_plugin["spec"]["failStrategy"] == "FAIL_CLOSE"

    entries = load("serviceentries.yaml")
    rules = load("destinationrules.yaml")
    assert [d["kind"] for d in entries] == ["ServiceEntry"] * 3
    assert [d["kind"] for d in rules] == ["DestinationRule"] * 3
    assert sorted(h for d in entries for h in d["spec"]["hosts"]) == sorted(HOSTS)
    for d in entries:
        spec = d["spec"]
        known("ServiceEntry", spec, d["metadata"]["name"])
        enum("location", spec["location"], d["metadata"]["name"])
        enum("resolution", spec["resolution"], d["metadata"]["name"])
        assert spec["location"] == "MESH_EXTERNAL" and spec["resolution"] == "DNS"
        for p in spec["ports"]:
            known("servicePort", p, d["metadata"]["name"])
        # Plain HTTP on 443 from the app: the sidecar must see HTTP to run
        # the filter; TLS is the DestinationRule's.
        assert [(p["number"], p["protocol"]) for p in spec["ports"]] == [(PORT, "HTTP")]
    assert sorted(d["spec"]["host"] for d in rules) == sorted(HOSTS)
    for d in rules:
        spec = d["spec"]
        known("DestinationRule", spec, d["metadata"]["name"])
        known("trafficPolicy", spec["trafficPolicy"], d["metadata"]["name"])
        [level] = spec["trafficPolicy"]["portLevelSettings"]
        known("portTrafficPolicy", level, d["metadata"]["name"])
        known("tls", level["tls"], d["metadata"]["name"])
        enum("tlsMode", level["tls"]["mode"], d["metadata"]["name"])
        assert level["port"]["number"] == PORT
        assert level["tls"]["mode"] == "SIMPLE" and level["tls"]["sni"] == spec["host"]


# --- what istiod generates, and what it does with the manifests --------------


def base_config() -> dict:
    """The outbound port 443 listener, route configuration and clusters a
    sidecar gets for the three ServiceEntries and DestinationRules."""

    def vendor_host(host: str) -> dict:
        return {
            "name": f"{host}:{PORT}",
            "domains": [host, f"{host}:{PORT}"],
            "routes": [
                {
                    "name": "default",
                    "match": {"prefix": "/"},
                    "route": {
                        "cluster": f"outbound|{PORT}||{host}",
                        "timeout": "0s",
                        "retry_policy": {
                            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                            "num_retries": 2,
                            "retry_host_predicate": [
                                {
                                    "name": "envoy.retry_host_predicates.previous_hosts",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                                    },
                                }
                            ],
                            "host_selection_retry_max_attempts": "5",
                            "retriable_status_codes": [503],
                        },
                        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
                    },
                    "decorator": {"operation": f"{host}:{PORT}/*"},
                }
            ],
            "include_request_attempt_count": True,
        }

    def vendor_cluster(host: str) -> dict:
        name = f"outbound|{PORT}||{host}"
        return {
            "name": name,
            "type": "STRICT_DNS",
            "connect_timeout": "10s",
            "lb_policy": "LEAST_REQUEST",
            "dns_lookup_family": "V4_ONLY",
            "circuit_breakers": {
                "thresholds": [
                    {
                        "max_connections": 4294967295,
                        "max_pending_requests": 4294967295,
                        "max_requests": 4294967295,
                        "max_retries": 4294967295,
                        "track_remaining": True,
                    }
                ]
            },
            "metadata": {"filter_metadata": {"istio": {"services": [{"host": host, "name": host, "namespace": NAMESPACE}]}}},
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "locality": {},
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": PORT}}}, "load_balancing_weight": 1}
                        ],
                        "load_balancing_weight": 1,
                    }
                ],
            },
            # destinationrules.yaml: tls SIMPLE, sni, caCertificates.
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {"validation_context": {"trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"}}},
                    "sni": host,
                },
            },
        }

    hcm = {
        "name": HCM,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": f"outbound_0.0.0.0_{PORT}",
            "use_remote_address": False,
            "normalize_path": True,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "route_config": {
                "name": str(PORT),
                "validate_clusters": False,
                "virtual_hosts": [vendor_host(h) for h in HOSTS]
                + [
                    {
                        "name": "allow_any",
                        "domains": ["*"],
                        "routes": [
                            {
                                "name": "allow_any",
                                "match": {"prefix": "/"},
                                "route": {"cluster": "PassthroughCluster", "timeout": "0s"},
                            }
                        ],
                        "include_request_attempt_count": True,
                    }
                ],
            },
            "http_filters": [
                {"name": "envoy.filters.http.fault", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
                {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                {"name": ROUTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
            ],
        },
    }
    return {
        "node": {"id": f"sidecar~10.0.0.7~my-app-5d9c7-x2k4p.{NAMESPACE}~{NAMESPACE}.svc.cluster.local", "cluster": f"my-app.{NAMESPACE}"},
        "static_resources": {
            "listeners": [
                {
                    "name": f"0.0.0.0_{PORT}",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": PORT}},
                    "traffic_direction": "OUTBOUND",
                    "bind_to_port": False,
                    "filter_chains": [{"filters": [hcm]}],
                }
            ],
            "clusters": [vendor_cluster(h) for h in HOSTS]
            + [{"name": "PassthroughCluster", "type": "ORIGINAL_DST", "connect_timeout": "10s", "lb_policy": "CLUSTER_PROVIDED"}],
        },
    }


# Oneofs of the Envoy messages the patches reach (route action, route,
# upstream HTTP protocol options, cluster discovery type): setting one
# member clears the others.
ONEOFS = [
    {"cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin", "inline_cluster_specifier_plugin"},
    {"host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header", "host_rewrite_path_regex"},
    {"route", "redirect", "direct_response", "filter_action", "non_forwarding_action"},
    {"explicit_http_config", "use_downstream_protocol_config", "auto_config"},
    {"type", "cluster_type"},
]
# Proto map fields among them: a merge replaces their entries whole.
MAP_FIELDS = {"typed_extension_protocol_options", "filter_metadata", "typed_filter_metadata", "typed_per_filter_config", "key_values"}


def proto_merge(dst: dict, src: dict) -> None:
    """Merges `src` into `dst` as protobuf's merge does (the JSON form of
    both): what istiod's MERGE does."""
    for key, value in src.items():
        for group in ONEOFS:
            if key in group:
                for other in group - {key}:
                    dst.pop(other, None)
        if isinstance(value, list):
            dst[key] = dst.get(key, []) + copy.deepcopy(value)
        elif key in MAP_FIELDS:
            entries = dict(dst.get(key, {}))
            entries.update(copy.deepcopy(value))
            dst[key] = entries
        elif isinstance(value, dict) and "@type" not in value and isinstance(dst.get(key), dict):
            proto_merge(dst[key], value)
        else:
            # Scalars, and an Any (its type URL and bytes are replaced).
            dst[key] = copy.deepcopy(value)


def context_matches(match: dict) -> bool:
    return match.get("context", "ANY") in ("ANY", CONTEXT)


def http_filter_lists(config: dict, lmatch: dict):
    """(http_filters, sub-filter name) of each HCM the listener match selects."""
    unmodelled = set(lmatch) - {"portNumber", "filterChain", "name"}
    assert not unmodelled, f"listener match {sorted(unmodelled)} not modelled"
    chain_match = lmatch.get("filterChain", {})
    unmodelled = set(chain_match) - {"name", "filter"}
    assert not unmodelled, f"filterChain match {sorted(unmodelled)} not modelled"
    filter_match = chain_match.get("filter", {})
    for listener in config["static_resources"]["listeners"]:
        if "portNumber" in lmatch and listener["address"]["socket_address"]["port_value"] != lmatch["portNumber"]:
            continue
        if "name" in lmatch and listener["name"] != lmatch["name"]:
            continue
        for chain in listener["filter_chains"]:
            if "name" in chain_match and chain.get("name") != chain_match["name"]:
                continue
            for f in chain["filters"]:
                if "name" in filter_match and f["name"] != filter_match["name"]:
                    continue
                if f["name"] == HCM:
                    yield f["typed_config"]["http_filters"], filter_match.get("subFilter", {}).get("name")


def patch_http_filters(filters: list, sub: str | None, op: str, value: dict) -> bool:
    names = [f["name"] for f in filters]
    if sub is not None and sub not in names:
        return False
    at = names.index(sub) if sub is not None else None
    if op == "INSERT_BEFORE":
        filters.insert(0 if at is None else at, copy.deepcopy(value))
    elif op == "INSERT_AFTER":
        filters.insert(len(filters) if at is None else at + 1, copy.deepcopy(value))
    elif op == "INSERT_FIRST":
        filters.insert(0, copy.deepcopy(value))
    else:
        raise AssertionError(f"HTTP_FILTER {op} not modelled")
    return True


def routes_matching(config: dict, rcm: dict):
    unmodelled = set(rcm) - {"portNumber", "name", "vhost"}
    assert not unmodelled, f"routeConfiguration match {sorted(unmodelled)} not modelled"
    vhost_match = rcm.get("vhost", {})
    route_match = vhost_match.get("route", {})
    actions = {"ANY": None, "ROUTE": "route", "REDIRECT": "redirect", "DIRECT_RESPONSE": "direct_response"}
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] != HCM:
                    continue
                rc = f["typed_config"]["route_config"]
                # A sidecar's outbound route configuration is named by its port.
                if "portNumber" in rcm and rc["name"] != str(rcm["portNumber"]):
                    continue
                if "name" in rcm and rc["name"] != rcm["name"]:
                    continue
                for vh in rc["virtual_hosts"]:
                    if "name" in vhost_match and vh["name"] != vhost_match["name"]:
                        continue
                    if "domainName" in vhost_match and vhost_match["domainName"] not in vh["domains"]:
                        continue
                    for route in vh["routes"]:
                        if "name" in route_match and route.get("name") != route_match["name"]:
                            continue
                        action = actions[route_match.get("action", "ANY")]
                        if action is not None and action not in route:
                            continue
                        yield route


def cluster_matches(cluster: dict, cm: dict) -> bool:
    if "name" in cm:
        return cluster["name"] == cm["name"]
    parts = cluster["name"].split("|")
    if len(parts) != 4:
        return not cm
    _, port, subset, host = parts
    if "subset" in cm and cm["subset"] != subset:
        return False
    if "service" in cm and cm["service"] != host:
        return False
    if "portNumber" in cm and str(cm["portNumber"]) != port:
        return False
    return True


def apply_envoy_filter(config: dict, doc: dict) -> list[int]:
    """Applies an EnvoyFilter's patches in order; returns how many objects
    each patch changed."""
    counts = []
    for cp in doc["spec"]["configPatches"]:
        match, patch = cp["match"], cp["patch"]
        op, value = patch["operation"], patch.get("value")
        assert "proxy" not in match, "proxy match not modelled"
        n = 0
        if not context_matches(match):
            counts.append(0)
            continue
        if cp["applyTo"] == "HTTP_FILTER":
            for filters, sub in http_filter_lists(config, match.get("listener", {})):
                n += patch_http_filters(filters, sub, op, value)
        elif cp["applyTo"] == "HTTP_ROUTE":
            assert op == "MERGE", f"HTTP_ROUTE {op} not modelled"
            for route in routes_matching(config, match.get("routeConfiguration", {})):
                proto_merge(route, value)
                n += 1
        elif cp["applyTo"] == "CLUSTER":
            assert op == "MERGE", f"CLUSTER {op} not modelled"
            for cluster in config["static_resources"]["clusters"]:
                if cluster_matches(cluster, match.get("cluster", {})):
                    proto_merge(cluster, value)
                    n += 1
        else:
            raise AssertionError(f"applyTo {cp['applyTo']} not modelled")
        counts.append(n)
    return counts


def render_wasm_plugin(doc: dict, resource_version: str = "1") -> dict:
    """The HTTP filter istiod makes of a WasmPlugin (istio/istio
    pilot/pkg/model/extensions.go), with the module where the istio-agent
    puts what it fetched: here the build output."""
    spec, meta = doc["spec"], doc["metadata"]
    env = spec.get("vmConfig", {}).get("env", [])
    key_values = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": resource_version}
    if spec.get("imagePullPolicy", "UNSPECIFIED_POLICY") != "UNSPECIFIED_POLICY":
        key_values["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    key_values.update({e["name"]: e.get("value", "") for e in env if e.get("valueFrom", "INLINE") == "INLINE"})
    vm_config = {
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(WASM)}},
        "environment_variables": {"key_values": key_values},
    }
    host_env_keys = [e["name"] for e in env if e.get("valueFrom") == "HOST"]
    if host_env_keys:
        vm_config["environment_variables"]["host_env_keys"] = host_env_keys
    name = f"{meta['namespace']}.{meta['name']}"
    config = {"name": name, "root_id": spec.get("pluginName", ""), "vm_config": vm_config}
    if spec.get("pluginConfig"):
        config["configuration"] = {"@type": STRING_VALUE, "value": json.dumps(spec["pluginConfig"])}
    config["failure_policy"] = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}[
        spec.get("failStrategy", "FAIL_CLOSE")
    ]
    return {"name": name, "typed_config": {"@type": WASM_TYPE, "config": config}}


def apply_wasm_plugin(config: dict, doc: dict) -> int:
    spec = doc["spec"]
    assert spec.get("type", "HTTP") == "HTTP"
    assert spec.get("phase", "UNSPECIFIED_PHASE") == "UNSPECIFIED_PHASE", "only the default phase is modelled"
    selectors = spec.get("match", [])
    applies = not selectors or any(
        s.get("mode", "CLIENT_AND_SERVER") in ("CLIENT", "CLIENT_AND_SERVER")
        and (not s.get("ports") or PORT in [p["number"] for p in s["ports"]])
        for s in selectors
    )
    n = 0
    if applies:
        # UNSPECIFIED_PHASE: at the end of the chain, right before the router.
        for filters, _ in http_filter_lists(config, {"portNumber": PORT}):
            n += patch_http_filters(filters, ROUTER, "INSERT_BEFORE", render_wasm_plugin(doc))
    return n


def point_module_at_build(obj) -> list[str]:
    """Replaces the module path the manifests load from with the build
    output; returns the paths it found."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "filename" and isinstance(value, str) and value.endswith(".wasm"):
                found.append(value)
                obj[key] = str(WASM)
            else:
                found += point_module_at_build(value)
    elif isinstance(obj, list):
        for item in obj:
            found += point_module_at_build(item)
    return found


def envoy_filter(name: str) -> dict:
    doc = only(name)
    paths = point_module_at_build(doc)
    assert set(paths) <= {MODULE_PATH}, (name, paths)
    return doc


# Each patch changes exactly one object of the base: the HCM's filter
# chain, one route, one cluster.
EXPECTED_COUNTS = {
    "envoyfilter-strip-header.yaml": [1],
    "envoyfilter-wasm.yaml": [1],
    "envoyfilter-route.yaml": [1, 1, 1],
    "envoyfilter-upstream.yaml": [1, 1, 1],
}


def deployment(variant: str) -> dict:
    """The sidecar's config with every manifest of one way to deploy."""
    config = base_config()
    for name in ["envoyfilter-strip-header.yaml", "envoyfilter-wasm.yaml", "envoyfilter-route.yaml", "envoyfilter-upstream.yaml"]:
        if name == "envoyfilter-wasm.yaml" and variant == "wasmplugin":
            assert apply_wasm_plugin(config, only("wasmplugin.yaml")) == 1
        else:
            assert apply_envoy_filter(config, envoy_filter(name)) == EXPECTED_COUNTS[name], name
    return config


def validated(config: dict, path: Path) -> str:
    path.write_text(json.dumps(config, indent=1))
    result = validate(path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"configuration '{path}' OK" in out, out[-4000:]
    assert "configuration refused" not in out, out[-4000:]
    # The filter parsed its configuration, with the vendors' Istio clusters.
    assert "configured; routing header x-llm-failover-cluster" in out, out[-4000:]
    for cluster in CLUSTERS:
        assert f"(cluster {cluster}," in out, (cluster, out[-4000:])
    for key in KEYS.values():
        assert key not in out and key not in path.read_text()
    return out


@pytest.fixture
def keys(monkeypatch):
    """The vendors' keys in the environment Envoy inherits, as the proxy
    container would have them (the filter refuses a configuration whose
    api_key_env is unset)."""
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def test_the_applier_merges_as_protobuf_does():
    route = {"route": {"cluster": "a", "timeout": "0s", "retry_policy": {"num_retries": 2, "retriable_status_codes": [503]}}}
    proto_merge(route, {"route": {"cluster_header": "h", "timeout": "120s", "retry_policy": {"retriable_status_codes": [502]}}})
    assert route == {"route": {"cluster_header": "h", "timeout": "120s", "retry_policy": {"num_retries": 2, "retriable_status_codes": [503, 502]}}}
    cluster = {"typed_extension_protocol_options": {"x": {"@type": "t", "use_downstream_protocol_config": {}, "common_http_protocol_options": {}}, "y": {"@type": "u"}}}
    proto_merge(cluster, {"typed_extension_protocol_options": {"x": {"@type": "t", "explicit_http_config": {}}}})
    assert cluster == {"typed_extension_protocol_options": {"x": {"@type": "t", "explicit_http_config": {}}, "y": {"@type": "u"}}}
    filters = [{"name": "a"}, {"name": ROUTER}]
    assert not patch_http_filters(filters, "missing", "INSERT_FIRST", {"name": "x"})
    assert patch_http_filters(filters, ROUTER, "INSERT_FIRST", {"name": "x"})
    assert patch_http_filters(filters, ROUTER, "INSERT_BEFORE", {"name": "y"})
    assert [f["name"] for f in filters] == ["x", "a", "y", ROUTER]


def test_the_base_config_is_valid_without_the_manifests(tmp_path):
    """The stand-in for Istio's output is itself a config Envoy accepts, so a
    failure below is the manifests'."""
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base_config()))
    result = validate(path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.parametrize("name", ENVOYFILTERS)
def test_each_envoyfilter_yields_a_valid_envoy_config(name, keys, tmp_path):
    """One EnvoyFilter on the config it meets: the downstream filter is
    there (as the WasmPlugin, or as envoyfilter-wasm.yaml itself)."""
    config = base_config()
    if name != "envoyfilter-wasm.yaml":
        assert apply_wasm_plugin(config, only("wasmplugin.yaml")) == 1
    assert apply_envoy_filter(config, envoy_filter(name)) == EXPECTED_COUNTS[name]
    out = validated(config, tmp_path / name.replace(".yaml", ".json"))
    if name == "envoyfilter-upstream.yaml":
        assert out.count("configured as an upstream filter") >= 1, out[-4000:]


def downstream_filter(config: dict) -> dict:
    filters = hcm_filters(config)
    [f] = [f for f in filters if f["typed_config"]["@type"] == WASM_TYPE]
    return f


def hcm_filters(config: dict) -> list[dict]:
    [(filters, _)] = list(http_filter_lists(config, {"portNumber": PORT}))
    return filters


@pytest.mark.parametrize("variant", ["wasmplugin", "envoyfilter"])
def test_a_whole_deployment_is_valid_and_holds_what_the_filter_needs(variant, keys, tmp_path):
    """Every manifest of one way to deploy, together: strip-header, the
    filter (WasmPlugin or envoyfilter-wasm.yaml), route, upstream."""
    config = deployment(variant)
    out = validated(config, tmp_path / f"{variant}.json")
    assert "configured as an upstream filter" in out, out[-4000:]
    base = base_config()

    # The HTTP filters: the client's header removed first, the filter right
    # before the router, the router last; one llm-failover filter only.
    filters = hcm_filters(config)
    names = [f["name"] for f in filters]
    assert names[0] == "envoy.filters.http.header_mutation", names
    assert filters[0]["typed_config"]["mutations"]["request_mutations"] == [{"remove": "x-llm-failover-cluster"}]
    assert names[-1] == ROUTER and names[-2] == downstream_filter(config)["name"], names
    downstream = downstream_filter(config)["typed_config"]["config"]
    assert downstream["root_id"] == "llm_failover"
    env = downstream["vm_config"]["environment_variables"]
    if variant == "envoyfilter":
        assert downstream["allow_on_headers_stop_iteration"] is True
        assert downstream["vm_config"]["vm_id"] == "llm_failover"
    else:
        # What a WasmPlugin cannot set (the reason for envoyfilter-wasm.yaml).
        assert "allow_on_headers_stop_iteration" not in downstream
        assert downstream["failure_policy"] == "FAIL_CLOSED"
    filter_config = json.loads(downstream["configuration"]["value"])
    assert [v["cluster"] for v in filter_config["vendors"]] == CLUSTERS
    assert {v["api_key_env"] for v in filter_config["vendors"]} <= set(env["host_env_keys"])
    assert not set(KEYS) & set(env.get("key_values", {})), "keys must come from the host, not the config"
    assert filter_config["rescue"]["relay"] is True
    assert filter_config["cluster_header"] == "x-llm-failover-cluster"

    # Every vendor host's route reads the header (Istio's cluster gone: one
    # oneof), with the relay's redirect policy; Istio's catch-all untouched.
    vhosts = {vh["name"]: vh for vh in config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]}
    base_vhosts = {vh["name"]: vh for vh in base["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]}
    for host in HOSTS:
        [route] = vhosts[f"{host}:{PORT}"]["routes"]
        action = route["route"]
        assert action["cluster_header"] == "x-llm-failover-cluster" and "cluster" not in action, action
        policy = action["internal_redirect_policy"]
        assert policy["redirect_response_codes"] == [307]
        assert policy["response_headers_to_copy"] == ["x-llm-failover-relay"]
        assert policy["max_internal_redirects"] >= filter_config["rescue"]["max_attempts"] - 1
        assert action["timeout"] == filter_config["rescue"]["deadline"]
        assert action["retry_policy"]["retry_on"] == "reset,connect-failure" and action["retry_policy"]["num_retries"] == 1
    assert vhosts["allow_any"] == base_vhosts["allow_any"]

    # Every vendor cluster: TLS origination kept, the upstream filter (same
    # module, role upstream, a vm_id of its own) then the upstream codec.
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    base_clusters = {c["name"]: c for c in base["static_resources"]["clusters"]}
    for host, name in zip(HOSTS, CLUSTERS):
        cluster = clusters[name]
        assert cluster["transport_socket"] == base_clusters[name]["transport_socket"]
        assert cluster["transport_socket"]["typed_config"]["sni"] == host
        options = cluster["typed_extension_protocol_options"][HTTP_OPTIONS]
        upstream, codec = options["http_filters"]
        assert codec["name"] == "envoy.filters.http.upstream_codec"
        assert upstream["typed_config"]["@type"] == WASM_TYPE
        up = upstream["typed_config"]["config"]
        assert json.loads(up["configuration"]["value"]) == {"role": "upstream"}
        assert up["vm_config"]["vm_id"] == "llm_failover_upstream"
        assert up["vm_config"]["vm_id"] != downstream["vm_config"].get("vm_id", "")
        assert up["vm_config"]["code"] == downstream["vm_config"]["code"]
    assert clusters["PassthroughCluster"] == base_clusters["PassthroughCluster"]


def test_the_two_ways_to_load_the_filter_carry_the_same_configuration():
    wasm_plugin = only("wasmplugin.yaml")["spec"]
    [cp] = only("envoyfilter-wasm.yaml")["spec"]["configPatches"]
    config = cp["patch"]["value"]["typed_config"]["config"]
    assert json.loads(config["configuration"]["value"]) == wasm_plugin["pluginConfig"]
    assert config["root_id"] == wasm_plugin["pluginName"]
    host_keys = [e["name"] for e in wasm_plugin["vmConfig"]["env"] if e["valueFrom"] == "HOST"]
    assert config["vm_config"]["environment_variables"]["host_env_keys"] == host_keys
    assert sorted(host_keys) == sorted(KEYS)
    # The vendors' clusters are the ServiceEntries' and the CLUSTER patches'.
    assert [v["cluster"] for v in wasm_plugin["pluginConfig"]["vendors"]] == CLUSTERS
    patched = [p["match"]["cluster"]["name"] for p in only("envoyfilter-upstream.yaml")["spec"]["configPatches"]]
    assert patched == CLUSTERS
    vhosts = [p["match"]["routeConfiguration"]["vhost"]["name"] for p in only("envoyfilter-route.yaml")["spec"]["configPatches"]]
    assert vhosts == [f"{h}:{PORT}" for h in HOSTS]
