# This filter next to its peers (bench/PEERS.md): Envoy without a filter,
# Envoy's own failover (outlier detection, aggregate cluster, retries) and the
# LiteLLM proxy, on this machine and in one run: cost per request (wrk, 1/16/64
# connections, JSON and streamed) and an outage of the preferred vendor under
# steady load (503, 429 with retry-after, one request in two failing).
#   make bench-peers                                full run, ~15 min on 2 cores
#   make bench-peers PEERS_ARGS=--quick             a short one, ~4 min
#   make bench-peers PEERS_ARGS="--parts failover --scenarios 503 --systems filter,litellm"
# Results: bench/results/peers.json and a markdown report. Not part of `make test`.
#
# LiteLLM is installed from PyPI into a virtualenv of its own (.venv-litellm),
# pinned, and runs as a separate process with a scrubbed environment.

LITELLM_VERSION := 1.108.0
VENV_LITELLM    := .venv-litellm
STAMP_LITELLM   := $(VENV_LITELLM)/.installed-$(LITELLM_VERSION)
PEERS_ARGS      ?=

.PHONY: bench-peers

$(STAMP_LITELLM):
	$(PYTHON) -m venv $(VENV_LITELLM)
	$(VENV_LITELLM)/bin/pip install --quiet --disable-pip-version-check 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

bench-peers: $(STAMP_RUST) $(STAMP_VENV) $(STAMP_LITELLM) build
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(VPY) bench/peers.py --litellm $(VENV_LITELLM)/bin/litellm $(PEERS_ARGS)
