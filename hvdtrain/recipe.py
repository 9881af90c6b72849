"""Recipes: YAML files validated by pydantic models that forbid unknown keys.

``load_recipe(source, overrides)`` returns a ``Recipe`` or raises ``UserError`` listing every problem
at once: file, dotted key, line, what was expected, and "did you mean" for misspelt keys.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hvdtrain.errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IFACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}$")  # Linux IFNAMSIZ is 16 with NUL
# A path handed to horovodrun or a worker: printable, no shell metacharacters needed by anyone.
SAFE_PATH = re.compile(r"^[A-Za-z0-9_./~+@%-][A-Za-z0-9_./~+@%=, -]*$")

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _safe_path(value: str | None, what: str) -> str | None:
    if value is not None and not SAFE_PATH.match(value):
        raise ValueError(f"{what} {value!r} has characters hvdtrain does not pass on "
                         "(allowed: letters, digits, and _ . / ~ + @ % = , - space)")
    return value


class SyntheticConfig(_Section):
    image_shape: tuple[PosInt, PosInt, PosInt] = (3, 32, 32)
    num_classes: PosInt = 10
    train_samples: PosInt = 8192
    eval_samples: PosInt = 1024


class DataConfig(_Section):
    dataset: Literal["digits", "synthetic", "mnist", "cifar10"] = "digits"
    data_dir: str | None = None
    batch_size: PosInt = 32
    eval_batch_size: PosInt = 256
    loader_workers: NonNegInt = 0
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _needs_dir(self) -> DataConfig:
        if self.dataset in ("mnist", "cifar10") and not self.data_dir:
            raise ValueError(f"dataset {self.dataset!r} reads files: set data.data_dir to their directory")
        _safe_path(self.data_dir, "data_dir")
        return self


class ModelConfig(_Section):
    arch: Literal["small_cnn", "resnet"] = "small_cnn"
    width: PosInt = 32  # channels of the first conv layer
    depth: Annotated[int, Field(ge=1, le=8)] = 2  # residual blocks per stage (resnet)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    base_lr: PosFloat = 0.05  # per worker; scaled by world size under the linear rule
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    lr_scaling: Literal["linear", "none"] = "linear"
    warmup_epochs: Annotated[float, Field(ge=0)] = 1.0
    decay: Literal["none", "cosine", "step"] = "cosine"
    decay_epochs: list[PosInt] = []
    decay_factor: Annotated[float, Field(gt=0, le=1)] = 0.1


class TrainConfig(_Section):
    epochs: PosInt = 10
    seed: int = 42
    eval_every: PosInt = 1  # epochs
    checkpoint_every: PosInt = 1  # epochs
    keep_checkpoints: PosInt = 3
    log_interval: PosInt = 10  # steps between progress events
    max_steps_per_epoch: PosInt | None = None  # cap, for quick throughput runs


class HorovodConfig(_Section):
    compression: Literal["fp16", "none"] = "fp16"
    op: Literal["average", "adasum"] = "average"
    gradient_predivide_factor: PosFloat = 1.0
    backward_passes_per_step: PosInt = 1
    fusion_threshold_mb: NonNegInt = 128
    cycle_time_ms: PosFloat = 1.0
    cache_capacity: NonNegInt = 1024
    hierarchical_allreduce: bool = False
    timeline_file: str | None = None
    autotune: bool = False
    autotune_log_file: str | None = None
    stall_check_warning_seconds: PosInt = 60
    stall_check_shutdown_seconds: NonNegInt = 120  # 0 = never: a hung rank would hang forever
    gloo_timeout_seconds: PosInt = 30

    @model_validator(mode="after")
    def _consistent(self) -> HorovodConfig:
        if self.op == "adasum" and self.gradient_predivide_factor != 1.0:
            raise ValueError("gradient_predivide_factor applies only to op: average (Horovod rejects "
                             "it with adasum): set it to 1.0 or use op: average")
        if self.stall_check_shutdown_seconds and \
                self.stall_check_shutdown_seconds <= self.stall_check_warning_seconds:
            raise ValueError("stall_check_shutdown_seconds must be greater than "
                             "stall_check_warning_seconds (or 0 to never shut down)")
        _safe_path(self.timeline_file, "timeline_file")
        _safe_path(self.autotune_log_file, "autotune_log_file")
        return self


class ElasticConfig(_Section):
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
        _safe_path(self.host_discovery_script, "host_discovery_script")
        return self


class LaunchConfig(_Section):
    np: PosInt | None = None
    hosts: str | None = None  # "h1:2,h2:2"; or use hostfile
    hostfile: str | None = None
    controller: Literal["gloo", "mpi"] = "gloo"
    network_interfaces: list[str] = []
    ssh_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    ssh_identity_file: str | None = None
    start_timeout: PosInt = 30
    env: dict[str, str] = {}
    output_dir: str = "runs"

    @field_validator("network_interfaces")
    @classmethod
    def _ifaces(cls, v: list[str]) -> list[str]:
        for name in v:
            if not IFACE_NAME.match(name):
                raise ValueError(f"{name!r} is not a network interface name (e.g. eth0, ens5)")
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

    @model_validator(mode="after")
    def _one_host_source(self) -> LaunchConfig:
        if self.hosts and self.hostfile:
            raise ValueError("set either hosts or hostfile, not both")
        for what in ("hostfile", "ssh_identity_file", "output_dir"):
            _safe_path(getattr(self, what), what)
        return self


class Recipe(_Section):
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    horovod: HorovodConfig = HorovodConfig()
    launch: LaunchConfig = LaunchConfig()
    elastic: ElasticConfig | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
