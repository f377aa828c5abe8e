"""Encoders: shapes, raw-xyz prefix, Jacobians against finite differences, level masking."""
import pytest
import torch

from models.encoders import FrequencyEncoder, HashGridEncoder


def encoders() -> list[torch.nn.Module]:
    hashgrid = HashGridEncoder(n_levels=6, n_features=2, log2_table_size=12, base_resolution=4, finest_resolution=64)
    with torch.no_grad():
        hashgrid.table.normal_()  # non-trivial features so the check means something
    return [hashgrid, FrequencyEncoder(n_frequencies=4), FrequencyEncoder(n_frequencies=4, window_end=100)]


@pytest.mark.parametrize("encoder", encoders(), ids=["hashgrid", "frequency", "frequency_window"])
def test_shape_and_xyz_prefix(encoder):
    x = torch.rand(50, 3) * 2 - 1
    enc = encoder(x)
    assert enc.shape == (50, encoder.out_dim)
    assert torch.equal(enc[:, :3], x)


@pytest.mark.parametrize("encoder", encoders(), ids=["hashgrid", "frequency", "frequency_window"])
def test_jacobian_matches_finite_differences(encoder):
    encoder = encoder.double()
    encoder.update_step(0, 37)
    x = (torch.rand(40, 3, dtype=torch.float64) * 1.8 - 0.9)
    enc, jac = encoder.forward_with_jacobian(x)
    assert torch.allclose(enc, encoder(x))
    eps = 1e-6
    eye = torch.eye(3, dtype=torch.float64)
    numeric = torch.stack([(encoder(x + eps * eye[a]) - encoder(x - eps * eye[a])) / (2 * eps) for a in range(3)], -1)
    assert torch.allclose(jac, numeric, atol=1e-5, rtol=1e-5)


def test_hashgrid_autograd_input_gradient_and_second_derivatives():
    encoder = encoders()[0].double()
    x = (torch.rand(10, 3, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(encoder, (x,))
    assert torch.autograd.gradgradcheck(encoder, (x,))


def test_hashgrid_level_masking_zeroes_exactly_inactive_levels():
    encoder = encoders()[0]
    encoder.set_active_levels(2)
    x = torch.rand(30, 3) * 2 - 1
    enc, jac = encoder.forward_with_jacobian(x)
    per_level = enc[:, 3:].reshape(30, encoder.n_levels, encoder.n_features)
    assert per_level[:, 2:].abs().max() == 0
    assert per_level[:, :2].abs().min() > 0
    assert jac[:, 3:].reshape(30, encoder.n_levels, encoder.n_features, 3)[:, 2:].abs().max() == 0
    enc.sum().backward()
    grad = encoder.table.grad
    level_rows = encoder.offsets.tolist() + [encoder.table.shape[0]]
    assert grad[level_rows[2]:].abs().max() == 0  # inactive levels get no gradient
    assert grad[: level_rows[2]].abs().max() > 0


def test_hashgrid_progressive_schedule_and_state():
    encoder = HashGridEncoder(n_levels=8, log2_table_size=10, start_level=2, steps_per_level=10)
    encoder.update_step(0, 35)
    assert int(encoder.n_active) == 5
    restored = HashGridEncoder(n_levels=8, log2_table_size=10, start_level=2, steps_per_level=10)
    restored.load_state_dict(encoder.state_dict())
    assert int(restored.n_active) == 5
    encoder.update_step(0, 10_000)
    assert int(encoder.n_active) == 8


def test_frequency_window_starts_coarse():
    encoder = FrequencyEncoder(n_frequencies=4, window_end=100)
    encoder.update_step(0, 0)
    x = torch.rand(5, 3)
    assert encoder(x)[:, 3:].abs().max() == 0
    encoder.update_step(0, 100)
    assert torch.allclose(encoder.window, torch.ones(4))


def test_compiled_hashgrid_matches_eager():
    torch.manual_seed(0)
    eager = HashGridEncoder(n_levels=4, log2_table_size=10, base_resolution=4, finest_resolution=32, start_level=3)
    compiled = HashGridEncoder(n_levels=4, log2_table_size=10, base_resolution=4, finest_resolution=32, start_level=3, compile=True)
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        eager.table.normal_()
        compiled.table.copy_(eager.table)
    for n in (100, 137):  # two sizes: dynamic shapes must not change the result
        x = torch.rand(n, 3) * 2 - 1
        (e_enc, e_jac), (c_enc, c_jac) = eager.forward_with_jacobian(x), compiled.forward_with_jacobian(x)
        assert torch.allclose(e_enc, c_enc, atol=1e-6) and torch.allclose(e_jac, c_jac, atol=1e-5)
        (e_enc.sum() + e_jac.square().sum()).backward()
        (c_enc.sum() + c_jac.square().sum()).backward()
        assert torch.allclose(eager.table.grad, compiled.table.grad, atol=1e-4)
        eager.table.grad = compiled.table.grad = None
