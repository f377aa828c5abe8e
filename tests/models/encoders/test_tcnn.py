"""The tiny-cuda-nn backend against the PyTorch one (needs a CUDA device and tinycudann).

tcnn's grid has its own parameter layout and resolution rounding, so the two backends are compared
on behaviour: output layout, masking, SDF normals through tcnn's autograd, and how well each fits
the same signal with the same optimiser and steps.
"""
from __future__ import annotations

import pytest
import torch

from models.encoders import HashGridEncoder, NFFBEncoder
from models.encoders.tcnn import INSTALL_HINT, import_tcnn
from models.fields import SDFField
from models.interfaces import jacobian_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or import_tcnn() is None,
                                reason=f"needs a CUDA device and tinycudann ({INSTALL_HINT})")

GRID = dict(n_levels=8, n_features=2, log2_table_size=15, base_resolution=8, finest_resolution=128)


def target(x: torch.Tensor) -> torch.Tensor:
    """A signal with coarse and fine detail, (N, 3) -> (N,)."""
    return torch.sin(6 * x[:, 0]) * torch.cos(5 * x[:, 1]) + 0.5 * torch.sin(17 * x[:, 2] + 3 * x[:, 0])


def fit(encoder: torch.nn.Module, steps: int = 400) -> float:
    """Held-out MSE of encoder + a small MLP trained on ``target`` with Adam."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(encoder.out_dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    optimiser = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        x = torch.rand(8192, 3, device="cuda") * 2 - 1
        loss = (head(encoder(x))[:, 0] - target(x)).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        x = torch.rand(65536, 3, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)) * 2 - 1
        return float((head(encoder(x))[:, 0] - target(x)).square().mean())


def test_auto_picks_tcnn_and_keeps_the_layout():
    encoder = HashGridEncoder(**GRID, backend="auto").cuda()
    assert encoder.backend == "tcnn" and jacobian_of(encoder) is None
    x = torch.rand(1000, 3, device="cuda") * 2 - 1
    enc = encoder(x)
    assert enc.dtype == torch.float32 and enc.shape == (1000, 3 + 8 * 2)
    assert torch.equal(enc[:, :3], x)
    assert enc[:, 3:].abs().max() > 0
    encoder.set_active_levels(3)
    enc = encoder(x)
    assert enc[:, 3 + 3 * 2:].abs().max() == 0 and enc[:, 3:3 + 3 * 2].abs().max() > 0
    enc.sum().backward()
    assert encoder.tcnn.encoding.params.grad.abs().max() > 0


def test_sdf_gradient_through_tcnn_matches_finite_differences():
    """Fields use autograd on this backend: the SDF gradient through tcnn's backward matches central
    differences (a coarse grid, so few differences straddle a cell face; silu keeps the MLP smooth),
    and the eikonal term's second derivatives reach tcnn's parameters."""
    torch.manual_seed(0)
    encoder = HashGridEncoder(n_levels=2, n_features=2, log2_table_size=12, base_resolution=4, finest_resolution=8,
                              backend="tcnn").cuda()
    with torch.no_grad():
        encoder.tcnn.encoding.params.normal_(0.0, 0.5)
    field = SDFField(encoder, hidden_dim=64, n_layers=2, activation="silu", geometric_init=False, weight_norm=False).cuda()
    x = torch.rand(2000, 3, device="cuda") * 1.6 - 0.8
    _, _, grad = field.forward_with_gradient(x, create_graph=True)
    eps, eye = 5e-3, torch.eye(3, device="cuda")
    with torch.no_grad():
        numeric = torch.stack([(field.sdf(x + eps * eye[a]) - field.sdf(x - eps * eye[a])) / (2 * eps) for a in range(3)], -1)
    assert ((grad.detach() - numeric).norm(dim=-1) / numeric.norm(dim=-1)).median() < 0.03
    ((grad.norm(dim=-1) - 1) ** 2).mean().backward()
    params_grad = encoder.tcnn.encoding.params.grad
    assert params_grad is not None and torch.isfinite(params_grad).all() and params_grad.abs().max() > 0


@pytest.mark.parametrize("cls", [HashGridEncoder, NFFBEncoder], ids=["hashgrid", "nffb"])
def test_tcnn_and_torch_fit_equally_well(cls):
    torch.manual_seed(0)
    errors = {backend: fit(cls(**GRID, backend=backend).cuda()) for backend in ("torch", "tcnn")}
    variance = float(target(torch.rand(65536, 3, device="cuda") * 2 - 1).var())
    assert errors["torch"] < 0.05 * variance and errors["tcnn"] < 0.05 * variance, errors
    assert errors["tcnn"] < 2 * errors["torch"] + 1e-3 and errors["torch"] < 2 * errors["tcnn"] + 1e-3, errors
