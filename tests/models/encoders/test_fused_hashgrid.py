"""Fused Triton hash-grid kernels against the PyTorch ``HashGridEncoder``: values, table and x gradients.

Runs on CUDA when available, else on the CPU under Triton's interpreter, which tests/conftest.py
switches on (``TRITON_INTERPRET=1``) before anything imports triton; triton is a pinned requirement,
so these run in CI. Sizes are small: the interpreter runs each program in Python.
"""
import pytest
import torch

from models.encoders import HashGridEncoder
from models.encoders.fused_hashgrid import BLOCK, fused_available, fused_hash_encode

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BOUND = 1.5


def make_encoder(n_active: int = 4, **grid: int) -> HashGridEncoder:
    """By default 4 levels (resolutions 4, 10, 25, 64) in a 2^12-row table: 2 dense and 2 hashed levels."""
    grid = {**dict(n_levels=4, log2_table_size=12, base_resolution=4, finest_resolution=64), **grid}
    encoder = HashGridEncoder(n_features=2, bound=BOUND, **grid).to(DEVICE)
    encoder.set_active_levels(n_active)
    with torch.no_grad():
        encoder.table.normal_()  # non-trivial features so the comparison means something
    return encoder


def make_points(n: int = 200) -> torch.Tensor:
    """n random points reaching 20 % outside the box, plus 7 corners, faces and grid vertices of the box."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 3, generator=generator) * 2.4 - 1.2) * BOUND
    special = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0],
                            [0.5, -0.5, 1.0], [1.3, 0.2, -1.4], [0.25, 0.6, -0.8]]) * BOUND
    return torch.cat([x, special]).to(DEVICE)


def fused(encoder: HashGridEncoder, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return fused_hash_encode(x, table, encoder.resolutions, encoder.offsets, encoder.n_dense, encoder.table_size,
                             encoder.level_mask, encoder.bound)


def assert_matches_pytorch(encoder: HashGridEncoder, x: torch.Tensor, x_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """Forward and backward (table, and x when ``x_grad``) of the fused kernels and of the PyTorch
    encoder on the same points and output gradient agree; returns the fused (features, table grad, x grad)."""
    width = encoder.n_levels * encoder.n_features
    grad_out = torch.randn(x.shape[0], width, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for encode in (lambda p: encoder(p)[:, 3:], lambda p: fused(encoder, p, encoder.table)):
        encoder.table.grad = None
        points = x.clone().requires_grad_(x_grad)
        out = encode(points)
        out.backward(grad_out)
        results.append((out.detach(), encoder.table.grad.clone(), points.grad))
    (ref, ref_table_grad, ref_x_grad), (out, table_grad, x_grad_out) = results
    assert out.shape == (x.shape[0], width)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table_grad, ref_table_grad, rtol=1e-5, atol=1e-5)
    if x_grad:
        torch.testing.assert_close(x_grad_out, ref_x_grad, rtol=1e-4, atol=1e-4)
    else:
        assert x_grad_out is None
    return out, table_grad, x_grad_out


@pytest.mark.parametrize("n_active", [4, 3])
@pytest.mark.parametrize("x_grad", [True, False])
def test_matches_pytorch_encoder(n_active: int, x_grad: bool) -> None:
    encoder = make_encoder(n_active)
    assert 0 < encoder.n_dense < encoder.n_levels
    out, table_grad, x_grad_out = assert_matches_pytorch(encoder, make_points(), x_grad)
    if x_grad:
        assert (x_grad_out[-2, :] == 0).sum() >= 2  # x, z of (1.3, 0.2, -1.4) * bound lie outside: clamped
    if n_active < 4:  # the inactive finest level: zero features, no table gradient
        assert out[:, 6:].abs().max() == 0 and out[:, :6].abs().max() > 0
        assert table_grad[encoder.offsets[3]:].abs().max() == 0


@pytest.mark.parametrize("n", [0, 1, BLOCK - 7, BLOCK + 1 - 7])  # + the 7 special points: BLOCK, BLOCK + 1 rows
def test_odd_batch_sizes(n: int) -> None:
    """An empty batch, a single point, exactly one block and one point into a second block."""
    encoder = make_encoder()
    x = make_points(n)[-1:] if n == 1 else make_points(n) if n else torch.empty(0, 3, device=DEVICE)
    out, table_grad, x_grad = assert_matches_pytorch(encoder, x)
    assert out.shape[0] == x_grad.shape[0] == x.shape[0]
    assert (table_grad.abs().max() > 0) == (n > 0)


def test_dense_hashed_boundary() -> None:
    """Level 0 has 15 cells per axis, 16^3 vertices: exactly the 2^12 rows, the last dense level; level 1
    (16 cells, 17^3 > 2^12 vertices) is the first hashed one. Points on the top faces reach dense row
    2^12 - 1 and the hashed level's highest corner."""
    encoder = make_encoder(n_levels=2, log2_table_size=12, base_resolution=15, finest_resolution=16, n_active=2)
    assert encoder.resolutions.tolist() == [15, 16] and encoder.n_dense == 1
    assert encoder.offsets.tolist() == [0, 2**12]
    faces = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, 1.0, 0.999], [0.9999, 0.9999, 0.9999]], device=DEVICE)
    x = torch.cat([make_points(60), faces * BOUND])
    _, table_grad, _ = assert_matches_pytorch(encoder, x)
    assert table_grad[2**12 - 1].abs().max() > 0  # the (15, 15, 15) corner: the dense level's last row


def test_fine_hashed_levels_wrap_like_int64() -> None:
    """Resolutions up to 2048 (the GPU recipe's finest) in a small table: corner coordinates times the
    hash primes overflow 32 bits, which the kernel's uint32 arithmetic must hash like the encoder's int64."""
    encoder = make_encoder(n_levels=3, log2_table_size=10, base_resolution=512, finest_resolution=2048, n_active=3)
    assert encoder.n_dense == 0 and encoder.resolutions.tolist()[-1] == 2048
    assert_matches_pytorch(encoder, make_points(100))


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


def test_double_backward_is_refused() -> None:
    encoder = make_encoder()
    x = make_points().requires_grad_()
    (grad_x,) = torch.autograd.grad(fused(encoder, x, encoder.table).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        grad_x.sum().backward()


def test_unavailable_without_cuda_or_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused_available("cpu")
