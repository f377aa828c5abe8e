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

from systems.assembly import build_system, compose_config
from systems.config import Viewer as ViewerSettings
from systems.mesh_io import save_mesh
from systems.viewer import Viewer, ViewerCallback, open_run, world_poses


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
    viewer.show_cameras(untrained)
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
    viewer.show_cameras(system)
    n = system.scene.n_views
    learned, reference = (sorted(name for name in nodes(viewer, f"/{key}/") if "/view" in name) for key in ("learned", "reference"))
    assert len(learned) == len(reference) == n
    ref_poses = world_poses(system.cameras.reference_c2w.double().numpy(), system.scene.scale_mat)
    for i, handle in enumerate(viewer.frustums["reference"]):
        np.testing.assert_allclose(handle.position, ref_poses[i, :3, 3], rtol=1e-5)
        assert handle._image_data is None
    assert all(h._image_data is not None for h in viewer.frustums["learned"])


def test_open_run_shows_the_mesh_and_the_held_out_renders(untrained, viewer, tmp_path):
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    colors = np.tile([[1.0, 0.0, 0.0]], (len(box.vertices), 1))
    save_mesh(tmp_path / "meshes" / "final.ply", box.vertices.astype(np.float32), box.faces, colors)
    view = untrained.scene.test_ids[0]
    (tmp_path / "renders").mkdir()
    for key, image in (("rgb", np.zeros((24, 32, 3), np.uint8)), ("normal", np.zeros((24, 32, 3), np.uint8)),
                       ("depth", np.zeros((24, 32), np.uint8))):
        iio.imwrite(tmp_path / "renders" / f"view{view:03d}_{key}.png", image)
    open_run(viewer, untrained, tmp_path, "final.ply")
    shown = glb_mesh(viewer.mesh.glb_data)
    np.testing.assert_allclose(np.sort(shown.vertices, 0), np.sort(box.vertices, 0), atol=1e-6)
    assert (shown.visual.vertex_colors[:, :3] == [255, 0, 0]).all()
    assert len(nodes(viewer, "/mesh")) == 1
    assert [h.label for h in viewer.renders] == [f"view {view}"]
    assert viewer.renders[0].image.shape == (24, 4 * 32, 3)  # the image | rgb | normal | depth


def test_open_run_prefers_the_textured_mesh(untrained, viewer, tmp_path):
    box = trimesh.creation.box()
    save_mesh(tmp_path / "meshes" / "final.ply", box.vertices.astype(np.float32), box.faces)
    glb = tmp_path / "meshes" / "final_textured.glb"
    glb.write_bytes(trimesh.creation.icosphere().export(file_type="glb"))
    open_run(viewer, untrained, tmp_path, "final.ply")
    assert viewer.mesh.glb_data == glb.read_bytes()


def fake_trainer(step: int) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, global_step=step, max_steps=10, received_sigterm=False,
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
        assert callback.button.label == "Resume training"
        step = threading.Thread(target=callback.on_train_batch_start, args=(fake_trainer(1), untrained, None, 0))
        step.start()
        step.join(0.5)
        assert step.is_alive()  # the next step waits
        callback.toggle_pause()
        step.join(5)
        assert not step.is_alive() and callback.button.label == "Pause training"
    finally:
        callback.teardown(fake_trainer(1), untrained, "fit")
