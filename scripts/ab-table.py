#!/usr/bin/env python3
"""Tabulates an A/B log of BenchmarkModelDecode (scripts/gpu-steps.sh's
stepab8 or stepab): ms a step for each benchmark and binary, one column
per binary with its rounds side by side.

    python3 scripts/ab-table.py step-ab8.log [BIN ...]

The log's "== BIN round N" lines name the binaries. Logs written before
gpu-steps.sh kept those lines hold only the benchmark lines: then name
the binaries in the order they ran (AB_BINS), and the script splits the
lines into runs where a benchmark repeats.
"""
import re
import sys
from collections import OrderedDict


def runs(lines):
    """Yields (binary, [(benchmark, ms)]) in the order the log has them."""
    cur, bench, labelled = None, [], False
    for line in lines:
        m = re.match(r"== (\S+) round \d+", line)
        if m:
            labelled = True
            if cur is not None:
                yield cur, bench
            cur, bench = m.group(1), []
            continue
        m = re.match(r"Benchmark\S*?/(\S+?)(?:-\d+)?\s+\d+\s+\d+ ns/op.*?\s([\d.]+) ms/step", line)
        if not m:
            continue
        name, ms = m.group(1), float(m.group(2))
        if not labelled and any(b == name for b, _ in bench):
            yield cur, bench
            cur, bench = None, []
        bench.append((name, ms))
    if bench:
        yield cur, bench


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    names = sys.argv[2:]
    table = OrderedDict()  # benchmark -> binary -> [ms]
    order = []
    for i, (binary, bench) in enumerate(runs(open(sys.argv[1]))):
        if binary is None:
            if not names:
                sys.exit("the log names no binaries: name them in the order they ran")
            binary = names[i % len(names)]
        if binary not in order:
            order.append(binary)
        for name, ms in bench:
            table.setdefault(name, {}).setdefault(binary, []).append(ms)
    print("| benchmark | " + " | ".join(order) + " |")
    print("|---" * (len(order) + 1) + "|")
    for name, cols in table.items():
        cells = [" / ".join("%.3f" % v for v in cols.get(b, [])) for b in order]
        print("| %s | %s |" % (name, " | ".join(cells)))


if __name__ == "__main__":
    main()
