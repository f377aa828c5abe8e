import math

import pytest
import torch

from core.geometry import look_at as look_at_origin
from core.geometry import pixel_rays
from models.cameras import (
    FixedCameras,
    Similarity,
    TrainableCameras,
    align_poses,
    axes_meeting_point,
    look_at_points,
    matrix_to_quaternion,
    perturb_poses,
    projection_preconditioner,
    pose_errors,
    quaternion_to_matrix,
    rotation_angle_deg,
    so3_exp,
    umeyama,
)


def random_rotations(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return quaternion_to_matrix(q)


def look_at(centres: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """c2w (n, 4, 4) at centres (n, 3), each looking at the point target (3,), world z up."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=centres.dtype)
    c2w = torch.stack([look_at_origin(c - target, up) for c in centres])
    c2w[:, :3, 3] = centres
    return c2w


def ring_of_cameras(n: int = 12) -> torch.Tensor:
    """c2w (n, 4, 4) on a tilted ring at distance ~3 looking at the origin."""
    a = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    centres = torch.stack([3 * torch.cos(a), 3 * torch.sin(a), 0.8 + 0.3 * torch.sin(3 * a)], -1)
    return look_at(centres, torch.zeros(3, dtype=torch.float64))


def test_quaternion_round_trips_including_half_turns():
    rots = torch.cat([random_rotations(500), so3_exp(torch.tensor([[math.pi, 0, 0], [0, math.pi, 0], [0, 0, math.pi]],
                                                                  dtype=torch.float64)), torch.eye(3, dtype=torch.float64)[None]])
    q = matrix_to_quaternion(rots)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    assert torch.allclose(quaternion_to_matrix(q), rots, atol=1e-12)
    q2 = matrix_to_quaternion(quaternion_to_matrix(q))
    assert torch.allclose(q2, q, atol=1e-12)  # both scalar-first and non-negative: the same sign


def test_so3_exp_is_a_rotation_by_the_vector_norm_with_finite_gradient_at_zero():
    w = torch.randn(64, 3, dtype=torch.float64)
    r = so3_exp(w)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    small = torch.randn(16, 3, dtype=torch.float64) * 0.5
    assert torch.allclose(rotation_angle_deg(torch.eye(3, dtype=torch.float64).expand(16, 3, 3), so3_exp(small)),
                          torch.rad2deg(small.norm(dim=-1)), atol=1e-6)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(so3_exp, (zero,))
    assert torch.autograd.gradcheck(so3_exp, (torch.randn(2, 3, dtype=torch.float64, requires_grad=True),))


def test_umeyama_recovers_a_known_similarity_exactly():
    src = torch.randn(20, 3, dtype=torch.float64)
    truth = Similarity(torch.tensor(2.5, dtype=torch.float64), random_rotations(1, seed=3)[0], torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64))
    sim = umeyama(src, truth.points(src))
    assert float(sim.scale) == pytest.approx(2.5, abs=1e-12)
    assert torch.allclose(sim.rotation, truth.rotation, atol=1e-12)
    assert torch.allclose(sim.translation, truth.translation, atol=1e-12)
    back = sim.inverse().points(truth.points(src))
    assert torch.allclose(back, src, atol=1e-12)


def test_pose_alignment_recovers_a_known_similarity_and_places_the_object_where_the_cameras_look():
    ref = ring_of_cameras()
    truth = Similarity(torch.tensor(1.7, dtype=torch.float64), random_rotations(1, seed=4)[0], torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
    sim = align_poses(truth.poses(ref), ref)
    assert float(sim.scale) == pytest.approx(1 / 1.7, abs=1e-12)
    assert torch.allclose(sim.poses(truth.poses(ref)), ref, atol=1e-12)
    # The same centres, every camera turned to look at a point 0.037 off the object centre: the
    # learned scene sits there. A fit on the centres leaves it there; the pose fit halves the offset.
    offset = torch.tensor([0.03, -0.02, 0.01], dtype=torch.float64)
    learned = look_at(ref[:, :3, 3], offset)
    by_centres = umeyama(learned[:, :3, 3], ref[:, :3, 3]).points(offset[None]).norm()
    by_poses = align_poses(learned, ref).points(offset[None]).norm()
    assert float(by_centres) == pytest.approx(float(offset.norm()), rel=1e-6)
    assert float(by_poses) < 0.5 * float(by_centres)
    # Cameras slid along their orbits by ~1 degree, still looking at the object: their centres are
    # off, their look-at points are not. Weighting each kind of point by its residual puts the
    # object back in place, where equal weights leave half the centre fit's offset.
    turn = so3_exp(torch.randn(12, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * math.radians(1.0))
    slid = truth.poses(look_at((turn @ ref[:, :3, 3, None])[:, :, 0], torch.zeros(3, dtype=torch.float64)))
    placed = truth.points(torch.zeros(1, 3, dtype=torch.float64))
    centre_fit = umeyama(slid[:, :3, 3], ref[:, :3, 3]).points(placed).norm()
    equal = umeyama(torch.cat([slid[:, :3, 3], look_at_points(slid)]), torch.cat([ref[:, :3, 3], look_at_points(ref)]))
    assert float(centre_fit) > 0.02 and float(equal.points(placed).norm()) > 0.3 * float(centre_fit)
    assert float(align_poses(slid, ref).points(placed).norm()) < 1e-6
    # Forward-facing cameras, whose axes do not meet: the centres alone.
    parallel = look_at(ref[:, :3, 3] * torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    parallel[:, :3, :3] = parallel[:1, :3, :3]
    moved = truth.poses(parallel)
    fitted = align_poses(moved, parallel)
    centres_only = umeyama(moved[:, :3, 3], parallel[:, :3, 3])
    assert torch.allclose(fitted.rotation, centres_only.rotation) and torch.allclose(fitted.translation, centres_only.translation)


def test_perturbation_has_the_requested_size_and_is_seeded():
    ref = ring_of_cameras()
    noisy = perturb_poses(ref, 3.0, 0.02, seed=7)
    assert torch.allclose(rotation_angle_deg(ref[:, :3, :3], noisy[:, :3, :3]), torch.full((12,), 3.0, dtype=torch.float64), atol=1e-9)
    moved = (noisy[:, :3, 3] - ref[:, :3, 3]).norm(dim=-1) / ref[:, :3, 3].norm(dim=-1)
    assert torch.allclose(moved, torch.full((12,), 0.02, dtype=torch.float64), atol=1e-12)
    assert torch.equal(noisy, perturb_poses(ref, 3.0, 0.02, seed=7))
    assert not torch.equal(noisy, perturb_poses(ref, 3.0, 0.02, seed=8))


def test_pose_errors_ignore_a_global_similarity():
    ref = ring_of_cameras()
    sim = Similarity(torch.tensor(0.7, dtype=torch.float64), random_rotations(1, seed=5)[0], torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64))
    errors = pose_errors(sim.poses(ref), ref)
    assert errors["rotation_error_deg"] < 1e-5 and errors["centre_error"] < 1e-10
    noisy = perturb_poses(ref, 2.0, 0.0, seed=1)
    assert pose_errors(sim.poses(noisy), ref)["rotation_error_deg"] > 1.0


def test_pose_errors_resolve_thousandths_of_a_degree_on_float32_poses():
    ref = ring_of_cameras().float()
    assert pose_errors(ref, ref)["rotation_error_deg"] < 1e-4
    turned = perturb_poses(ref, 0.002, 0.0, seed=3)
    assert pose_errors(turned, ref)["rotation_error_deg"] == pytest.approx(0.002, rel=0.05)
    assert float(rotation_angle_deg(torch.eye(3).expand(2, 3, 3), so3_exp(torch.tensor([[3.1, 0, 0], [0, 1e-5, 0]])))[0]) == pytest.approx(math.degrees(3.1), rel=1e-5)


@pytest.mark.parametrize("rotation", ["so3", "quaternion"])
def test_trainable_cameras_start_at_the_noisy_poses_and_receive_ray_gradients(rotation):
    ref = ring_of_cameras().float()
    k = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(12, 3, 3)
    cams = TrainableCameras(k, ref, noise={"rotation_deg": 3.0, "translation": 0.02, "seed": 2}, rotation=rotation,
                            refine_focal=True, precondition=False)
    ids = torch.arange(12)
    intrinsics, c2w = cams(ids)
    assert torch.allclose(c2w, perturb_poses(ref, 3.0, 0.02, seed=2), atol=1e-5)
    assert torch.allclose(intrinsics, k)
    assert cams.errors(ids)["rotation_error_deg"] > 2.0
    rays = pixel_rays(intrinsics, c2w, torch.full((12,), 10.0), torch.full((12,), 20.0))
    (rays.origins.sum() + rays.directions.pow(2).sum(-1).mul(torch.arange(12)).sum() + rays.directions[:, 0].sum()).backward()
    assert cams.rotation_param.grad.abs().sum() > 0 and cams.centre_param.grad.abs().sum() > 0
    assert cams.log_focal.grad.abs().sum() > 0


def test_trainable_cameras_use_the_scene_start_file_and_fixed_cameras_pass_through():
    ref = ring_of_cameras().float()
    k = torch.eye(3).expand(12, 3, 3)
    start = perturb_poses(ref, 1.0, 0.0, seed=4)
    cams = TrainableCameras(k, ref, init_c2w=start, noise={"rotation_deg": 5.0})
    assert torch.allclose(cams(torch.arange(12))[1], start, atol=1e-6)
    ignored = TrainableCameras(k, ref, init_c2w=start, use_init_file=False)
    assert torch.allclose(ignored(torch.arange(12))[1], ref)
    fixed = FixedCameras(k, ref)
    assert torch.equal(fixed(torch.tensor([3]))[1][0], ref[3]) and not list(fixed.parameters())


def projection_jacobian(cams: TrainableCameras, view: int, points: torch.Tensor, focal: float) -> torch.Tensor:
    """(2P, 6) Jacobian of the pixel projections of points (P, 3) by camera ``view`` with respect to
    its learned (rotation_param, centre_param), through the module's own forward pass."""
    ids = torch.arange(len(cams.init_c2w))

    def pixels(rotation_param: torch.Tensor, centre_param: torch.Tensor) -> torch.Tensor:
        c2w = torch.func.functional_call(cams, {"rotation_param": rotation_param, "centre_param": centre_param}, (ids,))[1][view]
        cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
        return focal * cam[:, :2] / cam[:, 2:]

    jr, jc = torch.func.jacfwd(pixels, argnums=(0, 1))(cams.rotation_param, cams.centre_param)
    return torch.cat([jr[:, :, view], jc[:, :, view]], -1).reshape(-1, 6).double()


def test_preconditioned_cameras_start_exact_and_move_the_projections_equally_in_every_direction():
    ref = ring_of_cameras().float()
    k = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(12, 3, 3)
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.6
    noise = {"rotation_deg": 3.0, "translation": 0.02, "seed": 2}
    cams = TrainableCameras(k, ref, noise=noise, precondition=True, precondition_damping=0.0, precondition_points=points)
    assert torch.allclose(cams(torch.arange(12))[1], perturb_poses(ref, 3.0, 0.02, seed=2), atol=1e-5)
    # Whitened: a unit step in any direction moves the projections by one focal length (RMS) ...
    jac = projection_jacobian(cams, 5, points, 50.0)
    torch.testing.assert_close(jac.T @ jac / len(points), 50.0**2 * torch.eye(6, dtype=torch.float64), atol=0.5, rtol=0)
    # ... where without it orbiting the object is far softer than turning in place.
    plain = projection_jacobian(TrainableCameras(k, ref, noise=noise, precondition=False), 5, points, 50.0)
    eig = torch.linalg.eigvalsh(plain.T @ plain)
    assert eig[-1] / eig[0] > 100
    with pytest.raises(ValueError, match="so3"):
        TrainableCameras(k, ref, rotation="quaternion", precondition=True)
    away = torch.eye(4)[None].clone()
    away[0, 2, 3] = 2.0  # at z = 2 looking along +z: every point is behind it
    with pytest.raises(ValueError, match="camera 0 sees 0 of the preconditioning points"):
        projection_preconditioner(k[:1], away, points)
    # A state saved before preconditioning existed (no ``preconditioner``) loads as the plain
    # residual; a saved preconditioner wins over the config's, so a resume keeps its parametrisation.
    plain_cams = TrainableCameras(k, ref, noise=noise, precondition=False)
    with torch.no_grad():
        plain_cams.rotation_param.normal_(0, 0.01)
        plain_cams.centre_param.normal_(0, 0.01)
    old_state = {key: v for key, v in plain_cams.state_dict().items() if key != "preconditioner"}
    cams.load_state_dict(old_state)
    assert torch.allclose(cams(torch.arange(12))[1], plain_cams(torch.arange(12))[1], atol=1e-6)
    preconditioned = TrainableCameras(k, ref, noise=noise, precondition=True, precondition_points=points)
    plain_cams.load_state_dict(preconditioned.state_dict())
    assert torch.equal(plain_cams.preconditioner, preconditioned.preconditioner)


def test_axes_meeting_point_is_where_cameras_aimed_at_one_point_look() -> None:
    target = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    directions = torch.nn.functional.normalize(torch.randn(9, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), dim=-1)
    c2w = torch.stack([look_at_origin(4.0 * d, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) for d in directions])
    c2w[:, :3, 3] += target
    assert torch.allclose(axes_meeting_point(c2w), target, atol=1e-9)
    assert torch.allclose(look_at_points(c2w), target.expand(9, 3), atol=1e-9)
    parallel = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    parallel[:, 0, 3] = torch.arange(4.0)
    assert axes_meeting_point(parallel) is None and look_at_points(parallel) is None
