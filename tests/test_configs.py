"""Every option of every config group, and every experiment, composes and passes launch.py's start-up checks."""
import pytest

from systems.assembly import CONFIG_DIR, check_config, compose_config

GROUP_OPTIONS = [f"{group.name}={option.stem}" for group in sorted(CONFIG_DIR.iterdir()) if group.is_dir()
                 for option in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("override", GROUP_OPTIONS)
def test_every_group_option_composes_and_checks(override: str) -> None:
    check_config([override])  # raises InputError on unknown keys, wrong types or bad _target_ arguments


def test_experiments_set_what_their_names_say() -> None:
    dtu = compose_config(["experiment=dtu-neus", "scan=37"])
    assert dtu.dataset.root.endswith("dtu/scan37") and dtu.system.model._target_ == "models.neus.NeuSModel"
    assert (dtu.trainer.max_time, dtu.trainer.max_steps, dtu.system.eval_downscale) == ("00:00:20:00", None, 2)  # a 20-minute budget
    gpu = compose_config(["experiment=dtu-neus-gpu"])
    assert gpu.dataset.root.endswith("dtu/scan24") and gpu.encoder.finest_resolution == 2048
    assert (gpu.encoder.n_levels, gpu.encoder.log2_table_size, gpu.system.rays.target_samples) == (16, 19, 262144)
    idr = compose_config(["experiment=idr-noisy-cameras", "trainer.max_steps=7"])
    assert idr.system.model._target_ == "models.idr.IDRModel" and idr.camera._target_.endswith("TrainableCameras")
    assert (idr.camera.noise.rotation_deg, idr.encoder.window_end, idr.trainer.max_steps) == (3, 1000, 7)  # the command line wins
    assert compose_config([]).get("experiment") is None


def test_runs_of_a_scene_folder_are_named_after_it() -> None:
    assert compose_config(["dataset=ngp", "dataset.root=/data/scenes/fox/"]).name == "neus-fox"
    assert compose_config(["dataset=colmap", "dataset.root=scenes/mine", "system=idr"]).name == "idr-mine"
    assert compose_config(["dataset=ngp"]).name == "neus-ngp"  # root not given yet: load_scene asks for it
