"""The cost of the run identity's dataset fingerprint (trajshift/data/fingerprint.py) on a 100,000-image dataset.

The fingerprint reads 16 items at fixed indices whatever the dataset's length, so its cost is 16 item fetches. Here
each item is decoded from PNG bytes held in memory (as an image-folder Dataset decodes a file: PIL, then a float
tensor), 32 x 32 x 3, 100,000 items. Measured against one training batch of 128 items from the same dataset, in one
run (ratios: the machine is shared).

    python benchmarks/identity_cost.py --out benchmarks/results/identity_cost.json
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trajshift.data.fingerprint import dataset_fingerprint


class PngDataset(Dataset):
    """n items sharing a few distinct PNG payloads (memory stays small; decoding is real work per item)."""

    def __init__(self, n: int, side: int = 32, distinct: int = 64):
        rng = np.random.default_rng(0)
        self.n = n
        self.payloads = []
        for _ in range(distinct):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
            self.payloads.append(buf.getvalue())

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = Image.open(io.BytesIO(self.payloads[i % len(self.payloads)])).convert("RGB")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, i % 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/identity_cost.json"))
    args = p.parse_args()
    ds = PngDataset(args.items)
    fingerprint, batch = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fp = dataset_fingerprint(ds, 10)
        fingerprint.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        items = [ds[i] for i in range(0, args.items, args.items // 128)][:128]
        torch.utils.data.default_collate(items)
        batch.append(time.perf_counter() - t0)
    f, b = statistics.median(fingerprint), statistics.median(batch)
    result = {"what": "dataset fingerprint of the run identity vs one 128-item batch, PNG-decoded 32x32x3 items",
              "items": args.items, "fingerprint_items": 16, "fingerprint_ms_median": 1000 * f,
              "batch128_ms_median": 1000 * b, "fingerprint_over_batch": f / b, "fingerprint": fp,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "command": "python benchmarks/identity_cost.py --out benchmarks/results/identity_cost.json"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"fingerprint of {args.items:,} items: {1000 * f:.2f} ms (median of {args.repeats}); one 128-item batch "
          f"{1000 * b:.2f} ms; ratio {f / b:.3f}")


if __name__ == "__main__":
    main()
