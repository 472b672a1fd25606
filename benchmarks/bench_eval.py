"""Speed of `spherear eval-fid`'s feature extraction (images/s) and of one 2048-d Fréchet
distance, as one JSON object.

    python benchmarks/bench_eval.py [--images 200] [--batch 50] [--resolution 256] [--device cpu]

Seeded random Inception weights with the real key set (speed does not depend on them); the
images are random uint8 at ``--resolution``, resized to 299 inside the network as always.
The first batch is a warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_models import cpu_name

from spherear.eval.features import InceptionFeatures, random_inception_weights
from spherear.eval.metrics import feature_statistics, frechet_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        net = InceptionFeatures(random_inception_weights(Path(tmp) / "w.pth")).to(device)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.resolution, args.resolution, 3)
    batch = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8)).to(device)
    pools = []
    with torch.no_grad():
        net(batch)  # warm-up
        sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
        sync()
        start = time.perf_counter()
        for done in range(0, args.images, args.batch):
            print(f"[bench_eval] {done}/{args.images}", file=sys.stderr, flush=True)
            pools.append(net(batch[: min(args.batch, args.images - done)])["pool"].cpu())
        sync()
        seconds = time.perf_counter() - start
    # the Fréchet distance's cost is its 2048 x 2048 eigenvalue problem, whatever N is
    pool = torch.cat(pools).numpy()
    start = time.perf_counter()
    frechet_distance(*feature_statistics(pool), *feature_statistics(pool[::-1] + 0.1))
    frechet_seconds = time.perf_counter() - start
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_1min_at_start": load_start,
        "loadavg_1min_after": os.getloadavg()[0],
        "images": args.images,
        "batch": args.batch,
        "resolution": args.resolution,
        "feature_seconds": round(seconds, 2),
        "images_per_s": round(args.images / seconds, 2),
        "frechet_2048_seconds": round(frechet_seconds, 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
