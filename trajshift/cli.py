"""The ``trajshift`` command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, TrajshiftError


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _synthetic(args) -> int:
    from .analysis.synthetic_study import SyntheticStudyConfig, run_study
    cfg = SyntheticStudyConfig(
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], grid=args.grid,
        task_seeds=_int_list(args.task_seeds, "--task-seeds"), template=args.template, inner_steps=args.K,
        trajectories=args.M, alpha=args.alpha, beta=args.beta, momentum=args.momentum, optimizer=args.optimizer,
        reset_optimizer_state=not args.carry_optimizer_state, map_resolution=args.map_resolution,
        fixed_point_ks=_int_list(args.fixed_point_ks, "--fixed-point-ks"), fixed_point_grid=args.fixed_point_grid,
        fixed_point_iters=args.fixed_point_iters, horizon_ks=_int_list(args.horizon_ks, "--horizon-ks"))
    cfg.validate()             # every flag checked before any work starts
    results = run_study(args.out, cfg, log=(lambda *_: None) if args.quiet else print)
    out = Path(args.out)
    print(f"\nwrote {out / 'results.json'} and the figures in {out}/ ({results['wall_time']:.0f} s)")
    print("median meta-test loss (task-average loss after K steps from phi) over starts and task seeds:")
    print(f"{'method':>18}  {'equal meta-updates':>18}  {'equal inner steps':>18}  {'inner steps':>11}")
    for m, row in results["summary"].items():
        print(f"{m:>18}  {row['equal_meta_updates']['median']:>18.3e}  {row['equal_inner_steps']['median']:>18.3e}"
              f"  {row['mean_inner_steps']:>11.0f}")
    return 0


def _list(args) -> int:
    from .methods import METHODS
    from .optim import OPTIMIZERS
    print("methods:   " + ", ".join(METHODS.names()))
    print("optimizers: " + ", ".join(OPTIMIZERS.names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajshift", description=(
        "Large-scale meta-learning of shared initializations with continual trajectory shifting "
        "(Shin et al., ICML 2021)."))
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("synthetic", help="the paper's synthetic 2-D study (Section 4.1, Figs. 4-5)",
                       description="Meta-train each method on the 8 Himmelblau-template tasks from a grid of starting "
                                   "points; write DIR/results.json and the figures (PNG) in DIR.")
    s.add_argument("--out", required=True, help="output folder (created)")
    s.add_argument("--methods", default="cts,cts-accurate,reptile", help="comma-separated method names "
                   "(see `trajshift list`); default: %(default)s")
    s.add_argument("--grid", type=int, default=3, help="N: starting points on an N x N grid over [-5, 15]^2 "
                   "(default 3: {-5, 5, 15}^2)")
    s.add_argument("--task-seeds", default="0", help="comma-separated seeds of the tasks' random rotations")
    s.add_argument("--template", default="scaled", help="scaled (reference code, default) or paper")
    s.add_argument("--K", type=int, default=100, help="inner steps per trajectory (default 100)")
    s.add_argument("--M", type=int, default=3, help="trajectories for CTS (default 3); every method gets M*K "
                   "meta-updates")
    s.add_argument("--alpha", type=float, default=0.05, help="inner learning rate (default 0.05)")
    s.add_argument("--beta", type=float, default=0.1, help="meta learning rate (default 0.1)")
    s.add_argument("--momentum", type=float, default=0.9, help="inner SGD momentum (default 0.9)")
    s.add_argument("--optimizer", default="sgd", help="inner optimizer name (default sgd)")
    s.add_argument("--carry-optimizer-state", action="store_true",
                   help="keep the inner optimizer state across resets (default: fresh state each trajectory)")
    s.add_argument("--map-resolution", type=int, default=100, help="quality-map grid (default 100 x 100)")
    s.add_argument("--fixed-point-ks", default="10,100", help="Reptile inner lengths for Fig. 5a-b")
    s.add_argument("--fixed-point-grid", type=int, default=41, help="starting grid for Fig. 5a-b (default 41)")
    s.add_argument("--fixed-point-iters", type=int, default=1000, help="max Reptile iterations for Fig. 5a-b")
    s.add_argument("--horizon-ks", default="1,5,10,25,50,75,100", help="meta-training horizons for Fig. 4c")
    s.add_argument("--quiet", action="store_true", help="no per-run lines")
    s.set_defaults(func=_synthetic)
    ls = sub.add_parser("list", help="list the registered methods and optimizers")
    ls.set_defaults(func=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TrajshiftError as err:
        print(f"trajshift: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
