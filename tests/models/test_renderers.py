"""NeuS opacity and packed compositing, on the PyTorch path and (CUDA only) nerfacc's."""

import pytest
import torch

from models.encoders import FrequencyEncoder
from models.fields import ColorField, InverseVariance, SDFField
from models.neus import NeuSModel
from models.rays import RayBundle
from models.renderers import accumulate, neus_alpha, packed_weights
from models.samplers import NerfaccOccupancyGrid, OccupancyGrid, nerfacc_or_none

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or nerfacc_or_none() is None,
                                reason="the nerfacc rendering path needs CUDA and nerfacc")


def test_packed_weights_match_dense_compositing():
    torch.manual_seed(0)
    counts = torch.tensor([5, 0, 3, 7])
    ray_indices = torch.repeat_interleave(torch.arange(4), counts)
    alpha = torch.rand(int(counts.sum()))
    weights = packed_weights(alpha, ray_indices)
    start = 0
    for count in counts.tolist():
        a = alpha[start:start + count]
        transmittance = torch.cumprod(torch.cat([torch.ones(1), 1 - a[:-1]]), 0)
        assert torch.allclose(weights[start:start + count], a * transmittance, atol=1e-6)
        start += count
    opacity = accumulate(weights, None, ray_indices, 4)
    assert opacity[1] == 0 and (opacity <= 1 + 1e-6).all()


def test_neus_weights_of_a_plane_peak_at_the_plane():
    # Ray along +z through the plane z = 0.3, SDF = 0.3 - z (positive in front of the plane).
    t = torch.linspace(0.0, 1.0, 1001)
    dt = torch.full_like(t, t[1] - t[0])
    z = t - 0.5  # ray starts at z = -0.5
    sdf = 0.3 - z
    grad = torch.tensor([0.0, 0.0, -1.0]).expand(len(t), 3)
    dirs = torch.tensor([0.0, 0.0, 1.0]).expand(len(t), 3)
    for inv_s in (50.0, 500.0):
        alpha = neus_alpha(sdf, grad, dirs, dt, torch.tensor(inv_s), cos_anneal_ratio=1.0)
        weights = packed_weights(alpha, torch.zeros(len(t), dtype=torch.long))
        peak_z = z[weights.argmax()]
        assert abs(float(peak_z) - 0.3) <= float(dt[0])
        expected_depth = (weights * t).sum() / weights.sum()
        assert abs(float(expected_depth) - 0.8) < 2.0 / inv_s  # unbiased: centred on the plane
        assert abs(float(weights.sum()) - 1.0) < 1e-3


@needs_cuda
def test_nerfacc_weights_match_the_torch_weights(monkeypatch):
    torch.manual_seed(0)
    counts = torch.randint(0, 50, (300,))
    ray_indices = torch.repeat_interleave(torch.arange(300), counts).cuda()
    alpha = torch.rand(len(ray_indices), device="cuda") * 0.3
    ours = packed_weights(alpha, ray_indices, 300)
    monkeypatch.setattr("models.renderers.nerfacc_or_none", lambda: None)
    torch.testing.assert_close(ours, packed_weights(alpha, ray_indices, 300), atol=1e-5, rtol=1e-4)


@needs_cuda
def test_nerfacc_and_torch_paths_render_the_same(monkeypatch):
    """One field rendered through nerfacc (marching + weights) and through the PyTorch code."""
    torch.manual_seed(0)
    geometry = SDFField(FrequencyEncoder(4), hidden_dim=64, n_layers=2, init_radius=0.5)
    texture, variance = ColorField(feature_dim=15), InverseVariance(0.5)
    grids = {"nerfacc": NerfaccOccupancyGrid(resolution=32, decay=0.5), "torch": OccupancyGrid(resolution=32, decay=0.5)}
    models = {k: NeuSModel(geometry, texture, variance, g, samples_per_ray=256).cuda() for k, g in grids.items()}
    for _ in range(8):  # about a fifth of the cells stay occupied (CPU run of the same code)
        models["nerfacc"].grid.update(models["nerfacc"].cell_occupancy)
    assert models["nerfacc"].grid.occupied.float().mean() < 0.5
    models["torch"].grid.load_state_dict(models["nerfacc"].grid.state_dict())
    origins = torch.nn.functional.normalize(torch.randn(2048, 3), dim=-1) * 2.5
    dirs = torch.nn.functional.normalize(torch.rand(2048, 3) * 1.6 - 0.8 - origins, dim=-1)
    rays = RayBundle(origins.cuda(), dirs.cuda())
    bg = torch.zeros(3, device="cuda")
    ours = models["nerfacc"].render(rays, bg)
    monkeypatch.setattr("models.renderers.nerfacc_or_none", lambda: None)
    theirs = models["torch"].render(rays, bg)
    assert theirs["opacity"].max() > 0.9 and theirs["opacity"].min() < 0.1  # the sphere and the space beside it
    assert (ours["opacity"] - theirs["opacity"]).abs().mean() < 2e-3
    assert (ours["rgb"] - theirs["rgb"]).abs().mean() < 2e-3


def test_accumulate_mixes_precisions():
    """Under mixed precision the colours are half precision and the weights float32: the sum keeps float32."""
    out = accumulate(torch.tensor([0.5, 0.25, 1.0]), torch.ones(3, 2, dtype=torch.bfloat16), torch.tensor([0, 0, 1]), 2)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([[0.75, 0.75], [1.0, 1.0]]))
