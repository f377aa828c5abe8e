from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import trimesh

from datasets.scene import Scene
from systems.callbacks import Evaluation
from systems.mesh_io import save_mesh


def test_an_empty_exported_mesh_scores_the_distance_cap(tmp_path: Path) -> None:
    """A run that found no surface exports an empty mesh; evaluation scores it max_dist instead of stopping."""
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "gt.ply")
    save_mesh(tmp_path / "mesh.ply", np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    scene = Scene(images=torch.zeros(1, 4, 4, 3), masks=None, intrinsics=torch.eye(3)[None], c2w=torch.eye(4)[None],
                  scale_mat=np.eye(4), train_ids=[0], test_ids=[], root=str(tmp_path), name="empty",
                  gt_path=str(tmp_path / "gt.ply"))
    evaluation = Evaluation(tmp_path, tmp_path / "mesh.ply", chamfer_points=1000, max_dist=7.0)
    assert evaluation.chamfer(SimpleNamespace(scene=scene)) == {"chamfer": 7.0, "accuracy": 7.0, "completeness": 7.0}
