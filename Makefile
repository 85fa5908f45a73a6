# llm-failover: every target installs what it needs, so each works on a fresh clone.
#   make run    build the filter, start Envoy with it and three mock LLM vendors
#   make test   unit tests, lints, and end-to-end tests in real Envoy
#   make bench  the filter's cost per request against bare Envoy
#   make hostile  randomized hostile clients and vendors against the real .wasm in Envoy
#   make stress / soak / fleet   load checks (tests/load/README.md); not part of `make test`

PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
TARGET     := wasm32-wasip1
WASM       := target/$(TARGET)/release/llm_failover.wasm
EMPTY_WASM := target/$(TARGET)/release/empty_filter.wasm
STAMP_RUST := target/.wasm-target-installed
STAMP_VENV := $(VENV)/.installed

# Pieces kept in files of their own (mk/*.mk): each defines its targets and
# may add what `make setup` must install to SETUP_EXTRA.
SETUP_EXTRA :=
-include mk/*.mk
.DEFAULT_GOAL := all

.PHONY: all setup build run watch break heal test unit lint e2e hostile bench stress soak fleet fuzz clean

all: build

setup: $(STAMP_RUST) $(STAMP_VENV) $(SETUP_EXTRA)

$(STAMP_RUST):
	rustup target add $(TARGET)
	mkdir -p target && touch $@

$(STAMP_VENV): tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

build: $(STAMP_RUST)
	cargo build --release --target $(TARGET) --workspace

run: setup build
	$(VPY) scripts/demo.py

# Demo helpers, for a second terminal while `make run` is up.
VENDOR ?= anthropic
FAULT  ?= 529
watch: $(STAMP_VENV)
	$(VPY) scripts/watch.py

break: $(STAMP_VENV)
	$(VPY) tests/mock/vendors.py ctl --control 18000 break $(VENDOR) $(FAULT)

heal: $(STAMP_VENV)
	$(VPY) tests/mock/vendors.py ctl --control 18000 heal $(VENDOR)

unit:
	cargo test --workspace --exclude empty-filter

lint: $(STAMP_RUST)
	cargo fmt --all -- --check
	cargo clippy --release --target $(TARGET) --workspace -- -D warnings
	cargo clippy --all-targets -- -D warnings

e2e: setup build
	$(VPY) -m pytest tests/e2e tests/mock -q -p no:cacheprovider

test: setup build unit lint e2e

# Randomized hostile inputs (tests/hostile/README.md): HOSTILE_N requests from
# seed HOSTILE_SEED through the built filter in Envoy, against a vendor that
# misbehaves on purpose. Fails on wasm traps, Envoy dying, client credentials
# reaching a vendor, or cut answers reaching the client looking complete.
# Not part of `make test`; about 75 s at the default size on 2 cores.
HOSTILE_N    ?= 10000
HOSTILE_SEED ?= 1
hostile: setup build
	HOSTILE_N=$(HOSTILE_N) HOSTILE_SEED=$(HOSTILE_SEED) $(VPY) tests/hostile/run.py $(HOSTILE_ARGS)

# The filter's cost per request (JSON answers, 1 and 16 connections), then
# per streamed answer (one 52-event stream per request, what the stream
# scanner costs in Envoy), then the scanner alone per chunk, natively.
bench: setup build
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(VPY) bench/run.py $(BENCH_ARGS)
	$(VPY) bench/run.py --sse 50 --variants empty,filter --connections 16 --rounds 3 \
		--output bench/results/sse.json $(BENCH_ARGS)
	cargo run --quiet --release --example scan_cost
	$(VPY) bench/ttfb.py
	$(VPY) bench/ttfb.py --fail-latency 0 --output bench/results/ttfb-instant.json

# Load checks (tests/load/README.md), not part of `make test`.
# stress: 200 connections, STRESS_REQUESTS requests over 4 workers; the shared
#         windows must hold every outcome (no lost compare-and-swap update).
# soak:   SOAK_MINUTES of mixed traffic and scheduled vendor faults; memory and
#         shared data stay flat, no wasm trap, state changes follow the faults.
# fleet:  three Envoy replicas, one outage of the preferred vendor: what each
#         replica (and the fleet) pays to detect it.
STRESS_REQUESTS ?= 100000
SOAK_MINUTES    ?= 30
stress: setup build
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(VPY) tests/load/stress.py --requests $(STRESS_REQUESTS) $(STRESS_ARGS)

soak: setup build
	$(VPY) tests/load/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

fleet: setup build
	$(VPY) tests/load/fleet.py $(FLEET_ARGS)

# The property tests of the stream scanner and the config parser, for longer
# than `make test` runs them.
FUZZ_ROUNDS ?= 1000000
fuzz:
	LLMF_FUZZ_ROUNDS=$(FUZZ_ROUNDS) cargo test --release --lib property -- --nocapture

clean:
	cargo clean
	rm -rf $(VENV)
