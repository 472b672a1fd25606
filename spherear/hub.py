"""``push-to-hub`` and ``from_pretrained``: publish a run as a Hugging Face model repo with a
model card, and load one back.

A push stages exactly what is published in one folder: the export's safetensors (EMA by
default), ``config.json``, ``recipe.toml``, a generated ``README.md`` model card and the
sample grid. Training state (``checkpoints/``) is never staged, and a folder in which any
file holds a Hugging Face token is refused. ``upload`` is the only function here that talks
to the hub: one ``create_repo`` and one ``upload_folder`` commit of the staged folder.
``--dry-run DIR`` writes the same folder to DIR and uploads nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from spherear import __version__
from spherear.checkpoints import CheckpointInfo, Loaded, inspect_checkpoint, load_checkpoint
from spherear.config import Recipe, load_recipe
from spherear.errors import SpherearError
from spherear.hub_files import REPO_ID
from spherear.runs import RUNS, latest_run

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
PAPER = "https://arxiv.org/abs/2509.24335"
# what --include-samples publishes from each <run>/samples/<tag>/ folder
SAMPLE_FILES = (
    "samples.npz",
    "labels.npy",
    "settings.json",
    "grid.png",
    "eval-fid.json",
    "eval-probe.json",
)
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
SETTING_KEYS = ("n", "cfg", "cfg_schedule", "steps", "sampler", "labels", "seed", "weights")
# eval-fid.json keys that go into the card's model-index: key -> (metric type, display name)
FID_METRICS = {
    "fid": ("fid", "FID"),
    "sfid": ("sfid", "sFID"),
    "is": ("inception_score", "Inception Score"),
    "inception_score": ("inception_score", "Inception Score"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
}


class PushError(SpherearError):
    """A run that cannot be published as it is; the message says what to change."""


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


@dataclass
class Staged:
    """A staging folder and, for each file in it, the run files its content came from."""

    folder: Path
    sources: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class Pushed:
    repo_id: str
    files: list[str]
    destination: str  # the dry-run folder, or the commit (or pull request) URL


# ---------------------------------------------------------------------------------------
# Loading


def from_pretrained(name: str | Path, weights: str = "ema") -> Loaded:
    """A model from a hub repo ("USER/REPO", "USER/REPO@REVISION" or any ``hf://`` address),
    a local spherear export folder or an authors' ``.pt``. ``weights``: "ema" or "raw"."""
    text = str(name)
    bare_repo = re.fullmatch(rf"{REPO_ID}(@\S+)?", text) and not Path(text).exists()
    return load_checkpoint(f"hf://{text}" if bare_repo else text, weights)


# ---------------------------------------------------------------------------------------
# Which run


def find_run(run: str | Path | None = None, root: str | Path = RUNS) -> tuple[Path, str]:
    """The run folder to publish and how it was chosen. Without ``run``: the newest train-ar
    run under ``root``, else (a tokenizer-only workspace) the newest train-vae run."""
    if run is not None:
        run = Path(run)
        if run.name == "export" and (run / "config.json").is_file():
            run = run.parent
        if not (run / "export" / "config.json").is_file():
            raise PushError(
                f"{run}: not a finished run (no export/config.json); pass a folder that "
                "train-ar or train-vae finished"
            )
        return run, "as given"
    for kind, how in [
        ("ar", "the newest train-ar run"),
        ("vae", "no train-ar run, so the newest train-vae run"),
    ]:
        try:
            return latest_run(root, kind), f"{how} under {root}/"
        except SpherearError:
            continue
    raise PushError(f"no finished train-ar or train-vae run under {root}/; pass --run RUN")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise PushError(
            f"{path}: not readable JSON ({e}); rerun what wrote it or delete it"
        ) from None
    if not isinstance(data, dict):
        raise PushError(f"{path}: expected a JSON object; rerun what wrote it or delete it")
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


def _grid(run_dir: Path) -> Path | None:
    """The newest grid of ``spherear sample``, else the newest one drawn while training
    (samples of train-ar, reconstructions of train-vae)."""
    for pattern in ("samples/*/grid.png", "samples/step-*.png", "reconstructions/*.png"):
        found = list(run_dir.glob(pattern))
        if found:
            return max(found, key=lambda p: p.stat().st_mtime_ns)
    return None


# ---------------------------------------------------------------------------------------
# The model card


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
images = loaded.vae.decode(tokens)  # (4, 3, H, W) in about [-1, 1]
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


# ---------------------------------------------------------------------------------------
# Staging


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
    weights: str = "ema",
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
        names += {
            "ema": ["ar.safetensors"],
            "raw": ["ar_raw.safetensors"],
            "both": ["ar.safetensors", "ar_raw.safetensors"],
        }[weights]
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


# ---------------------------------------------------------------------------------------
# Publishing


def _first_line(e: Exception) -> str:
    return next(iter(str(e).strip().splitlines()), type(e).__name__)


def upload(
    folder: Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    message: str = "Upload with spherear",
) -> str:
    """The one network step: create the repo if needed (and the branch ``revision``), then
    commit ``folder`` in one ``upload_folder``. The token comes from ``HF_TOKEN`` or the hub
    login inside huggingface_hub. Returns the commit or pull-request URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            create_pr=create_pr,
            commit_message=message,
        )
    except HfHubHTTPError as e:
        raise PushError(
            f"pushing to {repo_id} failed ({_first_line(e)}); log in with `hf auth login` or "
            "set HF_TOKEN to a token with write access"
        ) from None
    except Exception as e:  # the HTTP client's own connection errors differ between versions
        raise PushError(
            f"pushing to {repo_id} failed ({type(e).__name__}: {_first_line(e)}); is the hub "
            "reachable from here?"
        ) from None
    return commit.pr_url or commit.commit_url


def push_to_hub(
    run_dir: Path,
    repo_id: str | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    include_samples: bool = False,
    weights: str = "ema",
    dry_run: Path | None = None,
) -> Pushed:
    """Publish ``run_dir`` (see ``find_run``) to ``repo_id`` (default: the recipe's
    ``hub.repo_id``), or with ``dry_run`` write what would be published to that folder."""
    if weights not in ("ema", "raw", "both"):
        raise PushError(f"--weights {weights}: expected ema, raw or both")
    recipe_path = run_dir / "export" / "recipe.toml"
    repo_id = repo_id or load_recipe(recipe_path).hub.repo_id
    if not repo_id:
        raise PushError(f"{recipe_path} sets no hub.repo_id; pass --repo-id USER/NAME")
    if not re.fullmatch(REPO_ID, repo_id):
        raise PushError(f"repo id '{repo_id}': expected USER/NAME, e.g. --repo-id me/sphere-b")
    options = dict(weights=weights, include_samples=include_samples)
    if dry_run is not None:
        return _dry_run(run_dir, repo_id, Path(dry_run), options)
    with tempfile.TemporaryDirectory(prefix=".push-to-hub-", dir=run_dir) as tmp:
        staged = stage(run_dir, repo_id, Path(tmp), link=True, **options)
        refuse_tokens(staged)
        files = sorted(staged.sources)
        url = upload(
            staged.folder,
            repo_id,
            private,
            revision,
            create_pr,
            f"Upload {run_dir.name} with spherear {__version__}",
        )
    return Pushed(repo_id, files, url)


def _dry_run(run_dir: Path, repo_id: str, out: Path, options: dict) -> Pushed:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PushError(f"--dry-run {out}: already exists and is not empty; pass a new folder")
    tmp = out.parent / f".{out.name}.staging"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed dry run
    tmp.mkdir(parents=True)
    try:
        staged = stage(run_dir, repo_id, tmp, **options)
        refuse_tokens(staged)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Pushed(repo_id, sorted(staged.sources), str(out))
