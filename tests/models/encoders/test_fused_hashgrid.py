"""Fused Triton hash-grid kernels against the PyTorch ``HashGridEncoder``: values, table and x gradients.

Runs on CUDA when available, else on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1 python -m pytest tests/models/encoders/test_fused_hashgrid.py``); skips
without triton.
"""
import pytest
import torch

from models.encoders import HashGridEncoder
from models.encoders.fused_hashgrid import fused_available, fused_hash_encode

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_fused = pytest.mark.skipif(not fused_available(DEVICE), reason="needs triton and CUDA (or TRITON_INTERPRET=1)")
BOUND = 1.5


def make_encoder(n_active: int = 4) -> HashGridEncoder:
    """4 levels (resolutions 4, 10, 25, 64) in a 2^12-row table: 2 dense and 2 hashed levels."""
    encoder = HashGridEncoder(n_levels=4, n_features=2, log2_table_size=12, base_resolution=4, finest_resolution=64,
                              bound=BOUND).to(DEVICE)
    assert 0 < encoder.n_dense < encoder.n_levels
    encoder.set_active_levels(n_active)
    with torch.no_grad():
        encoder.table.normal_()  # non-trivial features so the comparison means something
    return encoder


def make_points(n: int = 200) -> torch.Tensor:
    """Random points reaching 20 % outside the box, plus corners, faces and grid vertices of the box."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, generator=generator) * 2.4 - 1.2) * BOUND
    special = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0],
                            [0.5, -0.5, 1.0], [1.3, 0.2, -1.4], [0.25, 0.6, -0.8]]) * BOUND
    return torch.cat([x, special]).to(DEVICE)


def fused(encoder: HashGridEncoder, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return fused_hash_encode(x, table, encoder.resolutions, encoder.offsets, encoder.n_dense, encoder.table_size,
                             encoder.level_mask, encoder.bound)


@needs_fused
@pytest.mark.parametrize("n_active", [4, 3])
@pytest.mark.parametrize("x_grad", [True, False])
def test_matches_pytorch_encoder(n_active: int, x_grad: bool) -> None:
    encoder = make_encoder(n_active)
    x = make_points()
    grad_out = torch.randn(x.shape[0], 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for encode in (lambda p: encoder(p)[:, 3:], lambda p: fused(encoder, p, encoder.table)):
        encoder.table.grad = None
        points = x.clone().requires_grad_(x_grad)
        out = encode(points)
        out.backward(grad_out)
        results.append((out.detach(), encoder.table.grad.clone(), points.grad))
    (ref, ref_table_grad, ref_x_grad), (out, table_grad, x_grad_out) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table_grad, ref_table_grad, rtol=1e-5, atol=1e-5)
    if x_grad:
        torch.testing.assert_close(x_grad_out, ref_x_grad, rtol=1e-4, atol=1e-4)
        assert (x_grad_out[-2, :] == 0).sum() >= 2  # x, z of (1.3, 0.2, -1.4) * bound lie outside: clamped
    else:
        assert x_grad_out is None
    if n_active < 4:  # the inactive finest level: zero features, no table gradient
        assert out[:, 6:].abs().max() == 0
        assert table_grad[encoder.offsets[3]:].abs().max() == 0


@needs_fused
def test_float16_table() -> None:
    encoder = make_encoder()
    x = make_points()
    table = encoder.table.detach().half().requires_grad_()
    out = fused(encoder, x, table)
    out.sum().backward()
    with torch.no_grad():
        encoder.table.copy_(table.float())
    torch.testing.assert_close(out, encoder(x)[:, 3:], rtol=1e-5, atol=1e-5)
    assert out.dtype == torch.float32 and table.grad.dtype == torch.float16


@needs_fused
def test_double_backward_is_refused() -> None:
    encoder = make_encoder()
    x = make_points().requires_grad_()
    (grad_x,) = torch.autograd.grad(fused(encoder, x, encoder.table).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad_x.sum().backward()


def test_unavailable_without_cuda_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused_available("cpu")
