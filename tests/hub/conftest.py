"""A "run" for the publishing tests: what train-ar leaves behind (export/, recipe.toml,
checkpoints/, samples/), written with random tiny weights, since publishing does not care how
well a model was trained. No test talks to the network: the only thing replaced is
huggingface_hub's HfApi network methods.
"""

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from spherear.checkpoints import save_pretrained
from spherear.cli import app
from spherear.config import save_recipe
from spherear.grids import save_grid
from spherear.models import build_ar, build_vae

TAG = "n8-cfg2.0-linear-steps4-sde-seed0"
FID = {"FID": 123.4, "sFID": 50.1, "IS": 3.2, "precision": 0.1, "recall": 0.05}
MODEL_INDEX = {"fid": 123.4, "sfid": 50.1, "inception_score": 3.2, "precision": 0.1, "recall": 0.05}
A_TOKEN = "hf_" + "aB3" * 12  # the shape of a real access token


def make_run(root: Path, recipe, repo_id: str = "me/tiny-sphere", kind: str = "ar") -> Path:
    run = root / "runs" / f"tiny-{kind}"
    recipe = copy.deepcopy(recipe)
    recipe.run.output_dir = str(run)
    recipe.hub.repo_id = repo_id
    recipe.sample.steps = 4  # what the card's usage example runs with
    if kind == "vae":
        recipe.ar = None
        save_pretrained(run / "export", recipe, build_vae(recipe))
    else:
        ar = build_ar(recipe)
        ema = {k: v + 0.05 * torch.randn_like(v) for k, v in ar.state_dict().items()}
        save_pretrained(run / "export", recipe, build_vae(recipe), ema, ar.state_dict())
    save_recipe(recipe, run)
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    (run / "checkpoints" / "step-00000010" / "optimizer.bin").write_bytes(b"\0" * 64)
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 1.0}\n')
    if kind == "vae":
        save_grid(torch.rand(8, 3, 32, 32) * 2 - 1, run / "reconstructions" / "step-1.png", 4)
        return run
    samples = run / "samples" / TAG
    samples.mkdir(parents=True)
    save_grid(torch.rand(8, 3, 32, 32) * 2 - 1, samples / "grid.png", nrow=4)
    save_grid(torch.rand(4, 3, 32, 32) * 2 - 1, run / "samples" / "step-00000010.png", nrow=4)
    np.savez(samples / "samples.npz", np.zeros((8, 32, 32, 3), np.uint8))
    np.save(samples / "labels.npy", np.arange(8))
    settings = {
        "n": 8,
        "cfg": 2.0,
        "cfg_schedule": "linear",
        "steps": 4,
        "sampler": "sde",
        "labels": "balanced",
        "seed": 0,
        "batch_size": 100,
        "weights": "ema",
        "checkpoint": f"{run / 'export'} (spherear export, ema weights)",
    }
    (samples / "settings.json").write_text(json.dumps(settings))
    fid = {
        "protocol": "adm-evaluator/1",
        "metrics": FID | {"FD_dinov2": 77.0},
        "num_samples": 8,
        "reference": f"{root}/ref/reference.npz (8 images)",
        "warnings": ["only 8 samples (< 10000): FID is biased upwards"],
    }
    (samples / "eval-fid.json").write_text(json.dumps(fid))
    (samples / "eval-probe.json").write_text(json.dumps({"class_consistency": 0.875}))
    return run


def push(*args: str):
    return CliRunner().invoke(app, ["push-to-hub", *args])


def files_in(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
