"""Where a trained model's sample quality goes, class by class, under the probe of its data.

    python benchmarks/quality_breakdown.py --checkpoint runs/tiny --data data/synthetic32 \
        [--per-class 100] [--temperatures 1 0.7] [--cfgs 6 8] [--out breakdown.json]

Each stage is scored with the probe of ``spherear eval-probe`` (class-consistency per class,
FD_probe against the real held-out images), so the stages can be compared:

1. real: the probe's held-out images themselves (the ceiling of the measure);
2. S-VAE: those images decoded from their posterior means and from posterior samples (the
   ceiling the tokenizer sets for the AR model);
3. AR teacher-forced: the flow loss at fixed flow times, and images whose every token is drawn
   by the head from the true tokens before it (the AR model's per-token precision, without
   errors that build up along the raster), at the recipe's sampling settings;
4. samples: free sampling at each temperature and CFG, the recipe's sampler and steps
   otherwise, with the most frequent confusion of each class.

The held-out images are held out from the probe, not from the AR model (train-ar trains on
every prepared image). Run it with nothing else on the cores if times matter; it reports none.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from spherear.checkpoints import load_checkpoint
from spherear.eval.probe import load_or_train, score, to_input
from spherear.models.token_sampler import TokenSampler
from spherear.runs import find_run
from spherear.sample import to_uint8

FLOW_TIMES = (0.2, 0.5, 0.8)


def per_class_row(name: str, report: dict, probe, images: np.ndarray, labels: np.ndarray) -> dict:
    """The probe's verdict on ``images`` made for ``labels``, with each class's most frequent
    wrong reading."""
    predicted = probe.predict(images)[0].argmax(1)
    names = probe.class_names
    confusions = {}
    for c, class_name in enumerate(names):
        wrong = predicted[(labels == c) & (predicted != c)]
        if len(wrong):
            values, counts = np.unique(wrong, return_counts=True)
            confusions[class_name] = f"{names[values[counts.argmax()]]} x{counts.max()}"
    return {
        "stage": name,
        "class_consistency": report["metrics"]["probe_class_consistency"],
        "FD_probe": report["metrics"]["FD_probe"],
        "per_class": {k: v["class_consistency"] for k, v in report["per_class"].items()},
        "most_confused_with": confusions,
    }


def held_out_choice(probe, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = probe.held_out_images(), probe.held_out_labels()
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return images[pick], labels[pick]


@torch.no_grad()
def teacher_forced(ar, tokens: torch.Tensor, labels: torch.Tensor, settings, seed: int):
    """Per-class flow loss at FLOW_TIMES, and tokens each drawn from the true prefix."""
    generator = torch.Generator().manual_seed(seed)
    B, N, D = tokens.shape
    k = ar.config.diff_batch_mul  # the forward pass takes (t, noise) for each of its copies
    losses = {}
    for t in FLOW_TIMES:
        noise = torch.randn(B, k, N, D, generator=generator)
        times = torch.full((B, k, N), t)
        losses[t] = {
            int(c): ar(tokens[m], labels[m], torch.zeros(int(m.sum()), dtype=torch.bool),
                       times[m], noise[m]).item()
            for c in labels.unique()
            for m in [labels == c]
        }  # fmt: skip
    z = ar.conditions(tokens, labels)
    null = ar.conditions(tokens, torch.full_like(labels, ar.null_class))
    draw = TokenSampler(ar.head, B, N, settings, generator, tokens.device)
    for i in range(N):
        draw(i, torch.cat([z[:, i], null[:, i]]) if draw.guided else z[:, i])
    return losses, draw.tokens.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="run, export or .pt (newest run)")
    parser.add_argument("--data", required=True, help="the prepared dataset the probe reads")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--cfgs", type=float, nargs="+", default=None,
                        help="guidance scales (default: the recipe's)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_checkpoint(find_run(args.checkpoint, option="--checkpoint").checkpoint)
    ar, vae, recipe = loaded.ar.eval(), loaded.vae.eval(), loaded.recipe
    probe = load_or_train(args.data, recipe.vae.resolution, progress=False,
                          flip_invariant=recipe.augment.hflip)  # fmt: skip
    images, labels = held_out_choice(probe, args.per_class)
    y = torch.from_numpy(labels).long()
    rows = []

    def add(name: str, made: np.ndarray, made_for: np.ndarray) -> None:
        rows.append(per_class_row(name, score(probe, made, made_for), probe, made, made_for))

    add("real held-out images", images, labels)
    with torch.no_grad():
        posterior = vae.encode(to_input(images))
        torch.manual_seed(args.seed)
        add("S-VAE, posterior means", to_uint8(vae.decode(posterior.mode())), labels)
        add("S-VAE, posterior samples", to_uint8(vae.decode(posterior.sample())), labels)
        losses, drawn = teacher_forced(ar, posterior.mode(), y, recipe.sample, args.seed)
        add("AR teacher-forced, each token drawn", to_uint8(vae.decode(drawn)), labels)
        rows[-1]["flow_loss"] = {
            str(t): {probe.class_names[c]: loss for c, loss in by_class.items()}
            for t, by_class in losses.items()
        }
        for temperature in args.temperatures:
            for cfg in args.cfgs or [recipe.sample.cfg]:
                settings = dataclasses.replace(recipe.sample, cfg=cfg, temperature=temperature)
                tokens = ar.sample(y, settings, torch.Generator().manual_seed(args.seed))
                add(f"samples, temperature {temperature:g}, CFG {cfg:g} ({settings.cfg_schedule}, "
                    f"{settings.steps} {settings.sampler} steps)",
                    to_uint8(vae.decode(tokens)), labels)  # fmt: skip

    names = probe.class_names
    print(f"{len(labels)} images ({args.per_class} per class); class-consistency per class")
    print(f"{'stage':<58} {'all':>5} {'FD':>5}  " + " ".join(f"{n[:6]:>6}" for n in names))
    for row in rows:
        per = " ".join(f"{row['per_class'][n]:>6.2f}" for n in names)
        print(f"{row['stage']:<58} {row['class_consistency']:>5.3f} {row['FD_probe']:>5.1f}  {per}")
    print("\nteacher-forced flow loss per class at t = " + " / ".join(map(str, FLOW_TIMES)))
    flow = rows[3]["flow_loss"]
    for n in names:
        print(f"  {n:<20} " + " / ".join(f"{flow[str(t)][n]:.3f}" for t in FLOW_TIMES))
    print("\nmost frequent misreading per class:")
    for row in rows:
        if row["most_confused_with"]:
            pairs = ", ".join(f"{k} -> {v}" for k, v in row["most_confused_with"].items())
            print(f"  {row['stage']}: {pairs}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
