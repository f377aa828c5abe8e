"""IDR: implicit differentiable rendering of an SDF's zero level set (Yariv et al., "Multiview Neural
Surface Reconstruction by Disentangling Geometry and Appearance", NeurIPS 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.geometry import RayBundle
from models.fields import ColorField, SDFField, weights_computed_once
from models.ray_tracing import SphereTracer, differentiable_surface_points


class IDRModel(nn.Module):
    """SDF + colour fields rendered at the first ray-surface intersection (IDR Sec. 3).

    Each ray is sphere traced (no grad) to its surface point, or to its minimal-SDF point when it
    has no surface (or lies outside the object mask). Surface points are made differentiable with
    IDR's eq. 3, so the colour loss reaches the SDF (and the rays, if they require grad); the
    colour is that of the rendering network at (x, view direction, normal, geometry feature).
    """

    def __init__(self, geometry: SDFField, texture: ColorField, tracer: SphereTracer) -> None:
        super().__init__()
        self.geometry, self.texture, self.tracer = geometry, texture, tracer

    def render(self, rays: RayBundle, object_mask: torch.Tensor | None, background: torch.Tensor,
               create_graph: bool = False, laplacian: bool = False) -> dict[str, torch.Tensor]:
        """Render rays (R of them). object_mask: (R,) bool or None (all rays in the mask);
        background: (R, 3) or (3,). ``create_graph`` makes the outputs differentiable (training): the
        surface points by IDR eq. 3, the normals and features with a differentiable gradient.

        Returns ``rgb`` (R, 3) (background off the surface), ``hit`` (R,) bool (surface found and in
        the mask), ``opacity`` (R,) (hit as float), ``depth`` (R,) (0 off the surface), ``normal``
        (R, 3) (0 off the surface), ``min_sdf`` (R,) the SDF at the traced points, i.e. at the
        minimal-SDF point of the rays that are not ``hit`` (mask loss), and ``sample_grad`` (R, 3)
        the SDF gradients at all traced points (eikonal loss); with ``laplacian``, also
        ``sample_laplacian`` (R,) the SDF Laplacians there (curvature loss).
        """
        with weights_computed_once(self):
            return self._render(rays, object_mask, background, create_graph, laplacian)

    def _render(self, rays: RayBundle, object_mask: torch.Tensor | None, background: torch.Tensor, create_graph: bool,
                laplacian: bool) -> dict[str, torch.Tensor]:
        n = len(rays)
        o, d = rays.origins, rays.directions
        traced = self.tracer(self.geometry.sdf, o, d, object_mask)
        hit = traced.hit if object_mask is None else traced.hit & object_mask
        idx = hit.nonzero().squeeze(1)
        x = o + traced.t[:, None] * d
        if create_graph and idx.numel() > 0:
            surface = differentiable_surface_points(self.geometry.sdf, o[idx], d[idx], traced.t[idx])
            x = x.index_put((idx,), surface)
        if laplacian:
            sdf, feature, grad, lap = self.geometry.forward_with_derivatives(x, create_graph, laplacian=True)
        else:
            (sdf, feature, grad), lap = self.geometry.forward_with_gradient(x, create_graph=create_graph), None
        normal = F.normalize(grad[idx], dim=-1)
        colour = self.texture(x[idx], normal, d[idx], feature[idx])
        rgb = background.expand(n, 3).index_put((idx,), colour)
        out = {
            "rgb": rgb,
            "hit": hit,
            "opacity": hit.to(rgb.dtype),
            "depth": torch.where(hit, traced.t, torch.zeros_like(traced.t)),
            "normal": normal.new_zeros(n, 3).index_put((idx,), normal),
            "min_sdf": sdf,
            "sample_grad": grad,
        }
        if lap is not None:
            out["sample_laplacian"] = lap
        return out


def mask_loss(min_sdf: torch.Tensor, hit: torch.Tensor, in_mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """IDR's mask loss: (1/alpha) BCE-with-logits(-alpha s*, in_mask) over the rays that are
    not ``hit``, summed and divided by the number of rays R. min_sdf (R,), hit, in_mask (R,) bool."""
    logits = -alpha * min_sdf[~hit]
    return F.binary_cross_entropy_with_logits(logits, in_mask[~hit].to(logits.dtype), reduction="sum") / (alpha * len(hit))
