"""Settings and weights in files spherear did not write (an export from the hub, a reference
batch): every one is checked before anything is allocated or sampled, and refused in one
line with exit status 2. The hostile files are made here from a healthy tiny export."""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spherear.cli import app

from .conftest import one_line_error

runner = CliRunner()


@pytest.fixture
def export(tmp_path, tiny_recipe):
    from spherear.checkpoints import save_pretrained
    from spherear.models import build_ar, build_vae

    ar = build_ar(tiny_recipe)
    return save_pretrained(tmp_path / "exp", tiny_recipe, build_vae(tiny_recipe), ar.state_dict())


def _edit_config(export, edit) -> None:
    path = export / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _set(section: str, key: str, value):
    return lambda config: config["recipe"][section].__setitem__(key, value)


# (id, how config.json is altered, what the one line says)
CONFIGS = [
    ("depth", _set("ar", "depth", 1_000_000), "'ar.depth' is 1000000, above 1024"),
    ("width", _set("ar", "width", 2**40), "'ar.width' is 1099511627776, above 65536"),
    ("resolution", _set("vae", "resolution", 10**9), "'vae.resolution' is 1000000000, above 8192"),
    (
        "classes",
        _set("ar", "num_classes", 10**12),
        "'ar.num_classes' is 1000000000000, above 1000000",
    ),
    ("steps", _set("sample", "steps", 10**400), "'sample.steps' is too large"),
    ("names", _set("ar", "class_names", ["one"]), "ar.class_names has 1 names for ar.num_classes"),
    ("cfg", _set("sample", "cfg", float("inf")), "'sample.cfg' must be a finite number"),
    (
        "newer",
        lambda c: c.__setitem__("format_version", 99),
        "format_version 99 was written by a newer",
    ),
    (
        "version",
        lambda c: c.__setitem__("format_version", "2"),
        "'format_version' must be a positive",
    ),
    ("layers-that-the-weights-lack", _set("ar", "depth", 6), "does not fit its recipe"),
]


@pytest.mark.parametrize("edit,words", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_export_settings_are_checked_before_anything_is_built(export, edit, words):
    _edit_config(export, edit)
    start = time.perf_counter()
    for command in (["info", "--checkpoint"], ["sample", "--n", "10", "--checkpoint"]):
        result = runner.invoke(app, [*command, str(export)])
        one_line_error(result, words)
    assert time.perf_counter() - start < 30


def test_deeply_nested_config_is_one_line(export):
    (export / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    one_line_error(runner.invoke(app, ["info", "--checkpoint", str(export)]), "nested too deeply")


def _alter_ar(export, change) -> None:
    path = export / "ar.safetensors"
    state = load_file(path)
    save_file({k: change(v) for k, v in state.items()}, path)
    _edit_config(export, lambda c: c.pop("files"))  # as if the records were rewritten too


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda v: torch.full_like(v, float("nan")), "holds NaN or infinite values"),
        # the F32 bytes relabelled I32: same size, same shapes
        (lambda v: v.view(torch.int32) if v.dtype == torch.float32 else v, "is torch.int32"),
    ],
    ids=["nan", "relabelled-int32"],
)
def test_weights_are_checked_as_they_load(export, tmp_path, change, words):
    _alter_ar(export, change)
    result = runner.invoke(app, ["sample", "--n", "10", "--checkpoint", str(export),
                                 "--out", str(tmp_path / "s")])  # fmt: skip
    one_line_error(result, "ar.safetensors", words)
    assert not (tmp_path / "s" / "samples.npz").exists()


@pytest.mark.parametrize("option", ["--cfg", "--temperature"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_float_options_must_be_finite(option, value):
    result = runner.invoke(app, ["sample", "--n", "4", option, value])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output


def test_flat_or_non_finite_samples_are_not_saved(export, tmp_path):
    # a decoder whose output is constant: its last conv and its linear shortcut zeroed, so
    # every pixel is 0, which the authors' quantisation puts at 128
    state = load_file(export / "vae.safetensors")
    for key in [k for k in state if k.startswith(("decoder.conv_out.2.", "decoder.patch_out."))]:
        state[key] = torch.zeros_like(state[key])
    save_file(state, export / "vae.safetensors")
    _edit_config(export, lambda c: c.pop("files"))
    result = runner.invoke(app, ["sample", "--n", "10", "--steps", "1", "--checkpoint",
                                 str(export), "--out", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 2  # the progress bar shares stderr: the error is its last line
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: images 0..9 are all one flat colour (value 128)")
    )
    assert not (tmp_path / "s" / "samples.npz").exists()
    assert not list((tmp_path / "s").glob("chunks/*.npz"))


def _reference(path, mu, sigma) -> None:
    np.savez(path, mu=mu, sigma=sigma)


@pytest.mark.parametrize(
    "mu,sigma,words",
    [
        (np.full(2048, np.nan), np.eye(2048), "'mu' holds NaN"),
        (np.zeros(2048), np.full((2048, 2048), np.nan), "'sigma' holds NaN"),
        (np.zeros(2048), -np.eye(2048), "'sigma' is not a covariance"),
    ],
    ids=["nan-mu", "nan-sigma", "negative-sigma"],
)
def test_reference_statistics_are_checked(tmp_path, mu, sigma, words):
    from spherear.errors import SpherearError
    from spherear.eval.npz import open_reference

    _reference(tmp_path / "ref.npz", mu, sigma)
    with pytest.raises(SpherearError, match=words):
        open_reference(tmp_path / "ref.npz", (32, 32))


def test_nan_inception_weights_are_refused(tmp_path):
    from spherear.errors import SpherearError
    from spherear.eval.features import InceptionFeatures, random_inception_weights

    path = random_inception_weights(tmp_path / "inception.pth")
    state = torch.load(path)
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    torch.save(state, path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    with pytest.raises(SpherearError, match="'fc.weight' holds NaN"):
        InceptionFeatures(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_utime - before < 30
