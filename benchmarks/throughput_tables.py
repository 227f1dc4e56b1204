"""Markdown tables from throughput.py's JSON (the tables in docs/PERFORMANCE.md are this script's output).

    python benchmarks/throughput_tables.py benchmarks/results/throughput_cpu.json [more.json ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def tables(result: dict) -> str:
    rows = result["rows"]
    variants = list(rows[0]["ms_per_step"])
    out = [f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, "
           f"{result['machine']['threads']} threads, torch {result['machine']['torch']}, device "
           f"{result['machine']['device']}" + (f" ({result['machine']['gpu']})" if result["machine"]["gpu"] else "")
           + f"; batch {result['batch']}; measured peak {result['peak_gflops']:.0f} GFLOP/s "
           f"(float32 {result['peak_matrix_n']}^2 matrix product).", "",
           "ms per inner step of all T tasks (ratio to plain, median over rounds):", "",
           "| model | T | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for r in rows:
        cells = [f"{r['ms_per_step']['plain']:.1f}"] + [
            f"{r['ms_per_step'][v]:.1f} ({r['ratio_to_plain'][v]:.3f})" for v in variants[1:]]
        out.append(f"| {r['model']} | {r['tasks']} | " + " | ".join(cells) + " |")
    if rows[0].get("memory_mib_above_data"):
        mv = list(rows[0]["memory_mib_above_data"])
        out += ["", "Peak memory above the data, MiB (in brackets: excess over plain, in copies of phi):", "",
                "| model | T | phi copy (MiB) | " + " | ".join(mv) + " |", "|---|---|---|" + "---|" * len(mv)]
        for r in rows:
            cells = [f"{r['memory_mib_above_data'][v]:.1f}" + (
                "" if v == "plain" else f" ({r['memory_excess_over_plain_in_phi_copies'][v]:+.1f})") for v in mv]
            out.append(f"| {r['model']} | {r['tasks']} | {r['phi_copy_mib']:.2f} | " + " | ".join(cells) + " |")
    out += ["", "FLOPs per inner step and achieved rate (GFLOP/s, fraction of the measured peak):", "",
            "| model | T | GFLOP / step | " + " | ".join(variants) + " |", "|---|---|---|" + "---|" * len(variants)]
    for r in rows:
        cells = [f"{r['achieved_gflops'][v]:.0f} ({r['fraction_of_peak'][v]:.2f})" for v in variants]
        out.append(f"| {r['model']} | {r['tasks']} | {r['gflop_per_step']:.2f} | " + " | ".join(cells) + " |")
    if "distributed" in result:
        d = result["distributed"]
        out += ["", (f"All-reduce share, {d['model']}, T = {d['tasks']}, {d['world_size']} ranks, "
                     f"{d['threads_per_rank']} thread(s) each, {d['method']}:"), "",
                "| rank | local tasks | ms / step | all-reduce ms / step | all-reduces / step | share |",
                "|---|---|---|---|---|---|"]
        for r in d["ranks"]:
            out.append(f"| {r['rank']} | {r['local_tasks']} | {r['ms_per_step']:.1f} | "
                       f"{r['allreduce_ms_per_step']:.2f} | {r['allreduce_calls_per_step']:.0f} | "
                       f"{100 * r['allreduce_share']:.1f}% |")
    return "\n".join(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"<!-- {path} -->")
        print(tables(json.loads(Path(path).read_text())))
        print()
