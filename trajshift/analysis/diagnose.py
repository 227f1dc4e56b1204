"""``trajshift diagnose RUN``: how far each trajectory moved phi, in units of one Reptile step.

Write gap_k = mean_t theta_k - phi_k (logged as ``gap_norm``). An inner step adds the mean inner update u_k to the
gap; CTS's shift (Algorithm 2, l.13) then moves theta and phi by the same Delta_k, so the gap is unchanged:
gap_k = u_1 + ... + u_k exactly, and over one trajectory

    phi_K - phi_0 = sum_k Delta_k = beta (gap_1 + ... + gap_K).

A Reptile step of size beta_R moves phi by beta_R gap_K. So one CTS trajectory is a Reptile step of about
beta K rho, with rho = mean_k ||gap_k|| / ||gap_K|| (exact when the gaps point the same way; an upper bound
otherwise). Nothing compounds: 1 - (1 - beta)^K is the formula of the no-shift ablation, whose gap forgets
(gap_k = sum_j (1 - beta)^(k - j + 1) u_j). Reptile's own step is beta.

Writes RUN/diagnose.json: {method, beta, K, trajectories: [{trajectory, gap_K, rho, effective_step,
no_shift_formula, delta_over_beta: {k: ||Delta_k|| / beta}}], effective_step: mean over trajectories}.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import yaml

from ..core.atomic import write_json
from ..core.errors import ConfigError


def diagnose(run: str | Path) -> dict:
    run = Path(run)
    metrics = next((run / n for n in ("metrics.jsonl", "metrics.jsonl.gz") if (run / n).is_file()), None)
    if not (run / "config.yaml").is_file() or metrics is None:
        raise ConfigError(f"{run}: not a meta-train run folder (needs config.yaml and metrics.jsonl)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    meta = cfg.get("meta", {})
    method, beta, K = meta.get("method"), float(meta.get("meta_lr", 0)), int(meta.get("inner_steps", 0))
    options = meta.get("options") or {}
    every = int(options.get("meta_every", 1))
    from ..methods import METHODS
    rule = METHODS.get(method)
    text = gzip.decompress(metrics.read_bytes()).decode() if metrics.suffix == ".gz" else metrics.read_text()
    rows = [r for r in map(json.loads, filter(str.strip, text.splitlines())) if "step" in r and "trajectory" in r]
    source = "gap_norm"
    if rows and not any("gap_norm" in r for r in rows):
        # Older runs did not log the gap. For CTS with the Reptile meta-gradient and no meta optimizer,
        # Delta_k = -beta (phi - mean_t theta_k) = beta gap_k exactly (l.11), so ||gap_k|| = ||Delta_k|| / beta.
        if (method == "cts" and options.get("metagrad", "reptile") == "reptile" and every == 1 and beta > 0
                and not meta.get("meta_optimizer")):
            rows = [{**r, "gap_norm": r["delta_norm"] / beta} for r in rows if "delta_norm" in r]
            source = "delta_norm / beta"
        else:
            raise ConfigError(f"{run}: its metrics.jsonl has no gap_norm (runs log it since this version of "
                              f"trajshift); run it again to diagnose it")
    out: dict = {"run": str(run), "method": method, "beta": beta, "K": K, "gap_from": source, "trajectories": []}
    by_m: dict[int, list[dict]] = {}
    for r in rows:
        if "gap_norm" in r:
            by_m.setdefault(int(r["trajectory"]), []).append(r)
    for m, rs in sorted(by_m.items()):
        final = next((r for r in rs if r["step"] == K), None)
        if final is None or final["gap_norm"] == 0:
            continue                                     # an unfinished trajectory
        updates = [r["gap_norm"] for r in rs if r["step"] % every == 0]
        rho = (sum(updates) / len(updates)) / final["gap_norm"] if updates else math.nan
        effective = rule.effective_step(beta, K // every, rho, options)     # the method's own reading
        marks = sorted({k for k in (10, 50, 100, 200, 500, 1000, K) if k <= K})
        out["trajectories"].append({
            "trajectory": m, "gap_K": final["gap_norm"], "rho": rho, "effective_step": effective,
            "no_shift_formula": 1 - (1 - beta) ** (K // every),
            "delta_over_beta": {str(r["step"]): r["delta_norm"] / beta for r in rs
                                if r["step"] in marks and beta > 0 and "delta_norm" in r}})
    steps = [t["effective_step"] for t in out["trajectories"] if t["effective_step"] is not None]
    out["effective_step"] = sum(steps) / len(steps) if steps else None
    out["rho"] = (sum(t["rho"] for t in out["trajectories"]) / len(out["trajectories"])
                  if out["trajectories"] else None)
    write_json(run / "diagnose.json", out)
    return out


def format_table(d: dict) -> str:
    if d["effective_step"] is None:
        return (f"{d['run']}: {d['method']}: not applicable: {d['method']} makes no Reptile-like step from a "
                f"trajectory's gap, so it has no effective Reptile step (diagnose reads cts, its ablations, reptile "
                f"and reptile-average runs)")
    lines = [f"{d['run']}: {d['method']}, beta {d['beta']:g}, K {d['K']}",
             "trajectory  ||gap_K||   rho    effective Reptile step   (no-shift formula 1-(1-beta)^K)"]
    for t in d["trajectories"]:
        eff = "n/a" if t["effective_step"] is None else f"{t['effective_step']:.3g}"
        lines.append(f"{t['trajectory']:>10}  {t['gap_K']:9.4g}  {t['rho']:5.3f}  {eff:>22}   "
                     f"({t['no_shift_formula']:.3g})")
    lines.append(f"mean effective Reptile step per trajectory: {d['effective_step']:.3g} (rho {d['rho']:.3f})")
    return "\n".join(lines)
