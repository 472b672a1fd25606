"""The model card of a published run: its README.md, hub metadata (a model-index from the
run's ``eval-fid.json``) and what the model is, how it scored and how to use it; and an
offline check that the card's metadata parses as the hub will parse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spherear.checkpoints import CheckpointInfo
from spherear.config import Recipe
from spherear.files import read_json
from spherear.hub import PushError

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

PAPER = "https://arxiv.org/abs/2509.24335"
FILE_NOTES = {
    "vae.safetensors": "the S-VAE tokenizer",
    "ar.safetensors": "the AR transformer and diffusion head, EMA weights (used by default)",
    "ar_raw.safetensors": "the AR transformer and diffusion head, raw (non-EMA) weights",
    "config.json": "the spherear export config (format, kind, recipe)",
    "recipe.toml": "the full resolved training recipe",
    "grid.png": "a grid of samples (of reconstructions, for a VAE)",
}
COUNT_KEYS = ("num_samples", "n", "sample_count")
# the settings.json keys of `spherear sample` that a reader of the card needs
SETTING_KEYS = (
    "n",
    "cfg",
    "cfg_schedule",
    "steps",
    "sampler",
    "temperature",
    "labels",
    "seed",
    "weights",
)
# eval-fid.json keys that go into the card's model-index: key -> (metric type, display name)
FID_METRICS = {
    "fid": ("fid", "FID"),
    "sfid": ("sfid", "sFID"),
    "is": ("inception_score", "Inception Score"),
    "inception_score": ("inception_score", "Inception Score"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
}


@dataclass
class Evaluation:
    """One ``<run>/samples/<tag>/`` folder's settings and evaluation results."""

    tag: str
    folder: Path
    settings: dict
    fid: dict | None = None
    probe: dict | None = None

    @property
    def sources(self) -> list[Path]:
        names = ("settings.json", "eval-fid.json", "eval-probe.json")
        return [self.folder / n for n in names if (self.folder / n).is_file()]


def _read_json(path: Path) -> dict:
    fix = "rerun what wrote it or delete it"
    data = read_json(path, fix)
    if not isinstance(data, dict):
        raise PushError(f"{path}: expected a JSON object; {fix}")
    return data


def evaluations(run_dir: Path) -> list[Evaluation]:
    """The run's sample folders that were evaluated (``eval-fid.json``/``eval-probe.json``)."""
    found = []
    for folder in sorted(p for p in (run_dir / "samples").glob("*") if p.is_dir()):
        fid, probe = folder / "eval-fid.json", folder / "eval-probe.json"
        if not (fid.is_file() or probe.is_file()):
            continue
        settings = folder / "settings.json"
        found.append(
            Evaluation(
                folder.name,
                folder,
                _read_json(settings) if settings.is_file() else {},
                _read_json(fid) if fid.is_file() else None,
                _read_json(probe) if probe.is_file() else None,
            )
        )
    return found


def _numbers(result: dict) -> dict[str, float]:
    """The metrics of an eval JSON: its ``metrics`` table (or top level), counts left out."""
    table = result["metrics"] if isinstance(result.get("metrics"), dict) else result
    return {
        k: v
        for k, v in table.items()
        if k not in COUNT_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _heading(what: str, ev: Evaluation, result: dict) -> str:
    count = next((result[k] for k in COUNT_KEYS if isinstance(result.get(k), int)), None)
    shown = [f"{k}={ev.settings[k]}" for k in SETTING_KEYS if k in ev.settings]
    text = f"{what} on samples `{ev.tag}`" + (f" ({count} images)" if count else "")
    text += f"; sampling settings: {', '.join(shown) or 'not recorded'}"
    reference = result.get("reference")
    if isinstance(reference, str) and reference:
        # eval-fid names the reference by its local path; the card keeps the file name only
        where, _, rest = reference.partition(" ")
        text += f"; reference `{Path(where).name}{' ' + rest if rest else ''}`"
    if isinstance(result.get("protocol"), str):
        text += f"; protocol `{result['protocol']}`"
    return text + ":"


def _result(what: str, ev: Evaluation, result: dict) -> str:
    warnings = result.get("warnings") if isinstance(result.get("warnings"), list) else []
    notes = "".join(f"\n> Warning: {w}\n" for w in warnings if isinstance(w, str))
    return f"{_heading(what, ev, result)}\n\n{_table(_numbers(result))}{notes}"


def _dataset(recipe: Recipe) -> tuple[str | None, str]:
    """The hub dataset id of the training data (None if not from the hub) and its name."""
    source = recipe.data.source
    hub_id = source[3:].split("@")[0] if source.startswith("hf:") else None
    return hub_id, hub_id or source.split(":")[0]


def _eval_results(recipe: Recipe, evals: list[Evaluation]) -> list:
    from huggingface_hub import EvalResult

    hub_id, name = _dataset(recipe)
    res = recipe.vae.resolution
    results = []
    for ev in evals:
        for key, value in _numbers(ev.fid or {}).items():
            if key.lower() not in FID_METRICS:
                continue
            metric, pretty = FID_METRICS[key.lower()]
            results.append(
                EvalResult(
                    task_type="image-generation",
                    task_name="Class-conditional image generation",
                    dataset_type=hub_id or name,
                    dataset_name=f"{name} {res}x{res}",
                    metric_type=metric,
                    metric_name=f"{pretty} ({ev.tag})",
                    metric_value=value,
                )
            )
    return results


def _table(numbers: dict[str, float]) -> str:
    rows = "".join(f"| {k} | {v:.4g} |\n" for k, v in numbers.items())
    return "| metric | value |\n|---|---|\n" + rows


USE_AR = """## How to use

```bash
spherear sample --checkpoint hf://{repo_id} --n 16
```

```python
import torch
import spherear

loaded = spherear.from_pretrained("{repo_id}"{weights})
labels = torch.tensor([0, 1, 2, 3])
# the export's sampling settings: CFG {s.cfg} ({s.cfg_schedule}), {s.steps} {s.sampler} steps
tokens = loaded.ar.sample(labels, loaded.recipe.sample)
images = loaded.vae.decode(loaded.ar.to_latents(tokens))  # (4, 3, H, W) in about [-1, 1]
```
"""
USE_VAE = """## How to use

```bash
spherear info --checkpoint hf://{repo_id}
```

```python
import torch
import spherear

vae = spherear.from_pretrained("{repo_id}").vae
images = torch.rand(2, 3, {res}, {res}) * 2 - 1  # RGB in [-1, 1]
tokens = vae.encode(images).sample()  # on the sphere of radius sqrt(latent_dim)
reconstruction = vae.decode(tokens)
```
"""
PROBE_NOTE = (
    "Measured with `spherear eval-probe`: a small classifier that spherear trains on the "
    "training data judges whether each sample shows its class. It is a sanity check of the "
    "class conditioning, not a standard benchmark, and not comparable with published numbers."
)
CITATION = """## Citation

```bibtex
@article{ke2025spherear,
  title={Hyperspherical Latents Improve Continuous-Token Autoregressive Generation},
  author={Ke, Guolin and Xue, Hui},
  journal={arXiv preprint arXiv:2509.24335},
  year={2025}
}
```
"""


def model_card(
    recipe: Recipe,
    info: CheckpointInfo,
    repo_id: str,
    files: list[str],
    evals: list[Evaluation],
    grid: str | None,
    weights: str,
) -> str:
    """The README.md of a published run: hub metadata (model-index from ``eval-fid.json``)
    and what the model is, how it scored and how to use it."""
    from huggingface_hub import ModelCard, ModelCardData

    from spherear.models import count_parameters

    hub_id, dataset_name = _dataset(recipe)
    name = repo_id.split("/")[-1]
    res = recipe.vae.resolution
    tags = ["spherear", "arxiv:2509.24335", "hyperspherical-latents"]
    if recipe.ar is None:
        tags += ["image-tokenizer", "vae"]
        what = "An S-VAE image tokenizer"
        usage = USE_VAE.format(repo_id=repo_id, res=res)
    else:
        tags += ["image-generation", "autoregressive", "class-conditional"]
        what = f"SphereAR-{info.size}, a generator of {recipe.ar.num_classes} image classes,"
        pick = ', weights="raw"' if weights == "raw" else ""
        usage = USE_AR.format(repo_id=repo_id, weights=pick, s=recipe.sample)
    data = ModelCardData(
        library_name="spherear",
        license=recipe.hub.license,
        tags=tags,
        datasets=[hub_id] if hub_id else None,
        model_name=name,
        eval_results=_eval_results(recipe, evals) or None,
    )
    counts = count_parameters(recipe).items()
    listed = [f"- `{f}`: {FILE_NOTES[f]}\n" for f in files if f in FILE_NOTES]
    if any(f.startswith("samples/") for f in files):
        listed.append("- `samples/<tag>/`: samples (ADM `.npz`), their settings and evaluations\n")
    parts = [
        f"# {name}\n\n{what} at {res}x{res}, trained on {dataset_name} with `spherear`, the "
        f"toolkit for SphereAR ([Ke & Xue, *Hyperspherical Latents Improve Continuous-Token "
        f"Autoregressive Generation*]({PAPER})).\n",
        "| part | parameters |\n|---|---|\n" + "".join(f"| {p} | {n:,} |\n" for p, n in counts),
        "".join(listed),
    ]
    if grid and recipe.ar is None:
        parts.append(
            f"## Reconstructions\n\nHeld-out images on top, their reconstructions below:\n\n"
            f"![reconstructions]({grid})\n"
        )
    elif grid:
        parts.append(f"## Samples\n\n![samples]({grid})\n")
    parts += [usage, "## Evaluation\n"]
    fid = [ev for ev in evals if ev.fid]
    if not fid:
        parts.append("No `spherear eval-fid` result was published with this model.\n")
    parts += [_result("`spherear eval-fid`", ev, ev.fid) for ev in fid]
    probes = [ev for ev in evals if ev.probe]
    if probes:
        parts.append(f"## Class-consistency probe\n\n{PROBE_NOTE}\n")
    parts += [_result("`spherear eval-probe`", ev, ev.probe) for ev in probes]
    parts.append(CITATION)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts)))


def check_card(path: str | Path) -> ModelCard:
    """An offline stand-in for ``ModelCard.validate`` (which asks the hub): the YAML header
    parses into ModelCardData, model-index included, names the library and a license, and
    survives a round trip unchanged. Returns the parsed ``ModelCard``."""
    from huggingface_hub import ModelCard, ModelCardData

    try:
        card = ModelCard.load(path)
        metadata = card.data.to_dict()
        again = ModelCardData(**metadata).to_dict()
    except ValueError as e:
        raise PushError(f"{path}: the model card metadata does not parse ({e})") from None
    missing = [k for k in ("library_name", "license") if not metadata.get(k)]
    if missing or again != metadata:
        what = f"no {', '.join(missing)}" if missing else "it changes in a parse round trip"
        raise PushError(f"{path}: invalid model card metadata ({what}); please report this")
    return card
