"""NeuSModel's rendering: early ray termination against the full composite."""
import torch

from models.encoders import FrequencyEncoder
from models.fields import ColorField, InverseVariance, SDFField
from models.neus import NeuSModel
from core.geometry import RayBundle
from models.samplers import OccupancyGrid


def test_marching_stops_behind_the_surface_and_renders_what_the_full_composite_does():
    """A sharp sphere (1/s about 150) seen by 512 rays: rendered with every sample and with rays stopped once their
    transmittance is under 1e-4, the outputs agree to 1e-3 while under half the samples are evaluated."""
    torch.manual_seed(0)
    geometry = SDFField(FrequencyEncoder(4), hidden_dim=64, n_layers=2, init_radius=0.5)
    model = NeuSModel(geometry, ColorField(feature_dim=15), InverseVariance(0.5), OccupancyGrid(resolution=32),
                      samples_per_ray=256)
    origins = torch.nn.functional.normalize(torch.randn(512, 3), dim=-1) * 2.5
    dirs = torch.nn.functional.normalize(torch.rand(512, 3) * 1.2 - 0.6 - origins, dim=-1)
    rays, bg = RayBundle(origins, dirs), torch.tensor([0.2, 0.5, 0.9])
    full = model.render(rays, bg)
    marched = model.render(rays, bg, stop_transmittance=1e-4)
    assert full["opacity"].max() > 0.999 and full["opacity"].min() < 0.01  # rays through the sphere and beside it
    for key in ("rgb", "opacity", "depth", "normal"):
        torch.testing.assert_close(marched[key], full[key].detach(), atol=1e-3, rtol=0)
    assert int(marched["n_samples"]) < 0.5 * int(full["n_samples"])
