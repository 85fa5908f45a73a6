#!/usr/bin/env python3
"""The filter as an OCI image, in the form Istio's WasmPlugin pulls.

    oci.py layout WASM DIR [--image NAME:TAG]   write an OCI image layout
    oci.py push DIR HOST[:PORT]/NAME[:TAG]      push it; prints the manifest digest
    oci.py pull HOST[:PORT]/NAME(:TAG|@DIGEST) OUT   fetch the module back

The image is the "oci" variant of the Wasm image spec (solo-io/wasm), the one
whose layer is the raw module: an OCI image manifest whose config and first
layer are the runtime config (application/vnd.module.wasm.config.v1+json)
and whose second layer is the .wasm bytes as they are
(application/vnd.module.wasm.content.layer.v1+wasm). Istio's fetcher takes
this variant only with exactly these two layers. Nothing in it depends on
the time of the build, so the same .wasm always gives the same digest.

Registries are spoken to with the Distribution HTTP API v2, anonymously;
loopback hosts over plain HTTP (as Docker does), others over HTTPS unless
--plain-http. Python standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
ROOT_ID = "llm_failover"
TIMEOUT = 30


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: dict) -> bytes:
    """JSON with sorted keys and no spaces, so the same content gives the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, data: bytes, title: str | None = None) -> dict:
    d = {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
    if title:
        d["annotations"] = {TITLE: title}
    return d


def runtime_config(wasm: bytes) -> bytes:
    """The spec's runtime config for Envoy: the proxy-wasm ABI the module
    exports and the root id its Envoy configs load it under."""
    if not wasm.startswith(b"\0asm"):
        raise SystemExit("not a WebAssembly module (no \\0asm header)")
    abis = sorted({m.decode() for m in re.findall(rb"proxy_abi_version_\d+_\d+_\d+", wasm)})
    if not abis:
        raise SystemExit("no proxy_abi_version_* export: not a proxy-wasm module")
    return canonical({"type": "envoy_proxy", "abiVersions": abis, "config": {"root_ids": [ROOT_ID]}})


def build_image(wasm: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The manifest's bytes and every blob it refers to, by digest."""
    config = runtime_config(wasm)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, config),
            "layers": [
                descriptor(CONFIG_TYPE, config, "runtime-config.json"),
                descriptor(WASM_LAYER_TYPE, wasm, "plugin.wasm"),
            ],
        }
    )
    return manifest, {digest_of(config): config, digest_of(wasm): wasm}


def write_layout(wasm_path: Path, out: Path, tag: str) -> str:
    """Writes DIR/oci-layout, DIR/index.json and DIR/blobs/sha256/*; returns the manifest digest."""
    if out.exists() and any(out.iterdir()) and not (out / "oci-layout").exists():
        raise SystemExit(f"{out} exists and is not an OCI layout; not overwriting it")
    manifest, blobs = build_image(wasm_path.read_bytes())
    shutil.rmtree(out / "blobs", ignore_errors=True)
    (out / "blobs" / "sha256").mkdir(parents=True)
    for digest, data in {**blobs, digest_of(manifest): manifest}.items():
        (out / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**descriptor(MANIFEST_TYPE, manifest), "annotations": {REF_NAME: tag}}],
    }
    (out / "index.json").write_bytes(canonical(index))
    (out / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return digest_of(manifest)


def read_layout(layout: Path) -> tuple[bytes, dict[str, bytes]]:
    """The layout's (single) manifest and the blobs it refers to, each checked against its digest."""

    def blob(digest: str) -> bytes:
        data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
        if digest_of(data) != digest:
            raise SystemExit(f"{layout}: blob {digest} does not match its digest")
        return data

    index = json.loads((layout / "index.json").read_text())
    manifest = blob(index["manifests"][0]["digest"])
    parsed = json.loads(manifest)
    refs = [parsed["config"], *parsed["layers"]]
    return manifest, {d["digest"]: blob(d["digest"]) for d in refs}


@dataclass
class Ref:
    """HOST[:PORT]/NAME[:TAG|@DIGEST]; an oci:// prefix is allowed."""

    host: str
    name: str
    reference: str

    @classmethod
    def parse(cls, text: str) -> "Ref":
        text = text.removeprefix("oci://")
        host, _, rest = text.partition("/")
        if not rest:
            raise SystemExit(f"{text!r}: expected HOST[:PORT]/NAME[:TAG|@DIGEST]")
        if "@" in rest:
            name, _, reference = rest.partition("@")
        elif ":" in rest.rsplit("/", 1)[-1]:
            name, _, reference = rest.rpartition(":")
        else:
            name, reference = rest, "latest"
        return cls(host, name, reference)


def tag_of(image: str) -> str:
    """The tag of NAME[:TAG] (latest without one)."""
    last = image.rsplit("/", 1)[-1]
    return last.partition(":")[2] or "latest"


class Registry:
    """A client of the Distribution HTTP API v2 for one repository."""

    def __init__(self, ref: Ref, plain_http: bool = False):
        hostname = re.sub(r":\d+$", "", ref.host)
        loopback = hostname in ("localhost", "[::1]") or hostname.startswith("127.")
        scheme = "http" if plain_http or loopback else "https"
        self.base = f"{scheme}://{ref.host}/v2/{ref.name}/"

    def request(self, method: str, url: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(urllib.parse.urljoin(self.base, url), data=data, method=method, headers=headers or {})
        return urllib.request.urlopen(req, timeout=TIMEOUT)

    def has_blob(self, digest: str) -> bool:
        try:
            with self.request("HEAD", f"blobs/{digest}"):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise

    def put_blob(self, digest: str, data: bytes) -> None:
        """A monolithic upload: POST opens the session, one PUT carries the bytes."""
        if self.has_blob(digest):
            return
        with self.request("POST", "blobs/uploads/") as r:
            location = urllib.parse.urljoin(self.base, r.headers["Location"])
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        with self.request("PUT", f"{location}{sep}digest={urllib.parse.quote(digest)}", data, headers):
            pass

    def put_manifest(self, reference: str, manifest: bytes) -> str:
        with self.request("PUT", f"manifests/{reference}", manifest, {"Content-Type": MANIFEST_TYPE}) as r:
            return r.headers.get("Docker-Content-Digest", "")

    def get_manifest(self, reference: str) -> bytes:
        with self.request("GET", f"manifests/{reference}", headers={"Accept": MANIFEST_TYPE}) as r:
            return r.read()

    def get_blob(self, digest: str) -> bytes:
        with self.request("GET", f"blobs/{digest}") as r:
            return r.read()


def push(layout: Path, target: Ref, plain_http: bool = False) -> str:
    """Uploads every blob, then the manifest under the target's tag; returns its digest."""
    manifest, blobs = read_layout(layout)
    registry = Registry(target, plain_http)
    for digest, data in blobs.items():
        registry.put_blob(digest, data)
    digest = digest_of(manifest)
    reported = registry.put_manifest(target.reference, manifest)
    if reported and reported != digest:
        raise SystemExit(f"the registry stored the manifest as {reported}, expected {digest}")
    return digest


def pull(source: Ref, plain_http: bool = False) -> tuple[str, bytes]:
    """The manifest digest and the module's bytes, every digest checked."""
    registry = Registry(source, plain_http)
    manifest = registry.get_manifest(source.reference)
    digest = digest_of(manifest)
    if source.reference.startswith("sha256:") and digest != source.reference:
        raise SystemExit(f"manifest digest {digest} is not the {source.reference} asked for")
    layers = [d for d in json.loads(manifest)["layers"] if d["mediaType"] == WASM_LAYER_TYPE]
    if len(layers) != 1:
        raise SystemExit(f"expected one {WASM_LAYER_TYPE} layer, found {len(layers)}")
    wasm = registry.get_blob(layers[0]["digest"])
    if digest_of(wasm) != layers[0]["digest"]:
        raise SystemExit(f"layer {layers[0]['digest']} does not match its digest")
    return digest, wasm


def show(ref: Ref, digest: str) -> str:
    return f"{ref.host}/{ref.name}@{digest}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("layout", help="write an OCI image layout of a .wasm")
    p.add_argument("wasm", type=Path)
    p.add_argument("dir", type=Path)
    p.add_argument("--image", default="llm-failover:latest", help="NAME:TAG; its tag names the image in index.json")
    p = sub.add_parser("push", help="push a layout to a registry")
    p.add_argument("dir", type=Path)
    p.add_argument("ref", type=Ref.parse, help="HOST[:PORT]/NAME[:TAG]")
    p.add_argument("--plain-http", action="store_true", help="HTTP even for a registry off loopback")
    p = sub.add_parser("pull", help="pull the module of an image")
    p.add_argument("ref", type=Ref.parse, help="HOST[:PORT]/NAME[:TAG|@sha256:...]")
    p.add_argument("out", type=Path)
    p.add_argument("--plain-http", action="store_true", help="HTTP even for a registry off loopback")
    args = parser.parse_args(argv)

    try:
        if args.command == "layout":
            digest = write_layout(args.wasm, args.dir, tag_of(args.image))
            print(f"{args.dir}: manifest {digest}, {args.wasm.stat().st_size} bytes of wasm", file=sys.stderr)
        elif args.command == "push":
            digest = push(args.dir, args.ref, args.plain_http)
            print(f"pushed {args.ref.host}/{args.ref.name}:{args.ref.reference} as {show(args.ref, digest)}", file=sys.stderr)
        else:
            digest, wasm = pull(args.ref, args.plain_http)
            args.out.write_bytes(wasm)
            print(f"{args.out}: {len(wasm)} bytes from {show(args.ref, digest)}", file=sys.stderr)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{e.url}: HTTP {e.code} {e.read()[:500]!r}")
    except urllib.error.URLError as e:
        raise SystemExit(f"registry unreachable: {e.reason}")
    print(digest)


if __name__ == "__main__":
    main()
