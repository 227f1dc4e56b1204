"""Your own model, your own Datasets, a pretrained state_dict: meta-train with CTS, save, finetune against the
pretrained model itself. Offline (scikit-learn's digits), about 20 s on 2 cores: python examples/own_backbone.py"""
import functools
import tempfile

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import trajshift


class Net(nn.Module):                                   # any nn.Module; its head is named "out" (head="out")
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.out = nn.Linear(64, num_classes)
    def forward(self, x):
        return self.out(self.body(x))

x, y = (torch.tensor(a) for a in load_digits(return_X_y=True))
x = x.float() / 16
def classes(*cs, part=slice(None)):                      # a Dataset of some digits, labels renumbered 0..C-1
    keep = torch.isin(y, torch.tensor(cs)).nonzero().flatten()[part]
    return TensorDataset(x[keep], torch.searchsorted(torch.tensor(cs), y[keep]))

torch.manual_seed(0)                                    # a "pretrained backbone": 200 plain steps on digits 0-7
pre, data = Net(8), classes(*range(8))
opt = torch.optim.SGD(pre.parameters(), lr=0.1, momentum=0.9)
for _ in range(200):
    i = torch.randint(len(data), (64,))
    opt.zero_grad(); nn.functional.cross_entropy(pre(data[i][0]), data[i][1]).backward(); opt.step()
backbone = tempfile.mkdtemp() + "/backbone.pt"
torch.save(pre.state_dict(), backbone)

result = trajshift.fit(lambda task, num_classes: Net(num_classes), [classes(0, 1, 2), classes(3, 4, 5), classes(6, 7)],
                       method="cts", inner_steps=20, trajectories=5, meta_lr=0.01, batch_size=32, head="out",
                       optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9), init_from=backbone)
print("saved", result.save(tempfile.mkdtemp()))       # init.safetensors + init.json
scores = trajshift.finetune(result, lambda t, c: Net(c), classes(8, 9, part=slice(0, 20)),
                            classes(8, 9, part=slice(20, None)), head="out", protocol="table1", steps=50, seeds=5,
                            baseline=backbone)
print(f"CTS {100 * scores['mean']:.1f}%, pretrained {100 * scores['baseline']['mean']:.1f}%, paired difference "
      f"{100 * scores['difference']['mean']:+.1f} ± {100 * scores['difference']['ci95']:.1f} points")
