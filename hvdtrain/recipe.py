"""Recipes: YAML files validated by pydantic models that forbid unknown keys.

``load_recipe(source, overrides)`` returns a ``Recipe`` or raises ``UserError`` listing every problem
at once: file, dotted key, line, what was expected, and "did you mean" for misspelt keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from hvdtrain.errors import UserError
from hvdtrain.recipe_types import (
    Channel,
    Fraction,
    NonNegFloat,
    NonNegInt,
    NotBool,
    PosFloat,
    PosInt,
    Section,
    StdChannel,
    component_name,
    safe_path,
)
from hvdtrain.recipe_yaml import SafeLoader
from hvdtrain.rules import device_problems
from hvdtrain.schedule import LRConfig, steps_per_epoch

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IFACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")  # Linux IFNAMSIZ is 16 with NUL

MAX_RECIPE_BYTES = 256 << 10  # a recipe is a few KiB; this bounds the time to validate one
MAX_PROBLEMS = 50  # listed per recipe; the rest are counted
IN_MEMORY = ("digits", "synthetic", "mnist", "cifar10")  # loaded whole into every worker
MAX_LOADER_WORKERS = 64
MIN_POWERSGD_WARMUP = 10  # PyTorch's powerSGD_hook default (start_powerSGD_iter)


class SyntheticConfig(Section):
    image_shape: tuple[PosInt, PosInt, PosInt] = (3, 32, 32)
    num_classes: PosInt = 10
    train_samples: PosInt = 8192
    eval_samples: PosInt = 1024


class DataConfig(Section):
    dataset: Literal["digits", "synthetic", "mnist", "cifar10", "imagefolder", "component"] = \
        "digits"
    data_dir: str | None = None
    batch_size: PosInt = 32
    eval_batch_size: PosInt = 256
    loader_workers: Annotated[int, NotBool, Field(ge=0, le=MAX_LOADER_WORKERS)] = 0
    image_size: Annotated[int, NotBool, Field(ge=8, le=4096)] = 224  # imagefolder
    augment: bool = True  # imagefolder: random-resized crop + horizontal flip for training
    mean: tuple[Channel, Channel, Channel] = (0.485, 0.456, 0.406)  # imagefolder (ImageNet's)
    std: tuple[StdChannel, StdChannel, StdChannel] = (0.229, 0.224, 0.225)
    on_bad_image: Literal["stop", "skip"] = "stop"  # imagefolder: an image that fails to decode
    component: str | None = None  # dataset: component -> "package.module:factory"
    kwargs: dict[str, Any] = {}  # passed to the data component
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("component")
    @classmethod
    def _component_form(cls, v: str | None) -> str | None:
        return component_name(v, "data.component")

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.dataset in ("mnist", "cifar10", "imagefolder") and not self.data_dir:
            raise ValueError(f"dataset {self.dataset!r} reads files: set data.data_dir to their "
                             "directory")
        if (self.dataset == "component") != (self.component is not None):
            raise ValueError("dataset: component and component: \"package.module:factory\" go "
                             "together: set both, or neither")
        if self.loader_workers and self.dataset in IN_MEMORY:
            raise ValueError(f"loader_workers applies to imagefolder and component data sets: "
                             f"{self.dataset!r} is held in memory and loads nothing per step; "
                             "set loader_workers: 0")
        safe_path(self.data_dir, "data_dir")
        return self


class ModelConfig(Section):
    arch: Literal["small_cnn", "resnet", "resnet18"] = "small_cnn"
    width: PosInt = 32  # channels of the first conv layer
    depth: Annotated[int, NotBool, Field(ge=1, le=8)] = 2  # residual blocks per stage (resnet)
    dropout: Fraction = 0.0
    component: str | None = None  # your own model: "package.module:factory"
    kwargs: dict[str, Any] = {}  # passed to the component with input_shape and num_classes

    @field_validator("component")
    @classmethod
    def _component_form(cls, v: str | None) -> str | None:
        return component_name(v, "model.component")


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    base_lr: PosFloat = 0.05  # per worker; scaled by world size under the linear rule
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, NotBool, Field(ge=0, le=1)] = 0.0
    lr_scaling: Literal["linear", "none"] = "linear"
    warmup_epochs: Annotated[float, NotBool, Field(ge=0, le=1e6)] = 1.0
    decay: Literal["none", "cosine", "step"] = "cosine"
    decay_epochs: list[PosInt] = []
    decay_factor: Annotated[float, NotBool, Field(gt=0, le=1)] = 0.1
    # PyTorch's fused kernel updates every parameter in one call where the model allows it (dense
    # floating-point parameters on CPU or CUDA): digits' SGD step took 65 us instead of 182 us
    # (the per-parameter loop), ~3 % of its step. false: PyTorch's default per-parameter loop.
    fused: bool = True

    @model_validator(mode="after")
    def _milestones(self) -> OptimizerConfig:
        if self.decay == "step" and not self.decay_epochs:
            raise ValueError("decay: step needs decay_epochs (the epochs at which the LR is "
                             "multiplied by decay_factor), e.g. decay_epochs: [30, 60]")
        if self.decay != "step" and self.decay_epochs:
            raise ValueError(f"decay_epochs applies only to decay: step (decay is "
                             f"{self.decay!r}): remove decay_epochs or set decay: step")
        return self


class TrainConfig(Section):
    epochs: PosInt = 10
    seed: Annotated[int, NotBool, Field(ge=0, le=2**62)] = 42
    eval_every: PosInt = 1  # epochs
    checkpoint_every: PosInt = 1  # epochs
    keep_checkpoints: PosInt = 3
    log_interval: PosInt = 10  # steps between progress events
    max_steps_per_epoch: PosInt | None = None  # cap, for quick throughput runs
    on_nonfinite: Literal["stop", "skip"] = "stop"  # Inf/NaN gradients: stop the run, or skip the step
    watchdog_seconds: NonNegInt = 600  # end the run after this long without progress (0 = off)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: one GPU per rank when CUDA is there
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # compute (torch.autocast)
    tensorboard: bool = True  # rank 0 writes RUN_DIR/tensorboard/ (when tensorboard is installed)

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> TrainConfig:
        problems = device_problems(self.device, self.precision, None, 1, "this host")
        if problems:
            raise ValueError(problems[0])
        return self

    @field_validator("watchdog_seconds")
    @classmethod
    def _watchdog(cls, v: int) -> int:
        if 0 < v < 10:
            raise ValueError("must be 0 (off) or at least 10 s: the ranks need time to start and "
                             "to send heartbeats (every 2 s) before the watchdog can judge them")
        return v


class PowerSGDConfig(Section):
    """horovod.compression: powersgd (hvdtrain/worker/powersgd.py; layers: powersgd_layout.py)."""

    rank: Annotated[int, NotBool, Field(ge=1, le=1024)] = 4  # columns of the factors P and Q
    # Optimizer steps sent uncompressed first; null: the LR warmup's steps (at least
    # MIN_POWERSGD_WARMUP), written into the run's recipe by the plan.
    warmup_steps: NonNegInt | None = None
    min_compression_rate: Annotated[float, NotBool, Field(ge=1, le=1e6)] = 2.0
    error_feedback: bool = True  # carry what the factors missed into the next step
    warm_start: bool = True  # start each step's power iteration from the last step's Q
    rest: Literal["fp16", "none"] = "fp16"  # how the gradients it does not compress go

    def uncompressed_steps(self) -> int:
        """warmup_steps, null read as MIN_POWERSGD_WARMUP (the plan writes the LR warmup's
        number into a run's recipe; bench and tests may leave null)."""
        return MIN_POWERSGD_WARMUP if self.warmup_steps is None else self.warmup_steps


class HorovodConfig(Section):
    compression: Literal["fp16", "none", "powersgd"] = "fp16"
    op: Literal["average", "adasum"] = "average"
    gradient_predivide_factor: PosFloat = 1.0
    backward_passes_per_step: PosInt = 1
    fusion_threshold_mb: NonNegInt = 128
    # 1 ms: the lowest latency for small models, no slower than 5 or 20 ms (docs/performance.md).
    cycle_time_ms: PosFloat = 1.0
    # Gradients allreduced in groups of about this many MB (float32), last layer first, like DDP's
    # buckets: one negotiation and one fused allreduce per group instead of one per tensor, which
    # woke the background thread dozens of times per backward on cores the training needed
    # (1 MB measured best: docs/performance.md). 0 = off.
    group_mb: NonNegFloat = 1.0
    cache_capacity: NonNegInt = 1024
    hierarchical_allreduce: bool = False
    timeline_file: str | None = None
    autotune: bool = False
    autotune_log_file: str | None = None
    stall_check_warning_seconds: PosInt = 60
    stall_check_shutdown_seconds: NonNegInt = 120  # 0 = never: a hung rank would hang forever
    gloo_timeout_seconds: PosInt = 30
    powersgd: PowerSGDConfig = PowerSGDConfig()

    @model_validator(mode="after")
    def _consistent(self) -> HorovodConfig:
        if self.compression == "powersgd" and self.op == "adasum":
            raise ValueError("compression: powersgd works with op: average only (Adasum combines "
                             "whole gradients; PowerSGD averages low-rank factors of them): use "
                             "op: average, or compression fp16 or none with adasum")
        if self.compression == "powersgd" and self.gradient_predivide_factor != 1.0:
            raise ValueError("gradient_predivide_factor applies to compression fp16 and none (its "
                             "factors go as float32): set it to 1.0 with powersgd")
        if self.op == "adasum" and self.gradient_predivide_factor != 1.0:
            raise ValueError("gradient_predivide_factor applies only to op: average (Horovod rejects "
                             "it with adasum): set it to 1.0 or use op: average")
        if self.stall_check_shutdown_seconds and \
                self.stall_check_shutdown_seconds <= self.stall_check_warning_seconds:
            raise ValueError("stall_check_shutdown_seconds must be greater than "
                             "stall_check_warning_seconds (or 0 to never shut down)")
        safe_path(self.timeline_file, "timeline_file")
        safe_path(self.autotune_log_file, "autotune_log_file")
        return self


class ElasticConfig(Section):
    min_np: PosInt
    max_np: PosInt | None = None
    host_discovery_script: str | None = None
    slots_per_host: PosInt | None = None
    reset_limit: NonNegInt | None = None
    cooldown_range: tuple[PosInt, PosInt] | None = None  # seconds, min and max
    elastic_timeout: PosInt = 600
    commit_every: PosInt = 10  # steps between in-memory state commits

    @model_validator(mode="after")
    def _ranges(self) -> ElasticConfig:
        if self.max_np is not None and self.max_np < self.min_np:
            raise ValueError(f"max_np ({self.max_np}) is less than min_np ({self.min_np})")
        if self.cooldown_range and self.cooldown_range[0] > self.cooldown_range[1]:
            raise ValueError("cooldown_range is [min, max] seconds: min is larger than max")
        safe_path(self.host_discovery_script, "host_discovery_script")
        return self


class LaunchConfig(Section):
    np: PosInt | None = None
    hosts: str | None = None  # "h1:2,h2:2"; or use hostfile
    hostfile: str | None = None
    controller: Literal["gloo", "mpi"] = "gloo"
    network_interfaces: list[str] = []
    ssh_port: Annotated[int, NotBool, Field(ge=1, le=65535)] | None = None
    ssh_identity_file: str | None = None
    start_timeout: PosInt = 30
    # seconds the checks before launch may run user code (component probe, discovery script)
    check_timeout: Annotated[int, NotBool, Field(gt=0, le=3600)] = 60
    env: dict[str, str] = {}
    output_dir: str = "runs"

    @field_validator("network_interfaces")
    @classmethod
    def _ifaces(cls, v: list[str]) -> list[str]:
        for name in v:
            if not IFACE_NAME.match(name):
                raise ValueError(f"{name!r} is not a network interface name (e.g. eth0, ens5)")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_scalars(cls, v: object) -> object:
        """OMP_NUM_THREADS: 4 means "4": numbers and booleans become strings (YAML spelling)."""
        if isinstance(v, dict):
            return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                    if isinstance(x, (int, float, bool)) else x for k, x in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name "
                                 "(letters, digits and _, not starting with a digit)")
            if "\0" in value or "\n" in value:
                raise ValueError(f"value of {name} contains a NUL or newline")
        return v

    @field_validator("hosts", "hostfile")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("is empty: give host:slots,... (hosts) or a path (hostfile), or null "
                             "for this machine")
        return v

    @model_validator(mode="after")
    def _one_host_source(self) -> LaunchConfig:
        if self.hosts and self.hostfile:
            raise ValueError("set either hosts or hostfile, not both")
        for what in ("hostfile", "ssh_identity_file", "output_dir"):
            safe_path(getattr(self, what), what)
        return self


TRACKING_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql",
                    "databricks")


def tracking_uri_problem(uri: str, where: str) -> str | None:
    """Why ``uri`` is not an MLflow tracking URI, or None (also judges MLFLOW_TRACKING_URI)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if uri == "databricks" or (scheme in TRACKING_SCHEMES and not any(c.isspace() for c in uri)):
        return None
    return (f"{where} {uri!r} is not an MLflow tracking URI: give http://HOST:PORT (an mlflow "
            "server), file:/PATH or sqlite:///PATH (a store on this machine), or databricks")


class TrackingConfig(Section):
    """MLflow: one MLflow run per hvdtrain run, logged by the launcher (never by the workers)."""

    mlflow: bool = False  # needs the `mlflow` extra: pip install 'hvdtrain[mlflow]'
    uri: str | None = None  # null: MLFLOW_TRACKING_URI
    experiment: str | None = None  # null: the recipe's name
    run_name: str | None = None  # null: the run directory's name

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        problem = v is not None and tracking_uri_problem(v, "tracking.uri")
        if problem:
            raise ValueError(problem.removeprefix("tracking.uri "))
        return v

    @field_validator("experiment", "run_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or len(v) > 250 or any(c in v for c in "\0\n")):
            raise ValueError("give a name of 1 to 250 characters on one line, or null")
        return v


class Recipe(Section):
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    horovod: HorovodConfig = HorovodConfig()
    launch: LaunchConfig = LaunchConfig()
    elastic: ElasticConfig | None = None
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _adasum_needs_mpi(self) -> Recipe:
        if self.horovod.op == "adasum" and self.launch.controller != "mpi":
            raise ValueError("horovod.op: adasum needs launch.controller: mpi (Horovod implements "
                             "Adasum only over MPI; with Gloo every rank fails with 'No Adasum "
                             "operation enabled'): use op: average, or controller: mpi with an "
                             "MPI-enabled Horovod build")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        """The inverse of ``to_yaml`` (a resolved recipe, as saved in a run directory)."""
        return cls.model_validate(yaml.load(text, Loader=SafeLoader))


def lr_config(recipe: Recipe) -> LRConfig:
    """The schedule's view of a recipe."""
    opt = recipe.optimizer
    return LRConfig(base_lr=opt.base_lr, scaling=opt.lr_scaling, warmup_epochs=opt.warmup_epochs,
                    decay=opt.decay, decay_epochs=tuple(opt.decay_epochs),
                    decay_factor=opt.decay_factor, epochs=recipe.train.epochs,
                    backward_passes_per_step=recipe.horovod.backward_passes_per_step)


def recipe_steps_per_epoch(recipe: Recipe, train_samples: int, np: int) -> int:
    """The recipe's optimizer steps per epoch on ``np`` ranks; UserError when not even one fits."""
    batch, passes = recipe.data.batch_size, recipe.horovod.backward_passes_per_step
    steps = steps_per_epoch(train_samples, np, batch, passes, recipe.train.max_steps_per_epoch)
    if steps == 0:
        per_step = f"data.batch_size={batch}" + (
            f" x horovod.backward_passes_per_step={passes}" if passes > 1 else "")
        raise UserError(f"{per_step} is larger than each worker's share of the {train_samples} "
                        f"training samples ({train_samples // np} with np={np}): lower "
                        "data.batch_size or the number of processes")
    return steps
