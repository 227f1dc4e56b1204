"""Progress bars (tqdm, with an ETA) for the long commands, and log lines that print above them.

A bar appears only when stderr is a terminal (tqdm's ``disable=None``): logs and CI output stay clean."""
from __future__ import annotations


def bar(total: int, desc: str, unit: str = "step"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None, leave=False)


def log_line(*parts) -> None:
    """print, above any active progress bar instead of through it."""
    from tqdm import tqdm
    tqdm.write(" ".join(str(p) for p in parts))
