# Where the filter's cost per request goes: the filter next to the least a
# failover filter must do (bench/floors/): an empty wasm filter, one that
# writes the routing header, one that holds the request for its body, reads
# it and writes the header, and this filter routing by headers only.
# Then the filter's own code per request natively, and its parts
# (examples/request_cost.rs). Not part of `make test`; about 7 minutes.
bench-floors: setup build
	@command -v wrk >/dev/null || (apt-get install -y wrk || (apt-get update && apt-get install -y wrk))
	$(VPY) bench/run.py --variants baseline,empty,filter --rounds 3 \
		--extra-variant route=$(EMPTY_WASM):bench/floors/route.json \
		--extra-variant hold=$(EMPTY_WASM):bench/floors/hold.json \
		--extra-variant pairs=$(EMPTY_WASM):bench/floors/pairs.json \
		--extra-variant mimic=$(EMPTY_WASM):bench/floors/mimic.json \
		--extra-variant headers-only=$(WASM):bench/floors/filter-headers.json \
		--output bench/results/floors.json $(BENCH_ARGS)
	cargo run --quiet --release --example request_cost
