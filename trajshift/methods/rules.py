"""Meta-gradient rules as pure functions of tensors (no state, no I/O), in the style of optax's transformations.

Shapes: phi [P], theta [T, P], per-task scalars [T]. A rule returns either per-task contributions [T, P] (to be
averaged over tasks by the comm layer) or, when it only needs the task mean, a [P] vector.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


def reptile_metagrad(phi: torch.Tensor, theta_mean: torch.Tensor) -> torch.Tensor:
    """Reptile (Nichol et al., 2018): MetaGrad(phi; theta_k) = phi - theta_k, averaged over tasks
    (Algorithm 1, l.12; Algorithm 2, l.11): ``phi - mean_t theta_k^(t)``."""
    return phi - theta_mean


def meta_delta(metagrad: torch.Tensor, meta_lr: float) -> torch.Tensor:
    """Algorithm 2, l.11: Delta_k = -beta * mean_t MetaGrad(phi; theta_k^(t)) (plain meta step)."""
    return metagrad * (-meta_lr)


def reptile_meta_step(phi: torch.Tensor, theta: torch.Tensor, meta_lr: float, shift: bool,
                      mean_over_tasks: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2, l.11-13 with the Reptile meta-gradient, in place, as one tensor function (no host decisions:
    execution.graphs captures it, trajshift/training/step_graph.py):

        g = phi - mean_t theta_k^(t);  Delta = -beta g;  phi <- phi + Delta;  theta^(t) <- theta^(t) + Delta (shift)

    The same rules and task mean (the comm's) as the eager loop's. Returns (g, Delta)."""
    metagrad = reptile_metagrad(phi, mean_over_tasks(theta.detach()))
    delta = meta_delta(metagrad, meta_lr)
    phi.add_(delta)
    if shift:
        theta.add_(delta)
    return metagrad, delta


def random_direction_like(delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The "random shift" ablation: a vector with the norm of ``delta`` and a direction drawn uniformly on the
    sphere (a normalised standard Gaussian)."""
    direction = torch.randn(delta.shape, generator=generator, dtype=delta.dtype, device="cpu").to(delta.device)
    return direction * (delta.norm() / direction.norm().clamp_min(torch.finfo(delta.dtype).tiny))


def leap_increment(theta_prev: torch.Tensor, theta_curr: torch.Tensor, grad_prev: torch.Tensor,
                   loss_prev: torch.Tensor, loss_curr: torch.Tensor, norm: bool = True, use_loss: bool = True,
                   stabilizer: bool = True) -> torch.Tensor:
    """One step's contribution to Leap's meta-gradient (Flennerhag et al., 2019, eq. 8 with the Jacobian ~ I).

    On the task manifold x_i = (theta_i, L(theta_i)), the path length sum_i ||x_{i+1} - x_i|| has, holding x_{i+1}
    fixed, the gradient with respect to theta_i (and hence, to first order, phi):

        g_i = -( (theta_{i+1} - theta_i) + dL_i * grad L(theta_i) ) / sqrt(||theta_{i+1} - theta_i||^2 + dL_i^2)

    with dL_i = L(theta_{i+1}) - L(theta_i). ``stabilizer`` replaces dL_i by -|dL_i| (the reference Leap code's
    "mu"); ``use_loss=False`` drops the loss coordinate; ``norm=False`` gives the energy (d_2) form without the
    division. All per task: theta_* and grad_prev [T, P], losses [T]; returns [T, P].
    """
    d_theta = theta_curr - theta_prev
    out = d_theta.clone()
    d_loss = None
    if use_loss:
        d_loss = loss_curr - loss_prev
        if stabilizer:
            d_loss = -d_loss.abs()
        out.addcmul_(d_loss.unsqueeze(1), grad_prev)
    if norm:
        sq = d_theta.pow(2).sum(1)
        if d_loss is not None:
            sq = sq + d_loss.pow(2)
        out.div_(sq.sqrt().clamp_min(torch.finfo(out.dtype).tiny).unsqueeze(1))
    return out.neg_()


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int,
                       tol: float = 1e-10) -> torch.Tensor:
    """Batched conjugate gradient: solves A_t x_t = b_t for every row t at once (A_t symmetric positive definite,
    applied by ``matvec`` to a [T, P] block). Per-row step sizes, so rows converge independently.

    A_t = I + H_t / lambda (iMAML) is positive definite only where the task Hessian H_t has no eigenvalue below
    -lambda; on a non-convex loss it can fail. A row that meets non-positive curvature p^T A p <= 0 stops there
    (truncated CG): it keeps the iterate reached so far, or b itself (A taken as I, the first-order answer) if this
    happens at the first iteration. Without this, the step rs / (p^T A p) is unbounded and the meta-gradient
    non-finite."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    tiny = torch.finfo(b.dtype).tiny
    active = torch.ones(b.shape[0], dtype=torch.bool, device=b.device)
    for i in range(iters):
        active &= rs > tol * tol
        if not bool(active.any()):
            break
        ap = matvec(p)
        curvature = (p * ap).sum(1)
        broke = active & (curvature <= 0)
        if bool(broke.any()):
            if i == 0:
                x[broke] = b[broke]
            active &= ~broke
        alpha = torch.where(active, rs / curvature.clamp_min(tiny), torch.zeros_like(rs))
        x.addcmul_(alpha.unsqueeze(1), p)
        r.addcmul_(alpha.unsqueeze(1), ap, value=-1.0)
        rs_new = (r * r).sum(1)
        p = r + (rs_new / rs.clamp_min(tiny)).unsqueeze(1) * p
        rs = rs_new
    return x


def imaml_metagrad(hvp: Callable[[torch.Tensor], torch.Tensor], val_grad: torch.Tensor, lam: float,
                   cg_iters: int) -> torch.Tensor:
    """iMAML (Rajeswaran et al., 2019): the implicit meta-gradient of each task, x_t = (I + H_t / lambda)^-1 g_t,
    with H_t the Hessian of the task's training loss at theta_K^(t) (applied through ``hvp``) and g_t the gradient
    of its validation loss there; solved by ``cg_iters`` conjugate-gradient iterations. Returns [T, P]."""
    return conjugate_gradient(lambda v: v + hvp(v) / lam, val_grad, cg_iters)
