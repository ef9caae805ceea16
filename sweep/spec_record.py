"""``sweep.yaml``: the validated spec as a sweep runs it, with its format version.

The sweep driver writes it once (sweep.lifecycle); ``sweep resume``, ``sweep status`` and a
sweep pre-trained from this one (sweep.pretrained) read it back. A file of another format is
one line naming it and both versions, and one without every ``resources`` key (the driver
writes them all, so nothing is read as a default) is refused too; its values are then the spec
sweep.spec parses.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from smoothadv.common.errors import UserError
from smoothadv.common.records import check_version
from smoothadv.common.yaml_input import read_yaml_file
from smoothadv.sweep.spec_blocks import Resources

VERSION = 1  # sweep.yaml's "format_version"
RESOURCE_KEYS = {f.name for f in fields(Resources)}  # all written, so all read


def spec_yaml(spec) -> bytes:
    """The text of ``sweep.yaml`` for the validated SweepSpec ``spec``."""
    record = {"format_version": VERSION, **spec.to_dict()}
    return yaml.safe_dump(record, sort_keys=False).encode()


def read_spec_values(path: str | Path) -> dict[str, Any]:
    """The spec values of the ``sweep.yaml`` at ``path`` (for sweep.spec.parse_spec): YAML
    within common.yaml_input's limits, a mapping of this format; else one UserError line."""
    values = read_yaml_file(path)
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping (a sweep's spec)")
    check_version(path, values.get("format_version"), VERSION)
    resources = values.get("resources")
    missing = sorted(RESOURCE_KEYS - set(resources)) if isinstance(resources, dict) else "all"
    if missing:
        raise UserError(f"{path}: resources: {missing} missing (the sweep driver writes every "
                        "resources key)")
    return {k: v for k, v in values.items() if k != "format_version"}
