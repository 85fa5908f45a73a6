"""The filter as an OCI image (scripts/oci.py, envoy/istio/OCI.md), against a
real registry: Debian's reference registry (Distribution 2.8) on loopback.

The image is built from the real .wasm, pushed over the Distribution API,
and read back by digest with plain HTTP requests of this test (not with the
tool's own pull), then once more with `oci.py pull`."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT, WASM

REGISTRY_BIN = Path("/usr/bin/docker-registry")
OCI = ROOT / "scripts" / "oci.py"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
REPO = "istio-plugins/llm-failover"
TAG = "e2e"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci(*args: str | Path) -> str:
    """Runs scripts/oci.py as `make oci` / `make oci-push` do; returns the digest it prints."""
    done = subprocess.run([sys.executable, OCI, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, accept: str = MANIFEST_TYPE):
    """(status, headers, body) of one request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, method=method, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[str]:
    """host:port of a registry with filesystem storage in a temp dir, stopped afterwards."""
    if not REGISTRY_BIN.exists():
        pytest.fail(f"{REGISTRY_BIN} is missing: `make setup` installs it (apt package docker-registry)")
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = {  # JSON is YAML, which the registry reads
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "e2e-only"},
    }
    (work / "config.yml").write_text(json.dumps(config))
    log = (work / "registry.log").open("wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", work / "config.yml"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, (work / "registry.log").read_text()
            try:
                if http("GET", f"http://127.0.0.1:{port}/v2/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "registry not up in 10 s"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_layout_is_the_wasm_image_istio_pulls(tmp_path):
    """`oci.py layout` writes an OCI image layout whose manifest is the Wasm
    image spec's oci variant: OCI image manifest, wasm config media type,
    exactly two layers (Istio's fetcher wants two), the runtime config and the
    raw module; every blob matches its digest, and the same .wasm gives the
    same digest again."""
    digest = oci("layout", WASM, tmp_path / "a", "--image", f"llm-failover:{TAG}")
    assert oci("layout", WASM, tmp_path / "b") == digest

    layout = tmp_path / "a"
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == digest and entry["mediaType"] == MANIFEST_TYPE
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == TAG

    blobs = {"sha256:" + p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
    assert all(sha256(data) == d for d, data in blobs.items())
    manifest = json.loads(blobs[digest])
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [CONFIG_TYPE, WASM_LAYER_TYPE]
    for d in [manifest["config"], *manifest["layers"]]:
        assert d["size"] == len(blobs[d["digest"]])
    assert blobs[manifest["layers"][1]["digest"]] == WASM.read_bytes()

    runtime = json.loads(blobs[manifest["config"]["digest"]])
    assert runtime["type"] == "envoy_proxy"
    assert runtime["abiVersions"] == ["proxy_abi_version_0_2_1"]
    assert runtime["config"]["root_ids"] == ["llm_failover"]


def test_push_then_pull_by_digest_gives_the_wasm_back(registry, tmp_path):
    """Pushed to the registry, the image comes back by its digest: the
    registry reports that digest on the push, on a HEAD by tag and by digest,
    and on the GET; the manifest keeps its media types; the wasm layer's
    bytes are the .wasm byte for byte, and so is what `oci.py pull` writes."""
    wasm = WASM.read_bytes()
    layout_digest = oci("layout", WASM, tmp_path / "oci", "--image", f"llm-failover:{TAG}")
    digest = oci("push", tmp_path / "oci", f"{registry}/{REPO}:{TAG}")
    assert digest == layout_digest

    base = f"http://{registry}/v2/{REPO}"
    for reference in (TAG, digest):
        status, headers, _ = http("HEAD", f"{base}/manifests/{reference}")
        assert status == 200, reference
        assert headers["Docker-Content-Digest"] == digest, reference

    status, headers, body = http("GET", f"{base}/manifests/{digest}")
    assert status == 200, body
    assert sha256(body) == digest and headers["Docker-Content-Digest"] == digest
    assert headers["Content-Type"] == MANIFEST_TYPE
    manifest = json.loads(body)
    assert manifest["mediaType"] == MANIFEST_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [CONFIG_TYPE, WASM_LAYER_TYPE]

    layer = manifest["layers"][1]
    assert layer["digest"] == sha256(wasm) and layer["size"] == len(wasm)
    status, _, blob = http("GET", f"{base}/blobs/{layer['digest']}", accept="*/*")
    assert status == 200
    assert blob == wasm

    assert oci("pull", f"{registry}/{REPO}@{digest}", tmp_path / "pulled.wasm") == digest
    assert (tmp_path / "pulled.wasm").read_bytes() == wasm
