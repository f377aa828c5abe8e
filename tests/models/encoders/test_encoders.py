"""Encoders: shapes, raw-xyz prefix, Jacobians against finite differences, level masking, NFFB and
its style-modulated variant, backend selection."""
import math
import sys
import types

import pytest
import torch

from models.encoders import FrequencyEncoder, HashGridEncoder, NFFBEncoder, StyleModNFFBEncoder
from models.encoders.tcnn import resolve_backend
from models.fields import SDFField
from models.interfaces import jacobian_of

SMALL_GRID = dict(log2_table_size=10, base_resolution=4, finest_resolution=64)


def make_hashgrid(**kwargs) -> HashGridEncoder:
    encoder = HashGridEncoder(**{"n_levels": 6, "n_features": 2, **SMALL_GRID, "log2_table_size": 12, **kwargs})
    with torch.no_grad():
        encoder.table.normal_()  # non-trivial features so the checks mean something
    return encoder


def make_nffb(**kwargs) -> NFFBEncoder:
    return make_filter_bank(NFFBEncoder, **kwargs)


def make_stylemod(**kwargs) -> StyleModNFFBEncoder:
    return make_filter_bank(StyleModNFFBEncoder, **kwargs)


def make_filter_bank(cls: type, **kwargs) -> NFFBEncoder:
    encoder = cls(**{"n_levels": 4, "width": 8, **SMALL_GRID, **kwargs})
    with torch.no_grad():
        encoder.grid.table.normal_(0.0, 0.05)  # a trained-like grid, well past the 1e-4 initialisation
        if isinstance(encoder, StyleModNFFBEncoder):  # styles and attention away from their neutral start
            encoder.style.normal_()
            encoder.style_bias.normal_(1.0, 0.3)
            encoder.query.normal_()
    return encoder


ENCODERS = {
    "hashgrid": make_hashgrid,
    "frequency": lambda: FrequencyEncoder(n_frequencies=4),
    "frequency_window": lambda: FrequencyEncoder(n_frequencies=4, window_end=100),
    "nffb": make_nffb,
    "stylemod_nffb": make_stylemod,
}
MULTI_LEVEL = {
    "hashgrid": make_hashgrid,
    "nffb": make_nffb,
    "stylemod_nffb": make_stylemod,
}


@pytest.mark.parametrize("name", ENCODERS)
def test_shape_and_xyz_prefix(name):
    encoder = ENCODERS[name]()
    x = torch.rand(50, 3) * 2 - 1
    enc = encoder(x)
    assert enc.shape == (50, encoder.out_dim)
    assert torch.equal(enc[:, :3], x)
    # An empty batch (e.g. system.loss.eikonal_points=0 adds no points) keeps its shape.
    empty = torch.zeros(0, 3)
    assert encoder(empty).shape == (0, encoder.out_dim)
    assert encoder.forward_with_jacobian(empty)[1].shape == (0, encoder.out_dim, 3)


@pytest.mark.parametrize("name", ENCODERS)
def test_jacobian_matches_finite_differences(name):
    encoder = ENCODERS[name]().double()
    encoder.update_step(0, 37)
    x = torch.rand(40, 3, dtype=torch.float64) * 1.8 - 0.9
    enc, jac = encoder.forward_with_jacobian(x)
    assert torch.allclose(enc, encoder(x))
    eps = 1e-7  # float64; the filter banks' features oscillate fast enough that 1e-6 leaves ~1e-4 truncation error
    eye = torch.eye(3, dtype=torch.float64)
    numeric = torch.stack([(encoder(x + eps * eye[a]) - encoder(x - eps * eye[a])) / (2 * eps) for a in range(3)], -1)
    assert numeric[:, 3:].abs().max() > 1.0  # the features do vary with x
    assert torch.allclose(jac, numeric, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["hashgrid", "nffb", pytest.param("stylemod_nffb", marks=pytest.mark.slow)])
def test_autograd_input_gradient_and_second_derivatives(name):
    encoder = MULTI_LEVEL[name]().double()
    x = (torch.rand(6, 3, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(encoder, (x,))
    assert torch.autograd.gradgradcheck(encoder, (x,))


@pytest.mark.parametrize("name", ["nffb", "stylemod_nffb"])
def test_sdf_gradient_through_jacobian_matches_autograd(name):
    """SDFField's Jacobian path: the normal and the eikonal term's parameter gradients (through the
    encoder's Jacobian, i.e. second derivatives) equal plain double backward."""
    torch.manual_seed(0)
    field = SDFField(MULTI_LEVEL[name](), hidden_dim=16, n_layers=1, geometric_init=False).double()
    x = (torch.rand(32, 3, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()
    _, _, grad = field.forward_with_gradient(x, create_graph=True)
    reference = torch.autograd.grad(field.sdf(x).sum(), x, create_graph=True)[0]
    assert reference.abs().max() > 0.1
    assert torch.allclose(grad, reference, atol=1e-9)
    params = list(field.encoder.parameters())
    ours = torch.autograd.grad(((grad.norm(dim=-1) - 1) ** 2).sum(), params)
    theirs = torch.autograd.grad(((reference.norm(dim=-1) - 1) ** 2).sum(), params)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-8)


def level_gradients(encoder: torch.nn.Module, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(levels < k, levels >= k) parts of the gradient of every level-indexed parameter."""
    grid = encoder if isinstance(encoder, HashGridEncoder) else encoder.grid
    rows = int(grid.offsets[k])
    parts = [(grid.table.grad[:rows], grid.table.grad[rows:])]
    if isinstance(encoder, NFFBEncoder):
        parts += [(p.grad[:k], p.grad[k:]) for p in (encoder.fourier, encoder.bias)]
        parts.append((encoder.hidden.grad[:k - 1], encoder.hidden.grad[k - 1:]))  # hidden[l - 1] is level l's
    if isinstance(encoder, StyleModNFFBEncoder):
        parts += [(p.grad[:k - 1], p.grad[k - 1:]) for p in (encoder.style, encoder.style_bias)]
        parts.append((encoder.query.grad[:k], encoder.query.grad[k:]))
    return parts


@pytest.mark.parametrize("name", MULTI_LEVEL)
def test_level_masking_zeroes_exactly_inactive_levels(name):
    encoder = MULTI_LEVEL[name]()
    k, n = 2, 30
    encoder.set_active_levels(k)
    x = torch.rand(n, 3) * 2 - 1
    enc, jac = encoder.forward_with_jacobian(x)
    block = (encoder.out_dim - 3) // encoder.n_levels
    per_level = enc[:, 3:].reshape(n, encoder.n_levels, block)
    assert per_level[:, k:].abs().max() == 0
    assert per_level[:, :k].norm(dim=-1).min() > 0
    per_level_jac = jac[:, 3:].reshape(n, encoder.n_levels, block, 3)
    assert per_level_jac[:, k:].abs().max() == 0
    assert per_level_jac[:, :k].flatten(2).norm(dim=-1).min() > 0
    (enc.sum() + jac.square().sum()).backward()
    for active, inactive in level_gradients(encoder, k):
        assert inactive.abs().max() == 0  # inactive levels get no gradient
        assert active.abs().max() > 0


@pytest.mark.parametrize("name", MULTI_LEVEL)
def test_progressive_schedule_and_state(name):
    def make():
        return MULTI_LEVEL[name](n_levels=8, start_level=2, steps_per_level=10)

    encoder = make()
    assert int(encoder.n_active) == 2
    encoder.update_step(0, 35)
    assert int(encoder.n_active) == 5
    assert encoder.finest_active_resolution == float(encoder.resolutions[4])
    restored = make()
    restored.load_state_dict(encoder.state_dict())
    assert int(restored.n_active) == 5 and restored.finest_active_resolution == encoder.finest_active_resolution
    encoder.update_step(0, 10_000)
    assert int(encoder.n_active) == 8 and encoder.finest_active_resolution == float(encoder.resolutions[-1])


def test_nffb_levels_follow_its_grid():
    encoder = make_nffb(n_levels=5, start_level=3)
    assert torch.equal(encoder.resolutions, encoder.grid.resolutions)
    assert encoder.finest_active_resolution == float(encoder.grid.resolutions[2])
    assert encoder.out_dim == 3 + 5 * 8 and int(encoder.grid.n_active) == 5  # the grid itself is never masked


def test_nffb_fourier_scales_grow_with_level():
    encoder = NFFBEncoder(n_levels=4, fourier_scale_min=1.0, fourier_scale_max=8.0, **SMALL_GRID)
    assert torch.allclose(encoder.fourier_gain, 2 * math.pi * torch.tensor([1.0, 2.0, 4.0, 8.0]))


def test_stylemod_attention_is_a_softmax_over_levels():
    encoder = make_stylemod(n_levels=5)
    h = torch.randn(40, 5, 8)
    attention = encoder.level_attention(h)
    assert attention.shape == (40, 5)
    assert torch.allclose(attention.sum(1), torch.ones(40))
    assert (attention > 0).all() and attention.std(1).min() > 1e-3  # per point, not uniform, not a size-one axis
    encoder.set_active_levels(3)
    attention = encoder.level_attention(h)
    assert attention[:, 3:].abs().max() == 0 and torch.allclose(attention.sum(1), torch.ones(40))
    # Blocks are n_active * a_l * h_l.
    blocks, _ = encoder._combine(h, None)
    assert torch.allclose(blocks, 3 * attention[..., None] * h)


def test_stylemod_starts_as_uniform_attention():
    encoder = StyleModNFFBEncoder(n_levels=4, width=8, **SMALL_GRID)
    assert torch.allclose(encoder.level_attention(torch.randn(10, 4, 8)), torch.full((10, 4), 0.25))


def test_stylemod_demodulation_normalises_weight_rows():
    encoder = make_stylemod()
    level, h = 2, torch.randn(25, 8)
    pre, _ = encoder._layer(level, h, None)
    # The definition: per-point weights V'_oi = V_oi s_i, rows scaled to unit norm, times sqrt(2).
    style = h @ (encoder.equal_gain * encoder.style[level - 1]).T + encoder.style_bias[level - 1]
    modulated = encoder.hidden[level - 1][None] * style[:, None, :]
    demodulated = modulated / modulated.norm(dim=-1, keepdim=True)
    expected = math.sqrt(2.0) * (demodulated @ h[..., None])[..., 0] + encoder.bias[level]
    assert torch.allclose(pre, expected, atol=1e-5)
    # Hence the layer ignores the scale of each weight row.
    with torch.no_grad():
        encoder.hidden[level - 1] *= torch.rand(8, 1) * 5 + 0.1
    assert torch.allclose(encoder._layer(level, h, None)[0], pre, atol=1e-5)
    assert not torch.allclose(NFFBEncoder._layer(encoder, level, h, None)[0], pre, atol=1e-2)


def test_frequency_window_starts_coarse():
    encoder = FrequencyEncoder(n_frequencies=4, window_end=100)
    encoder.update_step(0, 0)
    x = torch.rand(5, 3)
    assert encoder(x)[:, 3:].abs().max() == 0
    encoder.update_step(0, 100)
    assert torch.allclose(encoder.window, torch.ones(4))


def test_frequency_encoder_of_other_input_sizes():
    """in_dim=4 (the background field's inverted-sphere coordinates): raw input first, then sin/cos per axis, exact Jacobian."""
    encoder = FrequencyEncoder(n_frequencies=2, in_dim=4)
    x = torch.rand(3, 4)
    enc = encoder(x)
    assert encoder.out_dim == enc.shape[1] == 20
    torch.testing.assert_close(enc[:, :4], x)
    for axis in range(4):
        phase = torch.pi * x[:, axis, None] * torch.tensor([1.0, 2.0])
        torch.testing.assert_close(enc[:, 4 + 4 * axis: 8 + 4 * axis], torch.cat([phase.sin(), phase.cos()], dim=-1))
    jac = encoder.forward_with_jacobian(x)[1]
    expected = torch.stack([torch.autograd.functional.jacobian(lambda v: encoder(v[None])[0], xi) for xi in x])
    torch.testing.assert_close(jac, expected)


def test_compiled_hashgrid_matches_eager():
    torch.manual_seed(0)
    eager = HashGridEncoder(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, finest_resolution=32, start_level=3)
    compiled = HashGridEncoder(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, finest_resolution=32, start_level=3, compile=True)
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


# ------------------------------------------------------------------ backends (CPU: selection logic only)
@pytest.fixture
def fake_tcnn(monkeypatch):
    """A stand-in ``tinycudann`` recording the documented ``Encoding`` call, with CUDA reported present."""
    calls = []

    class Encoding(torch.nn.Module):
        def __init__(self, n_input_dims, encoding_config):
            super().__init__()
            calls.append((n_input_dims, encoding_config))
            self.params = torch.nn.Parameter(torch.zeros(8))

    monkeypatch.setitem(sys.modules, "tinycudann", types.SimpleNamespace(Encoding=Encoding))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return calls


def test_auto_backend_is_torch_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "torch"
    assert HashGridEncoder(16, 2, log2_table_size=10, base_resolution=16, finest_resolution=2048, backend="auto").backend == "torch"
    assert resolve_backend("torch") == "torch"


def test_tcnn_backend_without_tinycudann_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinycudann", None)  # makes `import tinycudann` fail
    assert resolve_backend("auto") == "torch"
    for make, shape in ((HashGridEncoder, dict(n_levels=16, n_features=2, base_resolution=16, finest_resolution=2048)),
                        (NFFBEncoder, {}), (StyleModNFFBEncoder, {})):
        with pytest.raises(ImportError, match="encoder.backend=tcnn needs") as err:
            make(log2_table_size=10, backend="tcnn", **shape)
        assert "\n" not in str(err.value) and "tiny-cuda-nn" in str(err.value)
    with pytest.raises(ValueError, match="unknown encoder backend"):
        resolve_backend("cuda")


def test_auto_backend_builds_tcnn_encoding_when_available(fake_tcnn):
    encoder = NFFBEncoder(n_levels=4, n_features=4, log2_table_size=15, base_resolution=8, finest_resolution=64, backend="auto")
    assert encoder.backend == encoder.grid.backend == "tcnn" and not hasattr(encoder.grid, "table")
    (n_input_dims, config), = fake_tcnn
    assert n_input_dims == 3
    assert config == {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 4, "log2_hashmap_size": 15,
                      "base_resolution": 8, "per_level_scale": pytest.approx(2.0)}
    # No analytic Jacobian on this backend: fields fall back to autograd.
    assert jacobian_of(encoder) is None and jacobian_of(encoder.grid) is None
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        encoder(torch.zeros(4, 3))
