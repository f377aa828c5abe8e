"""VolSDF density, its occupancy-grid rendering against a dense float64 reference, and the learnable beta."""
import math

import numpy as np
import torch
from torch import nn

from core.geometry import RayBundle
from models.fields import ColorField
from models.renderers import packed_weights
from models.samplers import OccupancyGrid
from models.volsdf import LaplaceBeta, VolSDFModel, laplace_density, laplace_optical_depth

RADIUS = 0.5  # the analytic sphere below


class Sphere(nn.Module):
    """The SDF of a sphere of radius RADIUS at the origin, with SDFField's interface."""

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return x.norm(dim=-1) - RADIUS

    def forward_with_derivatives(self, x: torch.Tensor, create_graph: bool = True, laplacian: bool = False):
        return self.sdf(x), x.new_zeros(len(x), 15), torch.nn.functional.normalize(x, dim=-1), None


def sphere_model(beta: float, samples_per_ray: int) -> VolSDFModel:
    """A VolSDF model of the sphere, its 32^3 grid updated as in training (jittered points, running max with decay)."""
    torch.manual_seed(0)
    model = VolSDFModel(Sphere(), ColorField(feature_dim=15), LaplaceBeta(beta, beta_min=1e-4),
                        OccupancyGrid(resolution=32, decay=0.5), samples_per_ray=samples_per_ray)
    for _ in range(8):
        model.grid.update(model.cell_occupancy)
    return model


def rays_passing_at(distances: list[float], dtype: torch.dtype = torch.float32) -> RayBundle:
    """Rays in random directions whose closest approach to the sphere's centre is ``distances``, starting 2.5 before it."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor(distances, dtype=torch.float64)
    d = torch.nn.functional.normalize(torch.randn(len(p), 3, generator=gen, dtype=torch.float64), dim=-1)
    u = torch.nn.functional.normalize(torch.linalg.cross(d, torch.randn(len(p), 3, generator=gen, dtype=torch.float64)), dim=-1)
    return RayBundle((p[:, None] * u - 2.5 * d).to(dtype), d.to(dtype))


def test_density_is_the_laplace_cdf_over_beta():
    beta = 0.05
    sdf = [-1.0, -0.2, -0.01, 0.0, 0.003, 0.05, 0.4]
    ours = laplace_density(torch.tensor(sdf, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64))
    for d, value in zip(sdf, ours.tolist()):
        s = -d  # Psi_beta(s): 0.5 exp(s / beta) for s <= 0, 1 - 0.5 exp(-s / beta) for s > 0
        cdf = 0.5 * math.exp(s / beta) if s <= 0 else 1.0 - 0.5 * math.exp(-s / beta)
        assert abs(value - cdf / beta) < 1e-12 * max(1.0, cdf / beta)
    laplace = torch.distributions.Laplace(0.0, torch.tensor(beta, dtype=torch.float64))
    torch.testing.assert_close(ours, laplace.cdf(-torch.tensor(sdf, dtype=torch.float64)) / beta)
    assert float(ours[3]) == 0.5 / beta and abs(float(ours[0]) - 1.0 / beta) < 1e-6  # half at the surface, 1/beta deep inside


def test_optical_depth_integrates_the_density():
    beta = torch.tensor(0.02, dtype=torch.float64)
    for a, b in [(0.1, 0.3), (-0.05, 0.04), (-0.2, -0.1)]:
        u = torch.linspace(a, b, 200001, dtype=torch.float64)
        numeric = torch.trapezoid(laplace_density(u, beta), u)
        exact = laplace_optical_depth(torch.tensor(a, dtype=torch.float64), beta) - \
            laplace_optical_depth(torch.tensor(b, dtype=torch.float64), beta)
        assert abs(float(numeric - exact)) < 1e-8 * max(1.0, float(exact))


def dense_transmittance(origin: np.ndarray, direction: np.ndarray, beta: float, t: np.ndarray) -> np.ndarray:
    """T(t) = exp(-int_0^t sigma) along one ray through the sphere, float64 trapezoids on a 2e-5 grid, at distances t."""
    s = np.arange(0.0, 5.0, 2e-5)
    d = np.linalg.norm(origin + s[:, None] * direction, axis=-1) - RADIUS
    sigma = np.where(d > 0, 0.5 * np.exp(-d / beta), 1.0 - 0.5 * np.exp(d / beta)) / beta
    depth = np.concatenate([[0.0], np.cumsum(0.5 * (sigma[1:] + sigma[:-1]) * np.diff(s))])
    return np.exp(-np.interp(t, s, depth))


def test_grid_path_weights_match_a_dense_reference():
    """Packed weights of the samples marched through the grid that the Laplace density occupies, against
    T(t_start) - T(t_end) of the continuous transmittance; rays through, grazing (partly opaque) and missing the
    sphere. In float64: the float32 sample bounds of a step this fine would add rounding noise of 1e-3."""
    beta = 0.005
    model = sphere_model(beta, samples_per_ray=8192).double()
    assert 0.02 < model.grid.occupied.float().mean() < 0.15  # a shell round the surface: the grid skips space
    rays = rays_passing_at([0.0, 0.2, 0.4, 0.48, 0.495, 0.5, 0.502, 0.505, 0.51, 0.52, 0.53, 0.55, 0.7], torch.float64)
    samples = model.grid.sample(rays, model.step_size, stratified=False)  # the samples render() marches
    with torch.no_grad():
        out = model.render(rays, torch.zeros(3, dtype=torch.float64))
        sdf = model.geometry.sdf(samples.points(rays))
        weights = packed_weights(model.alpha(sdf, None, None, samples.t_ends - samples.t_starts), samples.ray_indices, len(rays))
    opacity_ref = []
    for r in range(len(rays)):
        keep = samples.ray_indices == r
        o, d = rays.origins[r].numpy(), rays.directions[r].numpy()
        ref = dense_transmittance(o, d, beta, samples.t_starts[keep].numpy()) - dense_transmittance(o, d, beta, samples.t_ends[keep].numpy())
        assert np.abs(weights[keep].numpy() - ref).max(initial=0.0) < 1e-4, r
        opacity_ref.append(1.0 - dense_transmittance(o, d, beta, np.array([5.0]))[0])
    opacity_ref = torch.tensor(opacity_ref, dtype=torch.float64)
    assert (out["opacity"] - opacity_ref).abs().max() < 1e-3
    assert ((opacity_ref > 0.1) & (opacity_ref < 0.9)).sum() >= 2 and opacity_ref[0] > 0.999 and opacity_ref[-1] < 1e-6


def test_gradients_reach_beta():
    model = sphere_model(0.05, samples_per_ray=512)
    assert abs(float(model.beta()) - 0.05) < 1e-7 and abs(float(model.inv_s()) - 20.0) < 1e-4
    rays = rays_passing_at([0.0, 0.55])  # through the centre, and missing the sphere by one beta
    out = model.render(rays, torch.zeros(3))
    # The expected depth of the central ray lies at the surface (t = 2) up to beta's order.
    assert abs(float(out["depth"][0] / out["opacity"][0]) - 2.0) < 0.05 and float(out["opacity"][0]) > 0.99
    # A wider beta makes the ray that misses more opaque: beta = beta_min + exp(-10 v), so d opacity / dv < 0.
    out["opacity"][1].backward()
    grad = model.variance.variance.grad
    assert 0.05 < float(out["opacity"][1]) < 0.9 and grad is not None and float(grad) < -1e-3
    sdf = torch.tensor([-0.03, -0.001, 0.002, 0.04], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(laplace_density, (sdf, beta))
