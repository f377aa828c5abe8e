"""Ray sampling: packed samples marched through an occupancy grid inside the bounding sphere.

Two back ends share one interface: :class:`OccupancyGrid` (pure PyTorch, any device) and
:class:`NerfaccOccupancyGrid` (nerfacc's CUDA ray marching); :func:`make_occupancy_grid` picks one.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.geometry import RayBundle, intersect_sphere


@dataclass
class RaySamples:
    """Packed samples, sorted by ray. ray_indices, t_starts, t_ends: (S,)."""

    ray_indices: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor

    def __len__(self) -> int:
        return int(self.ray_indices.shape[0])

    @property
    def t_mids(self) -> torch.Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    def points(self, rays: RayBundle) -> torch.Tensor:
        """(S, 3) sample positions."""
        return rays.origins[self.ray_indices] + rays.directions[self.ray_indices] * self.t_mids[:, None]


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over [-radius, radius]^3, used to skip empty space.

    Cells are updated from a callable giving per-point occupancy in [0, 1] (for NeuS: the opacity of
    one marching step at that point); the running value is max(decay * old, new) and a cell is
    occupied above ``threshold`` (as in Instant-NGP / nerfacc). An optional visual hull, carved from
    object masks, bounds the occupied cells for the whole run. Everything is a buffer, so the grid
    is saved in checkpoints.

    With ``enabled`` false the grid is off: updates and carving do nothing and every cell stays
    occupied, so :meth:`sample` marches uniformly through the bounding sphere.
    """

    def __init__(self, resolution: int = 64, radius: float = 1.0, threshold: float = 0.01, decay: float = 0.95,
                 enabled: bool = True) -> None:
        super().__init__()
        self.resolution, self.radius, self.threshold, self.decay = resolution, radius, threshold, decay
        self.enabled = enabled
        r = resolution
        self.register_buffer("values", torch.ones(r, r, r))
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool))
        self.register_buffer("hull", torch.ones(r, r, r, dtype=torch.bool))
        idx = torch.stack(torch.meshgrid(*[torch.arange(r)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("cell_index", idx, persistent=False)

    @property
    def cell_size(self) -> float:
        return 2.0 * self.radius / self.resolution

    def cell_centers(self) -> torch.Tensor:
        """(R^3, 3) cell centres in ``cell_index`` order."""
        return (self.cell_index + 0.5) * self.cell_size - self.radius

    def lookup(self, points: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """(P, 3) -> (P,) bool value of the cell holding each point in ``cells`` (R, R, R) bool, by
        default ``occupied``; points outside the grid get False."""
        cells = self.occupied if cells is None else cells
        idx = ((points + self.radius) / self.cell_size).floor().long()
        inside = ((idx >= 0) & (idx < self.resolution)).all(-1)
        idx = idx.clamp(0, self.resolution - 1)
        return cells[idx[:, 0], idx[:, 1], idx[:, 2]] & inside

    @torch.no_grad()
    def exterior(self, dilation: int = 1) -> torch.Tensor:
        """(R, R, R) bool: the empty space around all that is sampled, i.e. the cells farther than
        ``dilation`` cells (26-neighbourhood) from every occupied cell that connect to the grid's
        border through face neighbours. :meth:`sample` never samples there, so whatever a
        field holds in these cells is invisible to rendering. Empty cells enclosed by occupied ones
        (an object's interior) are not exterior; nothing is while every cell is occupied (a fresh
        or disabled grid)."""
        k = 2 * dilation + 1
        near = F.max_pool3d(self.occupied[None, None].float(), k, stride=1, padding=dilation)[0, 0] > 0
        labels, _ = scipy.ndimage.label(~near.cpu().numpy())  # face-connected components of the empty cells
        border = np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()])
        exterior = np.isin(labels, border[border > 0])
        return torch.from_numpy(exterior).to(self.occupied.device)

    @torch.no_grad()
    def update(self, occupancy_fn: Callable[[torch.Tensor], torch.Tensor], fraction: float = 1.0, chunk: int = 131072) -> None:
        """Re-evaluate cells at jittered points with ``occupancy_fn`` (P, 3) -> (P,) in [0, 1].

        Only cells inside the visual hull are evaluated (the others can never be occupied).
        ``fraction`` < 1 re-evaluates that share of them at random plus every occupied cell (as
        nerfacc does after its warm-up); the rest only decay.
        """
        if not self.enabled:
            return
        flat = self.values.view(-1)
        cells = self.hull.view(-1).nonzero()[:, 0]
        if fraction < 1.0:
            random = cells[torch.randperm(len(cells), device=flat.device)[: int(fraction * len(cells))]]
            cells = torch.cat([random, self.occupied.view(-1).nonzero()[:, 0]]).unique()
        pts = (self.cell_index[cells] + torch.rand(len(cells), 3, device=flat.device)) * self.cell_size - self.radius
        new = torch.cat([occupancy_fn(p) for p in pts.split(chunk)]) if len(pts) else flat[:0]
        decayed = flat * self.decay
        decayed[cells] = torch.maximum(decayed[cells], new)
        flat.copy_(decayed)
        self.occupied.copy_((self.values > self.threshold) & self.hull)

    @torch.no_grad()
    def carve_visual_hull(self, intrinsics: torch.Tensor, c2w: torch.Tensor, masks: torch.Tensor,
                          dilation: int = 4, tolerance: int = 0) -> None:
        """Keep only cells that project inside the (dilated) mask of every view that sees them.

        Space carving from silhouettes (Laurentini, PAMI 1994), used to bound samples from the
        first step as Jittor-Instant-NeuS does. The dilation grows by each view's projected cell
        radius so a cell touching the object is never carved. ``tolerance`` views may disagree.

        Args:
            intrinsics: (N, 3, 3); c2w: (N, 4, 4); masks: (N, H, W) in [0, 1].

        A progress bar with an ETA counts the views (on stderr).
        """
        if not self.enabled:
            return
        centers = self.cell_centers()
        half_diag = 0.5 * math.sqrt(3.0) * self.cell_size
        outside_count = torch.zeros(centers.shape[0], dtype=torch.int64, device=centers.device)
        h, w = masks.shape[-2:]
        for k in tqdm(range(masks.shape[0]), desc="visual hull", unit="view"):
            w2c = torch.linalg.inv(c2w[k])
            cam = centers @ w2c[:3, :3].T + w2c[:3, 3]
            z = cam[:, 2]
            front = z > 1e-6
            uv = cam[:, :2] / z.clamp_min(1e-6)[:, None] * intrinsics[k].diagonal()[:2] + intrinsics[k][:2, 2]
            px = uv.floor().long()
            in_image = front & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
            min_depth = z[front].min().clamp_min(1e-3) if front.any() else torch.tensor(1.0, device=z.device)
            radius_px = int(math.ceil(float(intrinsics[k][0, 0]) * half_diag / float(min_depth))) + dilation
            grown = F.max_pool2d(masks[k][None, None].float(), 2 * radius_px + 1, stride=1, padding=radius_px)[0, 0] > 0.5
            pxc = px.clamp(min=0)
            pxc[:, 0].clamp_(max=w - 1)
            pxc[:, 1].clamp_(max=h - 1)
            outside = in_image & ~grown[pxc[:, 1], pxc[:, 0]]
            outside_count += outside.long()
        self.hull.copy_((outside_count <= tolerance).reshape(self.hull.shape))
        self.occupied &= self.hull

    def ray_range(self, rays: RayBundle) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each ray enters and leaves the bounding sphere, (R,) each (0 and 0 for a miss).
        Sample distances are constants: gradients (e.g. to trainable cameras) flow through the points."""
        near, far, hit = intersect_sphere(rays.origins.detach(), rays.directions.detach(), self.radius)
        return torch.where(hit, near, torch.zeros_like(near)), torch.where(hit, far, torch.zeros_like(far))

    def sample(self, rays: RayBundle, step_size: float, stratified: bool = True, max_steps: int | None = None) -> RaySamples:
        """March each ray through the bounding sphere with a fixed step, keeping occupied samples.

        Returns packed samples sorted by ray; rays that miss the sphere or occupied space get none.
        """
        near, far = self.ray_range(rays)
        n_steps = max(1, int(math.ceil(float((far - near).max()) / step_size))) if len(rays) else 1
        if max_steps is not None:
            n_steps = min(n_steps, max_steps)
        k = torch.arange(n_steps, device=near.device, dtype=near.dtype)
        t0 = near[:, None] + k[None, :] * step_size
        if stratified:
            t0 = t0 + torch.rand_like(near)[:, None] * step_size
        t1 = t0 + step_size
        mids = 0.5 * (t0 + t1)
        valid = mids < far[:, None]
        pts = rays.origins[:, None, :] + rays.directions[:, None, :] * mids[..., None]
        valid &= self.lookup(pts.reshape(-1, 3)).reshape(valid.shape)
        ray_idx, step_idx = valid.nonzero(as_tuple=True)
        return RaySamples(ray_idx, t0[ray_idx, step_idx], t1[ray_idx, step_idx])


@functools.cache
def nerfacc_or_none() -> ModuleType | None:
    """The nerfacc module when it is installed (an optional GPU extra), else None."""
    try:
        import nerfacc
    except ImportError:
        return None
    return nerfacc


class NerfaccOccupancyGrid(OccupancyGrid):
    """The same grid, marched by nerfacc's ``OccGridEstimator`` (Li et al., "NerfAcc", ICCV 2023).

    Updates (EMA and threshold) and visual-hull carving are :class:`OccupancyGrid`'s; after each,
    the estimator's ``binaries`` take the occupied cells and its ``occs`` the running values, -1
    outside the hull (nerfacc's mark for cells never to be sampled or updated). Its ROI is the
    grid's cube, one level, the same cell layout. The checkpoint holds the grid's own buffers only
    (the estimator's are re-derived on loading), so checkpoints move freely between back ends.

    :meth:`sample` runs ``OccGridEstimator.sampling`` on CUDA; elsewhere (the model is built on
    the CPU and moved later, or trains on the CPU) it uses the PyTorch march, which takes the same
    samples.
    """

    def __init__(self, resolution: int = 64, radius: float = 1.0, threshold: float = 0.01, decay: float = 0.95,
                 enabled: bool = True) -> None:
        super().__init__(resolution, radius, threshold, decay, enabled)
        nerfacc = nerfacc_or_none()
        if nerfacc is None:
            raise ImportError("NerfaccOccupancyGrid needs nerfacc (pip install nerfacc==0.5.3)")
        self.estimator = nerfacc.OccGridEstimator(roi_aabb=[-radius] * 3 + [radius] * 3, resolution=resolution, levels=1)
        for name, buffer in list(self.estimator.named_buffers(recurse=False)):
            self.estimator.register_buffer(name, buffer, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_estimator())
        self._sync_estimator()

    @torch.no_grad()
    def _sync_estimator(self) -> None:
        self.estimator.binaries.copy_(self.occupied[None])
        self.estimator.occs.copy_(torch.where(self.hull, self.values, -1.0).view(-1))

    def update(self, occupancy_fn: Callable[[torch.Tensor], torch.Tensor], fraction: float = 1.0, chunk: int = 131072) -> None:
        super().update(occupancy_fn, fraction, chunk)
        self._sync_estimator()

    def carve_visual_hull(self, intrinsics: torch.Tensor, c2w: torch.Tensor, masks: torch.Tensor,
                          dilation: int = 4, tolerance: int = 0) -> None:
        super().carve_visual_hull(intrinsics, c2w, masks, dilation, tolerance)
        self._sync_estimator()

    def sample(self, rays: RayBundle, step_size: float, stratified: bool = True, max_steps: int | None = None) -> RaySamples:
        """As :meth:`OccupancyGrid.sample`, marched by nerfacc on CUDA (``max_steps`` is PyTorch-only)."""
        if not self.occupied.is_cuda or max_steps is not None:
            return super().sample(rays, step_size, stratified, max_steps)
        near, far = self.ray_range(rays)
        ray_indices, t_starts, t_ends = self.estimator.sampling(
            rays.origins.detach().contiguous(), rays.directions.detach().contiguous(), t_min=near.contiguous(), t_max=far.contiguous(),
            render_step_size=step_size, stratified=stratified)
        return RaySamples(ray_indices.long(), t_starts, t_ends)


GRID_BACKENDS = ("auto", "torch", "nerfacc")


def make_occupancy_grid(backend: str = "auto", **kwargs) -> OccupancyGrid:
    """An occupancy grid of the chosen back end: 'torch', 'nerfacc', or 'auto' (nerfacc when it is
    importable and CUDA is available, else torch). The choice is made when the model is built,
    on the CPU; the nerfacc grid marches with the PyTorch code until it is moved to a GPU.
    ``kwargs`` go to the grid (resolution, radius, threshold, decay, enabled)."""
    if backend not in GRID_BACKENDS:
        raise ValueError(f"unknown grid backend {backend!r}; choose one of {', '.join(GRID_BACKENDS)}")
    if backend == "auto":
        backend = "nerfacc" if nerfacc_or_none() is not None and torch.cuda.is_available() else "torch"
    return NerfaccOccupancyGrid(**kwargs) if backend == "nerfacc" else OccupancyGrid(**kwargs)
