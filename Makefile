.PHONY: test bench-cpu

test:
	go test ./...

# End-to-end CPU benchmark: server + loadgen sweep + results/ + plots/.
# Knobs are environment variables; see scripts/bench-cpu.sh.
bench-cpu:
	bash scripts/bench-cpu.sh
