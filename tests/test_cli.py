"""The command line's parser (cli/): every verb answers --help with exit 0 and lists each of
its flags; the verbs are today's, each leaf with a runner."""

from __future__ import annotations

import argparse

import pytest
from smoothadv.cli.main import build_parser, main

VERBS = [("certify",), ("predict",), ("attack",), ("train",), ("pseudo-label",), ("analyze",),
         ("sweep",), *[("sweep", verb) for verb in
                       ("plan", "presets", "run", "resume", "status", "stop", "trust")]]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def _parser(verb: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in verb:
        parser = _subcommands(parser)[name]
    return parser


def test_the_verbs_are_all_there_and_no_other():
    top = _subcommands(build_parser())
    assert list(top) == [v[0] for v in VERBS if len(v) == 1]
    assert list(_subcommands(top["sweep"])) == [v[1] for v in VERBS if len(v) == 2]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_answers_help_with_its_flags(verb, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*verb, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: smoothadv {' '.join(verb)} ")
    flags = [s for a in _parser(verb)._actions for s in a.option_strings]
    assert "--help" in flags and all(flag in shown for flag in flags), flags
    if not _subcommands(_parser(verb)):
        assert callable(_parser(verb).get_default("func"))


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert all(v[0] in shown for v in VERBS)
