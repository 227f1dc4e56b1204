import json
import math

import numpy as np
import torch
from PIL import Image

from trajshift.commands.cli import main
from trajshift.tasks.synthetic import HimmelblauTasks, meta_test_loss


def paper_template(x, y):
    """The paper's Section 4.1 formula."""
    return ((x ** 2 - 10 * x + y + 9) ** 2 + (x + y ** 2 - 10 * y + 13) ** 2) / 3


def test_paper_template_is_the_papers_formula():
    tasks = HimmelblauTasks.make(1, template="paper")
    tasks = HimmelblauTasks(torch.tensor([[5.0, 5.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                            tasks.scale, tasks.w_a, tasks.w_b)
    pts = torch.tensor(np.random.default_rng(0).uniform(-5, 15, size=(50, 1, 2)))
    np.testing.assert_allclose(tasks.loss(pts)[:, 0].numpy(), paper_template(pts[:, 0, 0], pts[:, 0, 1]).numpy(),
                               rtol=1e-12)


def test_task_geometry_and_minima():
    tasks = HimmelblauTasks.make(8, seed=4)
    radii = (tasks.centers - torch.tensor([5.0, 5.0], dtype=torch.float64)).norm(dim=1)
    np.testing.assert_allclose(radii.numpy(), 7.0, rtol=1e-12)
    # Himmelblau's minimum (3, 2), mapped back through the scaling and rotation, has loss 0 on every task.
    c, s = torch.cos(tasks.angles), torch.sin(tasks.angles)
    uv = torch.tensor([3.0, 2.0], dtype=torch.float64) / tasks.scale
    x = tasks.centers + torch.stack([c * uv[0] + s * uv[1], -s * uv[0] + c * uv[1]], 1)   # R^T (u, v) / s
    assert tasks.loss(x).abs().max() < 1e-20


def test_closed_form_gradient_matches_autograd():
    tasks = HimmelblauTasks.make(8, seed=1)
    x = (torch.rand(20, 8, 2, dtype=torch.float64) * 20 - 5).requires_grad_(True)
    (g,) = torch.autograd.grad(tasks.loss(x).sum(), x)
    torch.testing.assert_close(tasks.grad(x.detach()), g, rtol=1e-12, atol=1e-12)


def test_meta_test_loss_reports_divergence_as_inf():
    tasks = HimmelblauTasks.make(8, template="paper")
    q = meta_test_loss(tasks, torch.tensor([[-5.0, -5.0]], dtype=torch.float64), 100,
                       {"name": "sgd", "lr": 0.05, "momentum": 0.9})
    assert math.isinf(float(q[0]))


def test_synthetic_command_writes_results_and_figures(tmp_path):
    out = tmp_path / "syn"
    rc = main(["synthetic", "--out", str(out), "--grid", "2", "--K", "6", "--M", "2",
               "--methods", "cts,cts-accurate,reptile,leap", "--map-resolution", "12", "--fixed-point-grid", "5",
               "--fixed-point-iters", "20", "--fixed-point-ks", "2,6", "--horizon-ks", "1,3,6", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 4 * 4
    by = {r["method"]: r for r in res["runs"] if r["start"] == [-5.0, -5.0]}
    assert by["cts"]["meta_updates"] == 12 and by["cts"]["inner_steps"] == 12
    assert by["cts-accurate"]["meta_updates"] == 12 and by["cts-accurate"]["inner_steps"] == 2 * (6 * 7 // 2)
    assert by["reptile"]["meta_updates"] == 12 and by["reptile"]["inner_steps"] == 72
    eq = by["reptile"]["at_equal_inner_steps"]
    assert eq["budget"] == 12 and eq["inner_steps"] == 12 and eq["meta_updates"] == 2
    for r in res["runs"]:
        assert len(r["final_phi"]) == 2 and r["wall_time"] >= 0
        assert (r["meta_test_loss"] is None) == (r["diverged"] is not None)
    assert all(r["diverged"] is None for r in res["runs"] if r["method"] != "leap")
    assert [row["k"] for row in res["horizon"]["0"]["rows"]] == [1, 3, 6]
    assert {f["k"] for f in res["reptile_fixed_points"]["0"]} == {2, 6}
    ratio = res["summary"]["cts"]["equal_meta_updates"]["ratio_to_reptile"]
    assert ratio["pairs"] == 4 and ratio["ci95_low"] <= ratio["geometric_mean"] <= ratio["ci95_high"]
    assert set(res["cts_vs_accurate"]["median_distance_after_meta_updates"]) == {"10"}
    for name in ("trajectories", "reptile_fixed_points", "horizon", "cost", "meta_test_vs_inner_steps"):
        with Image.open(out / f"{name}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 200


def test_single_start(tmp_path):
    out = tmp_path / "one"
    assert main(["synthetic", "--out", str(out), "--start", "2.5,7", "--K", "3", "--M", "1", "--methods", "cts",
                 "--map-resolution", "4", "--fixed-point-grid", "2", "--fixed-point-iters", "2",
                 "--fixed-point-ks", "2", "--horizon-ks", "1", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["start"] for r in res["runs"]] == [[2.5, 7.0]]
    assert main(["synthetic", "--out", str(out), "--start", "2.5"]) == 2


def test_cluster_points():
    from trajshift.analysis.synthetic_study import cluster_points
    pts = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [0.0, 0.2], [5.1, 5.0]], dtype=torch.float64)
    centres, counts = cluster_points(pts, 0.25)
    assert centres.tolist() == [[0.0, 0.0], [5.0, 5.0]] and counts.tolist() == [3, 2]


def test_reptile_fixed_point_is_a_fixed_point():
    """Where the iteration stops, phi = mean_t U_k(phi) (the Reptile meta-gradient vanishes)."""
    from trajshift.analysis.synthetic_study import (
        SyntheticStudyConfig,
        reptile_fixed_points,
    )
    from trajshift.tasks.synthetic import adapt
    cfg = SyntheticStudyConfig(fixed_point_grid=3, fixed_point_iters=3000)
    tasks = HimmelblauTasks.make(8, seed=0)
    f = reptile_fixed_points(tasks, cfg, k=10)
    assert f["converged_fraction"] == 1.0 and int(f["basin_sizes"].sum()) == 9
    theta = adapt(tasks, f["distinct"], 10, cfg.inner_optimizer())
    assert (f["distinct"] - theta.mean(1)).abs().max() < 1e-4
