"""The interfaces as protocols: what the built-in parts provide, and how a missing Jacobian or a plain encoder
is handled without probing attributes."""
import pytest
import torch
from torch import nn

from models.cameras import FixedCameras
from models.encoders import FrequencyEncoder, HashGridEncoder, NFFBEncoder, StyleModNFFBEncoder
from models.fields import SDFField
from models.interfaces import CameraRig, Encoder, JacobianEncoder, LevelledEncoder, StepHook, jacobian_of
from models.motion import MovingObjectCameras, RigidMotion

SMALL_GRID = dict(n_levels=4, n_features=2, log2_table_size=12, base_resolution=4, finest_resolution=32)


@pytest.mark.parametrize("make", [lambda: FrequencyEncoder(4), lambda: HashGridEncoder(**SMALL_GRID),
                                  lambda: NFFBEncoder(**SMALL_GRID), lambda: StyleModNFFBEncoder(**SMALL_GRID)])
def test_every_built_in_encoder_offers_its_jacobian_and_a_step_hook(make) -> None:
    encoder = make()
    assert isinstance(encoder, Encoder) and isinstance(encoder, JacobianEncoder) and isinstance(encoder, StepHook)
    x = torch.rand(5, 3) * 2 - 1
    enc, jac = jacobian_of(encoder)(x)
    assert enc.shape == (5, encoder.out_dim) and jac.shape == (5, encoder.out_dim, 3)
    assert isinstance(encoder, LevelledEncoder) == (not isinstance(encoder, FrequencyEncoder))


class PlainEncoder(nn.Module):
    """Raw xyz and its square: an encoder with nothing optional."""

    out_dim = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x * x], dim=-1)


class NoJacobianEncoder(PlainEncoder):
    """Declares the Jacobian method but cannot run it (the tcnn back end's situation)."""

    has_jacobian = False

    def forward_with_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("no analytic Jacobian here")


@pytest.mark.parametrize("encoder_type", [PlainEncoder, NoJacobianEncoder])
def test_a_field_differentiates_an_encoder_without_a_jacobian_by_autograd(encoder_type) -> None:
    encoder = encoder_type()
    assert isinstance(encoder, Encoder) and jacobian_of(encoder) is None
    assert not isinstance(encoder, StepHook) and not isinstance(encoder, LevelledEncoder)
    torch.manual_seed(0)
    field = SDFField(encoder, hidden_dim=16, n_layers=2, fd_step=2e-3).double()
    x = (torch.rand(7, 3, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    sdf, _, grad = field.forward_with_gradient(x)
    (expected,) = torch.autograd.grad(field.sdf(x).sum(), x)
    torch.testing.assert_close(grad, expected)
    assert field.finite_difference_step() == 2e-3  # no levels: the configured step


def test_camera_rigs_and_models_carry_the_parts_systems_use() -> None:
    fixed = FixedCameras(torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(2, 4, 4))
    moving = MovingObjectCameras(fixed, RigidMotion())
    rig: CameraRig = moving
    intrinsics, c2w = rig(torch.tensor([1]))
    assert intrinsics.shape == (1, 3, 3) and c2w.shape == (1, 4, 4)
    assert isinstance(moving.motion, RigidMotion) and not isinstance(fixed, MovingObjectCameras)
