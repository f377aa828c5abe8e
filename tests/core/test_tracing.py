"""Plain sphere tracing and SDF normals (core.tracing), on a sphere of radius 0.5."""
import math

import pytest
import torch

from core.tracing import sdf_gradient, sdf_normals, sphere_trace


def ball(points: torch.Tensor) -> torch.Tensor:
    return points.norm(dim=-1) - 0.5


def test_sphere_trace_hits_the_sphere_at_its_distance_and_misses_beside_it() -> None:
    origins = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.3, -2.0], [0.0, 0.8, -2.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    t, hit = sphere_trace(ball, origins, dirs, radius=1.0, hit_eps=1e-5, graze_eps=1e-3, max_steps=100)
    assert hit.tolist() == [True, True, False]
    assert t[0].item() == pytest.approx(1.5, abs=1e-4)
    assert t[1].item() == pytest.approx(2.0 - math.sqrt(0.25 - 0.09), abs=1e-4)


def test_a_ray_out_of_steps_counts_as_a_hit_only_within_the_graze_distance() -> None:
    origins, dirs = torch.tensor([[0.0, 0.0, -2.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    _, one_step = sphere_trace(ball, origins, dirs, radius=1.0, hit_eps=1e-5, graze_eps=1e-3, max_steps=1)
    _, wide = sphere_trace(ball, origins, dirs, radius=1.0, hit_eps=1e-5, graze_eps=1.0, max_steps=1)
    assert one_step.tolist() == [False] and wide.tolist() == [True]  # one step from the entry at 1 leaves 0.5 to go


@pytest.mark.parametrize("h", [None, 1e-3])
def test_sdf_normals_point_outwards_by_autograd_or_central_differences(h: float | None) -> None:
    points = torch.tensor([[0.5, 0.0, 0.0], [0.0, -0.3, 0.4]])
    with torch.no_grad():
        normals = sdf_normals(ball, points, h=h)
    torch.testing.assert_close(normals, torch.tensor([[1.0, 0.0, 0.0], [0.0, -0.6, 0.8]]), atol=1e-5, rtol=0)


def test_sdf_gradient_is_not_normalised() -> None:
    grad = sdf_gradient(lambda p: 3.0 * ball(p), torch.tensor([[0.0, 2.0, 0.0]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 3.0, 0.0]]))
