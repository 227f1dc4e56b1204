"""Bit-identity across versions: run a fixed set of float64 meta-trainings (10 methods x SGD-momentum/Adam x a
function and a module learner) and save phi, theta and the step counts; run it under two versions and compare.

    PYTHONPATH=/path/to/old/checkout python experiments/check_bit_identity.py old.pt
    python experiments/check_bit_identity.py new.pt
    python experiments/check_bit_identity.py --compare old.pt new.pt
"""
import sys

import torch
from torch import nn

import trajshift as ts

if len(sys.argv) == 4 and sys.argv[1] == "--compare":
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    differ = [k for k in a if not (torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
                                   and a[k][2:] == b[k][2:])]
    print(f"bit-identical: {len(a) - len(differ)} of {len(a)} runs; differ: {differ or 'none'}")
    sys.exit(1 if differ else 0)
out = {}
def quad_learners(T=4, P=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(T, P, P, generator=g, dtype=torch.float64); A = A @ A.transpose(1, 2) / P + torch.eye(P, dtype=torch.float64)
    b = torch.randn(T, P, generator=g, dtype=torch.float64)
    def loss(theta, step, split):
        noise = 0.01 * torch.sin(torch.tensor(step + (0 if split == "train" else 1000), dtype=torch.float64))
        return 0.5 * torch.einsum("tp,tpq,tq->t", theta, A, theta) - (b * theta).sum(1) + noise * theta.pow(3).sum(1)
    return ts.FunctionLearners(loss, torch.linspace(-1, 1, P, dtype=torch.float64), T)
class Net(nn.Module):
    def __init__(self, c):
        super().__init__(); self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6)); self.fc = nn.Linear(6, c)
    def forward(self, x): return self.fc(torch.tanh(self.body(x)))
def module_learners():
    torch.manual_seed(0)
    mods = [Net(c) for c in (3, 4, 2)]
    for m in mods[1:]:
        m.body.load_state_dict(mods[0].body.state_dict())
    g = torch.Generator().manual_seed(1)
    X = torch.randn(3, 40, 5, generator=g, dtype=torch.float64); Y = [torch.randint(0, c, (40,), generator=g) for c in (3, 4, 2)]
    def batch(t, step, split):
        idx = ts.batch_indices(40, 8, step + (0 if split == "train" else 7), seed=0, task=t)
        return X[t][idx], Y[t][idx]
    return ts.ModuleLearners(mods, batch, exclude=["fc.*"])
methods = ["cts", "cts-accurate", "cts-no-shift", "cts-random-shift", "reptile", "fomaml", "fomaml++", "leap", "imaml", "mtl"]
for kind in ("function", "module"):
    for method in methods:
        for opt in ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, {"name": "adam", "lr": 0.01}):
            cfg = ts.MetaConfig(method=method, inner_steps=5, trajectories=3, meta_lr=0.3, dtype="float64", inner_optimizer=opt, progress=False)
            learners = quad_learners() if kind == "function" else module_learners()
            tr = ts.MetaTrainer(learners, cfg)
            r = tr.run()
            out[f"{kind}/{method}/{opt['name']}"] = (r.phi.clone(), tr.pop.theta.detach().clone(), r.inner_steps, r.meta_updates)
torch.save(out, sys.argv[1])
print(len(out), "runs with", ts.__file__)
