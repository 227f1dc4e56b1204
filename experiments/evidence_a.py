"""Experiment A of issue "Evidence III" (experiments/evidence_a.sh; the design in docs/image-study.md, "Experiment A:
the design", committed before its runs): envelopes, the meta-test jobs they call for, and the pre-registered verdicts.

    python experiments/evidence_a.py runs/evidence-a              # OUT/envelopes.json, OUT/meta-test-jobs.txt
    python experiments/evidence_a.py runs/evidence-a --final [--dest docs/evidence/experiment-a.json]
    python experiments/evidence_a.py docs/evidence/experiment-a/out --tables     # per-seed tables (Markdown), no files

Envelope: per meta-training seed s, method m and budget b (cumulative inner steps per task), the snapshot at b of the
meta learning rate whose meta-validation score is best at b (`trajshift validate RUN --snapshots --at ...`). An
envelope gets meta-test jobs only when every arm of (s, m) has finished and been scored at b. The cheap check (seeds
1 and 2: CTS 0.01 and Reptile 1 at 800 inner steps, as seed 0's +0.30) needs no envelope and is queued as soon as
its snapshots exist. Job lines: "SNAPSHOT TEST_FOLDER FIRST_SEED", FIRST_SEED = 5 s (each meta-training seed its own
target subsamples, head weights and batch orders).

--final reads OUT/test/*/results.json. Per seed s, d_s = mean over its 5 finetuning seeds of the paired difference
of the target-average accuracy (points); over the seeds: mean, 95% t-interval (the primary reading), Bonferroni over
the 4 primary endpoints, and the 90% interval of the two one-sided tests against the margin 0.44 (the paper's
CTS - Reptile gap). Verdict per endpoint: "reproduced" if the 95% lower bound is above 0, "equivalent within
+-0.44" if the 90% interval lies inside +-0.44, "not reproduced" if the 95% upper bound is below 0, else
"inconclusive". With fewer than 8 meta-training seeds (the design's minimum) the verdict is "none yet" whatever the
intervals say. The smallest difference the design detects (two-sided 5%, power 80%) is (t_.975 + t_.8) s / sqrt(n)
with the measured seed-to-seed standard deviation s. The design's secondary "meta-validation envelopes" go to
"meta_validation": per budget, one envelope's meta-validation score minus another's (points), summarized the same way.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

BUDGETS = (800, 1600, 4000)          # scored on meta-validation (evidence_a.sh's AT); --budgets for a smoke run
SIZES = ("5", "20")
METHODS = ("cts", "reptile", "reptile-average")
MARGIN = 0.44
MIN_SEEDS = 8                        # the design reads no verdict before 8 meta-training seeds are in
CHECK = {("1", "cts", "0.01"), ("1", "reptile", "1"), ("2", "cts", "0.01"), ("2", "reptile", "1")}
CHECK_STEPS = 800
COMPARISONS = (("cts", "reptile"), ("cts", "reptile-average"), ("reptile-average", "reptile"),
               ("cts", "scratch"), ("reptile", "scratch"), ("reptile-average", "scratch"))


def _runs(out: Path):
    """(seed, method, beta, run folder) of every run folder OUT/sS/METHOD/meta_lr=BETA."""
    for run in sorted(out.glob("s*/*/meta_lr=*")):
        if run.is_dir():
            yield run.parents[1].name[1:], run.parent.name, run.name.split("=", 1)[1], run


def _arms(out: Path) -> dict:
    """{seed: {method: [(beta, run folder), ...]}}."""
    arms: dict = {}
    for seed, method, beta, run in _runs(out):
        arms.setdefault(seed, {}).setdefault(method, []).append((beta, run))
    return arms


def _snapshot(run: Path, steps: int) -> Path | None:
    path = run / "snapshots" / f"step-{steps:08d}.safetensors"
    return path if path.is_file() else None


def primary(budgets) -> tuple[int, int]:
    """The primary endpoints' budgets: the first and the last scored (800 and 4,000 inner steps)."""
    return budgets[0], budgets[-1]


def envelopes(out: Path, budgets=BUDGETS) -> dict:
    """{seed: {method: {budget: {meta_lr, score, snapshot} or None}}}: None while an arm of (seed, method) has not
    finished or not been scored at that budget (the envelope would be chosen from fewer betas than designed)."""
    arms = _arms(out)
    found: dict = {}
    for seed, by_method in arms.items():
        for method, runs in by_method.items():
            curve = found.setdefault(seed, {}).setdefault(method, {})
            for budget in budgets:
                best, complete = None, True
                for beta, run in runs:
                    scores = run / "validation-snapshots.json"
                    scored = json.loads(scores.read_text()) if scores.is_file() else {}
                    entry = scored.get(str(budget))
                    if not (run / "summary.json").is_file() or entry is None:
                        complete = False
                        continue
                    if best is None or entry["score"] > best["score"]:
                        best = {"meta_lr": beta, "score": entry["score"],
                                "snapshot": str(run / "snapshots" / entry["snapshot"])}
                curve[str(budget)] = best if complete and best is not None else None
    return found


def test_name(seed: str, method: str, beta: str, steps: int) -> str:
    return f"s{seed}-{method}-b{beta}-at{steps}"


def meta_test_jobs(out: Path, env: dict, budgets=BUDGETS) -> list[tuple[str, str, int]]:
    """(snapshot, test folder, first finetuning seed) of every meta-test the design asks for that can run now."""
    jobs: dict[str, tuple[str, str, int]] = {}

    def add(seed: str, name: str, snapshot: Path | str) -> None:
        jobs.setdefault(name, (str(snapshot), str(out / "test" / name), 5 * int(seed)))

    for seed, method, beta, run in _runs(out):
        start = _snapshot(run, 0)
        if start is not None:                  # every arm of a seed starts from the same weights: scratch
            add(seed, f"s{seed}-scratch", start)
        check = _snapshot(run, CHECK_STEPS)
        if (seed, method, beta) in CHECK and check is not None:
            add(seed, test_name(seed, method, beta, CHECK_STEPS), check)
    for seed, by_method in env.items():
        for method, curve in by_method.items():
            for budget in primary(budgets):
                best = curve.get(str(budget))
                if best is not None:
                    add(seed, test_name(seed, method, best["meta_lr"], budget), best["snapshot"])
    return sorted(jobs.values(), key=lambda j: (int(j[2]), j[1]))


def _per_seed(path: Path, size: str) -> list[float] | None:
    """Target-average accuracy (points) per finetuning seed, or None if the meta-test has not finished."""
    results = path / "results.json"
    if not results.is_file():
        return None
    by = json.loads(results.read_text())["by_images_per_class"].get(size)
    return None if by is None else [100 * v for v in by["average"]["per_seed"]]


def _t(q: float, df: int) -> float:
    from scipy.stats import t
    return float(t.ppf(q, df))


def summarize(values: list[float], comparisons: int = 4) -> dict:
    """Mean over meta-training seeds, its 95% and Bonferroni intervals, the 90% TOST interval, the verdict and the
    smallest detectable difference (see the module docstring)."""
    n = len(values)
    mean = sum(values) / n
    pending = f"none yet ({n} of the design's {MIN_SEEDS} seeds)"
    if n < 2:
        return {"n": n, "mean": mean, "per_meta_seed": values, "verdict": pending}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    se = sd / math.sqrt(n)
    ci95, ci90 = _t(0.975, n - 1) * se, _t(0.95, n - 1) * se
    bonferroni = _t(1 - 0.025 / comparisons, n - 1) * se
    if n < MIN_SEEDS:
        verdict = pending
    elif mean - ci95 > 0:
        verdict = "reproduced"
    elif -MARGIN < mean - ci90 and mean + ci90 < MARGIN:
        verdict = f"equivalent within +-{MARGIN}"
    elif mean + ci95 < 0:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    return {"n": n, "mean": mean, "ci95": ci95, "ci95_bonferroni": bonferroni, "ci90": ci90, "sd": sd,
            "per_meta_seed": values, "verdict": verdict,
            "excludes_zero_bonferroni": abs(mean) > bonferroni,
            "detectable": (_t(0.975, n - 1) + _t(0.8, n - 1)) * se}


def final(out: Path, env: dict, budgets=BUDGETS) -> dict:
    """Every comparison at every primary budget and size, over the seeds whose two meta-tests have finished."""
    result: dict = {"design": "docs/image-study.md, Experiment A", "margin": MARGIN, "comparisons": {}, "check": {}}

    def folder(seed: str, method: str, budget: int) -> Path | None:
        if method == "scratch":
            return out / "test" / f"s{seed}-scratch"
        best = env.get(seed, {}).get(method, {}).get(str(budget))
        return None if best is None else out / "test" / test_name(seed, method, best["meta_lr"], budget)

    for a, b in COMPARISONS:
        for budget in primary(budgets):
            for size in SIZES:
                values, seeds = [], []
                for seed in sorted(env, key=int):
                    fa, fb = folder(seed, a, budget), folder(seed, b, budget)
                    xa = _per_seed(fa, size) if fa else None
                    xb = _per_seed(fb, size) if fb else None
                    if xa and xb:
                        values.append(sum(p - q for p, q in zip(xa, xb)) / len(xa))
                        seeds.append(seed)
                if values:
                    result["comparisons"][f"{a} - {b} @ {budget} steps, {size} per class"] = {
                        **summarize(values), "meta_seeds": seeds}
    # The design's secondary "meta-validation envelopes": each envelope's score minus the other's, in points (the
    # scores are fractions), over the seeds whose envelopes of both methods are complete at that budget.
    result["meta_validation"] = {}
    for a, b in (pair for pair in COMPARISONS if "scratch" not in pair):
        for budget in budgets:
            seeds = [seed for seed in sorted(env, key=int)
                     if env[seed].get(a, {}).get(str(budget)) and env[seed].get(b, {}).get(str(budget))]
            if seeds:
                values = [100 * (env[s][a][str(budget)]["score"] - env[s][b][str(budget)]["score"]) for s in seeds]
                result["meta_validation"][f"{a} - {b} @ {budget} steps"] = {**summarize(values), "meta_seeds": seeds}
    for seed in ("1", "2"):
        for size in SIZES:
            xa = _per_seed(out / "test" / test_name(seed, "cts", "0.01", CHECK_STEPS), size)
            xb = _per_seed(out / "test" / test_name(seed, "reptile", "1", CHECK_STEPS), size)
            if xa and xb:
                diffs = [p - q for p, q in zip(xa, xb)]
                from trajshift.core.stats import mean_ci95
                mean, ci = mean_ci95(diffs)
                result["check"][f"seed {seed}, {size} per class"] = {"mean": mean, "ci95": ci, "per_seed": diffs}
    return result


def tables(out: Path, env: dict, budgets=BUDGETS) -> str:
    """Per seed, Markdown: every arm's meta-validation score at every budget (the envelope's choice in bold) and the
    meta-test's target-average accuracy of scratch and each envelope at the primary budgets (mean over the seed's 5
    finetuning seeds); then CTS - Reptile per seed. Reads the same files as --final."""
    names = {"cts": "CTS", "reptile": "Reptile", "reptile-average": "toward the average iterate"}
    lines = ["# Experiment A: every seed's tables", "",
             ("Written by `python experiments/evidence_a.py OUT --tables` (the design: docs/image-study.md, "
              "\"Experiment A: the design\"). Per-seed detail only: the decision rule is read over the seeds, by "
              "--final."), ""]
    arms = _arms(out)

    def mean(xs):
        return None if not xs else sum(xs) / len(xs)

    def fmt(x, bold=False, digits=1):
        return "" if x is None else (f"**{x:.{digits}f}**" if bold else f"{x:.{digits}f}")

    def accuracy(seed, method, budget, size):
        if method == "scratch":
            return mean(_per_seed(out / "test" / f"s{seed}-scratch", size))
        best = env.get(seed, {}).get(method, {}).get(str(budget))
        return None if best is None else mean(
            _per_seed(out / "test" / test_name(seed, method, best["meta_lr"], budget), size))

    for seed in sorted(arms, key=int):
        lines += [f"Seed {seed}, meta-validation score (%):", "",
                  "| arm | " + " | ".join(f"{b:,} steps" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for method in METHODS:
            for beta, run in sorted(arms[seed].get(method, []), key=lambda br: float(br[0])):
                scored = json.loads((run / "validation-snapshots.json").read_text()) \
                    if (run / "validation-snapshots.json").is_file() else {}
                cells = []
                for b in budgets:
                    entry, best = scored.get(str(b)), env.get(seed, {}).get(method, {}).get(str(b))
                    cells.append(fmt(None if entry is None else 100 * entry["score"],
                                     bold=best is not None and best["meta_lr"] == beta))
                lines.append(f"| {names[method]} {beta} | " + " | ".join(cells) + " |")
        lines += ["", f"Seed {seed}, meta-test, target average (%), finetuning seeds {5 * int(seed)}-{5 * int(seed) + 4}:",
                  "", "| | scratch | CTS | Reptile | toward the average iterate | CTS - Reptile |", "|---|---|---|---|---|---|"]
        for size in SIZES:
            for budget in primary(budgets):
                acc = {m: accuracy(seed, m, budget, size) for m in ("scratch", *METHODS)}
                gap = None if acc["cts"] is None or acc["reptile"] is None else acc["cts"] - acc["reptile"]
                lines.append(f"| {size} per class, {budget:,} steps | {fmt(acc['scratch'], digits=2)} | "
                             + " | ".join(f"{acc[m]:.2f}" if acc[m] is not None else "" for m in METHODS)
                             + (f" | {gap:+.2f} |" if gap is not None else " | |"))
        lines.append("")
    endpoints = [(size, budget) for size in SIZES for budget in primary(budgets)]
    lines += [("Every seed: the envelopes' meta learning rates (CTS / Reptile / toward the average iterate) and "
               "CTS - Reptile on the meta-test (points):"), "",
              "| seed | betas at " + " | betas at ".join(f"{b:,}" for b in primary(budgets)) + " | "
              + " | ".join(f"{size}/class, {budget:,}" for size, budget in endpoints) + " |",
              "|---|" + "---|" * (len(primary(budgets)) + len(endpoints))]
    for seed in sorted(arms, key=int):
        betas = [" / ".join((env.get(seed, {}).get(m, {}).get(str(b)) or {}).get("meta_lr", "-") for m in METHODS)
                 for b in primary(budgets)]
        gaps = []
        for size, budget in endpoints:
            a, r = accuracy(seed, "cts", budget, size), accuracy(seed, "reptile", budget, size)
            gaps.append("" if a is None or r is None else f"{a - r:+.2f}")
        lines.append(f"| {seed} | " + " | ".join(betas) + " | " + " | ".join(gaps) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--final", action="store_true")
    p.add_argument("--tables", action="store_true", help="print the per-seed tables (Markdown); writes nothing")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="the scored budgets (evidence_a.sh's AT)")
    p.add_argument("--dest", type=Path, default=Path("docs/evidence/experiment-a.json"))
    args = p.parse_args()
    budgets = tuple(int(b) for b in args.budgets.split(","))
    env = envelopes(args.out, budgets)
    if args.tables:
        return print(tables(args.out, env, budgets))
    (args.out / "envelopes.json").write_text(json.dumps(env, indent=1) + "\n")
    jobs = meta_test_jobs(args.out, env, budgets)
    (args.out / "meta-test-jobs.txt").write_text("".join(f"{s} {d} {f}\n" for s, d, f in jobs))
    print(f"{len(jobs)} meta-test jobs in {args.out / 'meta-test-jobs.txt'}")
    if args.final:
        result = final(args.out, env, budgets)
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        args.dest.write_text(json.dumps(result, indent=1) + "\n")
        for key, r in {**result["check"], **result["comparisons"],
                       **{f"meta-validation: {k}": v for k, v in result["meta_validation"].items()}}.items():
            ci = r.get("ci95")
            print(f"{key}: {r['mean']:+.2f}" + (f" +- {ci:.2f}" if ci is not None and not math.isnan(ci) else "")
                  + (f" ({r['verdict']})" if "verdict" in r else ""))
        print(f"wrote {args.dest}")


if __name__ == "__main__":
    main()
