"""YAML read from files a user (or whoever can write a sweep folder) hands us, within limits.

PyYAML's ``safe_load`` constructs no objects, but it shares one node among all the aliases of an
anchor: a few hundred bytes of nested anchors (a "billion laughs" document) load in a moment and
then expand to billions of values as soon as anything walks them (validation, printing, JSON).
:func:`load_yaml` composes the node graph first, refuses a text over ``MAX_BYTES``, a graph
whose fully expanded size exceeds ``MAX_NODES`` or one that refers to itself, and only then
constructs Python values. Ordinary anchors and merge keys (``<<: *defaults``) stay usable.
Every refusal is one UserError line naming ``what`` (the file, or the ``--set`` key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from smoothadv.common.errors import UserError
from smoothadv.common.files import file_bytes

MAX_BYTES = 1 << 20  # a spec or config is a few KB; the paper's largest grid spec is ~3 KB
MAX_NODES = 100_000  # values once every alias is expanded (a 10,000-value grid is ~10,000)


def _expanded_size(root: yaml.Node, what: str) -> int:
    """Nodes in the tree ``root`` stands for once every alias is copied out (each shared node
    counted as often as it is reached); a node reachable from itself is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise UserError(f"{what}: an alias refers to a value that contains it (recursive "
                            "YAML anchor)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        if total > MAX_NODES:
            raise UserError(f"{what}: expands to more than {MAX_NODES:,} values (YAML aliases "
                            "nested too deep); write the values out")
        active.discard(key)
        sizes[key] = total
        return total

    return size(root)


def load_yaml(text: str | bytes, what: str) -> Any:
    """The value of the YAML document ``text`` (None when empty), checked as the module says."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{what}: {len(text):,} bytes, more than the {MAX_BYTES:,} a YAML "
                        "input may hold")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{what}: not UTF-8 text") from None
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, what)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{what}: malformed YAML{where}") from None
    except RecursionError:
        raise UserError(f"{what}: YAML nested too deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path) -> Any:
    """:func:`load_yaml` of the file ``path``; a missing, unreadable, oversized or irregular
    file (a folder, a device) is one line naming it (common.files)."""
    data = file_bytes(path, limit=MAX_BYTES)
    if data is None:
        raise UserError(f"{path}: file does not exist")
    return load_yaml(data, str(path))
