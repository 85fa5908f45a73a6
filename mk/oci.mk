# The filter as an OCI image, the form an Istio WasmPlugin pulls with
# `url: oci://...` (envoy/istio/OCI.md). scripts/oci.py does the work with
# the Python standard library only; no Docker engine is needed.
#   make oci                                        image layout in target/oci/
#   make oci-push REGISTRY=host:port IMAGE=name:tag  push it, print the manifest digest
# Loopback registries are spoken to over plain HTTP, others over HTTPS.

OCI_DIR        := target/oci
OCI_VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE          ?= llm-failover:$(OCI_VERSION)
STAMP_REGISTRY := target/.docker-registry-installed

# tests/e2e/test_oci.py pushes to and pulls from Debian's reference registry.
SETUP_EXTRA += $(STAMP_REGISTRY)

$(STAMP_REGISTRY):
	command -v docker-registry >/dev/null || (apt-get install -y docker-registry || (apt-get update && apt-get install -y docker-registry))
	mkdir -p target && touch $@

.PHONY: oci oci-push

oci: build
	$(PYTHON) scripts/oci.py layout $(WASM) $(OCI_DIR) --image $(IMAGE)

oci-push: oci
	@test -n "$(REGISTRY)" || { echo "usage: make oci-push REGISTRY=host:port IMAGE=name:tag" >&2; exit 2; }
	$(PYTHON) scripts/oci.py push $(OCI_DIR) $(REGISTRY)/$(IMAGE)
