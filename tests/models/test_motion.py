"""Rigid object motion: its matrix, inverse and gradient, and cameras moved into the object's canonical frame."""
from __future__ import annotations

import math

import torch

from models.cameras import FixedCameras, so3_exp
from models.motion import MovingObjectCameras, RigidMotion


def _pose(axis: tuple[float, float, float], degrees: float, t: tuple[float, float, float]) -> torch.Tensor:
    m = torch.eye(4)
    m[:3, :3] = so3_exp(torch.tensor([axis]) / torch.tensor(axis).norm() * math.radians(degrees))[0]
    m[:3, 3] = torch.tensor(t)
    return m


def test_identity_at_start_and_inverse() -> None:
    base = _pose((0.2, 1.0, 0.3), 25.0, (0.1, -0.05, 0.2))
    motion = RigidMotion(base)
    assert torch.allclose(motion.matrix(), base, atol=1e-6)
    with torch.no_grad():
        motion.rotation.copy_(torch.tensor([0.1, -0.2, 0.05]))
        motion.translation.copy_(torch.tensor([0.03, 0.0, -0.02]))
    assert torch.allclose(motion.inverse() @ motion.matrix(), torch.eye(4), atol=1e-6)
    delta = _pose((0.1, -0.2, 0.05), math.degrees(0.229128784747792), (0.03, 0.0, -0.02))
    assert torch.allclose(motion.matrix(), delta @ base, atol=1e-5)


def test_moved_cameras_see_the_canonical_object_where_the_world_cameras_see_the_moved_one() -> None:
    """A canonical point x, moved to M x in the world, projects to the same pixel in the world camera as
    x does in the camera moved by M^-1."""
    motion = RigidMotion(_pose((0.0, 0.0, 1.0), 30.0, (0.1, 0.2, -0.1)))
    k = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]])
    c2w = _pose((1.0, 0.0, 0.0), 180.0, (0.0, 0.0, 3.0))  # looking down -z from above
    cameras = MovingObjectCameras(FixedCameras(k[None], c2w[None]), motion)
    x = torch.tensor([[0.1, -0.2, 0.3], [-0.3, 0.1, 0.0]])

    def project(c2w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        cam = (p - c2w[:3, 3]) @ c2w[:3, :3]
        uv = cam @ k.T
        return uv[:, :2] / uv[:, 2:]

    _, moved = cameras(torch.tensor([0]))
    with torch.no_grad():
        assert torch.allclose(project(c2w, motion.to_world(x)), project(moved[0], x), atol=1e-4)


def test_motion_gradient_matches_finite_differences() -> None:
    motion = RigidMotion(_pose((1.0, 1.0, 0.0), 10.0, (0.0, 0.1, 0.0)))
    x = torch.tensor([[0.3, -0.1, 0.2]])
    with torch.no_grad():
        motion.rotation.copy_(torch.tensor([0.05, 0.1, -0.2]))
    motion.to_world(x).sum().backward()
    grad = motion.rotation.grad.clone()
    h = 1e-3
    for i in range(3):
        with torch.no_grad():
            motion.rotation[i] += h
            up = motion.to_world(x).sum()
            motion.rotation[i] -= 2 * h
            down = motion.to_world(x).sum()
            motion.rotation[i] += h
        assert abs(float((up - down) / (2 * h)) - float(grad[i])) < 1e-3
    assert torch.allclose(motion.translation.grad, torch.ones(3))
