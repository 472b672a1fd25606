"""What ``push-to-hub --space`` publishes beside the model: a Hugging Face Space that serves
the page of ``spherear demo`` on the published model (``app.py``, ``requirements.txt`` and
a ``README.md`` whose front matter tells the hub how to run it)."""

from __future__ import annotations

import re
from pathlib import Path

from spherear.hub import PushError
from spherear.hub.stage import Staged
from spherear.hub_files import NAME
from spherear.version import __version__

APP = '''"""The spherear demo page of {repo_id}: pick a class, sample it, and copy the
`spherear sample` command that writes the same images. Written by spherear {version}."""

import os

from spherear.demo import build_page, load_model

# SPHEREAR_MODEL serves another model: a local export, another hf:// address
MODEL = os.environ.get("SPHEREAR_MODEL", "{address}")
demo = build_page(load_model(MODEL))

if __name__ == "__main__":
    demo.launch()
'''

README = """---
title: {title}
sdk: gradio
sdk_version: {gradio}
python_version: "3.11"
app_file: app.py
models:
- {repo_id}
license: {license}
---

# {repo_id}: the spherear demo page

Samples [{repo_id}](https://huggingface.co/{repo_id}) by class, as `spherear demo` does on
a local machine: choose a class, the number of images, the seed, the guidance, the sampler
and its steps; each image downloads as PNG, and the page prints the `spherear sample`
command that writes the same images. Set `SPHEREAR_MODEL` in the Space's settings to serve
another model.
"""


def space_id(repo_id: str) -> str:
    """The Space of the model ``repo_id``: USER/NAME-demo."""
    space = f"{repo_id}-demo"
    if not re.fullmatch(rf"{NAME}/{NAME}", space):
        raise PushError(f"repo id '{repo_id}': its Space, {space}, is too long for the hub; "
                        "pass a shorter --repo-id")  # fmt: skip
    return space


def _gradio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradio")
    except PackageNotFoundError:
        raise PushError(
            "--space needs the demo extra, whose gradio the Space runs: "
            "pip install 'spherear[demo]'"
        ) from None


def stage_space(repo_id: str, revision: str | None, license: str, out: Path) -> Staged:
    """Write into the empty folder ``out`` the Space of the model ``repo_id`` (at
    ``revision``, else its default branch)."""
    address = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    files = {
        "app.py": APP.format(repo_id=repo_id, version=__version__, address=address),
        "requirements.txt": f"spherear[demo]=={__version__}\n",
        "README.md": README.format(
            title=f"{repo_id.split('/')[1]} demo",
            repo_id=repo_id,
            gradio=_gradio_version(),
            license=license,
        ),  # fmt: skip
    }
    out.mkdir(parents=True, exist_ok=True)
    staged = Staged(out)
    for name, text in files.items():
        (out / name).write_text(text)
        staged.sources[name] = []  # generated
    return staged
