"""SDF and colour fields: geometric initialisation, gradients."""
import math

import pytest
import torch

from models.encoders import FrequencyEncoder, HashGridEncoder
from models.encoders.spherical_harmonics import spherical_harmonics
from models.fields import ColorField, SDFField


@pytest.mark.parametrize("make_encoder", [lambda: HashGridEncoder(log2_table_size=12), lambda: FrequencyEncoder(6)], ids=["hashgrid", "frequency"])
@pytest.mark.parametrize("activation", ["softplus", "relu"])
def test_geometric_init_is_a_sphere(make_encoder, activation):
    torch.manual_seed(0)
    field = SDFField(make_encoder(), hidden_dim=256, n_layers=2, activation=activation, init_radius=0.5)
    x = torch.randn(4000, 3)
    x = x / x.norm(dim=-1, keepdim=True) * torch.rand(4000, 1) * 0.9
    error = (field.sdf(x) - (x.norm(dim=-1) - 0.5)).abs()
    assert error.mean() < 0.1
    # The zero level set is the sphere: points on it have near-zero SDF, inside < 0 < outside.
    on = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1) * 0.5
    assert field.sdf(on).abs().mean() < 0.1
    assert field.sdf(torch.zeros(1, 3)) < 0 < field.sdf(torch.tensor([[0.9, 0.0, 0.0]]))


def test_skip_connection_keeps_geometric_init():
    torch.manual_seed(0)
    field = SDFField(FrequencyEncoder(6), hidden_dim=256, n_layers=4, skip_layer=2, activation="relu")
    x = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1) * 0.5
    assert field.sdf(x).abs().mean() < 0.1


@pytest.mark.parametrize("make_encoder", [lambda: HashGridEncoder(log2_table_size=12, finest_resolution=64), lambda: FrequencyEncoder(4)], ids=["hashgrid", "frequency"])
def test_gradient_matches_autograd(make_encoder):
    torch.manual_seed(0)
    field = SDFField(make_encoder(), hidden_dim=32, n_layers=2).double()
    if hasattr(field.encoder, "table"):
        with torch.no_grad():
            field.encoder.table.normal_(0, 0.1)
    x = (torch.rand(64, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    sdf, _, grad = field.forward_with_gradient(x, create_graph=True)
    reference = torch.autograd.grad(field.sdf(x).sum(), x, create_graph=True)[0]
    assert torch.allclose(grad, reference, atol=1e-8)
    # The eikonal term's gradient w.r.t. parameters agrees too (second derivatives).
    params = [p for p in field.parameters() if p.requires_grad]
    ours = torch.autograd.grad(((grad.norm(dim=-1) - 1) ** 2).sum(), params, allow_unused=True)
    theirs = torch.autograd.grad(((reference.norm(dim=-1) - 1) ** 2).sum(), params, allow_unused=True)
    for a, b in zip(ours, theirs):
        if a is not None or b is not None:
            assert torch.allclose(a, b, atol=1e-7)


def test_spherical_harmonics_are_orthonormal():
    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200_000, 3, dtype=torch.float64), dim=-1)
    y = spherical_harmonics(d, 4)
    gram = y.T @ y * (4 * math.pi / len(d))
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=0.02)


@pytest.mark.parametrize("mode", ["idr", "no_view_dir", "no_normal"])
def test_color_field_modes(mode):
    field = ColorField(feature_dim=8, mode=mode)
    n = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    rgb = field(torch.rand(10, 3), n, n, torch.rand(10, 8))
    assert rgb.shape == (10, 3) and (rgb >= 0).all() and (rgb <= 1).all()
