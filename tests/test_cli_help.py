"""`--help` of every command: each option has a help text, shows its default, one spelling per thing."""

from __future__ import annotations

import argparse

import pytest

from neco.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser):
    """Every optional action of `parser`, including those of `neco eval`'s protocol subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif action.option_strings and not isinstance(
            action, (argparse._HelpAction, argparse._VersionAction)
        ):
            yield parser.prog, action


def test_every_option_has_help_and_shows_its_default() -> None:
    problems = []
    for command in _commands().values():
        for prog, action in _options(command):
            name = "/".join(action.option_strings)
            text = action.help or ""
            if not text.strip() or text == argparse.SUPPRESS:
                problems.append(f"{prog} {name}: no help text")
            elif (
                not any(action.default is hidden for hidden in (None, False, argparse.SUPPRESS))
                and "default" not in text.lower()
            ):  # identity: a default of 0 must be shown too (0 == False)
                problems.append(f"{prog} {name}: default {action.default!r} not shown")
    assert not problems, "\n".join(problems)


def test_every_command_has_a_description() -> None:
    missing = [name for name, parser in _commands().items() if not parser.description]
    assert not missing


def test_one_spelling_across_commands() -> None:
    commands = _commands()
    spellings = {s for command in commands.values() for _, a in _options(command) for s in a.option_strings}
    for old in ("--size", "--image-size", "--random", "--num-threads"):
        for command in commands.values():
            for prog, action in _options(command):
                if old in action.option_strings:
                    assert "deprecated" in (action.help or ""), f"{prog} {old}: not the common spelling"
    assert "--input-size" in spellings and "--threads" in spellings


@pytest.mark.parametrize("command", ["features", "eval", "make-scenes", "demo", "train", "explore"])
def test_commands_that_compute_take_threads(command: str) -> None:
    parser = _commands()[command]
    options = {s for _, a in _options(parser) for s in a.option_strings}
    assert "--threads" in options, command


def test_train_max_steps_says_it_sets_the_schedule() -> None:
    (action,) = [a for _, a in _options(_commands()["train"]) if "--max-steps" in a.option_strings]
    assert "schedule" in action.help


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("demo", "--lr"),
        ("pretrain-tiny", "--pool"),
        ("pretrain-tiny", "--threads"),
        ("explore", "--seed"),
        ("explore", "--compare-weights"),
    ],
)
def test_options_without_a_literal_default_still_say_it(command: str, option: str) -> None:
    (action,) = [a for _, a in _options(_commands()[command]) if option in a.option_strings]
    assert "default" in action.help.lower()


def test_an_unknown_preset_lists_the_presets(capsys) -> None:
    from neco.cli import main

    assert main(["train", "--config", "tiny_cpux"]) == 2
    err = capsys.readouterr().err
    assert "--config tiny_cpux: no such config file, and preset 'tiny_cpux' does not exist" in err
    assert "the presets are [" in err and "did you mean 'tiny_cpu'?" in err
