"""Evaluation of generated samples: ``evaluate`` runs the ADM protocol (FID, sFID, IS,
precision/recall; ``/work/shared/reference/eval-protocol.md``) on a samples ``.npz``
against a reference, plus optional Fréchet distances in other feature spaces (``FD_*``);
``eval_fid`` is the ``spherear eval-fid`` command: its defaults, and the report written.

Heavy imports stay inside functions: ``probe`` and ``metrics`` users need none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PROTOCOL = "adm-evaluator/1"  # bump when a number this code reports would change
MIN_SAMPLES = 2048  # the pool features' dimension: below it the covariance is singular


def sample_count_warning(n: int) -> str | None:
    if n >= MIN_SAMPLES:
        return None
    return (
        f"only {n} samples (< {MIN_SAMPLES}): FID is biased upwards and the covariance is "
        "rank-deficient; published numbers use 50,000"
    )


def eval_fid(
    samples: Path | None = None,
    reference: Path | None = None,
    inception_weights: Path | None = None,
    extra_features: list[str] = (),
    batch_size: int = 50,
    out: Path | None = None,
    accelerator=None,
    say: Callable[[str], None] = lambda message: None,
    warn: Callable[[str], None] = lambda message: None,
) -> Path | None:
    """``spherear eval-fid``: ``samples`` (default: the newest under runs/) against
    ``reference`` (default: ``eval.reference`` of the samples' run) with ``inception_weights``
    (default: the run's ``eval.inception_weights``, else torch hub's checkpoint folder). The
    results are printed (``say``) before they are written to ``out`` (default: eval-fid.json
    beside the samples), so a failed write loses nothing. Returns ``out`` on the main
    process, None on the others."""
    from spherear.accelerator import make_accelerator
    from spherear.errors import SpherearError
    from spherear.eval.features import resolve_inception_weights
    from spherear.eval.npz import NpzImages
    from spherear.files import check_output, sweep, write_json
    from spherear.folder_kinds import check_output_file
    from spherear.runs import latest_samples, samples_recipe

    accelerator = accelerator or make_accelerator()
    if not accelerator.is_main_process:
        say = _quiet
    if samples is None:
        samples = latest_samples()
        say(f"samples: {samples} (the newest under runs/)")
    NpzImages(samples)  # a bad file stops here, before the reference is looked for
    out = out or samples.parent / "eval-fid.json"
    check_output(out, "--json", folder=False)  # before hours of work, not after
    check_output_file(out, "--json", [samples, reference, inception_weights])
    sweep(out.parent, recursive=False)
    recipe, recipe_path = samples_recipe(samples)
    if reference is None:
        if recipe is None or not recipe.eval.reference:
            where = f"eval.reference in {recipe_path}" if recipe else "eval.reference"
            raise SpherearError(
                f"no reference for {samples}: pass --ref (an ADM reference batch such as "
                f"VIRTUAL_imagenet256_labeled.npz, a samples .npz or a prepared dataset folder) "
                f"or set {where}"
            )
        reference = Path(recipe.eval.reference)
        say(f"reference: {reference} (eval.reference in {recipe_path})")
    weights = resolve_inception_weights(
        inception_weights or (recipe.eval.inception_weights if recipe else None)
    )
    report = evaluate(samples, reference, weights, extra_features, batch_size, accelerator, warn)
    if report is None:
        return None
    say(format_table(report))
    write_json(out, report, "eval-fid/report")
    say(f"wrote {out}")
    return out


def _quiet(message: str) -> None:
    """What the processes other than the first say."""


def evaluate(
    samples: str | Path,
    reference: str | Path,
    inception_weights: str | Path,
    extra_features: list[str] = (),
    batch_size: int = 50,
    accelerator=None,
    warn: Callable[[str], None] = lambda message: None,
) -> dict | None:
    """Every metric of ``samples`` against ``reference`` as a JSON-ready dict, on the main
    process (None on the others). ``extra_features`` are ``timm:NAME[=WEIGHTS]`` specs;
    ``warn`` hears about a sample count too small for FID once the inputs are checked."""
    from spherear.accelerator import make_accelerator
    from spherear.errors import SpherearError
    from spherear.eval import metrics
    from spherear.eval.features import (
        InceptionFeatures,
        TimmFeatures,
        features,
        streamed_statistics,
    )
    from spherear.eval.npz import NpzImages, PreparedReference, open_reference

    accelerator = accelerator or make_accelerator()
    main = accelerator.is_main_process
    sample_images = NpzImages(samples)
    if len(sample_images) < 2:
        raise SpherearError(f"{samples}: {len(sample_images)} image(s); FID needs at least 2")
    ref = open_reference(reference, sample_images.resolution)
    specs = [s.removeprefix("timm:") for s in extra_features]
    bad = [s for s in extra_features if not s.startswith("timm:")]
    if bad:
        raise SpherearError(f"--features {bad[0]}: expected timm:MODEL or timm:MODEL=WEIGHTS")
    if specs and ref.images is None:
        raise SpherearError(
            f"{reference}: holds only Inception statistics; FD in other feature spaces needs "
            "reference images (an .npz with arr_0 or a prepared dataset)"
        )
    inception = InceptionFeatures(inception_weights).to(accelerator.device)
    others = [TimmFeatures(s).to(accelerator.device) for s in specs]
    warning = sample_count_warning(len(sample_images))
    if warning and main:  # once every input is known to be good
        warn(warning)

    def reference_side(backbone) -> tuple[dict, object]:
        """(statistics, pool features or None) of the reference for ``backbone``."""
        if isinstance(ref.images, PreparedReference):
            s = streamed_statistics(ref.images, backbone, accelerator, batch_size)
            return (s, s["pool"]) if main else ({}, None)
        f = features(ref.images, backbone, accelerator, batch_size, desc="reference")
        if not main:
            return {}, None
        stats = {}
        stats["mu"], stats["sigma"] = metrics.feature_statistics(f["pool"])
        if "spatial" in f:
            stats["mu_s"], stats["sigma_s"] = metrics.feature_statistics(f["spatial"])
        return stats, f["pool"]

    sample_f = features(sample_images, inception, accelerator, batch_size, desc="samples")
    ref_stats, ref_pool = dict(ref.stats), None
    if ref.images is not None:
        computed, ref_pool = reference_side(inception)
        ref_stats = {**computed, **ref.stats}  # stored statistics win, as in ADM
    other_values = {}
    for backbone in others:
        f = features(sample_images, backbone, accelerator, batch_size, desc=backbone.label)
        stats, _ = reference_side(backbone)
        if main:
            mu, sigma = metrics.feature_statistics(f["pool"])
            other_values[backbone.label] = (
                metrics.frechet_distance(mu, sigma, stats["mu"], stats["sigma"]),
                backbone.weights,
            )
    if not main:
        return None

    mu, sigma = metrics.feature_statistics(sample_f["pool"])
    result = {"FID": metrics.frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])}
    if "mu_s" in ref_stats:
        mu_s, sigma_s = metrics.feature_statistics(sample_f["spatial"])
        result["sFID"] = metrics.frechet_distance(
            mu_s, sigma_s, ref_stats["mu_s"], ref_stats["sigma_s"]
        )
    result["IS"] = metrics.inception_score(sample_f["logits"])
    if ref_pool is not None and min(len(ref_pool), len(sample_f["pool"])) > 3:
        result["precision"], result["recall"] = metrics.precision_recall(
            ref_pool, sample_f["pool"], device=accelerator.device
        )
    result.update({label: value for label, (value, _) in other_values.items()})
    return {
        "protocol": PROTOCOL,
        "metrics": result,
        "samples": str(samples),
        "num_samples": len(sample_images),
        "reference": ref.describe(),
        "num_reference_images": None if ref.images is None else len(ref.images),
        "inception_weights": str(inception_weights),
        "inception_weights_sha256": inception.sha256,
        "other_feature_spaces": {label: w for label, (_, w) in other_values.items()},
        "batch_size": batch_size,
        "warnings": [warning] if warning else [],
    }


def format_table(report: dict) -> str:
    """The metrics as an aligned two-column table, then what they were computed from."""
    rows = [(name, f"{value:.4f}") for name, value in report["metrics"].items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:>10}" for name, value in rows]
    lines += [
        f"samples     {report['samples']} ({report['num_samples']} images)",
        f"reference   {report['reference']}",
        f"inception   {report['inception_weights']} "
        f"(sha256 {report['inception_weights_sha256'][:16]}...)",
        f"protocol    {report['protocol']}",
    ]
    return "\n".join(lines)
