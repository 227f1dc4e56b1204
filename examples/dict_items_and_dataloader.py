"""Data as Hugging Face and PyTorch users hand it over: dict items ({"pixel_values", "labels"}) through a DataLoader
with a collate_fn, a model class given by import path (init.json records it), CTS, then a finetune with your own
optimizer and scheduler. Offline (scikit-learn's digits), a few seconds: python examples/dict_items_and_dataloader.py"""
import functools
import json
import tempfile
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset

import trajshift


class DigitsDict(Dataset):
    """A Hugging Face style dataset: items are dicts, augmented with NumPy-free torch noise."""

    def __init__(self, digits: tuple[int, ...]):
        x, y = (torch.tensor(a) for a in load_digits(return_X_y=True))
        keep = torch.isin(y, torch.tensor(digits)).nonzero().flatten()
        self.x, self.y = x[keep].float().view(-1, 1, 8, 8) / 16, torch.searchsorted(torch.tensor(digits), y[keep])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i] + 0.05 * torch.randn(1, 8, 8), "labels": self.y[i], "id": i}


def collate(items):                         # dicts -> a dict of batched tensors, as transformers' collators do
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]),
            "labels": torch.stack([i["labels"] for i in items])}


if __name__ == "__main__":
    from examples_models import (
        SmallConvNet,  # a class in a module: rebuilt by meta-test/finetune
    )
    sources = [DataLoader(DigitsDict(d), batch_size=16, shuffle=True, collate_fn=collate)
               for d in ((0, 1, 2), (3, 4, 5), (6, 7))]
    out = Path(tempfile.mkdtemp()) / "run"
    result = trajshift.fit(SmallConvNet, sources, method="cts", inner_steps=20, trajectories=4, meta_lr=0.01,
                           batch_size=32, optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                           out=out, threads=1, log=None)
    print("init.json model:", json.loads((out / "init.json").read_text())["model"])
    target = DigitsDict((8, 9))
    train, test = torch.utils.data.random_split(target, [20, len(target) - 20],
                                                generator=torch.Generator().manual_seed(0))
    scores = trajshift.finetune(out, None, train, test, seeds=5, steps=50, baseline="scratch",
                                optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                                scheduler=functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=50))
    d = scores["difference"]
    print(f"CTS {100 * scores['mean']:.1f}%, scratch {100 * scores['baseline']['mean']:.1f}%, paired difference "
          f"{100 * d['mean']:+.1f} ± {100 * d['ci95']:.1f} points over 5 seeds")
