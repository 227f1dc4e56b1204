"""Finetuning protocols: how an initialization is finetuned on a target (optimizer, steps, schedule, batch, subset),
and ``train_and_evaluate``, the one finetuning loop that ``meta-test``, ``report``, ``validate`` and
``trajshift.finetune`` all run.

* paper: Section 4.2: SGD with Nesterov momentum 0.9, lr 0.1, weight decay 5e-4, 1,000 steps, batch 128. The
  paper says "an appropriate learning rate schedule" without more: we decay x0.1 at 50% and 75% of the steps.
* table1: Section 4.3 / Table 1: Nesterov SGD, lr 0.01, x0.2 at steps 400/700/900 (of 1,000), weight decay 1e-4,
  batch 256, 1,000-image training subsets.
* reference: the authors' code: Adam, lr 1e-3, weight decay 5e-4, batch 128, 1,000 steps, x0.3 at 40/70/90%.
``steps`` rescales the schedule (milestones are fractions of the steps).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.registry import Registry
from ..engine.optim import build_optimizer


@dataclass(frozen=True)
class Protocol:
    name: str
    optimizer: dict
    steps: int
    milestones: tuple[float, ...]       # fractions of the steps
    gamma: float
    batch_size: int
    train_images: int | None = None
    description: str = ""


PROTOCOLS: Registry[Protocol] = Registry("protocol", "--protocol")
for _p in (
    Protocol("paper", {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, 1000,
             (0.5, 0.75), 0.1, 128, None, "Section 4.2 (schedule x0.1 at 50%/75%: our choice)"),
    Protocol("table1", {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, 1000,
             (0.4, 0.7, 0.9), 0.2, 256, 1000, "Table 1: 1,000-image subsets"),
    Protocol("reference", {"name": "adam", "lr": 1e-3, "weight_decay": 5e-4}, 1000, (0.4, 0.7, 0.9), 0.3, 128,
             None, "the reference code"),
):
    PROTOCOLS.register(_p.name, _p)


def train_and_evaluate(model: torch.nn.Module, task, protocol: Protocol, steps: int, seed: int, on_step=None,
                       loss_fn=None, scheduler=None) -> float:
    """The protocol's finetuning of ``model`` (its head fresh, its body loaded) on ``task`` (``task.batch(step,
    "train")`` and ``task.evaluate(model)``), then its test accuracy: what meta-test and trajshift.finetune run.
    ``scheduler``: a function of the optimizer returning a torch LR scheduler stepped once per step (the Python
    API's), instead of the protocol's milestones."""
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    opt = build_optimizer(model.parameters(), protocol.optimizer, f"protocol {protocol.name}")
    if scheduler is not None:
        schedule = scheduler(opt)
    else:
        # The learning rate times gamma at each milestone (fractions of the steps; never at step 0).
        milestones = sorted({max(1, round(f * steps)) for f in protocol.milestones})
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=protocol.gamma)
    model.train()
    for step in range(steps):
        x, y = task.batch(step, "train")
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            from ..core.errors import DivergenceError
            raise DivergenceError(f"meta-test on {task.label}: loss {loss.item()} at step {step} (seed {seed})")
        loss.backward()
        opt.step()
        schedule.step()
        if on_step is not None:
            on_step()
    return task.evaluate(model)


def check_protocol(name: str, path: str) -> str:
    PROTOCOLS.get(name)                  # an unknown name lists the registered protocols
    return name
