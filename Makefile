.PHONY: test bench-cpu bench-cpu-peer

test:
	go test ./...

# End-to-end CPU benchmark: server + loadgen sweep + results/ + plots/.
# Knobs are environment variables; see scripts/bench-cpu.sh.
bench-cpu:
	bash scripts/bench-cpu.sh

# Side by side with llama.cpp on the same model shape and weights (prefill,
# decode, int8 vs Q8_0, HTTP TTFT and concurrency, peak RSS) into
# results/cpu-peer/. Needs LLAMA_CPP_DIR (a llama.cpp source tree, for its
# gguf-py) and LLAMA_CPP_BIN (its CPU build's bin/); see scripts/bench-cpu-peer.sh.
bench-cpu-peer:
	bash scripts/bench-cpu-peer.sh
