"""Ray-surface intersection of an SDF and differentiable surface points.

Follows the ray tracer of IDR (Yariv et al., "Multiview Neural Surface Reconstruction by
Disentangling Geometry and Appearance", NeurIPS 2020, Sec. 3.1 and supplementary): sphere
tracing from both ends of the ray's chord through the bounding sphere, dense sampling with
secant refinement for rays that do not converge, and the minimal-SDF point of rays without a
surface (or outside the object mask) for the mask loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from core.geometry import intersect_sphere
from core.tracing import SdfFn, sdf_gradient


@dataclass
class TraceResult:
    """Per-ray result of `SphereTracer`.

    t: (R,) distance to the surface for hit rays (inside the object mask, when one is given);
        otherwise the distance of the minimal-SDF sample along the chord through the bounding
        sphere, or of the closest approach to the sphere's centre for rays that miss the sphere.
    points: (R, 3) origins + t * directions.
    hit: (R,) bool, a surface was found: sphere tracing converged to |f| < sdf_threshold, or a
        sign change (+ to -) was bracketed by the dense samples and refined by secant steps.
    """

    t: torch.Tensor
    points: torch.Tensor
    hit: torch.Tensor


@dataclass
class SphereTracer:
    """IDR-style bidirectional sphere tracer with a dense-sampling + secant fallback.

    Args:
        radius: radius of the bounding sphere (centred at the origin) that contains the surface.
        sdf_threshold: |f| below which a sphere-tracing front has converged.
        max_iters: sphere-tracing steps of each front.
        line_search_step: factor by which an overshooting step (landing at f < -sdf_threshold)
            is shrunk on each retry.
        n_line_search: retries of an overshooting step before the front is stopped.
        n_steps: dense samples per non-converged ray.
        n_secant_steps: secant refinements of a bracketed sign change.
        chunk: maximal number of points per `sdf_fn` call (None: no limit).
    """

    radius: float = 1.0
    sdf_threshold: float = 5e-5
    max_iters: int = 10
    line_search_step: float = 0.5
    n_line_search: int = 8
    n_steps: int = 100
    n_secant_steps: int = 8
    chunk: int | None = None

    @torch.no_grad()
    def __call__(
        self,
        sdf_fn: SdfFn,
        origins: torch.Tensor,
        directions: torch.Tensor,
        object_mask: torch.Tensor | None = None,
    ) -> TraceResult:
        """Trace rays (origins, directions: (R, 3), unit directions) against the zero level set.

        object_mask: (R,) bool; rays outside it get the minimal-SDF distance even when they hit
        (as in IDR's training, for the mask loss).
        """
        sdf = partial(_evaluate, sdf_fn, chunk=self.chunk)
        near, far, in_sphere = intersect_sphere(origins, directions, self.radius)
        t, f = self._sphere_trace(sdf, origins, directions, near, far, in_sphere)
        converged = in_sphere & (f[0].abs() < self.sdf_threshold) & (t[0] <= far)
        crossed = t[0] >= t[1]
        outside_mask = in_sphere & ~object_mask if object_mask is not None else torch.zeros_like(in_sphere)

        hit = converged.clone()
        t_out = torch.where(in_sphere, t[0], (-(origins * directions).sum(-1)).clamp_min(0.0))
        idx = (in_sphere & (~converged | outside_mask)).nonzero().squeeze(1)
        if idx.numel() > 0:
            # Crossed fronts and converged rays (outside the mask) are sampled over the whole chord.
            whole = (converged | crossed)[idx]
            lo = torch.where(whole, near[idx], t[0, idx])
            hi = torch.where(whole, far[idx], t[1, idx])
            found, t_surface, t_min = self._dense_search(sdf, origins[idx], directions[idx], lo, hi)
            found &= ~converged[idx]
            hit[idx[found]] = True
            t_out[idx[found]] = t_surface[found]
            use_min = ~hit[idx] | outside_mask[idx]
            t_out[idx[use_min]] = t_min[use_min]
        return TraceResult(t_out, origins + t_out[:, None] * directions, hit)

    def _sphere_trace(
        self,
        sdf: SdfFn,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
        in_sphere: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """March a front forwards from `near` and one backwards from `far`.

        Returns t, f: (2, R) distances and SDF values of the forward (row 0) and backward (row 1)
        fronts; f is +inf for rays outside the bounding sphere.
        """

        def evaluate(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            rows, cols = mask.nonzero(as_tuple=True)
            return sdf(origins[cols] + t[rows, cols, None] * directions[cols])

        thr = self.sdf_threshold
        sign = torch.tensor([1.0, -1.0], dtype=origins.dtype, device=origins.device)[:, None]
        t = torch.stack([near, far])
        f = torch.full_like(t, float("inf"))
        active = in_sphere.expand_as(t).clone()
        f[active] = evaluate(t, active)
        active &= f > thr
        for _ in range(self.max_iters):
            active &= t[0] < t[1]
            if not active.any():
                break
            step = sign * f
            t_new, f_new = t.clone(), f.clone()
            t_new[active] = (t + step)[active]
            f_new[active] = evaluate(t_new, active)
            overshoot = active & (f_new < -thr)
            for k in range(1, self.n_line_search + 1):
                if not overshoot.any():
                    break
                t_new[overshoot] = (t + step * self.line_search_step**k)[overshoot]
                f_new[overshoot] = evaluate(t_new, overshoot)
                overshoot &= f_new < -thr
            # Fronts that still overshoot stay put and are left to the dense search.
            t = torch.where(overshoot, t, t_new)
            f = torch.where(overshoot, f, f_new)
            active &= ~overshoot & (f > thr)
        return t, f

    def _dense_search(
        self, sdf: SdfFn, origins: torch.Tensor, directions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample `n_steps` distances in [lo, hi] (S,) per ray.

        Returns found (S,) bool (a + to - sign change exists), t_surface (S,) the secant-refined
        first sign change (meaningless where not found), t_min (S,) the minimal-SDF sample.
        """
        s = torch.linspace(0.0, 1.0, self.n_steps, dtype=lo.dtype, device=lo.device)
        ts = lo[:, None] + (hi - lo)[:, None] * s
        fs = sdf((origins[:, None] + ts[..., None] * directions[:, None]).reshape(-1, 3)).reshape(ts.shape)
        change = (fs[:, :-1] > 0) & (fs[:, 1:] <= 0)
        found = change.any(1)
        t_surface = torch.zeros_like(lo)
        if found.any():
            first = change[found].int().argmax(1, keepdim=True)  # index of the first sign change
            bracket = torch.cat([first, first + 1], 1)
            tb, fb = ts[found].gather(1, bracket), fs[found].gather(1, bracket)
            t_surface[found] = secant_search(
                sdf, origins[found], directions[found], tb[:, 0], tb[:, 1], fb[:, 0], fb[:, 1], self.n_secant_steps
            )
        t_min = ts.gather(1, fs.argmin(1, keepdim=True)).squeeze(1)
        return found, t_surface, t_min


def secant_search(
    sdf_fn: SdfFn,
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_lo: torch.Tensor,
    t_hi: torch.Tensor,
    f_lo: torch.Tensor,
    f_hi: torch.Tensor,
    n_steps: int,
) -> torch.Tensor:
    """Refine a bracketed root of the SDF along rays by secant (false-position) steps, as in IDR.

    origins, directions: (S, 3); t_lo, t_hi, f_lo, f_hi: (S,) bracket with f_lo > 0 >= f_hi.
    Each of the `n_steps` evaluations replaces the bracket end of the same sign. Returns t (S,).
    """
    for _ in range(n_steps):
        t = t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo)
        f = sdf_fn(origins + t[:, None] * directions)
        positive = f > 0
        t_lo, f_lo = torch.where(positive, t, t_lo), torch.where(positive, f, f_lo)
        t_hi, f_hi = torch.where(positive, t_hi, t), torch.where(positive, f_hi, f)
    return t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo)


def differentiable_surface_points(
    sdf_fn: SdfFn, origins: torch.Tensor, directions: torch.Tensor, t0: torch.Tensor
) -> torch.Tensor:
    """Surface points (R, 3) differentiable w.r.t. the SDF parameters and the rays (IDR eq. 3).

    x = o + t0 v - v (f(o + t0 v) - f0) / (n0 . v0), with t0 (R,), f0, the normal n0 = grad f at
    o + t0 v and v0 detached: the value is o + t0 v, the first-order derivatives are those of the
    exact intersection of the ray (o, v) with the zero level set of f.
    """
    t0 = t0.detach()
    x0 = origins + t0[:, None] * directions
    normal = sdf_gradient(sdf_fn, x0)
    f = sdf_fn(x0)
    normal_dot_v = (normal * directions.detach()).sum(-1)
    return x0 - directions * ((f - f.detach()) / normal_dot_v)[:, None]


def _evaluate(sdf_fn: SdfFn, points: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """sdf_fn on points (P, 3) in chunks of at most `chunk` points -> (P,)."""
    if points.shape[0] == 0:
        return points.new_zeros(0)
    if chunk is None or points.shape[0] <= chunk:
        return sdf_fn(points)
    return torch.cat([sdf_fn(p) for p in points.split(chunk)])
