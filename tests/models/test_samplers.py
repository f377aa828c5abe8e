"""The PyTorch occupancy grid: marching, updates, visual-hull carving."""
import math

import torch

from models.rays import RayBundle
from models.samplers import OccupancyGrid


def random_rays(n: int) -> RayBundle:
    origins = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1) * 2.5
    targets = torch.rand(n, 3) - 0.5
    return RayBundle(origins, torch.nn.functional.normalize(targets - origins, dim=-1))


def test_samples_lie_in_occupied_cells_inside_the_sphere():
    torch.manual_seed(0)
    grid = OccupancyGrid(resolution=32)
    grid.update(lambda p: (p.norm(dim=-1) - 0.4).abs().lt(0.1).float())  # a shell
    rays = random_rays(256)
    samples = grid.sample(rays, step_size=0.01)
    assert len(samples) > 0
    pts = samples.points(rays)
    assert grid.lookup(pts).all()
    assert (pts.norm(dim=-1) <= 1.0 + 1e-5).all()
    assert (samples.t_ends > samples.t_starts).all()
    assert (samples.ray_indices[1:] >= samples.ray_indices[:-1]).all()  # packed, sorted by ray
    # Every occupied crossing is kept: the shell is hit by the dense march.
    dense = OccupancyGrid(resolution=32)
    assert len(dense.sample(rays, 0.01, stratified=False)) > len(samples)


def test_partial_update_decays_and_thresholds():
    grid = OccupancyGrid(resolution=16, threshold=0.5, decay=0.5)
    grid.update(lambda p: torch.zeros(len(p)))
    assert grid.values.max() <= 0.5 and not grid.occupied.any()
    grid.update(lambda p: torch.ones(len(p)), fraction=0.1)
    assert 0 < grid.occupied.float().mean() < 0.5
    state = grid.state_dict()
    restored = OccupancyGrid(resolution=16, threshold=0.5, decay=0.5)
    restored.load_state_dict(state)
    assert torch.equal(restored.occupied, grid.occupied)


def test_visual_hull_keeps_the_object_and_carves_space():
    # Four cameras looking at a sphere of radius 0.3 at the origin; masks drawn analytically.
    radius, f, size = 0.3, 60.0, 64
    intrinsics, c2ws, masks = [], [], []
    for k in range(4):
        angle = k * math.pi / 2
        centre = torch.tensor([2.5 * math.cos(angle), 2.5 * math.sin(angle), 0.5])
        forward = torch.nn.functional.normalize(-centre, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0])), dim=0)
        down = torch.linalg.cross(forward, right)
        c2w = torch.eye(4)
        c2w[:3, :3] = torch.stack([right, down, forward], 1)
        c2w[:3, 3] = centre
        K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        d = torch.stack([(xs - size / 2) / f, (ys - size / 2) / f, torch.ones_like(xs)], -1) @ c2w[:3, :3].T
        d = torch.nn.functional.normalize(d, dim=-1)
        b = (d * centre).sum(-1)
        hit = b * b - (centre.dot(centre) - radius**2) > 0
        intrinsics.append(K), c2ws.append(c2w), masks.append(hit.float())
    grid = OccupancyGrid(resolution=32)
    grid.carve_visual_hull(torch.stack(intrinsics), torch.stack(c2ws), torch.stack(masks), dilation=1)
    centres = grid.cell_centers()
    half_diag = math.sqrt(3) / 2 * grid.cell_size
    surface_cells = (centres.norm(dim=-1) - radius).abs() < half_diag / 2
    assert grid.hull.view(-1)[surface_cells].all()
    assert grid.hull.float().mean() < 0.3  # most of space is carved
    assert not grid.hull.view(-1)[centres.norm(dim=-1) > 0.9].all()
