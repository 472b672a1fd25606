"""The README's Python examples run as written (those marked ``# doctest: skip`` need
files this machine cannot download)."""

import os
import re
import shlex

import pytest

from .conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block(index, monkeypatch):
    code = BLOCKS[index]
    if code.startswith("# doctest: skip"):
        pytest.skip(code.splitlines()[0])
    monkeypatch.chdir(ROOT)
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})


def test_readme_mentions_every_recipe():
    text = (ROOT / "README.md").read_text()
    for recipe in os.listdir(ROOT / "recipes"):
        assert f"recipes/{recipe}" in text


def _readme_commands() -> list[list[str]]:
    """Every ``spherear`` invocation in the README's and Makefile's shell lines, as argv
    after ``spherear`` (also behind ``torchrun ... -m spherear`` or ``accelerate launch``)."""
    text = (ROOT / "README.md").read_text()
    shell = "\n".join(re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S))
    shell += "\n" + (ROOT / "Makefile").read_text().replace("$(SPHEREAR)", "spherear")
    commands = []
    for line in shell.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):  # a comment, whose apostrophes are not quotes
            continue
        words = shlex.split(line.split(" #")[0].split("||")[0])
        for i, word in enumerate(words):
            if word == "spherear" or word.endswith("/spherear"):
                argv = words[i + 1 :]
                if argv and argv[0] != "..." and "..." not in argv:
                    commands.append(argv)
                break
    return commands


def test_every_readme_command_names_a_real_subcommand_and_options():
    """A renamed flag or subcommand fails here before a user copies a stale line."""
    import click
    import typer.main

    from spherear.cli import app

    group = typer.main.get_command(app)
    commands = _readme_commands()
    assert len(commands) > 10
    for argv in commands:
        name = argv[0]
        if name in ("--help", "--version"):
            continue
        assert name in group.commands, f"README: `spherear {' '.join(argv)}`: no {name}"
        command = group.commands[name]
        ctx = click.Context(command, info_name=name, resilient_parsing=False)
        try:
            command.parse_args(ctx, list(argv[1:]))
        except click.UsageError as e:
            pytest.fail(f"README: `spherear {' '.join(argv)}`: {e}")
