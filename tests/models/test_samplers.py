"""Occupancy grids: marching, updates, visual-hull carving, the grid switched off, the nerfacc back end."""
import math
from collections.abc import Callable

import pytest
import torch

from core.geometry import RayBundle, intersect_sphere
from datasets.npz import load_npz_scene
from datasets.synthetic import scene_sdf
from models.samplers import NerfaccOccupancyGrid, OccupancyGrid, make_occupancy_grid, nerfacc_or_none

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or nerfacc_or_none() is None,
                                reason="nerfacc's ray marching needs CUDA and nerfacc")


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


def test_visual_hull_keeps_the_object_and_carves_space(capsys):
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
    assert "visual hull: 100%" in capsys.readouterr().err  # a progress bar over the views
    centres = grid.cell_centers()
    half_diag = math.sqrt(3) / 2 * grid.cell_size
    surface_cells = (centres.norm(dim=-1) - radius).abs() < half_diag / 2
    assert grid.hull.view(-1)[surface_cells].all()
    assert grid.hull.float().mean() < 0.3  # most of space is carved
    assert not grid.hull.view(-1)[centres.norm(dim=-1) > 0.9].all()


def shell_grid(grid: OccupancyGrid) -> OccupancyGrid:
    grid.update(lambda p: (p.norm(dim=-1) - 0.4).abs().lt(0.1).float())
    return grid


def test_sampling_keeps_exactly_the_occupied_steps_inside_the_sphere():
    torch.manual_seed(0)
    grid = shell_grid(OccupancyGrid(resolution=32))
    rays = random_rays(128)
    step = 0.02
    samples = grid.sample(rays, step, stratified=False)
    # Reference: every step of the march from the sphere entry whose midpoint is in the sphere and in an occupied cell.
    near, far, hit = intersect_sphere(rays.origins, rays.directions, 1.0)
    expected = []
    for i in range(len(rays)):
        if hit[i]:
            t0 = near[i] + step * torch.arange(int(math.ceil(float(far[i] - near[i]) / step)))
            mids = t0 + step / 2
            pts = rays.origins[i] + rays.directions[i] * mids[mids < far[i], None]
            expected += [(i, float(t)) for t, keep in zip(t0, grid.lookup(pts)) if keep]
    got = list(zip(samples.ray_indices.tolist(), samples.t_starts.tolist()))
    assert len(got) == len(expected) > 100
    assert all(a == b and abs(t - u) < 1e-5 for (a, t), (b, u) in zip(got, expected))


def test_grid_off_samples_the_whole_chord_uniformly():
    torch.manual_seed(0)
    grid = OccupancyGrid(resolution=16, enabled=False)
    grid.update(lambda p: torch.zeros(len(p)))  # no effect
    grid.carve_visual_hull(torch.eye(3)[None], torch.eye(4)[None], torch.zeros(1, 8, 8))  # no effect
    assert grid.occupied.all() and grid.hull.all()
    rays = random_rays(64)
    step = 0.05
    samples = grid.sample(rays, step, stratified=False)
    near, far, hit = intersect_sphere(rays.origins, rays.directions, 1.0)
    counts = torch.bincount(samples.ray_indices, minlength=len(rays))
    expected = torch.where(hit, torch.ceil((far - near) / step - 0.5), torch.zeros_like(far)).long()
    assert torch.equal(counts, expected)
    first = torch.searchsorted(samples.ray_indices, torch.arange(len(rays)))[hit]
    torch.testing.assert_close(samples.t_starts[first], near[hit])
    torch.testing.assert_close(samples.t_ends - samples.t_starts, torch.full((len(samples),), step))
    last = first + counts[hit] - 1
    assert (far[hit] - samples.t_mids[last] <= step).all() and (samples.t_mids[last] < far[hit]).all()


def test_visual_hull_of_the_synthetic_scene_keeps_every_surface_cell(small_synthetic):
    scene = load_npz_scene(str(small_synthetic))
    grid = OccupancyGrid(resolution=48)
    grid.carve_visual_hull(scene.intrinsics, scene.c2w, scene.masks, dilation=1)
    centres = grid.cell_centers()
    # |sdf(centre)| below half a cell: the nearest surface point lies inside the cell.
    surface = scene_sdf(centres).abs() < grid.cell_size / 2
    assert surface.sum() > 500
    assert grid.hull.view(-1)[surface].all()
    assert grid.hull.float().mean() < 0.25  # six views carve most of the cube


def test_make_occupancy_grid_backends(monkeypatch):
    assert type(make_occupancy_grid("torch", resolution=8)) is OccupancyGrid
    expected = NerfaccOccupancyGrid if nerfacc_or_none() is not None and torch.cuda.is_available() else OccupancyGrid
    assert type(make_occupancy_grid("auto", resolution=8, enabled=False)) is expected
    assert not make_occupancy_grid("torch", resolution=8, enabled=False).enabled
    with pytest.raises(ValueError, match="backend"):
        make_occupancy_grid("taichi")
    monkeypatch.setattr("models.samplers.nerfacc_or_none", lambda: None)
    assert type(make_occupancy_grid("auto", resolution=8)) is OccupancyGrid
    with pytest.raises(ImportError, match="nerfacc"):
        make_occupancy_grid("nerfacc", resolution=8)


def test_nerfacc_grid_mirrors_the_torch_grid():
    torch.manual_seed(0)
    grid = NerfaccOccupancyGrid(resolution=16, threshold=0.5, decay=0.5)
    reference = OccupancyGrid(resolution=16, threshold=0.5, decay=0.5)
    assert grid.state_dict().keys() == reference.state_dict().keys()  # checkpoints move between back ends
    hull = grid.cell_centers().norm(dim=-1).lt(0.7).view(16, 16, 16)
    grid.hull.copy_(hull)  # as a carving would leave it
    grid.update(lambda p: (p[:, 0] > 0).float())
    assert torch.equal(grid.estimator.binaries[0], grid.occupied)
    assert grid.occupied.any() and not grid.occupied[~hull].any()
    assert (grid.estimator.occs.view(16, 16, 16)[~hull] == -1).all()
    torch.testing.assert_close(grid.estimator.occs.view(16, 16, 16)[hull], grid.values[hull])
    grid.update(lambda p: torch.ones(len(p)), fraction=0.2)  # later updates stay inside the hull
    assert not grid.estimator.binaries[0][~hull].any()
    reference.load_state_dict(grid.state_dict())
    restored = NerfaccOccupancyGrid(resolution=16)
    restored.load_state_dict(reference.state_dict())
    assert torch.equal(restored.estimator.binaries[0], grid.occupied)
    rays = random_rays(64)
    ours, theirs = grid.sample(rays, 0.03, stratified=False), reference.sample(rays, 0.03, stratified=False)  # CPU: PyTorch march
    assert torch.equal(ours.ray_indices, theirs.ray_indices) and torch.equal(ours.t_starts, theirs.t_starts)


def cell_occupancy(resolution: int, step: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(P, 3) -> (P,) occupancy constant in each cell of a ``resolution``^3 grid over [-1, 1]^3 (so the
    jitter of the evaluation points plays no part): 0.8 in a ball of radius 0.5, elsewhere a pseudo-random
    value in [0, 0.03) that changes with ``step``, around a 0.01 threshold."""

    def occupancy(points: torch.Tensor) -> torch.Tensor:
        cell = ((points + 1.0) * resolution / 2).floor().clamp(0, resolution - 1)
        centre = (cell + 0.5) * 2 / resolution - 1.0
        noise = torch.frac(torch.sin(cell @ torch.tensor([12.9898, 78.233, 37.719]) + step) * 43758.5453).abs() * 0.03
        return torch.where(centre.norm(dim=-1) < 0.5, 0.8, noise)

    return occupancy


def test_grid_updates_match_nerfacc_occgridestimator_during_warmup():
    """Our update is nerfacc's ``OccGridEstimator._update`` during its warm-up (every cell re-evaluated at a
    jittered point, running value max(decay * old, new), occupied above the threshold), on the same cell
    layout: from the same state and occupancy, values and occupied cells match step for step, and the
    nerfacc grid's estimator holds them."""
    import nerfacc

    grid = NerfaccOccupancyGrid(resolution=8, threshold=0.01, decay=0.5)
    reference = nerfacc.OccGridEstimator(roi_aabb=[-1.0] * 3 + [1.0] * 3, resolution=8, levels=1)
    reference.occs.copy_(grid.values.view(-1))  # the same start: ours begins at 1, nerfacc's at 0 (both all occupied)
    occupied = []
    for step in range(8):
        grid.update(cell_occupancy(8, step))
        reference._update(step=step, occ_eval_fn=cell_occupancy(8, step), occ_thre=0.01, ema_decay=0.5,
                          warmup_steps=10**6)
        # nerfacc thresholds at min(mean occupancy, occ_thre): the same here, the mean is far above 0.01
        assert reference.occs.mean() > 0.01
        torch.testing.assert_close(grid.values.view(-1), reference.occs, rtol=0, atol=0)
        assert torch.equal(grid.occupied, reference.binaries[0])
        assert torch.equal(grid.estimator.binaries, reference.binaries) and torch.equal(grid.estimator.occs, reference.occs)
        occupied.append(grid.occupied.float().mean().item())
    assert occupied[0] == 1.0 and 0.1 < occupied[-1] < 0.9  # cells dropped out as their values decayed


@needs_cuda
def test_nerfacc_marching_matches_the_torch_march():
    torch.manual_seed(0)
    grid = shell_grid(NerfaccOccupancyGrid(resolution=32)).cuda()
    rays = random_rays(512)
    rays = RayBundle(rays.origins.cuda(), rays.directions.cuda())
    ours = grid.sample(rays, 0.01, stratified=False)
    theirs = OccupancyGrid.sample(grid, rays, 0.01, stratified=False)
    assert len(ours) > 1000
    # Same march, but nerfacc accumulates t in float32: a step may flip at a cell face.
    assert abs(len(ours) - len(theirs)) <= 0.01 * len(theirs)
    assert grid.lookup(ours.points(rays)).float().mean() > 0.999
    assert (ours.points(rays).norm(dim=-1) <= 1.0 + 1e-4).all()
    counts = torch.bincount(ours.ray_indices, minlength=512) - torch.bincount(theirs.ray_indices, minlength=512)
    assert counts.abs().max() <= 2
