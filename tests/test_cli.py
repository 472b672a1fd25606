"""The command line as a user runs it: a separate process, exit codes, no tracebacks."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


def spherear(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spherear", *args], capture_output=True, text=True)


def test_help_and_version():
    out = spherear("--help")
    assert out.returncode == 0 and "info" in out.stdout
    version = spherear("--version")
    assert version.returncode == 0 and version.stdout.startswith("spherear ")


@pytest.mark.parametrize(
    ("recipe", "total"), [("sphere_b.toml", "204.5M"), ("sphere_l.toml", "476.4M"),
                          ("sphere_h.toml", "943.9M")],
)  # fmt: skip
def test_info_prints_released_parameter_counts(recipe, total):
    out = spherear("info", "--recipe", str(ROOT / "recipes" / recipe))
    assert out.returncode == 0, out.stderr
    lines = dict(line.rsplit(None, 1) for line in out.stdout.splitlines() if line.endswith("M"))
    assert lines["VAE"] == "75.4M" and lines["AR + head"] == total
    assert "[ar]" in out.stdout and "depth = " in out.stdout  # the resolved size is printed


def test_info_rejects_a_misspelled_override_in_one_line():
    out = spherear(
        "info", "--recipe", str(ROOT / "recipes" / "sphere_b.toml"), "--set", "train.lrr=1"
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert "'train.lrr'" in out.stderr and "'train.lr'" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2


def test_console_script_from_another_directory(tmp_path):
    script = shutil.which("spherear", path=str(Path(sys.executable).parent))
    assert script, "the spherear console script is not installed next to this python"
    recipe = str(ROOT / "recipes" / "sphere_b.toml")
    out = subprocess.run([script, "info", "--recipe", recipe], capture_output=True, text=True,
                         cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "AR + head          204.5M" in out.stdout


def test_info_needs_exactly_one_source():
    out = spherear("info")
    assert out.returncode == 2 and "exactly one of --recipe or --checkpoint" in out.stderr


def test_info_on_a_checkpoint(tmp_path, tiny_recipe):
    from spherear.checkpoints import save_pretrained
    from spherear.models import build_ar, build_vae

    ar = build_ar(tiny_recipe)
    save_pretrained(tmp_path / "exp", tiny_recipe, build_vae(tiny_recipe), ar.state_dict())
    out = spherear("info", "--checkpoint", str(tmp_path / "exp"))
    assert out.returncode == 0, out.stderr
    assert (
        "spherear export, full SphereAR-tiny" in out.stdout and "EMA weights present" in out.stdout
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04junk")
    out = spherear("info", "--checkpoint", str(bad))
    assert out.returncode == 2 and "not a readable torch checkpoint" in out.stderr
    assert "Traceback" not in out.stderr


def test_info_on_a_recipe_that_takes_its_classes_from_unprepared_data(tmp_path):
    recipe = str(ROOT / "recipes" / "folder.toml")
    out = subprocess.run([sys.executable, "-m", "spherear", "info", "--recipe", recipe],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ar.num_classes is unset and data/my_images32 is not prepared yet" in out.stdout
    assert "AR + head" in out.stdout
