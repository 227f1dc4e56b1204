"""The method contract (trajshift/methods/base.py): a method written outside the package, in one file with one
registry line (examples/custom_method.py), trains to its closed form and resumes bit for bit; the ablations are
CTS with another shift rule."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trajshift as ts
from trajshift.methods import METHODS
from trajshift.methods.cts import CTS
from trajshift.methods.shifts import SHIFT_RULES

ROOT = Path(__file__).resolve().parents[1]


def test_the_custom_method_example_runs_and_matches_its_closed_form():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_method.py")], capture_output=True, check=False,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "path-gradient matches its closed form" in proc.stdout


def test_a_method_from_outside_the_package_resumes_bit_identically(tmp_path):
    if "path-gradient" not in METHODS:
        runpy.run_path(str(ROOT / "examples" / "custom_method.py"), run_name="example")
    centers = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)

    def trainer(folder):
        learners = ts.FunctionLearners(lambda th, step, split: 0.5 * (th - centers).pow(2).sum(1) + 0.1 * th.pow(4)
                                       .sum(1), torch.tensor([4.0, -3.0], dtype=torch.float64), 3)
        cfg = ts.MetaConfig(method="path-gradient", inner_steps=10, trajectories=3, meta_lr=0.5, dtype="float64",
                            inner_optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9}, progress=False)
        return ts.MetaTrainer(learners, cfg, checkpoint_dir=folder, checkpoint_every=7)

    full = trainer(tmp_path / "a").run().phi
    interrupted = trainer(tmp_path / "b")
    for i, _ in enumerate(interrupted.steps()):
        if i + 1 == 17:
            break
    resumed = trainer(tmp_path / "b")
    assert resumed.resume() and resumed.position == {"m": 1, "k": 4}
    assert torch.equal(resumed.run().phi, full)


@pytest.mark.parametrize("name,shift", [("cts", "cts"), ("cts-no-shift", "none"), ("cts-random-shift", "random"),
                                        ("cts-accurate", "exact")])
def test_the_cts_family_is_one_method_with_four_shift_rules(name, shift):
    cls = METHODS.get(name)
    assert issubclass(cls, CTS) and cls.parse_options({}).shift == shift and shift in SHIFT_RULES
    assert METHODS.get("cts")({"shift": shift}).opts == cls({}).opts
