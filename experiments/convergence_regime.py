"""The envelopes of experiments/convergence_regime.sh (issue "Evidence II", item 4) and the meta-tests they call for.

For each meta-training seed, trajectory length K and method, the curve at budget b (cumulative inner steps per task)
is the best meta-validation score over the method's meta learning rates at b (every snapshot scored by
`trajshift validate RUN --snapshots`), so choosing beta at the end of the budget cannot hide a speed advantage.
Writes OUT/envelopes.json and OUT/meta-test-jobs.txt: for the longest K, the envelope's snapshot of every method at
1/5, 1/2 and all of the budget; for Fig. 6c, CTS's final-budget envelope snapshot at every K. Each job line is
"SNAPSHOT_FILE TEST_FOLDER", for `trajshift meta-test --init SNAPSHOT_FILE --out TEST_FOLDER ...` (as in
experiments/pretrained_regime.sh).

    python experiments/convergence_regime.py runs/conv
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def envelopes(out: Path) -> dict:
    """{seed: {K: {method: [{inner_steps, score, meta_lr, snapshot}, ...] in budget order}}}."""
    found: dict = {}
    for scored in sorted(out.glob("s*/k*/*/meta_lr=*/validation-snapshots.json")):
        run = scored.parent
        seed, k, method = run.parents[2].name[1:], run.parents[1].name[1:], run.parent.name
        beta = float(run.name.split("=", 1)[1])
        curve = found.setdefault(seed, {}).setdefault(k, {}).setdefault(method, {})
        for steps, r in json.loads(scored.read_text()).items():
            best = curve.get(int(steps))
            if best is None or r["score"] > best["score"]:
                curve[int(steps)] = {"inner_steps": int(steps), "score": r["score"], "meta_lr": beta,
                                     "snapshot": str(run / "snapshots" / r["snapshot"])}
    return {s: {k: {m: [c[b] for b in sorted(c)] for m, c in by_m.items()} for k, by_m in by_k.items()}
            for s, by_k in found.items()}


def meta_test_jobs(env: dict, out: Path) -> list[tuple[str, str]]:
    jobs = []
    for seed, by_k in env.items():
        longest = max(by_k, key=int)
        for method, curve in by_k[longest].items():
            budget = curve[-1]["inner_steps"]
            for fraction, label in ((5, "fifth"), (2, "half"), (1, "all")):
                target = budget // fraction
                point = min(curve, key=lambda p: abs(p["inner_steps"] - target))
                jobs.append((point["snapshot"], str(out / "test" / f"s{seed}-k{longest}-{method}-{label}")))
        for k, by_m in by_k.items():
            if k != longest and "cts" in by_m:
                jobs.append((by_m["cts"][-1]["snapshot"], str(out / "test" / f"s{seed}-k{k}-cts-all")))
    return jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    env = envelopes(args.out)
    (args.out / "envelopes.json").write_text(json.dumps(env, indent=1) + "\n")
    jobs = meta_test_jobs(env, args.out)
    (args.out / "meta-test-jobs.txt").write_text("".join(f"{a} {b}\n" for a, b in jobs))
    for seed, by_k in env.items():
        for k, by_m in sorted(by_k.items(), key=lambda kv: int(kv[0])):
            for m, curve in by_m.items():
                points = ", ".join(f"{p['inner_steps']}: {100 * p['score']:.2f} (beta {p['meta_lr']:g})" for p in curve)
                print(f"seed {seed} K {k} {m}: {points}")
    print(f"wrote {args.out / 'envelopes.json'} and {len(jobs)} meta-test jobs in {args.out / 'meta-test-jobs.txt'}")


if __name__ == "__main__":
    main()
