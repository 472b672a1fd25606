"""``spherear compare``: one of the paper's comparisons, run whole, with a report.

A comparison file (``recipes/ablations/*.toml``) names a VAE recipe and an AR recipe, the
seeds, the datasets and the arms. Each arm is a set of ``--set`` overrides of the VAE
recipe, of the AR recipe and of the sampling options; for every dataset and seed the runner
calls the ordinary commands (prepare-data, train-vae, cache-latents, train-ar, sample,
eval-probe), so each stage resumes or is reused exactly as it would be by hand, and a
rerun after a kill goes on where it stopped. Arms that build the same VAE (or the same VAE
and AR model) share its runs, so arms that differ only at sampling time train nothing more.

Runs go under ``<output_dir>/``, shared by every comparison there (the same arm in two
comparisons trains once), the samples and the report under ``<output_dir>/<name>/``::

    data-<dataset>/                the prepared images (prepare-data)
    <dataset>-vae-<key>-s<seed>/   train-vae runs; <key> hashes every VAE override
    <dataset>-ar-<key>-s<seed>/    train-ar runs, each with its latent cache beside it
                                   (<run>-latents/: a run folder holds no other kind)
    <name>/samples/<arm>-<dataset>-s<seed>/  sample sets (token_stats.json), eval-probe.json
    timings.json                   each training call's steps and wall-clock seconds
    <name>/logs/<dataset>-s<seed>.log  every command's output, one file per chain
    <name>/report/README.md, *.png the table and the charts

The chains of one dataset and seed share no run: ``--jobs 2`` runs two at once, each
command with half the cores (a 2-core CPU: one thread each, the way the shipped reports ran).

A ``vae_only`` comparison (the backbones) stops after train-vae: held-out PSNR, training
speed and parameter counts are what the paper compares there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from spherear.config import RecipeError, load_recipe
from spherear.errors import SpherearError
from spherear.figures import pyplot, save_png
from spherear.files import atomic_write, read_text, write_json
from spherear.train.metrics import read_metrics

TIMINGS = "timings.json"  # under output_dir: each training call's steps and seconds
SAMPLE_OPTIONS = {"cfg", "cfg_schedule", "steps", "sampler", "steps_last", "temperature",
                  "normalise"}  # fmt: skip


class CompareError(SpherearError):
    """A comparison that cannot run; the message names the file and the fix."""


class _Stopped(Exception):
    """A chain that stopped before its next command because another chain failed."""


def slug(name: str) -> str:
    """A name as a file name: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class Arm:
    name: str
    vae: list[str] = field(default_factory=list)  # overrides of both recipes' vae/vae_loss
    ar: list[str] = field(default_factory=list)  # overrides of the AR recipe
    sample: dict = field(default_factory=dict)  # spherear sample options

    @property
    def slug(self) -> str:
        return slug(self.name)


@dataclass
class Dataset:
    name: str
    # data.* overrides (source, num_images), and ar.* ones for the AR recipe (num_classes)
    set: list[str] = field(default_factory=list)
    # samples per arm and seed, when the comparison's do not split evenly over its classes
    samples: int | None = None


@dataclass
class Comparison:
    name: str
    title: str
    vae_recipe: str
    ar_recipe: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    samples: int = 400
    # token-norm figures at these guidance scales (first seed, token_samples images each)
    token_cfg_scales: list[float] = field(default_factory=list)
    token_samples: int = 100
    vae_only: bool = False
    # also `spherear eval-fid` on every sample set (needs the recipe's eval.reference and
    # the Inception weights): the column that matters at 256x256 on GPUs
    eval_fid: bool = False
    output_dir: str = "runs/ablations"
    set: list[str] = field(default_factory=list)  # overrides of both recipes
    vae_set: list[str] = field(default_factory=list)  # of the VAE recipe only
    ar_set: list[str] = field(default_factory=list)  # of the AR recipe only
    sample: dict = field(default_factory=dict)  # sample options of every arm (arms override)
    overrides: list[str] = field(default_factory=list)  # the command line's --set: last word
    paper: str = ""  # what the paper reports, for the README beside ours
    datasets: list[Dataset] = field(default_factory=lambda: [Dataset("synthetic")])
    arms: list[Arm] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.output_dir) / self.name


def load_comparison(path: str | Path, overrides: list[str] = (), **replace) -> Comparison:
    """Read a comparison file; every recipe an arm builds is loaded once here, so a bad key
    or a combination that makes no sense stops in one line before any work. ``replace``
    sets top-level keys (e.g. the 256px recipes, ``eval_fid``, another ``output_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise CompareError(f"{path}: no such comparison file; the shipped ones are in "
                           "recipes/ablations/")  # fmt: skip
    try:
        data = tomllib.loads(read_text(path, "save the comparison as UTF-8"))
    except tomllib.TOMLDecodeError as e:
        raise CompareError(f"{path}: not valid TOML ({e})") from None
    names = {f.name for f in dataclasses.fields(Comparison)} - {"datasets", "arms", "overrides"}
    unknown = set(data) - names - {"dataset", "arm"}
    if unknown:
        raise CompareError(f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}")
    try:
        arms = [Arm(**a) for a in data.pop("arm", [])]
        datasets = [Dataset(**d) for d in data.pop("dataset", [])] or [Dataset("synthetic")]
        data |= {k: v for k, v in replace.items() if v is not None}
        comparison = Comparison(**data, arms=arms, datasets=datasets)
    except TypeError as e:
        raise CompareError(f"{path}: {e}; see recipes/ablations/ for the keys") from None
    comparison.overrides = list(overrides)
    if not comparison.arms:
        raise CompareError(f"{path}: no [[arm]] tables; a comparison needs at least one")
    if len({a.slug for a in comparison.arms}) < len(comparison.arms):
        raise CompareError(f"{path}: two arms have the same name")
    for arm in comparison.arms:
        arm.sample = {**comparison.sample, **arm.sample}
        bad = set(arm.sample) - SAMPLE_OPTIONS
        if bad:
            raise CompareError(f"{path}: arm '{arm.name}': unknown sample option(s) "
                               f"{sorted(bad)}; valid: {sorted(SAMPLE_OPTIONS)}")  # fmt: skip
        for dataset in comparison.datasets:
            for seed in comparison.seeds:
                try:
                    load_recipe(comparison.vae_recipe, vae_overrides(comparison, arm, dataset,
                                                                     seed))  # fmt: skip
                    if not comparison.vae_only:
                        sets = ar_overrides(comparison, arm, dataset, seed)
                        ar = load_recipe(comparison.ar_recipe, sets).ar
                        _check_split(path, comparison, dataset, ar.num_classes)
                except RecipeError as e:
                    raise CompareError(f"{path}: arm '{arm.name}': {e}") from None
    return comparison


def _check_split(path: Path, c: Comparison, dataset: Dataset, classes: int | None) -> None:
    """Balanced sampling needs a number of samples that the classes divide."""
    n = dataset.samples or c.samples
    if classes and n % classes:
        fixed = max(classes, n - n % classes)
        raise CompareError(
            f"{path}: dataset '{dataset.name}': {n} samples do not split evenly over its "
            f"{classes} classes; set samples = {fixed} (--samples, or in its [[dataset]] table)"
        )


# ---------------------------------------------------------------------------------------
# Where each arm's runs go


def _key(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:8]


def _vae_part(arm: Arm, recipe: str) -> list[str]:
    """The arm's VAE overrides that a recipe of this kind takes (no vae_loss for AR)."""
    return [o for o in arm.vae if recipe == "vae" or not o.startswith("vae_loss.")]


def _data_sets(c: Comparison, dataset: Dataset, recipe: str) -> list[str]:
    """The dataset's overrides that a recipe of this kind takes (``ar.*``, e.g. its class
    count, for the AR recipe only)."""
    sets = [o for o in dataset.set if recipe == "ar" or not o.startswith("ar.")]
    return [*sets, f"data.prepared={Path(c.output_dir) / f'data-{dataset.name}'}"]


def _vae_changes(c: Comparison, arm: Arm, dataset: Dataset) -> list[str]:
    return [*c.set, *_data_sets(c, dataset, "vae"), *c.vae_set, *_vae_part(arm, "vae"),
            *c.overrides]  # fmt: skip


def _ar_changes(c: Comparison, arm: Arm, dataset: Dataset) -> list[str]:
    return [*c.set, *_data_sets(c, dataset, "ar"), *c.ar_set, *_vae_part(arm, "ar"), *arm.ar,
            *c.overrides]  # fmt: skip


def vae_dir(c: Comparison, arm: Arm, dataset: Dataset, seed: int) -> Path:
    key = _key(c.vae_recipe, _vae_changes(c, arm, dataset))
    return Path(c.output_dir) / f"{dataset.name}-vae-{key}-s{seed}"


def ar_dir(c: Comparison, arm: Arm, dataset: Dataset, seed: int) -> Path:
    key = _key(c.vae_recipe, _vae_changes(c, arm, dataset), c.ar_recipe,
               _ar_changes(c, arm, dataset))  # fmt: skip
    return Path(c.output_dir) / f"{dataset.name}-ar-{key}-s{seed}"


def vae_overrides(c: Comparison, arm: Arm, dataset: Dataset, seed: int) -> list[str]:
    return [*_vae_changes(c, arm, dataset), f"run.seed={seed}",
            f"run.output_dir={vae_dir(c, arm, dataset, seed)}"]  # fmt: skip


def ar_overrides(c: Comparison, arm: Arm, dataset: Dataset, seed: int) -> list[str]:
    run = ar_dir(c, arm, dataset, seed)
    return [*_ar_changes(c, arm, dataset), f"run.seed={seed}", f"run.output_dir={run}",
            f"data.latents={run}-latents",
            f"train.vae_checkpoint={vae_dir(c, arm, dataset, seed) / 'export'}"]  # fmt: skip


def samples_dir(c: Comparison, arm: Arm, dataset: Dataset, seed: int, cfg=None) -> Path:
    tag = f"-cfg{cfg:g}" if cfg is not None else ""
    return c.out / "samples" / f"{arm.slug}-{dataset.name}-s{seed}{tag}"


# ---------------------------------------------------------------------------------------
# Running


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _options(options: dict) -> list[str]:
    return [arg for k, v in options.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


class Runner:
    """Runs a comparison's commands. The chains of one dataset and seed share no run, so with
    ``jobs`` > 1 that many chains run at once, each command with cores/jobs threads."""

    def __init__(self, comparison: Comparison, say=print, jobs: int = 1):
        self.c, self.say, self.jobs = comparison, say, jobs
        self.logs = comparison.out / "logs"
        self.timings_lock = threading.Lock()
        self.failed = threading.Event()  # one chain failed: the others start nothing new
        self.env = dict(os.environ)
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
            self.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def spherear(self, log: str, *args: str) -> float:
        """One spherear command in its own process, its output appended to logs/<log>.log;
        returns its wall-clock seconds."""
        if self.failed.is_set():
            raise _Stopped
        path = self.logs / f"{log}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(path, "a") as out:
            out.write("$ spherear " + " ".join(args) + "\n")
            out.flush()
            done = subprocess.run([sys.executable, "-m", "spherear", *args], stdout=out,
                                  stderr=subprocess.STDOUT, env=self.env)  # fmt: skip
        seconds = time.perf_counter() - start
        self.say(f"  [{log}] spherear {args[0]} ({seconds:.0f} s)")
        if done.returncode:
            raise CompareError(
                f"`spherear {' '.join(args)}` failed (exit {done.returncode}); its output is "
                f"in {path}; fix it and rerun to go on"
            )
        return seconds

    def train(self, log: str, command: str, recipe: str, sets: list[str], run: Path) -> None:
        """train-vae or train-ar, timed: the steps it trained in this call and its seconds
        go into <output_dir>/timings.json (the run's own files stay byte-exact on a rerun,
        so no clock reading goes there)."""
        before = _last_step(run)
        seconds = self.spherear(log, command, "--recipe", recipe, *sets)
        steps = _last_step(run) - before
        if steps > 0:
            path = Path(self.c.output_dir) / TIMINGS
            with self.timings_lock:
                timings = _json(path) or {}
                timings.setdefault(run.name, []).append(
                    {"steps": steps, "seconds": seconds, "jobs": self.jobs}
                )
                write_json(path, timings, "compare/timings")

    def run(self) -> Path:
        c = self.c
        for dataset in c.datasets:
            self.say(f"{c.name}: dataset {dataset.name}")
            self.spherear(f"prepare-{dataset.name}", "prepare-data", "--recipe", c.vae_recipe,
                          *_sets([*c.set, *c.vae_set, *_data_sets(c, dataset, "vae"),
                                  *c.overrides]))  # fmt: skip
        chains = [(dataset, seed) for dataset in c.datasets for seed in c.seeds]
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(self.chain, dataset, seed) for dataset, seed in chains]
        errors = [e for f in futures if (e := f.exception()) and not isinstance(e, _Stopped)]
        if errors:
            raise errors[0]
        return write_report(c)

    def chain(self, dataset: Dataset, seed: int) -> None:
        try:
            for arm in self.c.arms:
                self.arm(arm, dataset, seed)
        except BaseException:
            self.failed.set()
            raise

    def arm(self, arm: Arm, dataset: Dataset, seed: int) -> None:
        c = self.c
        log = f"{dataset.name}-s{seed}"
        self.say(f"{c.name}: {arm.name}, {dataset.name}, seed {seed}")
        self.train(log, "train-vae", c.vae_recipe, _sets(vae_overrides(c, arm, dataset, seed)),
                   vae_dir(c, arm, dataset, seed))  # fmt: skip
        if c.vae_only:
            return
        sets = _sets(ar_overrides(c, arm, dataset, seed))
        run = ar_dir(c, arm, dataset, seed)
        self.spherear(log, "cache-latents", "--recipe", c.ar_recipe, *sets)
        self.train(log, "train-ar", c.ar_recipe, sets, run)
        wanted = [(None, dataset.samples or c.samples)]
        if seed == c.seeds[0]:
            wanted += [(cfg, c.token_samples) for cfg in c.token_cfg_scales]
        for cfg, n in wanted:
            out = samples_dir(c, arm, dataset, seed, cfg)
            options = {**arm.sample, **({"cfg": cfg} if cfg is not None else {})}
            if not (out / "samples.npz").is_file():
                self.spherear(log, "sample", "--checkpoint", str(run), "--n", str(n),
                              "--batch-size", str(min(n, 200)), "--out", str(out),
                              *_options(options))  # fmt: skip
            if cfg is None and not (out / "eval-probe.json").is_file():
                self.spherear(log, "eval-probe", str(out / "samples.npz"))
            if cfg is None and c.eval_fid and not (out / "eval-fid.json").is_file():
                self.spherear(log, "eval-fid", str(out / "samples.npz"))


# ---------------------------------------------------------------------------------------
# The report


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_step(run: Path) -> int:
    return int(_metric(run, "step", how=max) or 0)


def _steps_per_s(c: Comparison, run: Path) -> float | None:
    """Training speed of ``run``: every step trained by this runner over its seconds, each
    call's start-up included (a run trained elsewhere has none)."""
    calls = (_json(Path(c.output_dir) / TIMINGS) or {}).get(run.name, [])
    seconds = sum(call["seconds"] for call in calls)
    return sum(call["steps"] for call in calls) / seconds if seconds else None


def _jobs(c: Comparison) -> int:
    """The most commands that ran at once while this comparison's runs trained."""
    timings = _json(Path(c.output_dir) / TIMINGS) or {}
    runs = {run(c, arm, dataset, seed).name for run in (vae_dir, ar_dir) for arm in c.arms
            for dataset in c.datasets for seed in c.seeds}  # fmt: skip
    return max((call.get("jobs", 1) for name in runs for call in timings.get(name, [])),
               default=1)  # fmt: skip


def _metric(run: Path, key: str, how=statistics.median) -> float | None:
    """``how`` of every value of ``key`` that ``run`` logged (None if none)."""
    values = [record[key] for record in read_metrics(run) if key in record]
    return how(values) if values else None


def _spread(values: list[float | None], digits: int = 3) -> str:
    """mean (min-max over seeds), or one value, or a dash."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _head_evaluations(arm: Arm, recipe) -> float:
    from spherear.models.flow import evaluations, token_steps

    settings = dataclasses.replace(recipe.sample, **arm.sample)
    steps = token_steps(settings.steps, settings.steps_last, recipe.vae.num_tokens)
    guided = 2 if settings.cfg != 1.0 else 1  # class and null-class rows
    return guided * statistics.fmean(evaluations(settings.sampler, s) for s in steps)


def collect(c: Comparison) -> list[dict]:
    """One row per arm and dataset: every figure with one value per seed."""
    from spherear.models import count_parameters

    rows = []
    for dataset in c.datasets:
        for arm in c.arms:
            row = {"arm": arm.name, "dataset": dataset.name, "per_seed": []}
            for seed in c.seeds:
                vae_run, ar_run = vae_dir(c, arm, dataset, seed), ar_dir(c, arm, dataset, seed)
                figures = {
                    "psnr": _metric(vae_run, "held_out_psnr", how=lambda v: v[-1]),
                    "vae_steps_per_s": _steps_per_s(c, vae_run),
                }
                if not c.vae_only:
                    out = samples_dir(c, arm, dataset, seed)
                    probe = (_json(out / "eval-probe.json") or {}).get("metrics", {})
                    fid = (_json(out / "eval-fid.json") or {}).get("metrics", {}).get("FID")
                    stats = _json(out / "token_stats.json") or {}
                    figures |= {
                        "cc": probe.get("probe_class_consistency"),
                        "fd": probe.get("FD_probe"),
                        "fid": fid,
                        "ar_steps_per_s": _steps_per_s(c, ar_run),
                        "norm_mean": stats.get("samples", {}).get("norm", {}).get("mean"),
                        "norm_std": stats.get("samples", {}).get("norm", {}).get("std"),
                        "data_norm_mean": stats.get("data", {}).get("norm", {}).get("mean"),
                    }
                row["per_seed"].append(figures)
            recipe = load_recipe(c.vae_recipe, vae_overrides(c, arm, dataset, c.seeds[0]))
            row["vae_params"] = count_parameters(recipe)["VAE"]
            if not c.vae_only:
                ar_recipe = load_recipe(c.ar_recipe, ar_overrides(c, arm, dataset, c.seeds[0]))
                row["head_evaluations"] = _head_evaluations(arm, ar_recipe)
                row["token_cfg"] = {
                    cfg: _json(samples_dir(c, arm, dataset, c.seeds[0], cfg) / "token_stats.json")
                    for cfg in c.token_cfg_scales
                }
            rows.append(row)
    return rows


def table(c: Comparison, rows: list[dict]) -> str:
    def column(row, key, digits=3):
        return _spread([s.get(key) for s in row["per_seed"]], digits)

    if c.vae_only:
        head = ["arm", "dataset", "VAE params", "held-out PSNR (dB)", "VAE steps/s"]
        body = [[r["arm"], r["dataset"], f"{r['vae_params'] / 1e6:.2f}M", column(r, "psnr", 2),
                 column(r, "vae_steps_per_s", 2)] for r in rows]  # fmt: skip
    else:
        head = ["arm", "dataset", "class-consistency", "FD_probe", "held-out PSNR (dB)",
                "token norm mean", "token norm std", "data token norm", "head evals/token",
                "AR steps/s"]  # fmt: skip
        body = [[r["arm"], r["dataset"], column(r, "cc"), column(r, "fd", 1),
                 column(r, "psnr", 2), column(r, "norm_mean", 3), column(r, "norm_std", 3),
                 column(r, "data_norm_mean", 3), f"{r['head_evaluations']:.0f}",
                 column(r, "ar_steps_per_s", 1)] for r in rows]  # fmt: skip
        if c.eval_fid:
            head.insert(4, "FID")
            for r, cells in zip(rows, body, strict=True):
                cells.insert(4, column(r, "fid", 2))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def token_table(c: Comparison, rows: list[dict]) -> str:
    """Token norm (mean ± std) of each arm at each guidance scale, first seed."""
    if not c.token_cfg_scales or c.vae_only:
        return ""
    head = ["arm", "dataset", *(f"CFG {cfg:g}" for cfg in c.token_cfg_scales)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for cfg in c.token_cfg_scales:
            stats = r["token_cfg"].get(cfg)
            norm = stats["samples"]["norm"] if stats else None
            cells.append(f"{norm['mean']:.3f} ± {norm['std']:.3f}" if norm else "—")
        lines.append("| " + " | ".join([r["arm"], r["dataset"], *cells]) + " |")
    return "\n".join(lines)


def charts(c: Comparison, rows: list[dict], out: Path) -> list[str]:
    """PNG charts beside the table; returns their file names."""
    plt = pyplot()
    made = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        save_png(fig, out / name, "report")
        made.append(name)

    key, label = ("psnr", "held-out PSNR (dB)") if c.vae_only else ("cc", "class-consistency")
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(rows)), 3.4))
    for i, r in enumerate(rows):
        values = [s.get(key) for s in r["per_seed"] if s.get(key) is not None]
        if values:
            ax.bar(i, statistics.fmean(values), color="C0", alpha=0.5)
            ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
    ax.set_xticks(range(len(rows)), [f"{r['arm']}\n{r['dataset']}" for r in rows], fontsize=7)
    ax.set(ylabel=label, title=f"{c.title} (bars: mean, dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    save(fig, "quality.png")

    if not c.vae_only and len({r["head_evaluations"] for r in rows}) > 1:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for d, dataset in enumerate(c.datasets):
            for r in (r for r in rows if r["dataset"] == dataset.name):
                values = [s["cc"] for s in r["per_seed"] if s.get("cc") is not None]
                if values:
                    ax.errorbar(r["head_evaluations"], statistics.fmean(values),
                                yerr=[[statistics.fmean(values) - min(values)],
                                      [max(values) - statistics.fmean(values)]],
                                fmt="o", color=f"C{d}", capsize=2)  # fmt: skip
                    ax.annotate(
                        r["arm"],
                        (r["head_evaluations"], statistics.fmean(values)),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            ax.plot([], [], "o", color=f"C{d}", label=dataset.name)
        ax.set(xscale="log", xlabel="head evaluations per token", ylabel="class-consistency",
               title="quality against sampling cost")  # fmt: skip
        costs = sorted({r["head_evaluations"] for r in rows})
        ax.set_xticks(costs, [f"{x:g}" for x in costs])  # the arms' costs, not powers of ten
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "quality_vs_cost.png")

    if any(any(r["token_cfg"].values()) for r in rows if "token_cfg" in r):
        from spherear.token_stats import plot

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for i, r in enumerate(rows):
            points = [(cfg, s["samples"]["norm"]) for cfg, s in r["token_cfg"].items() if s]
            if points:
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points],
                            yerr=[p[1]["std"] for p in points], marker="o", capsize=2,
                            color=f"C{i}", label=f"{r['arm']} ({r['dataset']})")  # fmt: skip
                data = next((s.get("data") for s in r["token_cfg"].values() if s), None)
                if data:
                    ax.axhline(data["norm"]["mean"], color=f"C{i}", ls=":", lw=1)
        ax.set(xlabel="CFG scale", ylabel="generated token norm (mean ± std)",
               title="token norms under guidance (dotted: the data's)")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        save(fig, "token_norms_vs_cfg.png")
        for r in rows:
            top = max(c.token_cfg_scales)
            stats = r["token_cfg"].get(top)
            if stats:
                name = f"token_norms-{slug(r['arm'])}.png"
                figures = {"samples": stats["samples"]}
                if stats.get("data"):
                    figures["data"] = stats["data"]
                plot(figures, out / name, f"{r['arm']}, {r['dataset']}, CFG {top:g}")
                made.append(name)
    return made


def write_report(c: Comparison) -> Path:
    """``report/README.md`` (the tables) and the charts, from whatever runs are finished."""
    rows = collect(c)
    out = c.out / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = charts(c, rows, out)
    parts = [f"# {c.title}", "",
             f"Seeds {', '.join(map(str, c.seeds))}; figures are the mean over seeds with "
             "(min–max) after it. " + ("" if c.vae_only else f"{c.samples} samples per arm "
                                       "and seed, scored by `spherear eval-probe`."),
             "", table(c, rows), ""]  # fmt: skip
    if _jobs(c) > 1:
        parts += [f"Steps per second were measured with {_jobs(c)} commands running at once "
                  "(`spherear compare --jobs`), each call's start-up included.", ""]  # fmt: skip
    tokens = token_table(c, rows)
    if tokens:
        parts += [
            "Token norms (mean ± std over all tokens, first seed, "
            f"{c.token_samples} samples) against the guidance scale:",
            "",
            tokens,
            "",
        ]
    if c.paper:
        parts += [f"The paper: {c.paper}", ""]
    parts += [f"![{n}]({n})" for n in names]
    atomic_write(out / "README.md", "\n".join(parts) + "\n", "report")
    write_json(out / "rows.json", rows, "report")
    return out
