"""Fewer head evaluations at equal quality? Step schedules on a trained model, as JSON.

    python benchmarks/bench_schedules.py --run runs/tiny --n 1000 --seeds 0 1 \
        --setting "sde 100" --setting "heun 8" --setting "sde 50 5" ...

Each ``--setting`` is "SAMPLER STEPS [STEPS_LAST]" (STEPS_LAST: step annealing from STEPS at
the first token to STEPS_LAST at the last). For every setting and seed it runs the user
commands `spherear sample` (balanced labels, the run's CFG) and `spherear eval-probe` on the
run, and reports the probe's class-consistency (overall and per class) and FD_probe, the
head evaluations per image token (guided rows counted once, as the paper counts steps), the
sampling seconds, and the spread of each metric over the seeds. Run it on an idle machine
for meaningful seconds; the metrics do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from spherear.models.flow import evaluations, token_steps

SPHERE = [sys.executable, "-m", "spherear"]


def parse_setting(text: str) -> dict:
    parts = text.split()
    if len(parts) not in (2, 3) or parts[0] not in ("sde", "ode", "heun"):
        raise SystemExit(f"--setting {text!r}: expected 'SAMPLER STEPS [STEPS_LAST]'")
    return {"sampler": parts[0], "steps": int(parts[1]),
            "steps_last": int(parts[2]) if len(parts) == 3 else 0}  # fmt: skip


def head_evaluations(setting: dict, num_tokens: int) -> float:
    steps = token_steps(setting["steps"], setting["steps_last"], num_tokens)
    return sum(evaluations(setting["sampler"], s) for s in steps) / num_tokens


def run_one(run: Path, out: Path, setting: dict, n: int, seed: int, batch: int) -> dict:
    cmd = [*SPHERE, "sample", "--checkpoint", str(run), "--n", str(n), "--seed", str(seed),
           "--sampler", setting["sampler"], "--steps", str(setting["steps"]),
           "--steps-last", str(setting["steps_last"]), "--batch-size", str(batch),
           "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    subprocess.run([*SPHERE, "eval-probe", str(out / "samples.npz")], check=True,
                   capture_output=True, text=True)  # fmt: skip
    report = json.loads((out / "eval-probe.json").read_text())
    metrics = report["metrics"]
    per_class = {name: c["class_consistency"] for name, c in report["per_class"].items()}
    return {"seed": seed, "sample_seconds": round(seconds, 1),
            "class_consistency": round(metrics["probe_class_consistency"], 4),
            "fd_probe": round(metrics["FD_probe"], 2), "per_class": per_class}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a train-ar run folder")
    p.add_argument("--out", type=Path, default=None, help="samples root (default: RUN/schedules)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--setting", action="append", required=True, type=parse_setting)
    args = p.parse_args()
    root = args.out or args.run / "schedules"
    from spherear.config import load_recipe

    recipe = load_recipe(args.run / "recipe.toml")
    tokens = recipe.vae.num_tokens
    rows = []
    for setting in args.setting:
        name = f"{setting['sampler']} {setting['steps']}" + (
            f"->{setting['steps_last']}" if setting["steps_last"] else ""
        )
        runs = []
        for seed in args.seeds:
            out = root / f"{name.replace(' ', '-').replace('->', 'to')}-seed{seed}"
            print(f"[bench_schedules] {name}, seed {seed}", file=sys.stderr, flush=True)
            runs.append(run_one(args.run, out, setting, args.n, seed, args.batch_size))
        cc = [r["class_consistency"] for r in runs]
        fd = [r["fd_probe"] for r in runs]
        rows.append({
            "setting": name,
            "head_evaluations_per_token": round(head_evaluations(setting, tokens), 2),
            "class_consistency_mean": round(statistics.mean(cc), 4),
            "class_consistency_range": [round(min(cc), 4), round(max(cc), 4)],
            "fd_probe_mean": round(statistics.mean(fd), 2),
            "fd_probe_range": [round(min(fd), 2), round(max(fd), 2)],
            "runs": runs,
        })  # fmt: skip
    print(json.dumps({"run": str(args.run), "n": args.n, "seeds": args.seeds,
                      "loadavg_1min": round(os.getloadavg()[0], 2), "settings": rows},
                     indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
