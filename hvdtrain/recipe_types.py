"""The field types and small validators every recipe section uses (hvdtrain/recipe.py): numbers
that refuse YAML's booleans, bounded counts, paths safe to pass on, "package.module:factory"
component names, channel statistics."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

# A path handed to horovodrun or a worker: printable, no shell metacharacters needed by anyone.
SAFE_PATH = re.compile(r"^[A-Za-z0-9_./~+@%-][A-Za-z0-9_./~+@%=, -]*$")
MAX_INT = 2**31 - 1  # Horovod reads its flags into C ints; no count or size here needs more


def _not_bool(value: object) -> object:
    """YAML's true/false are not numbers here (pydantic would quietly read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("Input should be a number, not a boolean")
    return value


NotBool = BeforeValidator(_not_bool)
PosInt = Annotated[int, NotBool, Field(gt=0, le=MAX_INT)]
NonNegInt = Annotated[int, NotBool, Field(ge=0, le=MAX_INT)]
PosFloat = Annotated[float, NotBool, Field(gt=0, le=1e9)]
NonNegFloat = Annotated[float, NotBool, Field(ge=0, le=1e9)]
Fraction = Annotated[float, NotBool, Field(ge=0, lt=1)]


class Section(BaseModel):
    # allow_inf_nan=False: .inf / .nan are refused everywhere ("Input should be a finite number").
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def safe_path(value: str | None, what: str) -> str | None:
    if value is not None and not SAFE_PATH.match(value):
        raise ValueError(f"{what} {value!r} has characters hvdtrain does not pass on "
                         "(allowed: letters, digits, and _ . / ~ + @ % = , - space)")
    return value


COMPONENT = re.compile(r"^[^\W\d]\w*(\.[^\W\d]\w*)*:[^\W\d]\w*$")
Channel = Annotated[float, NotBool, Field(ge=-1e3, le=1e3)]


def std_channel(value: float) -> float:
    """Pixels are divided by std in float32: below ~1e-4 the inputs overflow (NaN at step 1)."""
    if not 1e-4 <= value <= 1e3:
        raise ValueError(f"a channel std of {value:g} is outside 0.0001..1000 (pixels are in 0..1, "
                         "so their std is about 0.1-0.3; a tiny std overflows the inputs)")
    return value


StdChannel = Annotated[float, NotBool, AfterValidator(std_channel)]


def component_name(value: str | None, key: str) -> str | None:
    if value is not None and not COMPONENT.match(value):
        raise ValueError(f"{value!r} is not \"package.module:factory\" (a module path, one ':', "
                         f"then the function or class to call), e.g. {key}: "
                         "\"examples.custom_model:build\"")
    return value
