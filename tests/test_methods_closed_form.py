"""Each method's meta-update against an independent float64 NumPy computation on quadratic tasks."""
import json

import numpy as np
import pytest
import torch

import trajshift as ts

ALPHA, BETA = 0.1, 0.3


def run(quad, method, K, M=1, options=None, optimizer=None):
    phi0 = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    learners = ts.FunctionLearners(quad.loss_fn, phi0, quad.T)
    cfg = ts.MetaConfig(method=method, inner_steps=K, trajectories=M, meta_lr=BETA, dtype="float64",
                        inner_optimizer=optimizer or {"name": "sgd", "lr": ALPHA}, options=options or {},
                        reset_optimizer_state=True)
    trainer = ts.MetaTrainer(learners, cfg)
    return trainer.run().phi.numpy(), trainer, phi0.numpy()


def sgd_path(quad, phi, K, prox=None):
    """theta_0..theta_K of plain SGD on every task from phi (optionally with iMAML's proximal term)."""
    x = np.tile(phi, (quad.T, 1))
    path = [x.copy()]
    for _ in range(K):
        g = quad.grad(x)
        if prox is not None:
            g = g + prox * (x - phi)
        x = x - ALPHA * g
        path.append(x.copy())
    return path


def test_reptile_matches_closed_form(quad):
    phi, _, phi0 = run(quad, "reptile", K=5, M=2)
    ref = phi0
    for _ in range(2):
        theta_K = sgd_path(quad, ref, 5)[-1]
        ref = ref - BETA * (ref - theta_K.mean(0))
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-13)


def test_reptile_average_steps_toward_the_average_iterate(quad):
    """reptile-average: phi <- phi - beta (phi - (1/K) sum_{k=1..K} mean_t theta_k); theta_0 = phi is not counted."""
    phi, _, phi0 = run(quad, "reptile-average", K=5, M=3)
    ref = phi0
    for _ in range(3):
        path = sgd_path(quad, ref, 5)
        average = np.mean([theta.mean(0) for theta in path[1:]], axis=0)
        ref = ref - BETA * (ref - average)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-13)
    final, _, _ = run(quad, "reptile", K=5, M=3)
    assert np.abs(final - phi).max() > 1e-3                   # a different method, not Reptile renamed


def test_reptile_average_at_k_beta_is_cts_without_shift_feedback_for_one_step(quad):
    """K = 1: both move phi by beta_CTS * (theta_1 - phi) when reptile-average's beta is K beta_CTS = beta_CTS."""
    cts, _, _ = run(quad, "cts", K=1, M=2)
    avg, _, _ = run(quad, "reptile-average", K=1, M=2)
    np.testing.assert_allclose(avg, cts, rtol=0, atol=1e-13)


def test_fomaml_is_val_gradient_at_theta_K(quad):
    phi, _, phi0 = run(quad, "fomaml", K=4)
    theta_K = sgd_path(quad, phi0, 4)[-1]
    ref = phi0 - BETA * quad.grad(theta_K, "val").mean(0)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=1e-13)


def test_fomaml_plus_plus_averages_gradients_along_the_trajectory(quad):
    phi, _, phi0 = run(quad, "fomaml++", K=5, options={"every": 2})
    path = sgd_path(quad, phi0, 5)
    g = np.mean([quad.grad(path[k], "val") for k in (2, 4, 5)], axis=0)      # k = every, 2*every, and K
    np.testing.assert_allclose(phi, phi0 - BETA * g.mean(0), rtol=0, atol=1e-13)


@pytest.mark.parametrize("norm,use_loss,stabilizer", [(True, True, True), (False, True, False), (True, False, True)])
def test_leap_path_length_gradient(quad, norm, use_loss, stabilizer):
    phi, _, phi0 = run(quad, "leap", K=6, options={"norm": norm, "loss": use_loss, "stabilizer": stabilizer})
    path = sgd_path(quad, phi0, 6)
    g = np.zeros_like(path[0])
    for i in range(6):
        d_theta = path[i + 1] - path[i]
        d_loss = quad.loss(path[i + 1]) - quad.loss(path[i])
        if stabilizer:
            d_loss = -np.abs(d_loss)
        step = d_theta + (d_loss[:, None] * quad.grad(path[i]) if use_loss else 0)
        if norm:
            length = np.sqrt((d_theta ** 2).sum(1) + (d_loss ** 2 if use_loss else 0))
            step = step / length[:, None]
        g -= step
    np.testing.assert_allclose(phi, phi0 - BETA * g.mean(0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("proximal", [True, False])
def test_imaml_matches_exact_implicit_gradient(quad, proximal):
    lam = 0.7
    phi, _, phi0 = run(quad, "imaml", K=5, options={"lam": lam, "cg_iters": 10, "proximal": proximal})
    theta_K = sgd_path(quad, phi0, 5, prox=lam if proximal else None)[-1]
    g_val = quad.grad(theta_K, "val")
    x = np.stack([np.linalg.solve(np.eye(quad.P) + quad.A[t] / lam, g_val[t]) for t in range(quad.T)])
    np.testing.assert_allclose(phi, phi0 - BETA * x.mean(0), rtol=0, atol=1e-10)


def cts_reference(quad, phi0, K, M, every=1, shift=True, metagrad="reptile"):
    """Algorithm 2 written out independently in NumPy (plain SGD, fresh optimizer at each reset)."""
    phi = phi0.copy()
    for _ in range(M):
        theta = np.tile(phi, (quad.T, 1))
        for k in range(1, K + 1):
            theta = theta - ALPHA * quad.grad(theta)
            if k % every == 0:
                mg = (phi - theta) if metagrad == "reptile" else quad.grad(theta)
                delta = -BETA * mg.mean(0)
                phi = phi + delta
                if shift:
                    theta = theta + delta
    return phi


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("metagrad", ["reptile", "gradient"])
def test_cts_matches_algorithm_2(quad, every, metagrad):
    phi, _, phi0 = run(quad, "cts", K=6, M=2, options={"meta_every": every, "metagrad": metagrad})
    np.testing.assert_allclose(phi, cts_reference(quad, phi0, 6, 2, every, True, metagrad), rtol=0, atol=1e-13)


def test_no_shift_ablation_matches_reference_and_differs_from_cts(quad):
    phi, _, phi0 = run(quad, "cts-no-shift", K=6, M=2)
    np.testing.assert_allclose(phi, cts_reference(quad, phi0, 6, 2, shift=False), rtol=0, atol=1e-13)
    assert np.abs(phi - cts_reference(quad, phi0, 6, 2, shift=True)).max() > 1e-4


def test_random_shift_has_the_norm_of_delta_and_a_random_direction(quad):
    _, tr_none, phi0 = run(quad, "cts-no-shift", K=1)
    _, tr_rand, _ = run(quad, "cts-random-shift", K=1)
    np.testing.assert_allclose(tr_rand.phi.numpy(), tr_none.phi.numpy(), rtol=0, atol=1e-15)
    shift = (tr_rand.pop.theta - tr_none.pop.theta).detach().numpy()     # [T, P], the same vector on every row
    delta = tr_none.phi.numpy() - phi0
    np.testing.assert_allclose(shift, np.tile(shift[0], (quad.T, 1)), atol=1e-15)
    assert np.linalg.norm(shift[0]) == pytest.approx(np.linalg.norm(delta), rel=1e-12)
    cos = shift[0] @ delta / (np.linalg.norm(shift[0]) * np.linalg.norm(delta))
    assert abs(cos) < 0.999


def test_meta_optimizer_option_uses_torch_optim_on_phi(quad):
    _, _, phi0 = run(quad, "reptile", K=3, M=1, optimizer=None)
    learners = ts.FunctionLearners(quad.loss_fn, torch.tensor(phi0), quad.T)
    cfg = ts.MetaConfig(method="reptile", inner_steps=3, trajectories=1, meta_lr=BETA, dtype="float64",
                        inner_optimizer={"name": "sgd", "lr": ALPHA}, meta_optimizer={"name": "adam"})
    got = ts.MetaTrainer(learners, cfg).run().phi.numpy()
    g = phi0 - sgd_path(quad, phi0, 3)[-1].mean(0)
    # Adam's first step moves each coordinate by lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|, up to eps).
    np.testing.assert_allclose(got, phi0 - BETA * np.sign(g), rtol=0, atol=1e-7)


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "lr": ALPHA, "momentum": 0.9}, {"name": "adam", "lr": 0.05}],
                         ids=["momentum", "adam"])
def test_mtl_is_joint_training_on_the_mean_loss(quad, optimizer):
    phi, _, phi0 = run(quad, "mtl", K=12, M=1, optimizer=optimizer)
    x = torch.tensor(phi0, requires_grad=True)
    opt = getattr(torch.optim, {"sgd": "SGD", "adam": "Adam"}[optimizer["name"]])(
        [x], **{k: v for k, v in optimizer.items() if k != "name"})
    for _ in range(12):
        opt.zero_grad()
        quad.loss_fn(x.expand(quad.T, -1), 0, "train").mean().backward()
        opt.step()
    np.testing.assert_allclose(phi, x.detach().numpy(), rtol=0, atol=1e-12)


def test_conjugate_gradient_truncates_at_non_positive_curvature():
    """Row 0: SPD, solved exactly. Row 1: A = diag(1, -3) and b = (1, 1) give p^T A p = -2 at the first iteration:
    the row returns b (A taken as I). Row 2: A = diag(1, 2, -10 in a direction reached later): stays finite and
    keeps its first CG iterate."""
    import torch

    from trajshift.methods.rules import conjugate_gradient
    A = torch.tensor([[[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 3.0]],
                      [[1.0, 0.0, 0.0], [0.0, -3.0, 0.0], [0.0, 0.0, 1.0]],
                      [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -10.0]]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.1]], dtype=torch.float64)
    x = conjugate_gradient(lambda v: torch.einsum("tij,tj->ti", A, v), b, iters=10)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x[0], torch.linalg.solve(A[0], b[0]), rtol=0, atol=1e-10)
    torch.testing.assert_close(x[1], b[1], rtol=0, atol=0)
    # row 2, first iteration by hand: p = b, p^T A p = 1 + 2 - 0.1 = 2.9 > 0, alpha = |b|^2 / 2.9
    first = b[2] * (b[2] @ b[2]) / (b[2] @ A[2] @ b[2])
    assert (b[2] @ A[2] @ b[2]) > 0
    r1 = b[2] - (b[2] @ b[2]) / (b[2] @ A[2] @ b[2]) * (A[2] @ b[2])
    p1 = r1 + (r1 @ r1) / (b[2] @ b[2]) * b[2]
    # By hand: p1 = (0.7409, 0.0478, 0.8365) and p1^T A p1 = 0.549 + 0.005 - 6.997 = -6.44 < 0, so row 2 meets
    # negative curvature at the second iteration and must keep its first iterate.
    assert float(p1 @ A[2] @ p1) == pytest.approx(-6.44, abs=0.01)
    torch.testing.assert_close(x[2], first, rtol=0, atol=1e-12)


def _momentum_path(quad, phi0, K, M, beta, shift, lr=0.1, mu=0.9, wd=0.05):
    """Algorithm 2 with SGD (momentum mu, weight decay wd; torch's rule: b <- mu b + g + wd x, x <- x - lr b, a fresh
    buffer at every reset) in NumPy: per step, the mean inner update u_k (before the meta-update) and the gap
    mean_t theta_k - phi_k after it."""
    phi, rows = phi0.copy(), []
    for _ in range(M):
        theta, buf, us = np.tile(phi, (quad.T, 1)), None, []
        for _k in range(K):
            g = quad.grad(theta) + wd * theta
            buf = g.copy() if buf is None else mu * buf + g
            step = -lr * buf
            theta = theta + step
            us.append(step.mean(0))
            delta = -beta * (phi - theta.mean(0))
            phi = phi + delta
            if shift:
                theta = theta + delta
            rows.append({"gap": theta.mean(0) - phi, "u": list(us)})
    return rows


@pytest.mark.parametrize("beta", [0.001, 0.1, 0.5, 1.0])
def test_cts_gap_is_the_sum_of_the_inner_updates_and_is_logged(quad, tmp_path, beta):
    """With the shift, gap_k = u_1 + ... + u_k exactly (the shift moves theta and phi by the same Delta), whatever
    beta, momentum and weight decay; the run logs ||gap_k|| as gap_norm. Without the shift the gap forgets:
    gap_k = sum_j (1 - beta)^(k - j + 1) u_j (after the meta-update of step k)."""
    K, M = 7, 2
    phi0 = np.array([0.3, -0.2, 0.5])
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.05}
    for method, shift in (("cts", True), ("cts-no-shift", False)):
        ref = _momentum_path(quad, phi0, K, M, beta, shift)
        for row in ref:
            k = len(row["u"])
            weights = [1.0 if shift else (1 - beta) ** (k - j + 1) for j in range(1, k + 1)]
            np.testing.assert_allclose(row["gap"], sum(w * u for w, u in zip(weights, row["u"])), rtol=0, atol=1e-13)
        cfg = ts.MetaConfig(method=method, inner_steps=K, trajectories=M, meta_lr=beta, dtype="float64",
                            inner_optimizer=opt, reset_optimizer_state=True)
        path = tmp_path / f"{method}.jsonl"
        ts.MetaTrainer(ts.FunctionLearners(quad.loss_fn, torch.tensor(phi0), quad.T), cfg, metrics_path=path).run()
        logged = [r["gap_norm"] for r in map(json.loads, path.read_text().splitlines()) if "gap_norm" in r]
        np.testing.assert_allclose(logged, [np.linalg.norm(r["gap"]) for r in ref], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("beta", [0.01, 0.2])
def test_diagnose_effective_step_is_the_trajectory_displacement_in_one_dimension(tmp_path, beta):
    """In one dimension every gap points the same way, so phi_K - phi_0 = beta (gap_1 + ... + gap_K) is exactly the
    effective Reptile step beta K rho times gap_K; the no-shift ablation's displacement is not."""
    import yaml
    from conftest import QuadraticTasks

    from trajshift.analysis.diagnose import diagnose
    quad1, K = QuadraticTasks(T=3, P=1, seed=1), 12
    phi0 = torch.tensor([2.0], dtype=torch.float64)
    for method in ("cts", "cts-no-shift"):
        run = tmp_path / method
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"meta": {"method": method, "meta_lr": beta,
                                                                  "inner_steps": K}}))
        cfg = ts.MetaConfig(method=method, inner_steps=K, trajectories=1, meta_lr=beta, dtype="float64",
                            inner_optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.5}, reset_optimizer_state=True)
        trainer = ts.MetaTrainer(ts.FunctionLearners(quad1.loss_fn, phi0.clone(), quad1.T), cfg,
                                 metrics_path=run / "metrics.jsonl")
        moved = abs(float(trainer.run().phi[0] - phi0[0]))
        d = diagnose(run)["trajectories"][0]
        if method == "cts":
            assert moved == pytest.approx(d["effective_step"] * d["gap_K"], rel=1e-12)
        else:
            assert d["effective_step"] == pytest.approx(1 - (1 - beta) ** K, rel=1e-15)
            assert moved != pytest.approx(beta * K * d["rho"] * d["gap_K"], rel=1e-3)
