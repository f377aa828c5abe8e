"""NeuS opacity and packed compositing, on the PyTorch path and (CUDA only) nerfacc's."""

import pytest
import torch

from core.geometry import RayBundle
from models.encoders import FrequencyEncoder
from models.fields import ColorField, InverseVariance, SDFField
from models.neus import NeuSModel
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


# nerfacc 0.5.3 on the CPU: its packed (ray_indices / packed_info) scans raise "Only support cuda inputs", but
# the padded (n_rays, samples) weights and transmittance and accumulate_along_rays are plain PyTorch. They
# are the reference here: packed samples are laid out padded (zero opacity after a ray's last sample, which
# changes no weight) and the two paths compared value for value and gradient for gradient.

COUNTS = torch.tensor([5, 0, 3, 7, 1, 12])  # an empty ray, a single-sample ray


def packed_to_padded(values: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed per-sample values (S,) of rays with ``counts`` samples -> zero-padded (R, max count) and the
    (S,) flat index of each sample in it."""
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), counts)
    within = torch.arange(len(ray_indices)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    flat = ray_indices * int(counts.max()) + within
    padded = torch.zeros(len(counts) * int(counts.max()), dtype=values.dtype).index_put((flat,), values)
    return padded.view(len(counts), -1), flat


def neus_samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NeuS opacities (S,) of samples near a surface, and a fixed upstream gradient (S,)."""
    generator = torch.Generator().manual_seed(0)
    sdf = torch.randn(n, generator=generator) * 0.05
    grad = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    dt = torch.full((n,), 0.01)
    alpha = neus_alpha(sdf, grad, dirs, dt, torch.tensor(64.0), cos_anneal_ratio=0.5)
    return alpha, torch.randn(n, generator=generator)


def test_packed_weights_match_nerfacc_weights_and_transmittance_from_alpha():
    import nerfacc

    ray_indices = torch.repeat_interleave(torch.arange(len(COUNTS)), COUNTS)
    alpha, upstream = neus_samples(len(ray_indices))
    assert 0.05 < alpha.max() < 1  # a few samples near the surface carry most of the weight
    ours_alpha = alpha.clone().requires_grad_()
    ours = packed_weights(ours_alpha, ray_indices, len(COUNTS))
    (ours * upstream).sum().backward()
    padded, flat = packed_to_padded(alpha, COUNTS)
    theirs_alpha = padded.clone().requires_grad_()
    theirs, transmittance = nerfacc.render_weight_from_alpha(theirs_alpha)
    (theirs.view(-1)[flat] * upstream).sum().backward()
    torch.testing.assert_close(ours.detach(), theirs.detach().view(-1)[flat], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours_alpha.grad, theirs_alpha.grad.view(-1)[flat], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(transmittance.view(-1)[flat], nerfacc.render_transmittance_from_alpha(padded).view(-1)[flat])
    torch.testing.assert_close(ours.detach() / alpha, transmittance.view(-1)[flat], rtol=1e-5, atol=1e-7)


def test_volsdf_weights_match_nerfacc_weights_from_density():
    """VolSDF's opacity 1 - exp(-sigma dt) composited by packed_weights against nerfacc's weights from
    density on the same (t_start, t_end, sigma)."""
    import nerfacc

    from models.volsdf import laplace_density

    ray_indices = torch.repeat_interleave(torch.arange(len(COUNTS)), COUNTS)
    generator = torch.Generator().manual_seed(2)
    sdf = torch.randn(len(ray_indices), generator=generator) * 0.05
    t_starts = torch.rand(len(ray_indices), generator=generator)
    t_ends = t_starts + 0.005 + 0.02 * torch.rand(len(ray_indices), generator=generator)
    upstream = torch.randn(len(ray_indices), generator=generator)
    beta = torch.tensor(0.02)
    ours_sdf = sdf.clone().requires_grad_()
    ours = packed_weights(-torch.expm1(-laplace_density(ours_sdf, beta) * (t_ends - t_starts)), ray_indices)
    (ours * upstream).sum().backward()
    theirs_sdf = sdf.clone().requires_grad_()
    sigma, flat = packed_to_padded(laplace_density(theirs_sdf, beta), COUNTS)
    starts, _ = packed_to_padded(t_starts, COUNTS)
    ends, _ = packed_to_padded(t_ends, COUNTS)
    theirs = nerfacc.render_weight_from_density(starts, ends, sigma)[0].view(-1)[flat]
    (theirs * upstream).sum().backward()
    assert ours.max() > 0.1
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_sdf.grad, theirs_sdf.grad, rtol=1e-4, atol=1e-4)


def test_accumulate_matches_nerfacc_accumulate_along_rays():
    import nerfacc

    ray_indices = torch.repeat_interleave(torch.arange(len(COUNTS)), COUNTS)
    weights, _ = neus_samples(len(ray_indices))
    colours = torch.rand(len(ray_indices), 3, generator=torch.Generator().manual_seed(3))
    theirs = nerfacc.accumulate_along_rays(weights, colours, ray_indices=ray_indices, n_rays=len(COUNTS))
    torch.testing.assert_close(accumulate(weights, colours, ray_indices, len(COUNTS)), theirs)
    opacity = nerfacc.accumulate_along_rays(weights, None, ray_indices=ray_indices, n_rays=len(COUNTS))
    torch.testing.assert_close(accumulate(weights, None, ray_indices, len(COUNTS)), opacity[:, 0])
    assert opacity[1] == 0 and opacity.max() > 0


def test_nerfacc_packed_scans_need_cuda():
    """What the README says: nerfacc's packed weights refuse CPU tensors, so the CPU path is ours."""
    import nerfacc

    with pytest.raises(NotImplementedError, match="cuda"):
        nerfacc.render_weight_from_alpha(torch.rand(4), ray_indices=torch.tensor([0, 0, 1, 1]), n_rays=2)
