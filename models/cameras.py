"""Camera models (per-view intrinsics and camera-to-world poses as modules), rotation helpers,
seeded pose noise, and pose-accuracy evaluation by similarity alignment.

Every camera module maps view ids (B,) to intrinsics (B, 3, 3) and c2w (B, 4, 4) (OpenCV
convention, normalised frame). Trainable cameras also expose ``alignment(view_ids)``, the
similarity that maps their (gauge-free) learned frame onto the reference frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class FixedCameras(nn.Module):
    """Calibrated cameras taken as given. forward(view_ids (B,)) -> intrinsics (B, 3, 3), c2w (B, 4, 4)."""

    def __init__(self, intrinsics: torch.Tensor, c2w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("intrinsics", intrinsics.clone().float())
        self.register_buffer("c2w", c2w.clone().float())

    def forward(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.intrinsics[view_ids], self.c2w[view_ids]


# ---------------------------------------------------------------------------- rotations
def skew(v: torch.Tensor) -> torch.Tensor:
    """(N, 3) -> (N, 3, 3) cross-product matrices [v]x."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape[:-1], 3, 3)


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) of axis-angle vectors (N, 3) (Rodrigues' formula).

    The coefficients sin(t)/t and (1 - cos t)/t^2 switch to their Taylor series near t = 0, so the
    map and its gradient are exact and finite at the identity (where residual poses start).
    """
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6 + theta2**2 / 120, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2**2 / 720, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    k = skew(w)
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit (or unnormalised) quaternions (N, 4), scalar first (w, x, y, z) -> rotations (N, 3, 3)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Rotations (N, 3, 3) -> unit quaternions (N, 4), scalar first and non-negative.

    Uses the largest of the four candidate denominators (Shepperd's method), so it is stable for
    every rotation, including half turns.
    """
    m = r.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2 from the diagonal; pick the largest to divide by.
    sq = torch.stack([1 + trace, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                      1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    best = sq.argmax(-1)
    s = sq.gather(1, best[:, None]).clamp_min(1e-12).sqrt()[:, 0] * 2  # 4 * component
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s21, s02, s10 = m[:, 2, 1] + m[:, 1, 2], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 0] + m[:, 0, 1]
    candidates = torch.stack([
        torch.stack([s / 4, d21 / s, d02 / s, d10 / s], -1),
        torch.stack([d21 / s, s / 4, s10 / s, s02 / s], -1),
        torch.stack([d02 / s, s10 / s, s / 4, s21 / s], -1),
        torch.stack([d10 / s, s02 / s, s21 / s, s / 4], -1),
    ], 1)
    q = candidates[torch.arange(len(m), device=m.device), best]
    q = q * torch.where(q[:, :1] < 0, -1.0, 1.0)
    return (q / q.norm(dim=-1, keepdim=True)).reshape(*r.shape[:-2], 4)


def rotation_angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between rotations a and b, (N, 3, 3) each -> (N,): twice the atan2
    of the relative rotation's quaternion parts, which keeps small angles accurate (an arccos of
    the trace loses them below about 0.01 degree in float32)."""
    q = matrix_to_quaternion(a.transpose(-1, -2) @ b)
    return torch.rad2deg(2 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0]))


# ------------------------------------------------------------------- noise and alignment
def perturb_poses(c2w: torch.Tensor, rotation_deg: float, translation: float, seed: int = 0) -> torch.Tensor:
    """Seeded pose noise: each camera (N, 4, 4) is rotated about a random axis through its centre by
    exactly ``rotation_deg`` degrees and its centre moved in a random direction by ``translation``
    times its distance to the origin (the object centre of the normalised frame)."""
    gen = torch.Generator().manual_seed(int(seed))
    n = c2w.shape[0]
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64), dim=-1)
    out = c2w.detach().double().cpu().clone()
    out[:, :3, :3] = so3_exp(axis * math.radians(rotation_deg)) @ out[:, :3, :3]
    centres = out[:, :3, 3]
    out[:, :3, 3] = centres + direction * translation * centres.norm(dim=-1, keepdim=True)
    return out.to(c2w)


@dataclass
class Similarity:
    """x -> scale * rotation @ x + translation. scale (), rotation (3, 3), translation (3,)."""

    scale: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor

    def points(self, x: torch.Tensor) -> torch.Tensor:
        """Map points (P, 3)."""
        return self.scale * x @ self.rotation.T + self.translation

    def poses(self, c2w: torch.Tensor) -> torch.Tensor:
        """Map camera-to-world poses (N, 4, 4): rotate the frame, map the centre (the scale only moves centres)."""
        out = c2w.clone()
        out[:, :3, :3] = self.rotation @ c2w[:, :3, :3]
        out[:, :3, 3] = self.points(c2w[:, :3, 3])
        return out

    def inverse(self) -> "Similarity":
        rot = self.rotation.T
        return Similarity(1.0 / self.scale, rot, -(rot @ self.translation) / self.scale)


def umeyama(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None) -> Similarity:
    """The least-squares similarity with dst ~ s R src + t, for point sets (N, 3), N >= 3 (Umeyama,
    "Least-squares estimation of transformation parameters between two point patterns", PAMI 1991):
    the rotation from the SVD of the cross-covariance (Procrustes, with a reflection guard), then
    scale and translation in closed form. ``weights`` (N,) weigh the points' squared residuals
    (default: equal). Computed in float64."""
    s64, d64 = src.double(), dst.double()
    w = torch.ones(len(src), dtype=torch.float64, device=src.device) if weights is None else weights.double()
    w = (w / w.sum())[:, None]
    mu_s, mu_d = (w * s64).sum(0), (w * d64).sum(0)
    xs, xd = s64 - mu_s, d64 - mu_d
    cov = (w * xd).T @ xs
    u, sv, vt = torch.linalg.svd(cov)
    fix = torch.ones(3, dtype=torch.float64, device=src.device)
    fix[2] = torch.sign(torch.linalg.det(u @ vt))
    rot = u @ torch.diag(fix) @ vt
    var_s = (w * xs * xs).sum()
    scale = (sv * fix).sum() / var_s
    trans = mu_d - scale * rot @ mu_s
    return Similarity(scale.to(src.dtype), rot.to(src.dtype), trans.to(src.dtype))


def axes_meeting_point(c2w: torch.Tensor) -> torch.Tensor | None:
    """The point (3,) nearest to the optical axes of cameras (N, 4, 4) in the least-squares sense
    (where an object-centric rig converges). None when the axes are too close to parallel to meet."""
    c, z = c2w[:, :3, 3].double(), c2w[:, :3, 2].double()
    off_axis = torch.eye(3, dtype=c.dtype, device=c.device) - z[:, :, None] * z[:, None, :]  # (N, 3, 3)
    normal = off_axis.sum(0)
    if len(c2w) < 2 or float(torch.linalg.eigvalsh(normal)[0]) < 1e-3 * len(c2w):
        return None
    return torch.linalg.solve(normal, (off_axis @ c[:, :, None]).sum(0))[:, 0].to(c2w.dtype)


def look_at_points(c2w: torch.Tensor) -> torch.Tensor | None:
    """The point each camera (N, 4, 4) looks at, (N, 3): the foot, on its optical axis, of
    :func:`axes_meeting_point`. Maps with the cameras under any similarity. None when the axes are
    too close to parallel to meet."""
    c, z = c2w[:, :3, 3].double(), c2w[:, :3, 2].double()
    meet = axes_meeting_point(c2w.double())
    if meet is None:
        return None
    return (c + ((meet - c) * z).sum(-1, keepdim=True) * z).to(c2w.dtype)


def align_poses(c2w: torch.Tensor, reference: torch.Tensor, iterations: int = 10) -> Similarity:
    """The similarity mapping poses (N, 4, 4) onto reference poses (N, 4, 4): a weighted
    :func:`umeyama` on two points per camera, its centre and its :func:`look_at_points` point.

    Cameras moved along their orbits while still looking at the object are invisible to a fit on the
    centres alone (BARF's protocol), which then misplaces the object; their look-at points stay on
    it. The two kinds of point have very different errors (in learned poses, centres' squared
    residuals are 120-440x the look-at points'), so each kind is weighted by the inverse of its
    mean squared residual, re-estimated from the previous fit (iteratively reweighted least
    squares, ``iterations`` fits). docs/BENCHMARKS.md has the measurements. Rigs whose axes do not
    meet (forward-facing) are fitted on the centres alone."""
    src, dst = look_at_points(c2w), look_at_points(reference)
    if src is None or dst is None:
        return umeyama(c2w[:, :3, 3], reference[:, :3, 3])
    n = len(c2w)
    src, dst = torch.cat([c2w[:, :3, 3], src]).double(), torch.cat([reference[:, :3, 3], dst]).double()
    floor = 1e-12 * float(dst.var(0).sum()) + 1e-300  # exact poses: residuals 0, any weights are exact
    weights = torch.ones(2 * n, dtype=torch.float64, device=src.device)
    for _ in range(iterations):
        sim = umeyama(src, dst, weights)
        sq = ((sim.points(src) - dst) ** 2).sum(-1)
        weights = torch.cat([sq[:n].mean().add(floor).reciprocal().expand(n), sq[n:].mean().add(floor).reciprocal().expand(n)])
    sim = umeyama(src, dst, weights)
    return Similarity(sim.scale.to(c2w.dtype), sim.rotation.to(c2w.dtype), sim.translation.to(c2w.dtype))


def pose_errors(c2w: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Accuracy of poses (N, 4, 4) against reference poses (N, 4, 4) after :func:`align_poses`:
    mean/median rotation error in degrees and centre error in reference units."""
    c2w, reference = c2w.double(), reference.double()
    aligned = align_poses(c2w, reference).poses(c2w)
    rot = rotation_angle_deg(aligned[:, :3, :3], reference[:, :3, :3])
    centre = (aligned[:, :3, 3] - reference[:, :3, 3]).norm(dim=-1)
    return {"rotation_error_deg": float(rot.mean()), "rotation_error_deg_median": float(rot.median()),
            "centre_error": float(centre.mean()), "centre_error_median": float(centre.median())}


def _with_pose(c2w: torch.Tensor, rot: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Poses (B, 4, 4) with their rotations replaced by rot (B, 3, 3) and centres by centre (B, 3)."""
    return torch.cat([torch.cat([rot, centre[:, :, None]], -1), c2w[:, 3:, :]], -2)


def apply_residual(c2w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Poses (B, 4, 4) moved by residuals (B, 6): turned about their centres by the world-frame
    axis-angle residual[:, :3] (R = exp([w]x) R0) and their centres shifted by residual[:, 3:]."""
    return _with_pose(c2w, so3_exp(residual[:, :3]) @ c2w[:, :3, :3], c2w[:, :3, 3] + residual[:, 3:])


def _project_residual(residual: torch.Tensor, k: torch.Tensor, c2w: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Pixel offsets (P, 2) from the principal point of points (P, 3) seen by one camera with
    intrinsics k (3, 3) and pose c2w (4, 4) moved by residual (6,) (:func:`apply_residual`)."""
    moved = apply_residual(c2w[None], residual[None])[0]
    cam = (points - moved[:3, 3]) @ moved[:3, :3]
    return cam[:, :2] / cam[:, 2:3] * torch.stack([k[0, 0], k[1, 1]])


def projection_preconditioner(intrinsics: torch.Tensor, c2w: torch.Tensor, points: torch.Tensor,
                              damping: float = 0.01) -> torch.Tensor:
    """Per-camera preconditioners (N, 6, 6) for the residual (axis-angle, centre offset) of cameras
    with intrinsics (N, 3, 3) and poses (N, 4, 4), from points (P, 3) the cameras see (CamP: Park et
    al., "CamP: Camera Preconditioning for Neural Radiance Fields", SIGGRAPH Asia 2023).

    With J (2P, 6) the Jacobian of the points' pixel projections at the start pose and
    S = J^T J / P + damping * mean(diag) * I, the preconditioner is f * S^(-1/2) (f the mean focal
    length): one unit of the new coordinates moves the projections by one focal length (RMS) in
    every direction, about what one radian of turn does. Orbiting the object, which moves the
    projections only by parallax, then gets steps as large as turning in place. Points behind a
    camera are ignored."""
    out = []
    for view, (k, pose) in enumerate(zip(intrinsics.double(), c2w.double())):
        pts = points.double()
        pts = pts[((pts - pose[:3, 3]) @ pose[:3, 2]) > 1e-3]
        if len(pts) < 16:
            raise ValueError(f"camera {view} sees {len(pts)} of the preconditioning points in front of it; "
                             "set camera.precondition=false for this rig")
        jac = torch.func.jacfwd(_project_residual)(torch.zeros(6, dtype=torch.float64), k, pose, pts).reshape(-1, 6)
        s = jac.T @ jac / len(pts)
        s = s + damping * s.diagonal().mean() * torch.eye(6, dtype=s.dtype)
        vals, vecs = torch.linalg.eigh(s)
        out.append(0.5 * (k[0, 0] + k[1, 1]) * vecs @ torch.diag(vals.rsqrt()) @ vecs.T)
    return torch.stack(out).to(c2w.dtype)


# ---------------------------------------------------------------------- trainable cameras
class TrainableCameras(nn.Module):
    """Per-view poses (and optionally focal lengths) optimised with the scene.

    The starting poses are ``init_c2w`` (e.g. IDR's ``cameras_linear_init.npz``) when given and
    ``use_init_file``, else the reference poses ``c2w`` perturbed by :func:`perturb_poses` with
    ``noise`` = {rotation_deg, translation, seed} (no noise: start at the reference). Rotation
    parametrisations:

    - ``so3`` (default): a residual axis-angle w (N, 3) on top of the start, R = exp([w]x) R0, and a
      residual centre c = c0 + dc; both start at zero, so the start is exact and Adam's steps are in
      radians and scene units.
    - ``quaternion``: IDR's absolute quaternion (normalised in the forward pass) and centre.

    ``precondition`` (so3 only) makes the learned (rotation_param, centre_param) the coordinates of
    :func:`projection_preconditioner`, computed once at the start pose from ``precondition_points``
    (P, 3) (default: a fixed random set in the unit sphere, the object region of the normalised
    frame): the residual is M @ (w, dc) with M (N, 6, 6) the buffer ``preconditioner`` (the identity
    without preconditioning, and for checkpoints saved before it existed). A checkpoint's M wins
    over the config's, so a run resumes with the parametrisation it was trained with.
    ``refine_focal`` adds a per-view log-scale of the focal lengths. The reference poses are kept
    (buffer ``reference_c2w``) to evaluate and align the learned ones; gradients reach the poses
    through the ray origins and directions.
    """

    def __init__(self, intrinsics: torch.Tensor, c2w: torch.Tensor, init_c2w: torch.Tensor | None = None,
                 use_init_file: bool = True, noise: dict | None = None, rotation: str = "so3",
                 refine_focal: bool = False, precondition: bool = True, precondition_damping: float = 0.01,
                 precondition_points: torch.Tensor | None = None) -> None:
        super().__init__()
        if rotation not in ("so3", "quaternion"):
            raise ValueError(f"unknown rotation parametrisation {rotation!r}; choose so3 or quaternion")
        if precondition and rotation != "so3":
            raise ValueError("camera preconditioning works on the so3 residual: use rotation so3, or precondition false with quaternion")
        noise = {"rotation_deg": 0.0, "translation": 0.0, "seed": 0, **(noise or {})}
        if init_c2w is None or not use_init_file:
            init_c2w = perturb_poses(c2w, float(noise["rotation_deg"]), float(noise["translation"]), int(noise["seed"]))
        self.rotation = rotation
        self.register_buffer("intrinsics", intrinsics.clone().float())
        self.register_buffer("reference_c2w", c2w.clone().float())
        self.register_buffer("init_c2w", init_c2w.clone().float())
        n = c2w.shape[0]
        if rotation == "so3":
            self.rotation_param = nn.Parameter(torch.zeros(n, 3))
            self.centre_param = nn.Parameter(torch.zeros(n, 3))
        else:
            self.rotation_param = nn.Parameter(matrix_to_quaternion(self.init_c2w[:, :3, :3]))
            self.centre_param = nn.Parameter(self.init_c2w[:, :3, 3].clone())
        self.log_focal = nn.Parameter(torch.zeros(n)) if refine_focal else None
        if rotation == "so3":
            if precondition and precondition_points is None:
                gen = torch.Generator().manual_seed(0)
                direction = torch.nn.functional.normalize(torch.randn(2048, 3, generator=gen), dim=-1)
                precondition_points = direction * torch.rand(2048, 1, generator=gen) ** (1 / 3)
            self.register_buffer("preconditioner", projection_preconditioner(
                self.intrinsics, self.init_c2w, precondition_points, precondition_damping) if precondition
                else torch.eye(6).repeat(n, 1, 1))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args) -> None:
        """Checkpoints from before preconditioning have no ``preconditioner``: theirs is the identity."""
        if self.rotation == "so3" and prefix + "preconditioner" not in state_dict:
            state_dict[prefix + "preconditioner"] = torch.eye(6).repeat(len(self.init_c2w), 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def poses(self, view_ids: torch.Tensor) -> torch.Tensor:
        """Learned c2w (B, 4, 4) of views (B,)."""
        if self.rotation == "so3":
            residual = torch.cat([self.rotation_param[view_ids], self.centre_param[view_ids]], -1)
            return apply_residual(self.init_c2w[view_ids], (self.preconditioner[view_ids] @ residual[:, :, None])[:, :, 0])
        return _with_pose(self.init_c2w[view_ids], quaternion_to_matrix(self.rotation_param[view_ids]), self.centre_param[view_ids])

    def forward(self, view_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.intrinsics[view_ids]
        if self.log_focal is not None:
            scale = torch.ones_like(k)
            scale[:, :2, :2] = torch.exp(self.log_focal[view_ids])[:, None, None]
            k = k * scale
        return k, self.poses(view_ids)

    def alignment(self, view_ids: torch.Tensor) -> Similarity:
        """Similarity from the learned frame to the reference frame, fitted on the poses of ``view_ids`` (:func:`align_poses`)."""
        with torch.no_grad():
            return align_poses(self.poses(view_ids), self.reference_c2w[view_ids])

    def errors(self, view_ids: torch.Tensor) -> dict[str, float]:
        """Pose errors of ``view_ids`` against the reference (see :func:`pose_errors`)."""
        with torch.no_grad():
            return pose_errors(self.poses(view_ids), self.reference_c2w[view_ids])
