"""The documentation pages generated from the code, so that they cannot drift from it.

An mkdocs hook (``hooks:`` in mkdocs.yml). A page holds a marker line ``<!-- generated: NAME
-->``, and :func:`on_page_markdown` replaces it, on every build, with what ``GENERATORS[NAME]``
makes from the code:

- ``spec``: every key of a sweep spec and of a trial config, read from their dataclasses
  (sweep.spec.SweepSpec and its blocks, trainers.config.TrialConfig and its ``certify`` block):
  name, type annotation and default as the code has them; the meaning from the comment beside
  (or the comment lines above) the field in the source, and from ``MEANINGS`` below. A field
  with neither is a warning, so ``mkdocs build --strict`` fails on an undocumented key (and on
  an entry of ``MEANINGS`` whose field is gone).
- ``cli``: ``--help`` of ``smoothadv`` and of every verb, from the parser
  (smoothadv.cli.main.build_parser).
- ``api``: every module of the package with its public functions and classes, their
  signatures and the first paragraph of their docstrings (read with ``ast``, nothing imported).

Nothing generated is written into docs/: the markers' pages carry the hand-written text, the
build adds the rest. ``python docs/hooks.py spec|cli|api`` prints one generated part.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import logging
import os
import re
import sys
import tokenize
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.smoothadv_docs")

ROOT = Path(__file__).resolve().parents[1]  # the repository: the package smoothadv itself
PACKAGES = ("common", "trainers", "certify", "sweep", "analysis", "cli")
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)
HELP_COLUMNS = "100"  # argparse wraps --help to $COLUMNS: fixed, so every build is the same

# What a field's source does not say, by the class that defines it and the field's name. The
# text is markdown; {datasets}, {archs}, {methods} and {attacks} are the names the code accepts.
# A field with a comment in the source gets this text first, then the comment.
MEANINGS = {
    "SweepSpec.name": "the sweep's folder name, `STORAGE/NAME` (letters, digits, `.`, `_`, `-`)",
    "SweepSpec.defaults": "the trial-config keys every trial starts from: "
    "[trial config](#trial-config) (`init_from_sweep` may stand here too)",
    "SweepSpec.resources": "what one trial asks Ray for: [resources](#resources)",
    "SweepSpec.grid": "trial-config key → list of values, expanded as a cartesian product; or a "
    "list of such mappings, for their union (duplicates dropped); trials are named from their "
    "gridded values (`pgd-T10-m4-eps0.5-sigma0.25`)",
    "SweepSpec.exclude": "drop every trial that matches all keys of an entry (a value or a list "
    "of values per key)",
    "SweepSpec.attack_eval": "the empirical attack after certification: "
    "[attack_eval](#attack_eval); absent: none",
    "SweepSpec.init_from_sweep": "fine-tuning: the folder of a finished pre-training sweep, "
    "whose model of the same (ε, σ) each trial starts from;",
    "SweepSpec.stages": "staged certification, [stages](#stages);",
    "SweepSpec.schedule": "[schedule](#schedule);",
    "SweepSpec.max_trials": "the most trials the grid may hold (`sweep run --max-trials N` "
    "overrides it):",
    "TrialConfig.dataset": "a built-in dataset ({datasets}) or a plug-in's import path "
    "`module:factory`",
    "TrialConfig.data_root": "folder holding the dataset files (null: `$SMOOTHADV_DATA`, then "
    "`./data`)",
    "TrialConfig.train_subset": "train on the first N training images (null: all)",
    "TrialConfig.arch": "a built-in architecture ({archs}) or a plug-in's import path "
    "`module:builder`",
    "TrialConfig.sigma": "noise level σ of training and certification ([0,1] pixel units)",
    "TrialConfig.method": "training: {methods}",
    "TrialConfig.attack": "SmoothAdv's attack: {attacks}",
    "TrialConfig.gradient_free": "PGD with the gradient-free estimator of the smoothed "
    "classifier's gradient (`attack: pgd` only)",
    "TrialConfig.epsilon": "the attack's ℓ2 radius ε in [0,1] pixel units (the paper's 0.25 … 2)",
    "TrialConfig.steps": "attack steps T",
    "TrialConfig.m_train": "noise samples per attacked image, m",
    "TrialConfig.warmup_epochs": "epochs over which ε grows linearly to its value",
    "TrialConfig.epochs": "training epochs",
    "TrialConfig.batch_size": "the global batch (over every DDP rank)",
    "TrialConfig.lr": "SGD's learning rate",
    "TrialConfig.lr_step": "epochs between learning-rate decays",
    "TrialConfig.lr_gamma": "learning-rate factor at each decay",
    "TrialConfig.momentum": "SGD's momentum",
    "TrialConfig.weight_decay": "SGD's weight decay",
    "TrialConfig.init_from": "a checkpoint to start from (fine-tuning; its input layer is kept)",
    "TrialConfig.reinit_head": "replace the last layer (`fc`) of `init_from`'s model",
    "TrialConfig.extra_data": "self-training: a pickle of pseudo-labelled images (`data`, "
    "`extrapolated_targets`) mixed half and half into each batch",
    "TrialConfig.extra_weight": "the pseudo-labelled images' loss weight",
    "TrialConfig.seed": "seed of the training randomness and of certification's noise",
    "TrialConfig.device": "torch device; `auto`: CUDA when there is one",
    "TrialConfig.certify": "CERTIFY settings of the final model: [certify](#certify)",
    "SamplingKeys.n": "noisy samples that bound the top class's probability",
    "SamplingKeys.alpha": "failure probability α of the bound",
    "CertifyConfig.n0": "noisy samples that choose the top class;",
    "CertifyConfig.batch_size": "noisy samples per forward pass;",
    "CertifyConfig.skip": "certify every SKIP-th test image",
    "CertifyConfig.max": "stop before this image index (-1: no limit)",
    "CertifyConfig.sequential": "draw the samples in stages and stop an image once its row is "
    "decided (wrong label, certain abstention, or a radius ≥ `target_radius`)",
    "CertifyConfig.target_radius": "with `sequential`, also stop an image once its certified "
    "radius reaches it (α is then split over the looks)",
    "Resources.workers": "Ray Train workers (DDP ranks) per trial",
    "Resources.gpus_per_worker": "GPUs per worker;",
    "Resources.cpus_per_worker": "CPUs per worker",
    "AttackEval.epsilons": "ℓ2 radii ε to attack at ([0,1] pixel units)",
    "AttackEval.n": "samples of PREDICT on each attacked image",
    "AttackEval.skip": "attack every SKIP-th test image",
    "AttackEval.max": "stop before this image index (-1: no limit)",
    "AttackKeys.steps": "SmoothAdv-PGD steps (step size 2ε/steps)",
    "AttackKeys.m_test": "noise samples per attack step, drawn once and reused",
    "AttackKeys.alpha": "PREDICT's failure probability α",
    "StagedCertification.n": "stage 1: samples per image",
    "StagedCertification.skip": "stage 1: certify every SKIP-th test image",
    "StagedCertification.radii": "stage 2 keeps a trial that can still reach the envelope at "
    "one of these radii (empty: every 0.25 up to what the full n certifies, or "
    "`certify.target_radius`)",
    "StagedCertification.alpha": "risk of each bound of stage 2's rule",
    "StagedCertification.final_skip": "stage 3 re-certifies the envelope's winners on every "
    "FINAL_SKIP-th image (1: the whole test set)",
    "EarlyStopping.rungs": "fractions of the epochs after which a proxy is certified",
    "EarlyStopping.images": "about this many test images make the proxy (every k-th)",
    "EarlyStopping.n0": "proxy: samples that choose the top class",
    "EarlyStopping.n": "proxy: samples that bound its probability",
    "EarlyStopping.alpha": "proxy: failure probability",
    "EarlyStopping.margin": "a trial stops when the other trials of its σ beat it by more than "
    "this at every radius",
    "EarlyStopping.radii": "radii compared (empty: every 0.25 up to what the proxy's n "
    "certifies at the trial's σ, or `certify.target_radius` when smaller)",
    "EarlyStopping.min_trials": "trials of a σ (itself included) that must have reported a rung "
    "before any is judged there",
}
# Defaults of spec keys that the dataclass leaves to the parser (sweep.spec.parse_spec).
SPEC_DEFAULTS = {"defaults": "{}", "resources": "{}"}


# ---------------------------------------------------------------------------------------------
# Text helpers

def _inline(text: str) -> str:
    """reST-ish docstring or comment text as markdown: ``x`` and :role:`x` to `x`; outside code
    spans, characters markdown would read as markup are escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = (parts[i].replace("<", "&lt;").replace("*", r"\*").replace("_", r"\_")
                    .replace("[", r"\[").replace("|", "&#124;"))
    return "`".join(parts) if len(parts) % 2 else text.replace("<", "&lt;")


def _code(text: str) -> str:
    """``text`` as one code span."""
    text = " ".join(text.split())
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _yaml(value: object) -> str:
    """A default as a spec file would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# The spec reference

@functools.lru_cache
def _module_source(path: str) -> tuple[ast.Module, dict[int, tuple[bool, str]]]:
    """The parsed module and its comments: line → (whether the line holds only it, its text)."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            comments[row] = (not lines[row - 1][:col].strip(), tok.string.lstrip("#").strip())
    return ast.parse(text, path), comments


def _class_fields(cls: type) -> dict[str, ast.AnnAssign] | None:
    """The annotated fields ``cls``'s own source defines, by name (None: no source)."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return None
    if path is None:
        return None
    tree, _ = _module_source(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {n.target.id: n for n in node.body
                    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return None


def _owner(cls: type, name: str) -> tuple[type, ast.AnnAssign]:
    """The class of ``cls``'s MRO whose source defines the field ``name``, and the definition."""
    for klass in cls.__mro__:
        found = (_class_fields(klass) or {}).get(name)
        if found is not None:
            return klass, found
    raise LookupError(f"{cls.__name__}.{name}: no definition found in the source")


def _source_comment(klass: type, node: ast.AnnAssign) -> str:
    """The comment lines right above a field's definition, then the one beside it."""
    _, comments = _module_source(inspect.getsourcefile(klass))
    above, row = [], node.lineno - 1
    while row in comments and comments[row][0]:
        above.insert(0, comments[row][1])
        row -= 1
    beside = [comments[r][1] for r in range(node.lineno, node.end_lineno + 1)
              if r in comments and not comments[r][0]]
    return " ".join(above + beside)


@functools.lru_cache
def _choices() -> dict[str, str]:
    """The names the trial config accepts, for ``MEANINGS``' placeholders."""
    from smoothadv.trainers import config, registry

    def names(values) -> str:
        return ", ".join(f"`{v}`" for v in values)

    return {"datasets": names(registry.DATASETS), "archs": names(registry.ARCH_NAMES),
            "methods": names(config.METHODS), "attacks": names(config.ATTACKS)}


def _default(field: dataclasses.Field, key: str, overrides: dict[str, str]) -> str:
    if key in overrides:
        return _code(overrides[key])
    if field.default is not dataclasses.MISSING:
        return _code(_yaml(field.default))
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return "its keys' defaults"
        return _code(_yaml(value))
    return "required"


def field_rows(cls: type, used: set[str], overrides: dict[str, str] | None = None
               ) -> Iterator[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every field of the dataclass ``cls``, in order; the
    ``MEANINGS`` entries read are added to ``used``."""
    for field in dataclasses.fields(cls):
        owner, node = _owner(cls, field.name)
        entry = f"{owner.__name__}.{field.name}"
        parts = []
        if entry in MEANINGS:
            used.add(entry)
            parts.append(MEANINGS[entry].format(**_choices()))
        comment = _source_comment(owner, node)
        if comment:
            parts.append(_inline(comment))
        if not parts:
            log.warning("spec reference: %s has no meaning: write a comment beside the field "
                        "in %s, or an entry %r in docs/hooks.py's MEANINGS", field.name,
                        os.path.relpath(inspect.getsourcefile(owner), ROOT), entry)
        yield (field.name, _code(ast.unparse(node.annotation)),
               _default(field, field.name, overrides or {}), " ".join(parts) or "—")


def spec_blocks() -> list[tuple[str, str, type]]:
    """(anchor, heading, dataclass) of every table of the spec reference: the spec's own keys,
    the trial config, its nested blocks and the spec's blocks (each a dataclass field)."""
    from smoothadv.sweep.spec import SweepSpec
    from smoothadv.trainers.config import TrialConfig

    blocks = [("spec-keys", "Spec file: the top-level keys", SweepSpec),
              ("trial-config", "Trial config: `defaults`, `grid` and `smoothadv train`",
               TrialConfig)]
    for owner, where in ((TrialConfig, "in the trial config"), (SweepSpec, "in a spec")):
        hints = typing.get_type_hints(owner)
        for field in dataclasses.fields(owner):
            kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
            for kind in kinds:
                if dataclasses.is_dataclass(kind):
                    blocks.append((field.name, f"`{field.name}` ({where})", kind))
    return blocks


def spec_reference() -> str:
    """Markdown: one table per block of spec_blocks()."""
    from smoothadv.sweep.spec import SPEC_KEYS, SweepSpec

    spec_fields = {f.name for f in dataclasses.fields(SweepSpec)}
    if spec_fields != set(SPEC_KEYS):
        log.warning("spec reference: SPEC_KEYS %s and SweepSpec's fields %s differ",
                    sorted(SPEC_KEYS), sorted(spec_fields))
    used: set[str] = set()
    out = []
    for anchor, heading, cls in spec_blocks():
        out += [f"## {heading} {{#{anchor}}}", ""]
        doc = _first_paragraph(cls.__doc__) if cls is not SweepSpec else ""
        if doc and not doc.startswith(f"{cls.__name__}("):  # not dataclass's made-up one
            out += [_inline(doc), ""]
        out += [f"From `{cls.__module__}.{cls.__qualname__}`.", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        overrides = SPEC_DEFAULTS if cls is SweepSpec else None
        out += [f"| `{key}` | {kind} | {default} | {meaning} |"
                for key, kind, default, meaning in field_rows(cls, used, overrides)]
        out.append("")
    for entry in sorted(set(MEANINGS) - used):
        log.warning("spec reference: MEANINGS[%r] documents no field; remove it", entry)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# The CLI reference

def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("smoothadv",)
            ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) of ``parser`` and every verb under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # an alias names the same parser again
                    seen.add(id(sub))
                    yield from parsers(sub, (*path, name))


def cli_reference() -> str:
    """Markdown: every command's ``--help``, under a heading naming the command."""
    from smoothadv.cli.main import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        out = []
        for path, parser in parsers(build_parser()):
            level = "##" if len(path) <= 2 else "###"  # a verb's verbs under it
            anchor = "-".join(path[1:]) or "smoothadv"
            out += [f"{level} `{' '.join(path)}` {{#{anchor}}}", "", "```text",
                    parser.format_help().rstrip(), "```", ""]
        return "\n".join(out)
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


# ---------------------------------------------------------------------------------------------
# The Python API

def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> str:
    if isinstance(node, ast.ClassDef):
        bases = ", ".join(ast.unparse(b) for b in node.bases)
        return f"class {node.name}({bases})" if bases else f"class {node.name}"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{node.name}({ast.unparse(node.args)}){returns}"


def _public(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.ClassDef]:
    for node in body:
        if (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and not node.name.startswith("_")):
            yield node


def _module_entries(tree: ast.Module) -> list[str]:
    """A markdown list of the module's public functions and classes (with public methods)."""
    out = []
    for node in _public(tree.body):
        doc = _inline(_first_paragraph(ast.get_docstring(node)))
        out.append(f"- {_code(_signature(node))}" + (f": {doc}" if doc else ""))
        if isinstance(node, ast.ClassDef):
            for method in _public(node.body):
                if isinstance(method, ast.ClassDef):
                    continue
                doc = _inline(_first_paragraph(ast.get_docstring(method)))
                out.append(f"    - {_code(_signature(method))}" + (f": {doc}" if doc else ""))
    return out


def api_reference() -> str:
    """Markdown: each package, each of its modules with its docstring's first paragraph and its
    public names."""
    out = []
    for package in PACKAGES:
        folder = ROOT / package
        init = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
        out += [f"## `smoothadv.{package}` {{#{package}}}", "",
                _inline(_first_paragraph(ast.get_docstring(init))), ""]
        for path in sorted(folder.glob("*.py")):
            if path.name == "__init__.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            out += [f"### `smoothadv.{package}.{path.stem}` {{#{package}-{path.stem}}}", "",
                    _inline(_first_paragraph(ast.get_docstring(tree))), ""]
            entries = _module_entries(tree)
            out += [*entries, ""] if entries else []
    return "\n".join(out)


GENERATORS: dict[str, Callable[[], str]] = {
    "spec": spec_reference, "cli": cli_reference, "api": api_reference}


# ---------------------------------------------------------------------------------------------
# mkdocs' events

def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each marker line with its generated markdown."""
    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            log.warning("%s: unknown generated part %r (one of %s)", page.file.src_uri, name,
                        ", ".join(GENERATORS))
            return match.group(0)
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s: %(message)s")
    print(GENERATORS[sys.argv[1] if len(sys.argv) > 1 else "spec"]())
