import math

import pytest
import torch
from torch import nn

from models.ray_tracing import SphereTracer, differentiable_surface_points, secant_search


class SphereSDF(nn.Module):
    """Analytic sphere SDF with trainable centre and radius; `scale` makes it non-Lipschitz."""

    def __init__(self, center=(0.0, 0.0, 0.0), radius: float = 0.5, scale: float = 1.0, dtype=torch.float32):
        super().__init__()
        self.center = nn.Parameter(torch.tensor(center, dtype=dtype))
        self.radius = nn.Parameter(torch.tensor(radius, dtype=dtype))
        self.scale = scale

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.scale * ((p - self.center).norm(dim=-1) - self.radius)


def box_sdf(half: torch.Tensor):
    def sdf(p: torch.Tensor) -> torch.Tensor:
        q = p.abs() - half
        return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)

    return sdf


def sphere_hit_t(o, d, center, radius):
    """Entry distance of rays (any direction length) into a sphere; nan where they miss."""
    oc = o - center
    a, b = (d * d).sum(-1), (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - radius**2
    return (-b - torch.sqrt(b * b - a * c)) / a


def box_hit_t(o, d, half):
    """Slab-method entry distance into the axis-aligned box [-half, half]."""
    t1, t2 = (-half - o) / d, (half - o) / d
    return torch.minimum(t1, t2).max(-1).values


def rays_towards(targets, distance=3.0, seed=0):
    """Rays from random points at `distance` from the origin through the given targets (R, 3)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(targets.shape[0], 3, generator=g, dtype=targets.dtype)
    o = distance * o / o.norm(dim=-1, keepdim=True)
    d = targets - o
    return o, d / d.norm(dim=-1, keepdim=True)


def random_points(n, half_extent, center=(0.0, 0.0, 0.0), seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * half_extent + torch.tensor(center, dtype=dtype)


@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.2, -0.1, 0.15)])
def test_hits_sphere(center):
    sdf = SphereSDF(center, 0.4)
    o, d = rays_towards(random_points(256, 0.15, center))
    result = SphereTracer()(sdf, o, d)
    assert result.hit.all()
    expected = sphere_hit_t(o, d, torch.tensor(center), 0.4)
    torch.testing.assert_close(result.t, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(result.points, o + expected[:, None] * d, atol=1e-4, rtol=0)


def test_hits_box():
    half = torch.tensor([0.4, 0.3, 0.5])
    o, d = rays_towards(random_points(256, 0.5 * half))
    # the distance error of sphere tracing is up to sdf_threshold / cos(incidence angle)
    result = SphereTracer(sdf_threshold=2e-5)(box_sdf(half), o, d)
    assert result.hit.all()
    torch.testing.assert_close(result.t, box_hit_t(o, d, half), atol=1e-4, rtol=0)


def test_misses():
    sdf = SphereSDF(radius=0.5)
    o = torch.tensor([[0.0, 0.7, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, -0.8], [0.0, 0.0, -0.8], [0.0, 0.0, -0.8]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = SphereTracer()(sdf, o, d)
    # passing by, outside the bounding sphere, inside it looking away (x2), inside it looking at the object
    assert result.hit.tolist() == [False, False, False, False, True]
    assert result.t[4].item() == pytest.approx(0.3, abs=1e-4)
    # outside the bounding sphere: closest approach to its centre
    assert result.t[1].item() == pytest.approx(3.0)
    torch.testing.assert_close(result.points[1], torch.tensor([0.0, 2.0, 0.0]))


@pytest.mark.parametrize("offset", [0.7, 0.5005])  # fronts cross / fronts stall at a grazing ray
def test_miss_returns_minimal_sdf_distance(offset):
    sdf = SphereSDF(radius=0.5)
    o, d = torch.tensor([[0.0, offset, -3.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    tracer = SphereTracer()
    result = tracer(sdf, o, d)
    assert not result.hit.any()
    chord = 2 * math.sqrt(1 - offset**2)
    assert result.t.item() == pytest.approx(3.0, abs=chord / (tracer.n_steps - 1))


def test_object_mask_gives_minimal_sdf_distance():
    sdf = SphereSDF(radius=0.5)
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, -3.0], [0.0, 0.8, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    tracer = SphereTracer(n_steps=101)
    result = tracer(sdf, o, d, object_mask=torch.tensor([True, False, False]))
    assert result.hit.tolist() == [True, True, False]
    # inside the mask: surface; outside: deepest point (the centre) and closest approach
    torch.testing.assert_close(result.t, torch.tensor([2.5, 3.0, 3.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kwargs, scale", [({"max_iters": 0}, 1.0), ({"max_iters": 1}, 3.0), ({}, 5.0)])
def test_dense_sampling_and_secant_fallback(kwargs, scale):
    """No / too few sphere-tracing steps, or an SDF overestimating the distance (overshoots)."""
    center = (0.1, 0.0, -0.1)
    sdf = SphereSDF(center, 0.4, scale=scale)
    o, d = rays_towards(random_points(128, 0.15, center), seed=3)
    calls = []
    result = SphereTracer(**kwargs)(lambda p: calls.append(len(p)) or sdf(p), o, d)
    assert result.hit.all()
    torch.testing.assert_close(result.t, sphere_hit_t(o, d, torch.tensor(center), 0.4), atol=1e-4, rtol=0)
    assert max(calls) > 2 * len(o)  # dense samples were evaluated (sphere tracing evaluates <= 2 R points)


def test_chunked_evaluation_matches():
    sdf = SphereSDF(radius=0.5)
    o, d = rays_towards(random_points(64, 0.6), seed=5)
    full, chunked = SphereTracer()(sdf, o, d), SphereTracer(chunk=7)(sdf, o, d)
    assert torch.equal(full.hit, chunked.hit)
    torch.testing.assert_close(full.t, chunked.t)


def test_secant_search_on_plane():
    normal = torch.tensor([0.3, -0.2, 1.0])
    normal = normal / normal.norm()

    def plane(p):
        return (p * normal).sum(-1) - 0.25

    g = torch.Generator().manual_seed(2)
    o = random_points(32, 0.5) + 2 * normal  # on the positive side
    d = -normal + 0.3 * torch.randn(32, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    t_exact = -plane(o) / (d * normal).sum(-1)
    t_lo, t_hi = t_exact - 0.3, t_exact + 0.1
    t = secant_search(plane, o, d, t_lo, t_hi, plane(o + t_lo[:, None] * d), plane(o + t_hi[:, None] * d), 2)
    torch.testing.assert_close(t, t_exact, atol=1e-6, rtol=0)


def test_secant_search_on_sphere():
    sdf = SphereSDF(radius=0.5, dtype=torch.float64)
    o, d = rays_towards(random_points(32, 0.2, dtype=torch.float64), seed=9)
    t_exact = sphere_hit_t(o, d, torch.zeros(3, dtype=torch.float64), 0.5)
    t_lo, t_hi = t_exact - 0.02, t_exact + 0.01
    with torch.no_grad():
        t = secant_search(sdf, o, d, t_lo, t_hi, sdf(o + t_lo[:, None] * d), sdf(o + t_hi[:, None] * d), 8)
    torch.testing.assert_close(t, t_exact, atol=1e-10, rtol=0)


def test_differentiable_surface_points_value_and_gradients():
    dtype = torch.float64
    center, radius = torch.tensor([0.1, -0.2, 0.05], dtype=dtype), 0.45
    sdf = SphereSDF(center.tolist(), radius, dtype=dtype)
    o, d = rays_towards(random_points(16, 0.2, center.tolist(), dtype=dtype), seed=11)
    result = SphereTracer(sdf_threshold=1e-9)(sdf, o, d)
    assert result.hit.all()

    o_param, d_param = o.clone().requires_grad_(True), d.clone().requires_grad_(True)
    x = differentiable_surface_points(sdf, o_param, d_param, result.t)
    torch.testing.assert_close(x, result.points, atol=1e-12, rtol=0)

    w = torch.randn(16, 3, generator=torch.Generator().manual_seed(4), dtype=dtype)
    (w * x).sum().backward()

    def loss(c=center, r=radius, oo=o, dd=d):  # per-ray loss of the exact intersection
        return (w * (oo + sphere_hit_t(oo, dd, c, r)[:, None] * dd)).sum(-1)

    eps = 1e-6
    fd_radius = ((loss(r=radius + eps) - loss(r=radius - eps)) / (2 * eps)).sum()
    basis = torch.eye(3, dtype=dtype)
    fd_center = torch.stack([((loss(c=center + eps * e) - loss(c=center - eps * e)) / (2 * eps)).sum() for e in basis])
    fd_o = torch.stack([(loss(oo=o + eps * e) - loss(oo=o - eps * e)) / (2 * eps) for e in basis], -1)
    fd_d = torch.stack([(loss(dd=d + eps * e) - loss(dd=d - eps * e)) / (2 * eps) for e in basis], -1)
    torch.testing.assert_close(sdf.radius.grad, fd_radius, rtol=1e-3, atol=1e-8)
    torch.testing.assert_close(sdf.center.grad, fd_center, rtol=1e-3, atol=1e-8)
    torch.testing.assert_close(o_param.grad, fd_o, rtol=1e-3, atol=1e-8)
    torch.testing.assert_close(d_param.grad, fd_d, rtol=1e-3, atol=1e-8)
