"""The command line's parser (cli/): every verb answers --help with exit 0 and lists each of
its flags, the defaults of its options and examples that parse; the verbs are today's, each
leaf with a runner; the output is -o/--out and the checkpoint `checkpoint` on every verb that
has one; attack takes certify's --precision and --compile; `sweep presets` prints each
preset's whole description and `sweep plan` its summary first (alone with --summary)."""

from __future__ import annotations

import argparse
import json
import re
import shlex

import pytest
from smoothadv.cli.main import build_parser, main
from smoothadv.common.layout import meta_path
from smoothadv.sweep.spec import PRESETS, preset_names

VERBS = [("certify",), ("predict",), ("attack",), ("train",), ("pseudo-label",), ("analyze",),
         ("sweep",), *[("sweep", verb) for verb in
                       ("plan", "presets", "run", "resume", "status", "stop", "trust")]]
WRITERS = [("certify",), ("predict",), ("attack",), ("train",), ("pseudo-label",), ("analyze",)]
ON_A_CHECKPOINT = [("certify",), ("predict",), ("attack",), ("pseudo-label",)]
ON_A_SWEEP_DIR = [("sweep", verb) for verb in ("resume", "status", "stop", "trust")]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def _parser(verb: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in verb:
        parser = _subcommands(parser)[name]
    return parser


def _help(verb: tuple[str, ...], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*verb, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _option_entries(shown: str) -> dict[str, str]:
    """Each option string's entry in --help output: its first line (indented two spaces,
    starting with "-") and the deeper-indented lines that continue it, on one line."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in shown.splitlines():
        if line.startswith("  -"):
            current = [line]
            invocation = re.split(r"\s{2,}", line.strip())[0]  # "-o OUT, --out OUT"
            for flag in invocation.split(", "):
                entries[flag.split()[0]] = current
        elif current is not None and line.startswith("   "):
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def _has_default(action: argparse.Action) -> bool:
    """Whether the option has a default worth showing (not None, a flag's False or an
    empty list)."""
    default = action.default
    return not (default is None or default is False or default is argparse.SUPPRESS
                or default == [])


def _examples(shown: str) -> list[str]:
    """The command lines under "Examples:" in --help output."""
    assert "\nExamples:\n" in shown
    after = shown.split("\nExamples:\n", 1)[1]
    return [line.strip() for line in after.splitlines() if line.startswith("  smoothadv ")]


def test_the_verbs_are_all_there_and_no_other():
    top = _subcommands(build_parser())
    assert list(top) == [v[0] for v in VERBS if len(v) == 1]
    assert list(_subcommands(top["sweep"])) == [v[1] for v in VERBS if len(v) == 2]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_answers_help_with_its_flags(verb, capsys):
    shown = _help(verb, capsys)
    assert shown.startswith(f"usage: smoothadv {' '.join(verb)} ")
    flags = [s for a in _parser(verb)._actions for s in a.option_strings]
    assert "--help" in flags and all(flag in shown for flag in flags), flags
    if not _subcommands(_parser(verb)):
        assert callable(_parser(verb).get_default("func"))


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_shows_the_default_of_each_option_that_has_one(verb, capsys):
    entries = _option_entries(_help(verb, capsys))
    with_defaults = [a for a in _parser(verb)._actions if a.option_strings and _has_default(a)]
    for action in with_defaults:
        entry = entries[action.option_strings[0]]
        assert "default" in entry, entry
    if verb in [("certify",), ("predict",), ("attack",)]:  # their numbers, shown as such
        assert "(default: 0.001)" in entries["--alpha"] and "(default: 1)" in entries["--skip"]
        assert "(default: 100000)" in entries["--n"] and "(default: test)" in entries["--split"]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_shows_examples_that_parse_as_that_verb(verb, capsys):
    shown = _help(verb, capsys)
    lines = _examples(shown)
    assert lines
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "smoothadv"
        args = build_parser().parse_args(argv[1:])  # an example whose options are wrong exits
        if verb != ("sweep",):
            assert (args.command, getattr(args, "sweep_command", None))[:len(verb)] == verb
            assert args.func is _parser(verb).get_default("func")


def test_top_level_help_lists_every_verb_and_examples(capsys):
    shown = _help((), capsys)
    assert all(v[0] in shown for v in VERBS)
    for line in _examples(shown):
        build_parser().parse_args(shlex.split(line, comments=True)[1:])


def _out_actions(verb: tuple[str, ...]) -> list[argparse.Action]:
    return [a for a in _parser(verb)._actions if a.dest == "out"]


@pytest.mark.parametrize("verb", WRITERS, ids=" ".join)
def test_every_writing_verb_takes_its_output_as_o_or_out(verb):
    [out] = _out_actions(verb)
    assert out.option_strings == ["-o", "--out"] and out.required
    leaves = [v for v in VERBS if not _subcommands(_parser(v))]
    assert [v for v in leaves if _out_actions(v)] == WRITERS


@pytest.mark.parametrize("verb", [*ON_A_CHECKPOINT, *ON_A_SWEEP_DIR, ("analyze",)],
                         ids=" ".join)
def test_the_same_things_have_the_same_positional_names(verb):
    """As --help shows them: a checkpoint is `checkpoint`, a sweep folder `sweep_dir`."""
    positionals = [a.metavar or a.dest for a in _parser(verb)._actions if not a.option_strings]
    assert positionals == ["checkpoint" if verb in ON_A_CHECKPOINT else "sweep_dir"]


def test_attack_takes_precision_and_compile_as_certify_does(capsys):
    def kernel_options(verb):
        return {a.dest: (a.option_strings, a.choices, a.default, a.nargs, type(a))
                for a in _parser(verb)._actions if a.dest in ("precision", "compile")}

    assert kernel_options(("attack",)) == kernel_options(("certify",))
    assert len(kernel_options(("attack",))) == 2
    shown = _help(("attack",), capsys)
    assert "--precision {float32,tf32,bf16}" in shown and "--compile" in shown


def test_attack_runs_in_the_precision_asked_and_compiles_predict(synthetic_checkpoint,
                                                                 tmp_path, monkeypatch):
    """--precision reaches the run (recorded bfloat16); --compile routes PREDICT's base
    classifier through compile_classifier (a stand-in here: no compiler needed) and is
    recorded."""
    from smoothadv.certify import runner

    probed = []

    def fake_compile(model, example, **kwargs):
        probed.append(example.shape[0])
        return model, True

    monkeypatch.setattr(runner, "compile_classifier", fake_compile)
    def attack_args(out, *extra):
        return ["attack", str(synthetic_checkpoint), "--sigma", "0.25", "--epsilon", "0.25",
                "--steps", "2", "--m-test", "4", "--n", "50", "--alpha", "0.01", "--batch",
                "32", "--skip", "128", "-o", str(out), "--device", "cpu", "--no-progress",
                *extra]

    compiled, eager = tmp_path / "compiled.tsv", tmp_path / "eager.tsv"
    assert main(attack_args(compiled, "--precision", "bf16", "--compile")) == 0
    meta = json.loads(meta_path(compiled).read_text())
    assert meta["precision"] == "bfloat16" and meta["compiled"] is True
    assert probed == [32]  # one probe, on a batch of PREDICT's size
    assert main(attack_args(eager)) == 0
    meta = json.loads(meta_path(eager).read_text())
    assert meta["precision"] == "float32" and meta["compiled"] is False and probed == [32]

def _described(name: str) -> list[str]:
    """A preset's opening comment block, without the "#" marks, as the test reads it."""
    lines = []
    for line in (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.lstrip("#").strip():
            lines.append(line.lstrip("#").strip())
    return lines


def test_presets_prints_each_presets_whole_description(capsys):
    assert main(["sweep", "presets"]) == 0
    blocks: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line and not line[0].isspace():
            current = blocks.setdefault(line.split()[0], [line])
        elif line.strip():
            current.append(line)
    assert list(blocks) == preset_names()
    assert blocks["quickstart"][0].split()[1:] == ["10", "trials"]
    for name, block in blocks.items():
        assert [line.strip() for line in block[1:]] == _described(name), name
        assert all(line.startswith("    ") for line in block[1:])
    assert sum(len(_described(name)) > 1 for name in blocks) >= len(blocks) // 2


def test_plan_prints_its_summary_first_and_only_that_with_summary(capsys):
    assert main(["sweep", "plan", "quickstart", "--summary"]) == 0
    summary = capsys.readouterr().out.rstrip("\n").splitlines()
    assert main(["sweep", "plan", "quickstart"]) == 0
    full = capsys.readouterr().out.rstrip("\n").splitlines()
    assert len(summary) == 4 and summary[0].startswith("each trial: 1 worker(s)")
    assert summary[1].startswith("30 trial-epochs in all") and summary[-1] == "10 trials"
    assert full[:4] == summary and full[4] == ""
    assert full[5].split()[0] == "trial" and len(full) == 4 + 1 + 1 + 10  # header, 10 trials
