"""NeuS opacity and packed compositing."""
import torch

from models.renderers import accumulate, neus_alpha, packed_weights


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
