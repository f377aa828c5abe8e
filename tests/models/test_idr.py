"""IDR model: rendering outputs, differentiable surface points, mask loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle, intersect_sphere
from models.encoders import FrequencyEncoder
from models.fields import ColorField, SDFField
from models.idr import IDRModel, mask_loss
from models.ray_tracing import SphereTracer


class SphereGeometry(nn.Module):
    """Analytic sphere SDF with a trainable radius and centre; its feature is empty."""

    feature_dim = 0

    def __init__(self, radius: float) -> None:
        super().__init__()
        self.radius = nn.Parameter(torch.tensor(radius, dtype=torch.float64))
        self.centre = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre).norm(dim=-1) - self.radius

    def forward_with_gradient(self, x: torch.Tensor, create_graph: bool = True):
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            s = self.sdf(x)
            (g,) = torch.autograd.grad(s.sum(), x, create_graph=create_graph)
        return s, x.new_zeros(len(x), 0), g


def camera_rays(n_side: int, centre=(0.0, 0.0, 3.0), extent: float = 0.8, dtype=torch.float32) -> RayBundle:
    """n_side^2 rays from ``centre`` through a grid of [-extent, extent]^2 on the plane through the origin."""
    o = torch.tensor(centre, dtype=dtype)
    forward = -F.normalize(o, dim=0)
    up = torch.tensor([0.0, 0.0, 1.0] if forward[2].abs() < 0.9 else [0.0, 1.0, 0.0], dtype=dtype)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    s = torch.linspace(-extent, extent, n_side, dtype=dtype)
    u, v = torch.meshgrid(s, s, indexing="ij")
    targets = u.reshape(-1, 1) * right + v.reshape(-1, 1) * down
    return RayBundle(o.expand_as(targets).contiguous(), F.normalize(targets - o, dim=-1))


def test_render_outputs():
    model = IDRModel(SphereGeometry(0.5), ColorField(0, 16, 1).double(), SphereTracer())
    rays = camera_rays(16, dtype=torch.float64)
    near, _, inside_sphere = intersect_sphere(rays.origins, rays.directions, 0.5)
    in_mask = torch.arange(len(rays)) % 3 != 0
    bg = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    out = model.render(rays, in_mask, bg, create_graph=True)
    hit = out["hit"]
    torch.testing.assert_close(hit, inside_sphere & in_mask)
    torch.testing.assert_close(out["opacity"], hit.double())
    torch.testing.assert_close(out["rgb"][~hit], bg.expand(int((~hit).sum()), 3))
    assert (out["normal"][~hit] == 0).all() and (out["depth"][~hit] == 0).all()
    torch.testing.assert_close(out["depth"][hit], near[hit], atol=1e-3, rtol=0)
    points = rays.origins[hit] + out["depth"][hit, None] * rays.directions[hit]
    torch.testing.assert_close(out["normal"][hit], F.normalize(points, dim=-1), atol=1e-3, rtol=0)
    assert out["min_sdf"].shape == (len(rays),) and out["sample_grad"].shape == (len(rays), 3)
    # rays outside the mask get their minimal SDF: negative (inside the sphere) where they cross it
    assert (out["min_sdf"][inside_sphere & ~in_mask] < 0).all() and (out["min_sdf"][~inside_sphere] > 0).all()

    with torch.no_grad():
        evaluation = model.render(rays, None, bg)
    torch.testing.assert_close(evaluation["hit"], inside_sphere)
    assert not evaluation["rgb"].requires_grad


def test_colour_loss_reaches_geometry_and_rays():
    torch.manual_seed(0)
    model = IDRModel(SDFField(FrequencyEncoder(4), 64, 2, 8), ColorField(8, 32, 2), SphereTracer())
    rays = camera_rays(12)
    origins = rays.origins.clone().requires_grad_(True)
    out = model.render(RayBundle(origins, rays.directions), None, torch.zeros(3), create_graph=True)
    out["rgb"][out["hit"]].sum().backward()
    grads = [p.grad for p in model.geometry.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert origins.grad[out["hit"]].abs().sum() > 0


@pytest.mark.parametrize("mode", ["idr", "no_view_dir"])
def test_surface_point_gradient_matches_finite_differences(mode):
    """The colour depends on the analytic sphere only through the surface point (and its normal), so
    d rgb / d (radius, centre) exercises the differentiable surface points of IDR eq. 3."""
    torch.manual_seed(0)
    geometry = SphereGeometry(0.5)
    texture = ColorField(0, 16, 1, mode=mode, sh_degree=0, weight_norm=False).double()
    model = IDRModel(geometry, texture, SphereTracer(sdf_threshold=1e-9, max_iters=50))
    rays = camera_rays(6, dtype=torch.float64, extent=0.4)

    def render_sum() -> torch.Tensor:
        return model.render(rays, None, torch.zeros(3, dtype=torch.float64), create_graph=True)["rgb"].sum()

    render_sum().backward()
    eps = 1e-4
    for param in (geometry.radius, geometry.centre):
        analytic = param.grad.clone().reshape(-1)
        for i in range(analytic.numel()):
            with torch.no_grad():
                param.view(-1)[i] += eps
                up = render_sum().item()
                param.view(-1)[i] -= 2 * eps
                down = render_sum().item()
                param.view(-1)[i] += eps
            assert math.isclose(analytic[i].item(), (up - down) / (2 * eps), rel_tol=1e-3, abs_tol=1e-5)


def test_mask_loss_matches_definition():
    min_sdf = torch.tensor([0.1, -0.2, 0.3, 0.0])
    hit = torch.tensor([False, False, True, False])
    in_mask = torch.tensor([True, False, True, False])
    alpha = 50.0
    # in-mask miss at s = 0.1: -log sigmoid(-5); out-of-mask rays at s = -0.2 and 0: -log(1 - sigmoid(10)), log 2
    expected = (math.log1p(math.exp(5.0)) + math.log1p(math.exp(10.0)) + math.log(2.0)) / alpha / 4
    assert math.isclose(mask_loss(min_sdf, hit, in_mask, alpha).item(), expected, rel_tol=1e-5)


def test_mask_loss_decreases_on_toy_scene():
    """Fit an SDF initialised as a sphere of radius 0.5 to the silhouettes of a sphere of radius 0.3."""
    torch.manual_seed(0)
    model = IDRModel(SDFField(FrequencyEncoder(4), 64, 2, 8, init_radius=0.5), ColorField(8, 32, 1), SphereTracer(n_steps=32))
    views = [camera_rays(12, c) for c in ((0.0, 0.0, 3.0), (3.0, 0.0, 0.0), (0.0, -3.0, 0.0), (-2.0, 2.0, 1.0))]
    rays = RayBundle(torch.cat([v.origins for v in views]), torch.cat([v.directions for v in views]))
    in_mask = intersect_sphere(rays.origins, rays.directions, 0.3)[2]
    optimiser = torch.optim.Adam(model.geometry.parameters(), lr=3e-3)

    def step() -> float:
        out = model.render(rays, in_mask, torch.zeros(3), create_graph=True)
        loss = mask_loss(out["min_sdf"], out["hit"], in_mask, 50.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return loss.item()

    losses = [step() for _ in range(20)]
    assert losses[0] > 0.01
    assert sum(losses[-3:]) / 3 < 0.1 * losses[0]
    probe = torch.tensor([[0.4, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.0]])
    sdf = model.geometry.sdf(probe)
    assert (sdf[:2] > 0).all() and sdf[2] < 0  # the surface shrank inside radius 0.4
