#!/usr/bin/env python3
"""Sums Nsight Compute's gpu__time_duration per kernel name.

    ncu --metrics gpu__time_duration.sum --csv PROGRAM > k.csv
    python3 scripts/ncu-sum.py k.csv [STEPS]

STEPS divides the totals (the program ran that many identical steps).
Prints each kernel's time per step, its share and its launches per step,
largest first.
"""
import collections
import csv
import sys

path = sys.argv[1]
steps = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
with open(path, newline="") as f:
    lines = [l for l in f if l.startswith('"')]  # ncu's own log lines are not CSV
total, count = collections.Counter(), collections.Counter()
for row in csv.DictReader(lines):
    if row.get("Metric Name") != "gpu__time_duration.sum":
        continue
    value = float(row["Metric Value"].replace(",", ""))
    unit = row.get("Metric Unit", "nsecond")
    scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}.get(unit, 1e-6)
    name = row["Kernel Name"].split("(")[0]
    total[name] += value * scale
    count[name] += 1
grand = sum(total.values())
print("%10s %6s %8s  %s" % ("ms/step", "share", "launches", "kernel"))
for name, ms in total.most_common():
    print("%10.3f %5.1f%% %8.1f  %s" % (ms / steps, 100 * ms / grand, count[name] / steps, name[:110]))
print("%10.3f        %8.1f  all kernels" % (grand / steps, sum(count.values()) / steps))
