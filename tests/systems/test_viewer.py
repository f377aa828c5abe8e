"""The viewer's scene (systems/viewer.py), inspected on a viser server running on a local port."""
from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import imageio.v3 as iio
import msgspec
import numpy as np
import pytest
import torch
import trimesh
import viser
import viser.transforms as vtf
from viser import _messages
from websockets.sync.client import connect

import launch
from core.errors import InputError
from datasets.synthetic import generate_sequence
from systems import modes
from systems.assembly import build_system, compose_config
from systems.config import Viewer as ViewerSettings
from systems.mesh_io import save_mesh
from core.geometry import RayBundle
from systems.callbacks import TimeBudget
from systems.viewer import (ChunkedRender, Viewer, ViewerCallback, browser_view, camera_sets, normalised_pose, open_run, open_sequence,
                            world_poses)


def system_of(small_synthetic: Path, tmp_path: Path, *overrides: str):
    cfg = compose_config(["dataset=dtu", f"dataset.root={small_synthetic}", "dataset.test_views=[5]", "system.model.grid.resolution=32",
                          "encoder.compile=false", *overrides])
    return build_system(cfg, tmp_path).eval()


@pytest.fixture(scope="module")
def untrained(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory):
    return system_of(small_synthetic, tmp_path_factory.mktemp("run"))


@pytest.fixture
def viewer() -> Iterator[Viewer]:
    viewer = Viewer("127.0.0.1", 0)
    yield viewer
    viewer.close()


def nodes(viewer: Viewer, prefix: str) -> dict[str, object]:
    """The server's scene nodes whose names start with ``prefix``."""
    return {name: h for name, h in viewer.server.scene._handle_from_node_name.items() if name.startswith(prefix)}


@contextlib.contextmanager
def browser(viewer: Viewer) -> Iterator[None]:
    """A client on the viewer's websocket that reports a camera, as a browser tab does (viser counts a
    client as connected from its first camera message)."""
    ws = connect(f"ws://127.0.0.1:{viewer.server.get_port()}", subprotocols=[f"viser-v{viser.__version__}"])
    camera = _messages.ViewerCameraMessage((1, 0, 0, 0), (3, 3, 3), 1.0, 0.01, 100.0, 600, 800, (0, 0, 0), (0, 0, 1))
    ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
    try:
        for _ in range(100):
            if viewer.connected():
                break
            time.sleep(0.05)
        assert viewer.connected() == 1
        yield
    finally:
        ws.close()


def glb_mesh(data: bytes) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(data), file_type="glb", force="mesh", process=False)


def test_a_port_in_use_gives_the_next_free_one(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level("INFO", logger="viewer"):
            viewer = Viewer("127.0.0.1", port)
        try:
            assert viewer.server.get_port() > port
            assert f"viewer: open http://127.0.0.1:{viewer.server.get_port()} in a browser" in caplog.text
        finally:
            viewer.close()


def test_world_poses_turn_scale_and_move_cameras():
    scale_mat = np.eye(4)
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    scale_mat[:3, :3] = 2.0 * turn
    scale_mat[:3, 3] = [10.0, 20.0, 30.0]
    c2w = np.eye(4)[None].repeat(2, 0)
    c2w[1, :3, :3] = turn.T
    c2w[:, :3, 3] = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.5]]
    world = world_poses(c2w, scale_mat)
    np.testing.assert_allclose(world[:, :3, 3], [[10.0, 22.0, 30.0], [10.0, 20.0, 31.0]])
    np.testing.assert_allclose(world[0, :3, :3], turn, atol=1e-12)
    np.testing.assert_allclose(world[1, :3, :3], np.eye(3), atol=1e-12)


def test_cameras_are_frustums_at_their_world_poses_with_thumbnails(untrained, viewer):
    scene = untrained.scene
    viewer.show_cameras(untrained.scene, camera_sets(untrained))
    frustums = {name: h for name, h in nodes(viewer, "/cameras/").items() if "/view" in name}
    assert sorted(frustums) == sorted([f"/cameras/train/view{i:03d}" for i in scene.train_ids]
                                      + [f"/cameras/test/view{i:03d}" for i in scene.test_ids])
    poses = world_poses(scene.c2w.double().numpy(), scene.scale_mat)
    fy = float(scene.intrinsics[0, 1, 1])
    for i in range(scene.n_views):
        handle = frustums[f"/cameras/{'train' if i in scene.train_ids else 'test'}/view{i:03d}"]
        np.testing.assert_allclose(handle.position, poses[i, :3, 3], rtol=1e-5)
        np.testing.assert_allclose(vtf.SO3(np.asarray(handle.wxyz)).as_matrix(), poses[i, :3, :3], atol=1e-5)
        assert handle.fov == pytest.approx(2 * np.arctan(scene.hw[0] / (2 * fy)), rel=1e-5)
        assert handle.aspect == pytest.approx(scene.hw[1] / scene.hw[0])
        assert handle._image_data is not None
    # The browser's first view looks at the object's centre from outside the cameras' ring.
    centre = scene.scale_mat[:3, 3]
    np.testing.assert_allclose(viewer.server.initial_camera.look_at, centre)
    distance = np.linalg.norm(np.asarray(viewer.server.initial_camera.position) - centre)
    assert distance == pytest.approx(1.2 * np.linalg.norm(poses[scene.train_ids[:2], :3, 3] - centre, axis=1).mean())


def test_trainable_cameras_show_learned_and_reference_poses(small_synthetic, tmp_path, viewer):
    system = system_of(small_synthetic, tmp_path, "camera=trainable")
    viewer.show_cameras(system.scene, camera_sets(system))
    n = system.scene.n_views
    learned, reference = (sorted(name for name in nodes(viewer, f"/{key}/") if "/view" in name) for key in ("learned", "reference"))
    assert len(learned) == len(reference) == n
    ref_poses = world_poses(system.cameras.reference_c2w.double().numpy(), system.scene.scale_mat)
    for i, handle in enumerate(viewer.frustums["reference"]):
        np.testing.assert_allclose(handle.position, ref_poses[i, :3, 3], rtol=1e-5)
        assert handle._image_data is None
    assert all(h._image_data is not None for h in viewer.frustums["learned"])


def test_open_run_shows_the_mesh_and_the_held_out_renders_beside_their_images(untrained, viewer, tmp_path, monkeypatch):
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    colors = np.tile([[1.0, 0.0, 0.0]], (len(box.vertices), 1))
    save_mesh(tmp_path / "meshes" / "final.ply", box.vertices.astype(np.float32), box.faces, colors)
    scene = untrained.scene
    # Renders are named by the view's label, as the test phase writes them (a Blender scene's: its file names).
    monkeypatch.setattr(scene, "view_names", [f"r_{i}" for i in range(scene.n_views)])
    view = scene.test_ids[0]
    (tmp_path / "renders").mkdir()
    for key, value in (("rgb", 50), ("normal", 100), ("depth", 150)):
        iio.imwrite(tmp_path / "renders" / f"r_{view}_{key}.png", np.full((24, 32, 3) if key != "depth" else (24, 32), value, np.uint8))
    open_run(viewer, untrained, tmp_path, "final.ply")
    shown = glb_mesh(viewer.mesh.glb_data)
    np.testing.assert_allclose(np.sort(shown.vertices, 0), np.sort(box.vertices, 0), atol=1e-6)
    assert (shown.visual.vertex_colors[:, :3] == [255, 0, 0]).all()
    assert len(nodes(viewer, "/mesh")) == 1
    assert [h.label for h in viewer.renders] == [f"r_{view}"]
    row = viewer.renders[0].image
    assert row.shape == (24, 4 * 32, 3)  # the image | rgb | normal | depth
    image = (np.clip(scene.images[view].numpy(), 0, 1) * 255).astype(np.uint8)[::2, ::2]  # the 64x48 image at the renders' size
    np.testing.assert_array_equal(row[:, :32], image)
    assert [int(row[:, 32 * k:32 * (k + 1)].mean()) for k in (1, 2, 3)] == [50, 100, 150]


def test_open_run_prefers_the_textured_mesh(untrained, viewer, tmp_path):
    box = trimesh.creation.box()
    save_mesh(tmp_path / "meshes" / "final.ply", box.vertices.astype(np.float32), box.faces)
    glb = tmp_path / "meshes" / "final_textured.glb"
    glb.write_bytes(trimesh.creation.icosphere().export(file_type="glb"))
    open_run(viewer, untrained, tmp_path, "final.ply")
    assert viewer.mesh.glb_data == glb.read_bytes()


def fake_trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, global_step=step, max_steps=10, received_sigterm=False, callbacks=[],
                           callback_metrics={"train/loss": torch.tensor(0.25), "val/psnr": torch.tensor(20.0)})


def test_callback_remeshes_only_for_a_connected_browser_and_in_place(untrained):
    callback = ViewerCallback(ViewerSettings(refresh_every=2, mesh_resolution=24))
    callback.on_fit_start(fake_trainer(0), untrained)
    viewer = callback.viewer
    try:
        callback.on_train_batch_end(fake_trainer(1), untrained, None, None, 0)
        assert viewer.mesh is None and not nodes(viewer, "/mesh")  # nobody watching: nothing extracted
        with browser(viewer):
            callback.on_train_batch_end(fake_trainer(1), untrained, None, None, 0)
            first = viewer.mesh
            shown = glb_mesh(first.glb_data)
            vertices, faces = untrained.surface(24)
            assert len(shown.faces) == len(faces) > 100
            np.testing.assert_allclose(np.sort(shown.vertices, 0), np.sort(untrained.to_world(vertices.astype(np.float64)), 0),
                                       rtol=1e-5, atol=1e-3)
            assert shown.visual.vertex_colors[:, :3].std() > 0  # coloured by the colour network, not one colour
            assert "step** 1 / 10" in callback.status.content and "loss: 0.25" in callback.status.content
            callback.on_train_batch_end(fake_trainer(2), untrained, None, None, 0)
            assert viewer.mesh is first and callback.meshed_step == 1
            callback.on_train_batch_end(fake_trainer(3), untrained, None, None, 0)
            assert viewer.mesh is not first and callback.meshed_step == 3
            assert list(nodes(viewer, "/mesh")) == ["/mesh"]  # replaced, not added
    finally:
        callback.teardown(fake_trainer(3), untrained, "fit")
    assert callback.viewer is None


def test_callback_keeps_the_mesh_while_the_surface_is_empty(untrained, monkeypatch):
    callback = ViewerCallback(ViewerSettings(refresh_every=1, mesh_resolution=24))
    callback.on_fit_start(fake_trainer(0), untrained)
    try:
        callback.refresh_mesh(untrained, 1)
        shown = callback.viewer.mesh
        monkeypatch.setattr(untrained, "surface", lambda resolution: (np.zeros((0, 3)), np.zeros((0, 3), np.int64)))
        callback.refresh_mesh(untrained, 2)
        assert callback.viewer.mesh is shown and callback.meshed_step == 2
    finally:
        callback.teardown(fake_trainer(2), untrained, "fit")


def test_pause_button_holds_training_until_resumed(untrained):
    callback = ViewerCallback(ViewerSettings())
    callback.on_fit_start(fake_trainer(0), untrained)
    try:
        callback.toggle_pause()
        assert callback.button.label == "Resume training" and not callback.resumed.is_set()
        step = threading.Thread(target=callback.on_train_batch_end, args=(fake_trainer(1), untrained, None, None, 0))
        step.start()
        step.join(0.5)
        assert step.is_alive()  # training waits after its step
        callback.toggle_pause()
        step.join(5)
        assert not step.is_alive() and callback.button.label == "Pause training"
    finally:
        callback.teardown(fake_trainer(1), untrained, "fit")


def test_normalised_pose_inverts_world_poses():
    rng = np.random.default_rng(0)
    scale_mat = np.eye(4)
    scale_mat[:3, :3] = 3.0 * vtf.SO3.from_rpy_radians(0.3, -0.2, 1.1).as_matrix()
    scale_mat[:3, 3] = [1.0, -2.0, 0.5]
    pose = np.eye(4)
    pose[:3, :3] = vtf.SO3.from_rpy_radians(*rng.normal(size=3)).as_matrix()
    pose[:3, 3] = rng.normal(size=3)
    np.testing.assert_allclose(world_poses(normalised_pose(pose, scale_mat)[None], scale_mat)[0], pose, atol=1e-12)


class FakeClock:
    """Time that passes only while the fake renderer works: ``seconds_per_ray`` for each ray."""

    def __init__(self, seconds_per_ray: float) -> None:
        self.now, self.seconds_per_ray = 0.0, seconds_per_ray

    def __call__(self) -> float:
        return self.now

    def render(self, rays: RayBundle) -> dict[str, torch.Tensor]:
        self.now += self.seconds_per_ray * len(rays)
        return {"rgb": rays.directions.abs()}


def test_a_chunked_render_fills_the_image_over_several_steps_each_chunk_within_the_budget():
    """At 1 ms a ray and a 100 ms budget: a first chunk of 64 rays, then chunks of 100 rays; 1200 rays in 13 steps."""
    clock = FakeClock(1e-3)
    directions = torch.nn.functional.normalize(torch.rand(1200, 3) + 0.1, dim=-1)
    render = ChunkedRender(clock.render, RayBundle(torch.zeros(1200, 3), directions), (30, 40), budget_s=0.1, first_chunk=64,
                           clock=clock)
    filled = []
    while not render.finished:
        render.step()
        filled.append(int((render.image() != 127).any(-1).sum()))
    assert [n for n, _ in render.chunks] == [64] + [100] * 11 + [36]
    assert all(seconds <= 0.1 + 1e-9 for _, seconds in render.chunks)
    assert filled == [min(64 + 100 * k, 1200) for k in range(13)]  # the image fills row-major, step by step
    np.testing.assert_array_equal(render.image(), (directions.numpy() * 255).astype(np.uint8).reshape(30, 40, 3))


def test_a_chunked_render_grows_its_chunks_at_most_twice_a_step_and_shrinks_them_when_slower():
    clock = FakeClock(1e-5)
    rays = RayBundle(torch.zeros(20000, 3), torch.ones(20000, 3) / 3 ** 0.5)
    render = ChunkedRender(clock.render, rays, (100, 200), budget_s=0.1, first_chunk=64, clock=clock)
    for _ in range(3):
        render.step()
    clock.seconds_per_ray = 1e-3  # a slower step (say a grid update on the same device)
    render.step()
    render.step()
    assert [n for n, _ in render.chunks] == [64, 128, 256, 512, 100]


def test_callback_renders_the_browsers_view_a_chunk_after_each_step(untrained):
    """The button's render of a browser's camera: begun after the next step, a chunk after each step, shown in the
    panel; the finished image is the system's render of that camera."""
    callback = ViewerCallback(ViewerSettings(refresh_every=1000, mesh_resolution=16, render_resolution=16))
    callback.on_fit_start(fake_trainer(0), untrained)
    viewer = callback.viewer
    try:
        with browser(viewer):
            camera = next(iter(viewer.server.get_clients().values())).camera
            callback.request_render(camera)
            intrinsics, c2w, h, w = browser_view(camera, untrained.scene.scale_mat, 16)
            assert (h, w) == (12, 16)  # the browser's 800x600 window, 16 pixels on its longer side
            callback.on_train_batch_end(fake_trainer(1), untrained, None, None, 0)
            first = callback.render_image.image.copy()
            assert callback.render.done == 16 and (first.reshape(-1, 3)[16:] == 127).all()  # a first chunk of 16 rays
            assert "render: 8 % (16 rays a chunk)" in callback.status.content
            steps = 1
            while callback.rendering:
                callback.on_train_batch_end(fake_trainer(1 + steps), untrained, None, None, 0)
                steps += 1
            assert steps >= 3 and callback.render.done == h * w
            expected = untrained.render_image(torch.as_tensor(intrinsics, dtype=torch.float32),
                                              torch.as_tensor(c2w, dtype=torch.float32), h, w)["rgb"]
            expected = (expected.clamp(0, 1) * 255).byte().numpy()
            assert np.abs(callback.render.image().astype(int) - expected).max() <= 1
            assert callback.render_image.image.shape == (h, w, 3)
            assert untrained.training is False  # the module's mode is restored (the fixture is in eval mode)
    finally:
        callback.teardown(fake_trainer(1), untrained, "fit")


def test_a_paused_run_still_finishes_a_requested_render(untrained):
    callback = ViewerCallback(ViewerSettings(refresh_every=1000, mesh_resolution=16, render_resolution=24))
    callback.on_fit_start(fake_trainer(0), untrained)
    try:
        with browser(callback.viewer):
            callback.toggle_pause()
            step = threading.Thread(target=callback.on_train_batch_end, args=(fake_trainer(1), untrained, None, None, 0))
            step.start()
            callback.request_render(next(iter(callback.viewer.server.get_clients().values())).camera)
            for _ in range(200):
                if callback.render is not None and callback.render.finished:
                    break
                time.sleep(0.05)
            assert callback.render.finished and step.is_alive()
            callback.toggle_pause()
            step.join(5)
            assert not step.is_alive()
    finally:
        callback.teardown(fake_trainer(1), untrained, "fit")


def test_the_status_shows_the_time_left_in_a_time_budget(untrained):
    budget = TimeBudget(100.0, reference_steps=10, clock=lambda: 5.0)  # 1 % in reserve, started at 0, 5 s spent
    callback = ViewerCallback(ViewerSettings())
    callback.on_fit_start(fake_trainer(0), untrained)
    try:
        trainer = fake_trainer(3)
        trainer.callbacks = [budget]
        callback.show_status(trainer)
        assert "about 94 s left in the time budget" in callback.status.content
    finally:
        callback.teardown(fake_trainer(3), untrained, "fit")


def test_the_frame_slider_of_a_sequence_run_switches_the_frame_meshes(untrained, tmp_path, viewer):
    scene = untrained.scene  # the first frame's
    run_dir = tmp_path / "run"
    shapes = [trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=1), trimesh.creation.cylinder(radius=0.5, height=1.0, sections=8)]
    for i, shape in enumerate(shapes):
        save_mesh(run_dir / "meshes" / f"frame_{i:04d}.ply", shape.vertices.astype(np.float32), shape.faces)
    slider = open_sequence(viewer, scene, run_dir)
    assert (slider.min, slider.max, slider.value) == (0, 2, 0)
    assert len([n for n in nodes(viewer, "/cameras/") if "/view" in n]) == scene.n_views

    def shown_faces() -> int:
        return len(glb_mesh(viewer.mesh.glb_data).faces)

    assert shown_faces() == len(shapes[0].faces)
    for frame in (2, 1, 0):
        slider.value = frame
        assert shown_faces() == len(shapes[frame].faces)
        assert list(nodes(viewer, "/mesh")) == ["/mesh"]


def test_view_mode_of_a_sequence_run_serves_its_frames(tmp_path, monkeypatch):
    """mode=view resume=RUN of a sequence serves the run with its first frame's cameras (open_sequence: the slider);
    without resume it is refused, and the live viewer of a sequence points to it."""
    root = generate_sequence(str(tmp_path / "sequence"), n_frames=1, n_views=4, width=32, height=24)
    run_dir = tmp_path / "run"
    served = {}
    monkeypatch.setattr(modes, "serve_sequence", lambda scene, folder, host, port: served.update(scene=scene, folder=folder,
                                                                                                 address=(host, port)) or "URL")
    base = ["dataset=sequence", f"dataset.root={root}", "encoder.compile=false"]
    with pytest.raises(InputError, match="mode=view needs resume"):
        launch.run(compose_config([*base, "mode=view"]), run_dir)
    with pytest.raises(InputError, match="open a sequence run with mode=view resume=RUN"):
        launch.run(compose_config([*base, "viewer.enabled=true"]), run_dir)
    assert not served
    assert launch.run(compose_config([*base, "mode=view", f"resume={run_dir}", "viewer.port=8123"]), run_dir) == {"viewer": "URL"}
    assert served["folder"] == run_dir and served["address"] == ("127.0.0.1", 8123)
    assert served["scene"].name.endswith("frame_0000") and served["scene"].n_views == 4
