"""hf:// addresses: how they parse, and how a hub file is found offline in the cache."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spherear.hub_files import HubAddress, parse_address

from .test_checkpoints import _save as save_authors_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("hf://guolinke/SphereAR/vae.pt", HubAddress("guolinke/SphereAR", None, "vae.pt")),
        (Path("hf://me/model@v1.0"), HubAddress("me/model", "v1.0")),  # Path eats a slash
        (
            "hf://me/m@refs/pr/3/export/config.json",
            HubAddress("me/m", "refs/pr/3", "export/config.json"),
        ),
        ("runs/tiny/export", None),
    ],
)
def test_hub_addresses_parse(text, address):
    assert parse_address(text) == address
    if address is not None:
        assert parse_address(str(address)) == address


def spherear_process(*args: str, env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_authors_files_by_hub_address_offline_fail_fast_then_load_from_the_cache(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    address = "hf://guolinke/SphereAR/SphereAR_B.pt"
    out = spherear_process("-m", "spherear", "sample", "--checkpoint", address, "--n", "1", env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (
        f"error: {address}: not in the Hugging Face cache and HF_HUB_OFFLINE=1 is set; fetch "
        "it with `hf download guolinke/SphereAR SphereAR_B.pt` while online\n"
    )

    repo = tmp_path / "hf" / "hub" / "models--guolinke--SphereAR"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    save_authors_file(snapshot / "SphereAR_B.pt", "SphereAR-B")
    save_authors_file(snapshot / "vae.pt", "vae_only")
    check = f"""
import torch
from spherear.checkpoints import load_authors_checkpoint, load_checkpoint
from spherear.cli import app
app(["info", "--checkpoint", "{address}"], standalone_mode=False)
loaded = load_checkpoint("hf://guolinke/SphereAR/vae.pt")
direct = load_authors_checkpoint({str(snapshot / "vae.pt")!r})
same = all(torch.equal(v, direct.vae.state_dict()[k]) for k, v in loaded.vae.state_dict().items())
print(same, loaded.ar is None, loaded.description)
"""
    out = spherear_process("-c", check, env=env)  # one process: importing torch is slow
    assert out.returncode == 0, out.stderr
    info, vae = out.stdout.splitlines()
    assert info.startswith(f"hf://guolinke/SphereAR@{COMMIT}/SphereAR_B.pt: authors'")
    assert "full SphereAR-B (VAE + AR), EMA weights present" in info
    assert vae.startswith(f"True True hf://guolinke/SphereAR@{COMMIT}/vae.pt, cached as ")
