"""The README's Python examples run as written (those marked ``# doctest: skip`` need
files this machine cannot download)."""

import os
import re

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
