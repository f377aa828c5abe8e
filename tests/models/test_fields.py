"""SDF and colour fields: geometric initialisation, analytic and finite-difference gradients, Laplacians."""
import math

import pytest
import torch

from models.encoders import FrequencyEncoder, HashGridEncoder
from models.encoders.spherical_harmonics import spherical_harmonics
from models.fields import ColorField, SDFField, weights_computed_once


@pytest.mark.parametrize("make_encoder", [lambda: HashGridEncoder(16, 2, log2_table_size=12, base_resolution=16, finest_resolution=2048), lambda: FrequencyEncoder(6)], ids=["hashgrid", "frequency"])
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


@pytest.mark.parametrize("make_encoder", [lambda: HashGridEncoder(16, 2, log2_table_size=12, base_resolution=16, finest_resolution=64), lambda: FrequencyEncoder(4)], ids=["hashgrid", "frequency"])
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


class ExactSphere(SDFField):
    """An SDFField whose network is exactly |x| - 0.5 (feature: zeros), to check derivatives against closed forms."""

    def _mlp(self, enc: torch.Tensor) -> torch.Tensor:
        sdf = enc[:, :3].norm(dim=-1, keepdim=True) - 0.5
        return torch.cat([sdf, torch.zeros(len(enc), self.feature_dim, dtype=enc.dtype)], dim=-1)


def shell_points(n: int, dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.nn.functional.normalize(torch.randn(n, 3, dtype=dtype), dim=-1) * (0.3 + 0.5 * torch.rand(n, 1, dtype=dtype))


@pytest.mark.parametrize("grad_type", ["analytic", "finite_difference"])
@pytest.mark.parametrize("make_encoder", [lambda: FrequencyEncoder(2), lambda: HashGridEncoder(16, 2, log2_table_size=12, base_resolution=16, finest_resolution=64)],
                         ids=["frequency", "hashgrid"])
def test_derivatives_of_an_exact_sphere(grad_type, make_encoder):
    # |x| - r has gradient x / |x| and Laplacian 2 / |x|; the 6-point stencil errs by O(h^2 / |x|^3).
    field = ExactSphere(make_encoder(), hidden_dim=64, n_layers=2, feature_dim=4, grad_type=grad_type).double()
    x = shell_points(200)
    h = field.finite_difference_step()
    sdf, feature, grad, lap = field.forward_with_derivatives(x, create_graph=False, laplacian=True)
    r = x.norm(dim=-1)
    torch.testing.assert_close(sdf, r - 0.5)
    assert feature.shape == (200, 4)
    grad_tol = 1e-9 if grad_type == "analytic" else 2 * h**2 / 0.3**2
    assert (grad - x / r[:, None]).abs().max() < grad_tol
    assert (lap - 2 / r).abs().max() < 4 * h**2 / 0.3**3
    assert field.forward_with_derivatives(x, laplacian=False)[3] is None


def test_finite_difference_step_follows_the_finest_active_level():
    encoder = HashGridEncoder(n_levels=4, n_features=2, log2_table_size=12, base_resolution=16, finest_resolution=128, start_level=1)
    field = SDFField(encoder, hidden_dim=64, n_layers=2, grad_type="finite_difference")
    assert field.finite_difference_step() == pytest.approx(1 / 16)  # half a cell of the 16^3 level over [-1, 1]
    encoder.set_active_levels(4)
    assert field.finite_difference_step() == pytest.approx(1 / 128)
    assert SDFField(FrequencyEncoder(4), hidden_dim=64, n_layers=2, fd_step=2e-3).finite_difference_step() == 2e-3
    with pytest.raises(ValueError, match="grad_type"):
        SDFField(FrequencyEncoder(4), hidden_dim=64, n_layers=2, grad_type="numerical")


@pytest.mark.parametrize("make_encoder, tol", [(lambda: FrequencyEncoder(4), 2e-5),
                                               (lambda: HashGridEncoder(16, 2, log2_table_size=12, base_resolution=16, finest_resolution=64), 0.005)],
                         ids=["frequency", "hashgrid"])
def test_finite_difference_gradient_matches_analytic(make_encoder, tol):
    # Smooth encoder, h = 1e-3: O(h^2) agreement. Hash grid, h = half a finest cell: the trilinear
    # features bend at cell faces inside the stencil, so agreement is only to the features' slope * h.
    torch.manual_seed(0)
    field = SDFField(make_encoder(), hidden_dim=32, n_layers=2).double()
    if hasattr(field.encoder, "table"):
        with torch.no_grad():
            field.encoder.table.normal_(0, 0.01)
    x = (torch.rand(256, 3, dtype=torch.float64) * 1.6 - 0.8)
    _, _, analytic = field.forward_with_gradient(x, create_graph=False)
    field.grad_type = "finite_difference"
    sdf, _, numeric = field.forward_with_gradient(x, create_graph=False)
    torch.testing.assert_close(sdf, field.sdf(x))
    assert (numeric - analytic).norm(dim=-1).mean() < tol
    assert analytic.norm(dim=-1).mean() > 0.5  # a real gradient, not two zeros


def test_finite_difference_laplacian_matches_the_hessian_trace():
    torch.manual_seed(0)
    field = SDFField(FrequencyEncoder(2), hidden_dim=32, n_layers=2, grad_type="finite_difference", fd_step=1e-3).double()
    x = shell_points(64).requires_grad_()
    _, _, grad, lap = field.forward_with_derivatives(x, create_graph=True, laplacian=True)
    g = torch.autograd.grad(field.sdf(x).sum(), x, create_graph=True)[0]
    trace = sum(torch.autograd.grad(g[:, a].sum(), x, retain_graph=True)[0][:, a] for a in range(3))
    assert (lap - trace).abs().max() < 1e-3 * trace.abs().max()
    # The finite-difference quantities are differentiable w.r.t. the parameters with one backward.
    (((grad.norm(dim=-1) - 1) ** 2).mean() + lap.abs().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters() if p.requires_grad)


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


def test_weights_computed_once_keep_every_gradient():
    """A step that evaluates the SDF many times under no_grad (sphere tracing) and then once with autograd, with its
    weight-normalised weights computed once: the same values and parameter gradients as computing them on every call."""
    torch.manual_seed(0)
    field = SDFField(FrequencyEncoder(n_frequencies=4), hidden_dim=32, n_layers=3, skip_layer=2, weight_norm=True)
    x = torch.rand(64, 3) * 2 - 1

    def step() -> list[torch.Tensor]:
        field.zero_grad()
        with torch.no_grad():
            near = x - 0.01 * field.sdf(x)[:, None]  # a tracing step without autograd
        sdf, _, grad = field.forward_with_gradient(near, create_graph=True)
        (sdf.square().sum() + (grad.norm(dim=-1) - 1).square().sum()).backward()
        return [p.grad.clone() for p in field.parameters()]

    plain = step()
    calls = []
    field.layers[0].parametrizations.weight.register_forward_hook(lambda *args: calls.append(1))
    with weights_computed_once(field):
        cached = step()
    assert len(calls) == 1  # three evaluations of the first layer, one weight computation
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, cached))
