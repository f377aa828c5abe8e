"""Typed configuration: the one source of defaults for every config section that is not a
``_target_`` object (those take their arguments from their constructors).

The dataclasses serve twice: systems take them as arguments (a notebook builds ``NeuSLoss(mask=0)``),
and :func:`register_configs` stores them as Hydra structured configs that ``configs/*.yaml`` extend,
so a value of the wrong type or an unknown key fails when the config is composed, before anything
runs. ``python launch.py --cfg job`` prints the composed config with every default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from core.errors import InputError

from systems.schedules import scheduled

T = TypeVar("T")
EVAL_PROTOCOLS = ("masked", "dtu_official")
VIDEO_PATHS = ("turntable", "cameras", "both")


def as_section(cls: type[T], value: T | dict | None) -> T:
    """``value`` as the dataclass ``cls``: None gives the defaults, a mapping is checked key by key
    (TypeError naming an unknown key)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return cls(**value)


def field_key(section: Any, name: str) -> str:
    """The config key of field ``name`` of ``section``: ``KEY.name`` for a top-level section (its ``KEY``), else
    ``name`` (:func:`systems.validation.check_sections` prefixes the section's own key)."""
    key = getattr(section, "KEY", None)
    return f"{key}.{name}" if key else name


def at_least(section: Any, minimum: float, *names: str, strict: bool = False) -> None:
    """Refuse (InputError naming the field) a numeric field of ``section`` below ``minimum`` (or equal to it,
    ``strict``); None (unset) passes. Called by the sections' ``__post_init__``, which launch.py runs at start
    (:func:`systems.validation.check_sections`), so a bad value stops before a run directory exists, not late in the run."""
    for name in names:
        value = getattr(section, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (value <= minimum if strict else value < minimum):
            raise InputError(field_key(section, name), f"must be {'greater than' if strict else 'at least'} {minimum}, got {value}")


def one_of(section: Any, name: str, choices: tuple[str, ...]) -> None:
    """Refuse (InputError naming the field) a string field of ``section`` that is none of ``choices``."""
    value = getattr(section, name)
    if value not in choices:
        raise InputError(field_key(section, name), f"unknown value {value!r}; choose one of {', '.join(choices)}")


def parse_duration(text: str) -> float:
    """Seconds of a ``DD:HH:MM:SS`` duration (Lightning's ``max_time`` format; fewer fields count from the right)."""
    fields = [float(f) for f in str(text).split(":")]
    if not 1 <= len(fields) <= 4 or any(f < 0 for f in fields):
        raise ValueError(f"expected DD:HH:MM:SS, got {text!r}")
    return sum(f * unit for f, unit in zip(reversed(fields), (1, 60, 3600, 86400)))


@dataclass
class Optim:
    """Learning rates per parameter group, and their schedule (:func:`systems.schedules.warmup_decay`):
    a linear warm-up, then an exponential decay to ``final_lr_ratio`` at ``decay_steps``."""

    lr: float = 0.01
    lr_encoder: float | None = None   # None: lr
    lr_geometry: float | None = None  # None: lr
    lr_texture: float | None = None   # None: lr
    lr_variance: float | None = None  # NeuS's inverse variance; None: lr
    lr_background: float | None = None  # the background field (system.background=nerf); None: lr
    lr_camera: float = 1.5e-3         # camera=trainable: preconditioned pose residuals (about radians)
    lr_motion: float = 1e-2           # a sequence's per-frame rigid object motion (radians, normalised units); no warm-up
    camera_warmup_steps: int = 50     # cameras wait this many steps, then ramp up as long
    camera_decay_steps: int | None = 3000  # the camera rate reaches final_lr_ratio by this step at the latest, then
    #                                        decays on (longer NeuS runs drift otherwise); None: follow the run
    warmup_steps: int = 100
    final_lr_ratio: float = 0.1
    decay_steps: int | None = None    # None: the run's length (trainer.max_steps, or schedule_steps in a budgeted run)

    def __post_init__(self) -> None:
        at_least(self, 0, "lr", "lr_encoder", "lr_geometry", "lr_texture", "lr_variance", "lr_background", "lr_camera", "lr_motion",
                 "camera_warmup_steps", "warmup_steps")
        at_least(self, 1, "camera_decay_steps", "decay_steps")
        at_least(self, 0, "final_lr_ratio", strict=True)

    def group_lr(self, group: str) -> float:
        """The learning rate of parameter group ``group`` (``lr_<group>``, or ``lr`` when that is None)."""
        value = getattr(self, f"lr_{group}")
        return self.lr if value is None else value


@dataclass
class IDROptim(Optim):
    """IDR's rates: one learning rate for all networks, no warm-up."""

    lr: float = 5e-4
    camera_decay_steps: int | None = None  # IDR's long runs were not seen to drift (docs/BENCHMARKS.md)
    warmup_steps: int = 0


@dataclass
class Optimizer:
    """``system.optimizer``: the optimiser class and its arguments, called with the parameter groups
    (learning rates from ``system.optim``); e.g. ``system.optimizer._target_=torch.optim.AdamW``."""

    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-15


@dataclass
class IDROptimizer(Optimizer):
    eps: float = 1e-8


@dataclass
class Scheduler:
    """``system.scheduler``: a function ``(optimizer, optim section, max_steps) -> LR scheduler``, stepped every step."""

    _target_: str = "systems.schedules.warmup_decay"
    _partial_: bool = True


@dataclass
class NeuSLoss:
    """Loss weights; each a constant or a schedule (``systems.schedules.scheduled``)."""

    rgb_l1: Any = 1.0
    rgb_mse: Any = 0.0
    eikonal: Any = 0.1
    mask: Any = 0.1          # BCE of the opacity against the masks (scenes with masks)
    # Neuralangelo's curvature loss, mean |Laplacian of the SDF| on the ray samples; a list of schedules
    # multiplies, e.g. [{start: 0, end: 5.0e-4, end_step: 300}, {start: 1, end: 0.1, start_step: 300, end_step: 1500, kind: exp}]
    curvature: Any = 0.0
    eikonal_points: int = 1024  # uniform points in the bounding cube per step, besides the ray samples

    def __post_init__(self) -> None:
        at_least(self, 0, "eikonal_points")

    def weights(self, step: int) -> dict[str, float]:
        """The weight of every loss term at ``step``."""
        return {f.name: scheduled(getattr(self, f.name), step) for f in dataclasses.fields(self) if f.name != "eikonal_points"}


@dataclass
class IDRLoss:
    """IDR's loss weights (each a constant or a schedule) and its mask-loss sharpness schedule."""

    rgb: Any = 1.0
    mask: Any = 100.0
    eikonal: Any = 0.1
    curvature: Any = 0.0      # Neuralangelo's curvature loss on the traced surface points
    eikonal_points: int = 512  # IDR: half the rays
    alpha_init: float = 50.0
    alpha_factor: float = 2.0
    alpha_milestones: list[int] = field(default_factory=lambda: [250, 500, 750, 1000, 1250])

    def __post_init__(self) -> None:
        at_least(self, 0, "eikonal_points")
        at_least(self, 0, "alpha_init", "alpha_factor", strict=True)

    def weights(self, step: int) -> dict[str, float]:
        """The weight of every loss term at ``step``."""
        return {k: scheduled(getattr(self, k), step) for k in ("rgb", "mask", "eikonal", "curvature")}


@dataclass
class Rays:
    """NeuS's rays per step adapt so that the samples per step stay near ``target_samples``."""

    initial: int = 512
    min: int = 64
    max: int = 8192
    target_samples: int = 24576

    def __post_init__(self) -> None:
        at_least(self, 1, "initial", "min", "max", "target_samples")
        if not self.min <= self.initial <= self.max:
            raise InputError("initial", f"must lie between min and max ({self.min} <= {self.initial} <= {self.max} does not hold)")


@dataclass
class VisualHull:
    """NeuS's occupancy grid is carved from the masks before the first step."""

    enabled: bool = True
    dilation: int = 4        # pixels added to every mask before carving
    tolerance: int = 0       # views that may see a kept cell outside their mask
    trainable_margin_deg: float | None = 4.0  # camera=trainable: carve from the starting poses, the masks dilated by this
    #                                           further view angle (the pose error the hull tolerates); None: no hull

    def __post_init__(self) -> None:
        at_least(self, 0, "dilation", "tolerance", "trainable_margin_deg")


@dataclass
class BackgroundFieldConfig:
    """``system.background=nerf``: the sizes of :class:`models.background.BackgroundField`, the NeRF++
    field outside the bounding sphere."""

    n_samples: int = 32      # per ray, uniform in inverse radius
    hidden_dim: int = 64
    n_layers: int = 2
    n_frequencies: int = 6   # of the inverted-sphere coordinates (x/r, y/r, z/r, 1/r)
    sh_degree: int = 4       # of the view direction

    def __post_init__(self) -> None:
        at_least(self, 1, "n_samples", "hidden_dim", "n_layers", "sh_degree")
        at_least(self, 0, "n_frequencies")
        if self.sh_degree > 4:
            raise InputError("sh_degree", f"must be at most 4 (the spherical harmonics we evaluate), got {self.sh_degree}")


@dataclass
class SystemConfig:
    """What both systems share; ``model`` is a ``_target_`` object (configs/system/*.yaml)."""

    _target_: str = MISSING
    name: str = MISSING
    model: Any = MISSING
    # black | white | random | learned (a constant colour) | nerf (a background field outside the bounding
    # sphere, NeuS only); NeuS switches a constant one to nerf when the scene trains without masks
    background: str = "${dataset.background}"
    background_field: BackgroundFieldConfig = field(default_factory=BackgroundFieldConfig)
    render_chunk: int = 4096
    eval_downscale: int = 1
    scheduler: Scheduler = field(default_factory=Scheduler)

    def __post_init__(self) -> None:
        at_least(self, 1, "render_chunk", "eval_downscale", *(["n_rays"] if hasattr(self, "n_rays") else []))
        at_least(self, 0, *(["cos_anneal_steps"] if hasattr(self, "cos_anneal_steps") else []))


@dataclass
class VolumeConfig(SystemConfig):
    """What the volume-rendering systems (NeuS, VolSDF) share."""

    rays: Rays = field(default_factory=Rays)
    loss: NeuSLoss = field(default_factory=NeuSLoss)
    visual_hull: VisualHull = field(default_factory=VisualHull)
    optim: Optim = field(default_factory=Optim)
    optimizer: Optimizer = field(default_factory=Optimizer)


@dataclass
class NeuSConfig(VolumeConfig):
    _target_: str = "systems.neus.NeuSSystem"
    name: str = "neus"
    cos_anneal_steps: int = 200


@dataclass
class VolSDFConfig(NeuSConfig):
    """VolSDF extends NeuS's config (configs/system/volsdf.yaml), without its cosine annealing."""

    _target_: str = "systems.volsdf.VolSDFSystem"
    name: str = "volsdf"
    cos_anneal_steps: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cos_anneal_steps != 0:
            raise InputError("cos_anneal_steps", "VolSDF has no cosine annealing (its opacity does not use the SDF's slope); leave it 0")


@dataclass
class IDRConfig(SystemConfig):
    _target_: str = "systems.idr.IDRSystem"
    name: str = "idr"
    n_rays: int = 1024
    loss: IDRLoss = field(default_factory=IDRLoss)
    optim: IDROptim = field(default_factory=IDROptim)
    optimizer: IDROptimizer = field(default_factory=IDROptimizer)


@dataclass
class Trainer:
    """``trainer``: arguments of Lightning's ``Trainer`` (more with ``+trainer.KEY=VALUE``, checked against its
    signature); launch.py adds the callbacks, the logger and the run directory's fixed settings.
    ``checkpoint_every_n_steps`` (the default of ``callbacks.checkpoint.every_n_train_steps``) and
    ``schedule_steps`` are ours.

    The run's length: ``max_steps`` trains that many steps with the schedules as written (``max_time`` then
    only caps it); ``max_time`` without ``max_steps`` is a budget, spent on as many steps as fit
    (:class:`systems.callbacks.TimeBudget`), every step schedule stretched from ``schedule_steps`` to them;
    neither trains ``schedule_steps`` steps. ``scale_schedules`` stretches the schedules to an explicit ``max_steps``
    too, as a budget would (a time budget's schedules, reproducible by step count)."""

    _target_: str = "pytorch_lightning.Trainer"
    max_steps: int | None = None
    max_time: str | None = None    # DD:HH:MM:SS of training (evaluation comes after); a budget without max_steps
    schedule_steps: int = 1500     # the run length that step schedules (rates, levels, annealing, loss weights) are written for
    scale_schedules: bool = False  # true: stretch them from schedule_steps to max_steps (false: max_steps keeps them as written)
    val_check_interval: int = 500
    log_every_n_steps: int = 25
    checkpoint_every_n_steps: int = 250
    accelerator: str = "auto"
    devices: Any = 1               # how many (or which, [0, 2]) devices; more than one with strategy=ddp
    num_nodes: int = 1
    strategy: str = "auto"         # ddp: one process per device, each on its own rays, gradients averaged
    precision: str = "32-true"     # 16-mixed or bf16-mixed: mixed precision
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None  # norm (Lightning's default) | value

    def __post_init__(self) -> None:
        if self.max_steps != -1:  # -1: no step limit (max_time ends the run)
            at_least(self, 1, "max_steps")
        at_least(self, 1, "val_check_interval", "log_every_n_steps", "checkpoint_every_n_steps", "num_nodes", "schedule_steps")
        if self.max_time is not None:
            try:
                seconds = parse_duration(self.max_time)
            except ValueError as err:
                raise InputError("max_time", str(err)) from err
            if seconds < 1:
                raise InputError("max_time", f"must be at least one second, got {self.max_time!r}")
        at_least(self, 0, "gradient_clip_val")


@dataclass
class CheckpointCallback:
    """``callbacks.checkpoint``: periodic and last checkpoints, ``checkpoints/stepNNNNNN.ckpt`` and
    ``last.ckpt`` (launch.py sets the folder)."""

    _target_: str = "pytorch_lightning.callbacks.ModelCheckpoint"
    filename: str = "step{step:06d}"
    auto_insert_metric_name: bool = False
    every_n_train_steps: int = II("trainer.checkpoint_every_n_steps")
    save_top_k: int = -1
    save_last: bool = True
    enable_version_counter: bool = False  # a resumed run that saves a step again replaces its file (no step...-v1.ckpt)


@dataclass
class LearningRateMonitorCallback:
    """``callbacks.lr_monitor``: every parameter group's learning rate in TensorBoard."""

    _target_: str = "pytorch_lightning.callbacks.LearningRateMonitor"
    logging_interval: str = "step"


@dataclass
class Logger:
    """``logger``: launch.py writes it to the run directory's ``tensorboard/`` (it sets save_dir, name and version)."""

    _target_: str = "pytorch_lightning.loggers.TensorBoardLogger"


@dataclass
class Export:
    """``export``: the mesh written after training (mode=train, test, export)."""

    KEY: ClassVar[str] = "export"
    resolution: int | None = None  # marching-cubes grid; None: 512 on a GPU, 192 on the CPU
    largest_component: bool = True
    vertex_colors: bool = True
    filename: str | None = None    # .ply, .obj or .glb; None: final.ply, or final_<target_faces>.ply when decimated
    target_faces: int | None = None  # decimate the mesh to at most this many faces (quadric edge collapse)
    texture: bool = False          # also write <stem>_textured.obj/.mtl/.png/.glb: a UV atlas with baked colours
    texture_size: int = 1024       # texture side in texels
    points: int = 0                # also write <stem>_points.ply: this many surface points with normals and colours; 0: off

    def __post_init__(self) -> None:
        at_least(self, 0, "points")
        at_least(self, 8, "resolution")
        at_least(self, 4, "target_faces")  # a tetrahedron
        at_least(self, 16, "texture_size")


@dataclass
class Video:
    """mode=video: MP4s of RGB and normals along a camera path."""

    KEY: ClassVar[str] = "video"
    frames: int = 60
    fps: int = 30
    size: int = 256                # longer side of the frames in pixels (at most the images')
    path: str = "turntable"        # turntable | cameras (through the training cameras) | both

    def __post_init__(self) -> None:
        at_least(self, 1, "frames", "fps")
        at_least(self, 8, "size")
        one_of(self, "path", VIDEO_PATHS)


@dataclass
class Eval:
    """``eval``: how the exported mesh is scored (systems.callbacks.Evaluation)."""

    KEY: ClassVar[str] = "eval"
    chamfer_points: int = 200000
    max_dist: float = 20.0         # DTU caps distances at 20 world units
    mask_dilation: int = 12        # pixels; the prediction is culled to the dilated masks of the views that see it
    protocol: str = "masked"       # masked (the above, against the scene's GT) | dtu_official (DTU's own evaluation files)
    dtu_dir: str | None = None     # dtu_official: the folder holding Points/stl/stl{scan:03}_total.ply and ObsMask/ (top-level scan)

    def __post_init__(self) -> None:
        at_least(self, 1, "chamfer_points")
        at_least(self, 0, "mask_dilation")
        at_least(self, 0, "max_dist", strict=True)
        one_of(self, "protocol", EVAL_PROTOCOLS)
        if self.protocol == "dtu_official" and self.dtu_dir is None:
            raise InputError("eval.dtu_dir", "eval.protocol=dtu_official needs eval.dtu_dir=DIR (holding Points/stl and ObsMask) and scan")


@dataclass
class SequenceSettings:
    """``sequence``: how a dynamic scene (dataset=sequence, dataset=synthetic_sequence) is trained frame by
    frame (systems/sequence.py); NeuS2's step counts are the defaults."""
    first_frame_steps: int = 2000
    next_frame_steps: int = 1300
    global_motion_steps: int = 300  # before each next frame's field: fit only the object's rigid motion (0: off)
    warm_start: bool = True         # false: the baseline, every frame from scratch for first_frame_steps
    fps: int = 5                    # of video/sequence.mp4

    def __post_init__(self) -> None:
        at_least(self, 1, "first_frame_steps", "next_frame_steps", "fps")
        at_least(self, 0, "global_motion_steps")


@dataclass
class Viewer:
    """The live viewer in the browser (systems/viewer.py): ``viewer.enabled=true`` while training, ``mode=view`` after."""

    enabled: bool = False
    host: str = "127.0.0.1"        # localhost only; another address (0.0.0.0: every interface) must be named here
    port: int = 0                  # 0: a free port; a port in use: the next free one (the address is logged)
    refresh_every: int = 50        # re-mesh the surface every this many steps (only while a browser is connected)
    mesh_resolution: int = 64      # marching-cubes grid of the live mesh
    render_resolution: int = 96    # longer side of the live render of the browser's view (button "Render view"), pixels

    def __post_init__(self) -> None:
        at_least(self, 0, "port")
        at_least(self, 1, "refresh_every")
        at_least(self, 8, "mesh_resolution")
        at_least(self, 8, "render_resolution")


@dataclass
class Config:
    """The top level (configs/config.yaml chooses the groups)."""

    encoder: Any = MISSING
    system: Any = MISSING
    dataset: Any = MISSING
    camera: Any = MISSING
    name: str = "${system.name}-${dataset.name}"
    scan: int = 24                 # DTU scan id, used by dataset=dtu
    data_dir: str = "data"         # where datasets live (the synthetic scene is generated and cached here)
    seed: int = 42
    mode: str = "train"            # train | test | eval | export | inspect_init | transfer | video | view (see --help)
    resume: str | None = None      # a run directory or a checkpoint to continue / evaluate; auto: this run's own
                                   # folder if it has a checkpoint, else a fresh start (requeued cluster jobs, re-run sweeps)
    geometry_run: str | None = None    # mode=transfer: the run whose geometry is rendered ...
    appearance_run: str | None = None  # ... with the colour network of this run
    trust_run_targets: bool = False  # let a run folder's saved config (resume=, mode=transfer) name any _target_,
    #                                  not only ours, torch.optim and Lightning's (README, "Sharing runs")
    objective: str | None = None   # a key of metrics.json that the job returns (NaN if it failed), e.g. chamfer, for
                                   # sweepers that optimise it: hydra/sweeper=optuna (optional plugin, see README)
    trainer: Trainer = field(default_factory=Trainer)
    # named Lightning callbacks (null drops one; +callbacks.NAME={_target_: ...} adds one) and the logger
    callbacks: dict[str, Any] = field(default_factory=lambda: {"checkpoint": CheckpointCallback(),
                                                               "lr_monitor": LearningRateMonitorCallback()})
    logger: Logger = field(default_factory=Logger)
    export: Export = field(default_factory=Export)
    eval: Eval = field(default_factory=Eval)
    video: Video = field(default_factory=Video)
    sequence: SequenceSettings = field(default_factory=SequenceSettings)
    viewer: Viewer = field(default_factory=Viewer)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore, outside every config group: ``config_schema``
    (configs/config.yaml), ``neus_schema``, ``volsdf_schema`` and ``idr_schema`` (configs/system/*.yaml, ``@_here_``)."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    store.store(name="neus_schema", node=NeuSConfig)
    store.store(name="volsdf_schema", node=VolSDFConfig)
    store.store(name="idr_schema", node=IDRConfig)
    # ${basename:PATH}: a folder's own name (a run of dataset=ngp dataset.root=DIR is named after DIR)
    OmegaConf.register_new_resolver("basename", lambda path: Path(str(path)).name, replace=True)
