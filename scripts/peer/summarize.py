#!/usr/bin/env python3
"""Summarize the side-by-side peer benchmark: samples.jsonl (one measurement
a line: metric, side "ours" or "llama.cpp", pair, value, unit, better) ->
JSON and a markdown table with each side's median and the median of the
pairwise ratios ours / llama.cpp. Standard library only."""
import json
import statistics
import sys
from collections import OrderedDict


def main():
    samples, out_json, out_md, title = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    rows = [json.loads(l) for l in open(samples, encoding="utf-8") if l.strip()]
    by = OrderedDict()
    for r in rows:
        m = by.setdefault(r["metric"], {"unit": r["unit"], "better": r.get("better", "higher"),
                                         "ours": {}, "llama.cpp": {}})
        m[r["side"]][r["pair"]] = r["value"]
    res = []
    for name, m in by.items():
        o, l = m["ours"], m["llama.cpp"]
        pairs = sorted(set(o) & set(l))
        ratios = [o[p] / l[p] for p in pairs if l[p]]
        res.append({
            "metric": name, "unit": m["unit"], "better": m["better"],
            "ours": sorted(o.values()), "llama_cpp": sorted(l.values()),
            "ours_median": statistics.median(o.values()) if o else None,
            "llama_cpp_median": statistics.median(l.values()) if l else None,
            "pairs": len(pairs),
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios) if ratios else None,
            "ratio_max": max(ratios) if ratios else None,
        })
    meta = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump({"title": title, "config": meta, "metrics": res}, f, indent=2)
        f.write("\n")

    def fmt(x):
        return "–" if x is None else (f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}")

    lines = [f"# {title}", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "| metric | unit | better | ours (median) | llama.cpp (median) | ours / llama.cpp (median of pairs) | min–max | pairs |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(f"| {r['metric']} | {r['unit']} | {r['better']} | {fmt(r['ours_median'])} | {fmt(r['llama_cpp_median'])} | "
                     f"{fmt(r['ratio_median'])} | {fmt(r['ratio_min'])}–{fmt(r['ratio_max'])} | {r['pairs']} |")
    with open(out_md, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
