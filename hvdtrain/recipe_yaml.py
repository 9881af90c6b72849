"""The YAML loader of recipes and overrides: PyYAML's safe loader (the C one where built), with
integers of bounded length (Python refuses to convert 4300+ digits, with a traceback)."""

from __future__ import annotations

import yaml

MAX_DIGITS = 40  # digits of any integer in a recipe (Python refuses to read 4300+ at all)


class SafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (the C one where built), with integers of bounded length."""


class TooLong(yaml.constructor.ConstructorError):
    """A value no setting takes (an integer of more than MAX_DIGITS digits)."""


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    digits = sum(c.isdigit() for c in str(node.value))
    if digits > MAX_DIGITS:
        raise TooLong(
            None, None, f"a number of {digits} digits is longer than any setting takes (at most "
            f"{MAX_DIGITS})", node.start_mark)
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


SafeLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
