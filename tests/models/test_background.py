"""The NeRF++ background field: inverted-sphere coordinates, samples beyond the sphere, compositing, gradients."""
import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle
from models.background import BackgroundField, background_samples, inverted_sphere


def mixed_rays() -> RayBundle:
    """Rays from inside the unit sphere, from outside towards it, from outside missing it, and from outside looking away."""
    origins = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [3.0, 0.0, 0.0], [0.0, 2.5, 1.0], [0.0, 0.0, 3.0], [2.0, 2.0, 0.0]])
    directions = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, -1.0], [-1.0, 0.1, 0.0], [0.0, -0.3, -0.2],
                                           [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]), dim=-1)
    return RayBundle(origins, directions)


def test_inverted_sphere_coordinates_of_known_points():
    points = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, -4.0], [3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 0.0, -1.0, 0.25], [0.6, 0.8, 0.0, 0.2], [1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(inverted_sphere(points), expected)


def test_samples_lie_beyond_the_sphere_uniform_in_inverse_radius():
    rays = mixed_rays()
    k = 8
    t, ds = background_samples(rays, k)
    points = rays.origins[:, None] + t[..., None] * rays.directions[:, None]
    inverse_r = 1.0 / points.norm(dim=-1)
    assert (t >= 0).all() and (t.diff(dim=1) > 0).all()
    assert (inverse_r <= 1.0 + 1e-5).all()
    # Midpoints of k equal bins of s = 1/r between 1/r_start and 0.
    torch.testing.assert_close(inverse_r.diff(dim=1), -ds[:, None].expand(-1, k - 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(inverse_r[:, -1], 0.5 * ds, atol=1e-5, rtol=1e-4)
    # A ray from the centre leaves the sphere at r = 1: its samples are at r = 1 / (1 - (i + 0.5) / k).
    torch.testing.assert_close(t[0], 1.0 / (1.0 - (torch.arange(k) + 0.5) / k))
    # A ray that misses the sphere starts at its point nearest the centre (here (0, 0, 3) looking along x: r_start = 3).
    torch.testing.assert_close(ds[4], torch.tensor(1.0 / (3.0 * k)))
    # Stratified samples stay in their bins.
    t_strat, _ = background_samples(rays, k, stratified=True)
    s_strat = 1.0 / (rays.origins[:, None] + t_strat[..., None] * rays.directions[:, None]).norm(dim=-1)
    bins = ((inverse_r[:, :1] + 0.5 * ds[:, None] - s_strat) / ds[:, None]).floor()
    assert torch.equal(bins, torch.arange(k, dtype=bins.dtype).expand_as(bins))


def constant_colour_field(colour: torch.Tensor, density_bias: float | None) -> BackgroundField:
    """A field of constant colour: the colour head zeroed with bias logit(colour); the density (trunk) random or constant."""
    torch.manual_seed(0)
    field = BackgroundField(n_samples=16)
    with torch.no_grad():
        nn.init.zeros_(field.color_out.weight)
        field.color_out.bias.copy_(torch.logit(colour))
        if density_bias is not None:
            nn.init.zeros_(field.density.weight)
            field.density.bias.fill_(density_bias)
    return field


def test_a_constant_far_field_reproduces_the_constant_background():
    colour = torch.tensor([0.2, 0.5, 0.9])
    rays = mixed_rays()
    for density_bias in (1e4, 0.0, -30.0, None):  # opaque at once, thin, empty (all at infinity), random
        field = constant_colour_field(colour, density_bias)
        for stratified in (False, True):
            torch.testing.assert_close(field(rays, stratified=stratified), colour.expand(len(rays), 3), atol=1e-5, rtol=0)


def test_density_decides_which_colour_is_seen():
    """Colour varying with 1/r: an opaque field shows the nearest sample, an empty one the farthest."""
    rays = RayBundle(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]]))
    field = BackgroundField(n_samples=4, n_layers=1, hidden_dim=8)
    with torch.no_grad():
        for module in (field.trunk[0], field.density, field.color_feature, field.color_view, field.color_out):
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        field.trunk[0].weight[0, 3] = 1.0        # hidden 0 = 1/r (the 4th raw input of the encoding)
        field.color_feature.weight[0, 0] = 1.0
        field.color_out.weight[:, 0] = 4.0       # colour = sigmoid(4 / r)
        field.density.bias.fill_(1e4)
        near = field(rays)
        field.density.bias.fill_(-30.0)
        far = field(rays)
    inverse_r = 1.0 - (torch.arange(4) + 0.5) / 4  # 7/8 ... 1/8
    torch.testing.assert_close(near[0], torch.sigmoid(4 * inverse_r[0]).expand(3))
    torch.testing.assert_close(far[0], torch.sigmoid(4 * inverse_r[-1]).expand(3), atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    field = BackgroundField(n_samples=8, hidden_dim=16)
    rays = mixed_rays()
    (field(rays, stratified=True) - 0.3).square().sum().backward()
    for name, p in field.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
