"""A test of the image study's explanation for CTS = Reptile, on meta-training outputs only (no meta-test data).

The explanation, corrected (trajshift/analysis/diagnose.py): CTS's shift keeps the gap mean_t theta_k - phi_k equal to the
sum of the inner updates, so over a trajectory phi moves by beta (gap_1 + ... + gap_K), a Reptile step of about
beta K rho (rho = mean ||gap_k|| / ||gap_K||, read from the run's log). Nothing compounds: 1 - (1 - beta)^K, the
formula the study first used, is that of the no-shift ablation. CTS at beta should then behave like Reptile at
beta K rho: move phi as far from the common initialization, in a similar direction, and score alike.

For every run of the study's sweeps (the archive in docs/image-study/runs/), this prints and writes:
||phi - phi_0|| over the meta-learned parameters, the cosine of phi - phi_0 with the chosen Reptile run's, the
meta-validation score, and for CTS the Reptile meta learning rate the explanation maps it to.

    python experiments/image_study_displacement.py [--runs docs/image-study/runs] [--out docs/image-study/displacement.json]
        [--fine runs/image-study/sweep-reptile-fine]

--fine (default: RUNS/sweep-reptile-fine, its archive, when there) adds the Reptile runs on the fine grid around CTS's beta K rho (`bash experiments/image_study.sh fine`): the
test of the corrected mapping. Every row also gives its cosine with the chosen CTS run (beta 0.01).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trajshift.core.atomic import write_json


def flat(path: Path) -> torch.Tensor:
    """The meta-learned parameters of an init file as one float64 vector (BatchNorm statistics left out)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    return torch.cat([v.flatten().double() for k, v in sorted(sd.items())
                      if "running_" not in k and "num_batches" not in k])


def _equivalent(method: str, beta: float, k: int | None, run: Path) -> float | None:
    """The Reptile meta learning rate a run's trajectory amounts to: beta K rho for CTS (its logged gaps),
    1 - (1 - beta)^K for the ablations without the shift, beta for Reptile."""
    if method == "cts":
        from trajshift.analysis.diagnose import diagnose
        return diagnose(run)["effective_step"]
    if method in ("cts-no-shift", "cts-random-shift") and k:
        return 1 - (1 - beta) ** k
    return beta if method == "reptile" else None


def fine_grid_reading(rows: list[dict], predicted: float | None = None, old: float | None = None) -> dict | None:
    """The reading rule of docs/image-study.md, fixed before the fine grid ran: the Reptile beta_R whose displacement
    equals the chosen CTS run's (interpolated in log beta_R between the grid points around it) must lie above the
    midpoint of the two predictions (beta K rho and 1 - (1 - beta)^K) and at most 2, and the cosine with CTS must
    peak at beta_R in [1, 2]: confirmed; a match below 1 or a peak outside [1, 2]: refuted; else not resolved."""
    cts = next((r for r in rows if r["method"] == "cts" and r["meta_lr"] == 0.01), None)
    reptile = sorted((r for r in rows if r["method"] == "reptile" and 0.3 <= r["meta_lr"] <= 5),
                     key=lambda r: r["meta_lr"])
    if cts is None or len(reptile) < 3 or not any(r.get("fine_grid") for r in reptile):
        return None
    predicted = cts["reptile_equivalent_meta_lr"] if predicted is None else predicted
    old = 1 - (1 - 0.01) ** 200 if old is None else old
    match = None
    for lo, hi in itertools.pairwise(reptile):
        if lo["displacement"] <= cts["displacement"] <= hi["displacement"]:
            f = (cts["displacement"] - lo["displacement"]) / (hi["displacement"] - lo["displacement"])
            match = math.exp(math.log(lo["meta_lr"]) + f * (math.log(hi["meta_lr"]) - math.log(lo["meta_lr"])))
    peak = max(reptile, key=lambda r: r["cos_with_cts_0.01"])
    midpoint = (predicted + old) / 2
    if match is not None and midpoint < match <= 2 and 1 <= peak["meta_lr"] <= 2:
        verdict = "confirmed"
    elif match is None or match < 1 or not 1 <= peak["meta_lr"] <= 2:
        verdict = "refuted"
    else:
        verdict = "not resolved"
    return {"cts_displacement": cts["displacement"], "predicted_beta_K_rho": predicted, "old_formula": old,
            "midpoint": midpoint, "displacement_match": match, "cosine_peak": peak["meta_lr"],
            "cosine_peak_value": peak["cos_with_cts_0.01"], "verdict": verdict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="docs/image-study/runs")
    ap.add_argument("--out", default="docs/image-study/displacement.json")
    ap.add_argument("--fine", default=None, help="the sweep folder of the fine Reptile grid (image_study.sh fine)")
    args = ap.parse_args()
    runs = Path(args.runs)
    # The sweep records committed beside the archive first (the archive's sweep-first-order/sweep.json was written
    # before FOMAML++ finished), then the archive's own.
    sweeps = sorted((runs.parent / "sweeps").glob("sweep*.json")) + list(runs.glob("*/sweep.json"))
    inits = sorted(runs.glob("*/*/meta_lr=*/init.pt"))
    fine = Path(args.fine) if args.fine else runs / "sweep-reptile-fine"
    if fine.is_dir():
        sweeps.append(fine / "sweep.json")
        inits += sorted(fine.glob("*/meta_lr=*/init.safetensors"))
    scores, per_seed = {}, {}
    for sweep in sweeps:
        for method, entry in json.loads(sweep.read_text())["methods"].items():
            for p in entry["points"]:
                if p.get("score") is None and (method, float(p["values"]["meta.meta_lr"])) in scores:
                    continue
                scores[(method, float(p["values"]["meta.meta_lr"]))] = p.get("score")
                per_seed[(method, float(p["values"]["meta.meta_lr"]))] = p.get("per_seed")
    phi0 = flat(runs / "sweep" / "reptile" / "meta_lr=1" / "snapshots" / "step-00000000.pt")
    reference = flat(runs / "sweep" / "reptile" / "meta_lr=1" / "init.pt") - phi0
    cts_chosen = flat(runs / "sweep" / "cts" / "meta_lr=0.01" / "init.pt") - phi0
    rows = []
    for init in inits:
        method, beta = init.parent.parent.name, float(init.parent.name.split("=")[1])
        config = init.parent / "config.yaml"
        k = None
        if config.exists():
            import yaml
            k = yaml.safe_load(config.read_text())["meta"]["inner_steps"]
        d = flat(init) - phi0
        norm = float(d.norm())
        finite = 0 < norm < 1e6
        cos = float(d @ reference / (d.norm() * reference.norm())) if finite else None
        cos_cts = float(d @ cts_chosen / (d.norm() * cts_chosen.norm())) if finite else None
        rows.append({"method": method, "meta_lr": beta, "displacement": norm, "cos_with_reptile_1": cos,
                     "cos_with_cts_0.01": cos_cts, "fine_grid": init.suffix == ".safetensors",
                     "validation": scores.get((method, beta)), "validation_per_seed": per_seed.get((method, beta)),
                     "reptile_equivalent_meta_lr": _equivalent(method, beta, k, init.parent)})
    reading = fine_grid_reading(rows)
    write_json(args.out, {"phi0": "the common random initialization (snapshot 0)", "reference": "reptile meta_lr=1",
                          "rows": rows, "fine_grid_reading": reading})
    print("| method | meta_lr | Reptile-equivalent meta_lr (CTS: beta K rho; no shift: 1-(1-b)^K) | ||phi - phi_0|| | "
          "cos with Reptile 1 | cos with CTS 0.01 | meta-validation % |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eq = "" if r["reptile_equivalent_meta_lr"] is None else f"{r['reptile_equivalent_meta_lr']:.3f}"
        cos = "" if r["cos_with_reptile_1"] is None else f"{r['cos_with_reptile_1']:.3f}"
        cos_cts = "" if r["cos_with_cts_0.01"] is None else f"{r['cos_with_cts_0.01']:.3f}"
        val = "failed" if r["validation"] is None else f"{100 * r['validation']:.2f}"
        disp = f"{r['displacement']:.3g}"
        name = r["method"] + (" (fine grid)" if r["fine_grid"] else "")
        print(f"| {name} | {r['meta_lr']:g} | {eq} | {disp} | {cos} | {cos_cts} | {val} |")
    if reading:
        print(f"fine grid: Reptile's displacement equals CTS's at beta_R = {reading['displacement_match']:.3g}; "
              f"cosine with CTS peaks at beta_R = {reading['cosine_peak']:g} ({reading['cosine_peak_value']:.3f}): "
              f"{reading['verdict']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
