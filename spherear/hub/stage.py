"""What a push publishes, staged in one folder: the export's safetensors (EMA by default),
``config.json``, ``recipe.toml``, a generated model card and the newest sample grid (with
``--include-samples`` also each ``samples/<tag>/`` folder). Training state (``checkpoints/``)
is never staged, and a staged file that holds a Hugging Face token is refused, naming the
run file it came from.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spherear.checkpoints import inspect_checkpoint
from spherear.config import load_recipe
from spherear.hub import PushError
from spherear.hub.card import check_card, evaluations, model_card

TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
# what --include-samples publishes from each <run>/samples/<tag>/ folder
SAMPLE_FILES = (
    "samples.npz",
    "labels.npy",
    "settings.json",
    "grid.png",
    "eval-fid.json",
    "eval-probe.json",
)
# which AR weights a push publishes: one of the two sets (``Weights``), or both
Published = Literal["ema", "raw", "both"]
AR_FILES = {
    "ema": ["ar.safetensors"],
    "raw": ["ar_raw.safetensors"],
    "both": ["ar.safetensors", "ar_raw.safetensors"],
}


@dataclass
class Staged:
    """A staging folder and, for each file in it, the run files its content came from."""

    folder: Path
    sources: dict[str, list[Path]] = field(default_factory=dict)


def _grid(run_dir: Path) -> Path | None:
    """The newest grid of ``spherear sample``, else the newest one drawn while training
    (samples of train-ar, reconstructions of train-vae)."""
    for pattern in ("samples/*/grid.png", "samples/step-*.png", "reconstructions/*.png"):
        found = list(run_dir.glob(pattern))
        if found:
            return max(found, key=lambda p: p.stat().st_mtime_ns)
    return None


def _place(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            target.hardlink_to(source)  # a multi-GB export need not be copied to be uploaded
            return
        except OSError:
            pass
    shutil.copy2(source, target)


def stage(
    run_dir: Path,
    repo_id: str,
    out: Path,
    weights: Published = "ema",
    include_samples: bool = False,
    link: bool = False,
) -> Staged:
    """Write into the empty folder ``out`` exactly what ``push`` publishes of ``run_dir``."""
    export = run_dir / "export"
    info = inspect_checkpoint(export)
    recipe = load_recipe(export / "recipe.toml")
    staged = Staged(out)
    names = ["vae.safetensors"]
    if info.kind == "full":
        names += AR_FILES[weights]
    elif weights != "ema":
        raise PushError(f"{export}: a VAE-only export has one set of weights; drop --weights")
    for name in [*names, "config.json", "recipe.toml"]:
        if not (export / name).is_file():
            raise PushError(f"{export}: no {name}; re-export the run or choose other --weights")
        _place(export / name, out / name, link)
        staged.sources[name] = [export / name]
    grid = _grid(run_dir)
    if grid is not None:
        _place(grid, out / "grid.png", link)
        staged.sources["grid.png"] = [grid]
    evals = evaluations(run_dir)
    if include_samples:
        for folder in sorted(p.parent for p in (run_dir / "samples").glob("*/samples.npz")):
            for name in SAMPLE_FILES:
                if (folder / name).is_file():
                    rel = f"samples/{folder.name}/{name}"
                    _place(folder / name, out / rel, link)
                    staged.sources[rel] = [folder / name]
    files = sorted([*staged.sources, "README.md"])
    card = model_card(recipe, info, repo_id, files, evals, "grid.png" if grid else None, weights)
    (out / "README.md").write_text(card)
    staged.sources["README.md"] = [export / "config.json", export / "recipe.toml"] + [
        p for ev in evals for p in ev.sources
    ]
    check_card(out / "README.md")
    return staged


def _holds_token(path: Path, secret: bytes | None) -> bool:
    overlap = max(256, len(secret or b""))  # a token split across two reads is still seen
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            window = tail + chunk
            if TOKEN_PATTERN.search(window) or (secret and secret in window):
                return True
            tail = window[-overlap:]
    return False


def refuse_tokens(staged: Staged) -> None:
    """Refuse, naming the file, if a staged file holds an ``hf_...`` token or the current
    token (``HF_TOKEN`` or the hub login); the token itself is never printed."""
    from huggingface_hub import get_token

    token = get_token()
    secret = token.encode() if token and len(token) >= 8 else None
    for name in sorted(staged.sources):
        if _holds_token(staged.folder / name, secret):
            origin = next((p for p in staged.sources[name] if _holds_token(p, secret)), None)
            where = origin or f"{name} (generated)"
            raise PushError(
                f"{where}: holds a Hugging Face access token; refusing to publish it (remove "
                "the token from that file, and revoke it if it was ever shared)"
            )
