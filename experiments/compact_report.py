"""Rewrite a report.json written before `trajshift report` rounded its loss curves (trajshift/analysis/report.py's
loss_curve: 6 significant digits) and wrote it compact; every other value is kept as it is.

    python experiments/compact_report.py docs/image-study/report.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trajshift.analysis.report import loss_curve
from trajshift.core.atomic import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path)
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    for run in report["runs"]:
        run["loss_curve"] = loss_curve([{"inner_steps": s, "loss_mean": v} for s, v in run["loss_curve"]])
    write_json(args.report, report, compact=True)
    print(f"{args.report}: {args.report.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
