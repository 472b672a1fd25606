"""Bad input, one row each: exit status 2, one line on stderr that names the problem, no
traceback, and every file of the workspace byte-identical afterwards (nothing written,
nothing lost). Each row starts from the finished tiny pipeline of ``pipeline.py``; a row's
setup may damage or plant a file first, and "ro" / "full" rows run with a read-only folder
or a full disk mounted in a private mount namespace."""

import json
import shlex
from pathlib import Path

import pytest

from .forkserver import NO_NAMESPACE
from .pipeline import SAMPLES, tree

# commands in processes of their own, on the tiny pipeline (see tests/pipeline.py)
pytestmark = pytest.mark.slow

EXPORT = "runs/ar/export"
CHECKPOINT = "runs/ar/checkpoints/step-00000004"
NEW_RUN = "--set run.output_dir=runs/new"


def _write(name: str, data: bytes | str):
    def setup(run: Path) -> None:
        path = run / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _truncate(name: str, size: int = 100):
    def setup(run: Path) -> None:
        with open(run / name, "r+b") as f:
            f.truncate(size)

    return setup


def _edit_json(name: str, change):
    def setup(run: Path) -> None:
        value = json.loads((run / name).read_text())
        change(value)
        (run / name).write_text(json.dumps(value))

    return setup


def _other_cpu(state: dict) -> None:
    state["numerics"]["cpu_capability"] = "NEON"


# (id, command line, setup, what the one line must say, mounts)
ROWS = [
    # prepare-data
    ("resolution-0", "prepare-data --recipe ar.toml --resolution 0", None, "'--resolution'"),
    ("seed-negative", "prepare-data --source synthetic --out new --seed -1", None, "'--seed'"),
    ("num-proc-0", "prepare-data --source synthetic --out new --num-proc 0", None, "'--num-proc'"),
    ("num-images-0", "prepare-data --source synthetic --out new --num-images 0", None,
     "'--num-images'"),
    ("unknown-source", "prepare-data --source s3:bucket --out new", None, "unknown source"),
    ("no-source-folder", "prepare-data --source folder:nowhere --out new", None, "no such folder"),
    ("no-source-tar", "prepare-data --source tar:nowhere.tar --out new", None, "no such file"),
    ("source-not-a-tar", "prepare-data --source tar:ar.toml --out new", None,
     "not a readable tar"),
    ("source-without-classes", "prepare-data --source folder:home --out new", None,
     "no class folders"),
    ("class-without-images", "prepare-data --source folder:images --out new",
     _write("images/zebra/notes.txt", "no images here"), "zebra has no images"),
    ("split-test", "prepare-data --source synthetic --out new --split test", None,
     "use 'train' or 'validation'"),
    ("out-is-a-file", "prepare-data --source synthetic --out ar.toml", None,
     "--out ar.toml: is a file"),
    ("out-under-a-file", "prepare-data --source synthetic --out ar.toml/data", None,
     "ar.toml is a file"),
    ("out-not-a-dataset", "prepare-data --source synthetic --out runs", None,
     "exists but is not a prepared dataset"),
    ("out-other-settings", "prepare-data --recipe ar.toml --source synthetic", None,
     "prepared with other settings"),
    ("out-info-damaged", "prepare-data --recipe ar.toml", _write("data/prepared/info.json", "{"),
     "info.json: damaged"),
    ("no-out", "prepare-data --source synthetic", None, "pass --recipe, or both"),
    ("recipe-not-utf8", "prepare-data --recipe bad.toml", _write("bad.toml", b'[run]\nname="\xff"'),
     "not UTF-8 text (byte 0xff"),
    ("recipe-is-a-folder", "prepare-data --recipe runs", None, "a folder, not a recipe file"),
    ("recipe-missing", "prepare-data --recipe nowhere.toml", None, "no such recipe file"),
    ("recipe-not-toml", "prepare-data --recipe bad.toml", _write("bad.toml", "[run\n"),
     "not valid TOML"),
    ("set-unknown-key", "prepare-data --recipe ar.toml --set train.lrr=1", None,
     "unknown key 'train.lrr'; did you mean 'train.lr'"),
    ("set-wrong-type", "prepare-data --recipe ar.toml --set train.lr=fast", None,
     "'train.lr' must be a number"),
    ("set-out-of-range", "prepare-data --recipe ar.toml --set vae.resolution=0", None,
     "'vae.resolution' must be >= 1"),
    ("out-read-only", "prepare-data --source synthetic --num-images 10 --out ro/new", None,
     "ro is read-only", ["ro"]),
    ("disk-full", "prepare-data --source synthetic --num-images 1500 --resolution 64 --out "
     "full/new", None, "no space left on the device", ["full"]),
    # train-vae
    ("vae-run-is-a-file", "train-vae --recipe vae.toml --set run.output_dir=ar.toml", None,
     "run.output_dir ar.toml: is a file"),
    ("vae-no-data", f"train-vae --recipe vae.toml {NEW_RUN} --set data.prepared=nowhere", None,
     "nowhere: not a prepared dataset"),
    ("vae-shard-truncated", f"train-vae --recipe vae.toml {NEW_RUN}",
     _truncate("data/prepared/data/shard-00000.parquet"), "shard-00000.parquet: damaged"),
    ("vae-no-vgg-file", f"train-vae --recipe vae.toml {NEW_RUN} --set "
     "vae_loss.perceptual_weight=1 --set vae_loss.perceptual_weights=nowhere.pth", None,
     "vae_loss.perceptual_weights: no file at nowhere.pth"),
    ("vae-vgg-not-torch", f"train-vae --recipe vae.toml {NEW_RUN} --set "
     "vae_loss.perceptual_weight=1 --set vae_loss.perceptual_weights=ar.toml", None,
     "ar.toml: not a readable VGG16 weights file"),
    ("vae-batch-not-multiple", f"train-vae --recipe vae.toml {NEW_RUN} "
     "--set train.global_batch_size=6", None, "not a multiple of train.micro_batch_size"),
    ("vae-batch-too-big", f"train-vae --recipe vae.toml {NEW_RUN} --set "
     "train.global_batch_size=64", None, "fewer than train.global_batch_size 64"),
    ("vae-planted-pickle", "train-vae --recipe vae.toml", _write("runs/vae/notes.pkl", b"x"),
     "notes.pkl: a pickle in the run folder"),
    ("vae-other-architecture", "train-vae --recipe vae.toml --set vae.channels=[8,16,16,32]", None,
     "another architecture (vae.channels [8, 16, 16, 16] there, [8, 16, 16, 32] here"),
    ("vae-initial-kappa", f"train-vae --recipe vae.toml {NEW_RUN} "
     "--set vae_loss.initial_kappa=0.5", None, "initial_kappa must be 0"),
    ("vae-other-numerics", "train-vae --recipe vae.toml",
     _edit_json("runs/vae/checkpoints/step-00000004/state.json", _other_cpu),
     "other numerics (cpu_capability NEON there"),
    ("vae-run-read-only", "train-vae --recipe vae.toml --set run.output_dir=ro/run", None,
     "ro is read-only", ["ro"]),
    # cache-latents
    ("cache-vae-missing", "cache-latents --recipe ar.toml --vae nowhere", None,
     "nowhere: no such file or folder"),
    ("cache-vae-is-a-checkpoint", "cache-latents --recipe ar.toml --vae "
     "runs/vae/checkpoints/step-00000004", None, "a training checkpoint"),
    ("cache-vae-config-damaged", "cache-latents --recipe ar.toml",
     _write("runs/vae/export/config.json", '{"format": "sphe'), "config.json: damaged"),
    ("cache-vae-truncated", "cache-latents --recipe ar.toml",
     _truncate("runs/vae/export/vae.safetensors"), "vae.safetensors: damaged"),
    ("cache-vae-of-another-recipe",
     "cache-latents --recipe ar.toml --set vae.channels=[8,16,16,32]", None,
     "its S-VAE is not the recipe's [vae] (channels"),
    ("cache-out-is-a-file", "cache-latents --recipe ar.toml --out ar.toml", None,
     "--out ar.toml: is a file"),
    ("cache-out-not-a-cache", "cache-latents --recipe ar.toml --out runs", None,
     "runs exists and is not a latent cache"),
    ("cache-other-settings", "cache-latents --recipe ar.toml --set cache.shard_size=8", None,
     "other settings (cache differ)"),
    ("cache-no-data", "cache-latents --recipe ar.toml --data nowhere --out new", None,
     "nowhere: not a prepared dataset"),
    ("cache-no-vae", 'cache-latents --recipe ar.toml --set train.vae_checkpoint=""', None,
     "pass --vae"),
    ("cache-settings-damaged", "cache-latents --recipe ar.toml",
     _write("data/latents/settings.json", ""), "settings.json: damaged, empty"),
    ("cache-other-numerics", "cache-latents --recipe ar.toml",
     _edit_json("data/latents/settings.json", _other_cpu), "other numerics"),
    ("cache-out-read-only", "cache-latents --recipe ar.toml --out ro/latents", None,
     "ro is read-only", ["ro"]),
    # train-ar
    ("ar-no-cache", f"train-ar --recipe ar.toml {NEW_RUN} --set data.latents=nowhere", None,
     "not a complete latent cache"),
    ("ar-empty-manifest", f"train-ar --recipe ar.toml {NEW_RUN}",
     _write("data/latents/manifest.json", ""), "manifest.json: damaged, empty"),
    ("ar-shard-truncated", f"train-ar --recipe ar.toml {NEW_RUN}",
     _truncate("data/latents/shard-00001.safetensors"), "shard-00001.safetensors: damaged"),
    ("ar-no-vae", f'train-ar --recipe ar.toml {NEW_RUN} --set train.vae_checkpoint=""', None,
     "train.vae_checkpoint is empty"),
    ("ar-other-vae", f"train-ar --recipe ar.toml {NEW_RUN} --set "
     "train.vae_checkpoint=runs/ar/export", None, "cached with another VAE"),
    ("ar-other-views", f"train-ar --recipe ar.toml {NEW_RUN} --set augment.hflip=false", None,
     "holds the views"),
    ("ar-no-ar-section", "train-ar --recipe vae.toml", None, "no [ar] section"),
    ("ar-run-is-a-file", "train-ar --recipe ar.toml --set run.output_dir=ar.toml", None,
     "run.output_dir ar.toml: is a file"),
    ("ar-other-architecture", "train-ar --recipe ar.toml --set ar.depth=3", None,
     "another architecture (ar.depth 2 there, 3 here)"),
    ("ar-planted-pickle", "train-ar --recipe ar.toml",
     _write(f"{CHECKPOINT}/custom_checkpoint_0.pkl", b"x"), "a pickle in the run folder"),
    ("ar-old-optimizer-bin", "train-ar --recipe ar.toml",
     _write(f"{CHECKPOINT}/optimizer.bin", b"x"), "optimizer.bin: a pickle in the run folder"),
    ("ar-other-numerics", "train-ar --recipe ar.toml",
     _edit_json(f"{CHECKPOINT}/state.json", _other_cpu), "other numerics"),
    ("ar-run-read-only", "train-ar --recipe ar.toml --set run.output_dir=ro/run", None,
     "ro is read-only", ["ro"]),
    ("ar-disk-full", "train-ar --recipe ar.toml --set run.output_dir=full/run", None,
     "no space left on the device", ["full"]),
    # sample
    ("sample-n-0", "sample --n 0", None, "'--n'"),
    ("sample-seed-negative", "sample --n 4 --seed -1", None, "'--seed'"),
    ("sample-batch-0", "sample --n 4 --batch-size 0", None, "'--batch-size'"),
    ("sample-cfg-negative", "sample --n 4 --cfg -1", None, "'--cfg'"),
    ("sample-no-n", "sample", None, "Missing option '--n'"),
    ("sample-uneven-classes", "sample --n 3", None, "does not split evenly over 2 classes"),
    ("sample-no-checkpoint", "sample --n 4 --checkpoint nowhere", None,
     "nowhere: no such file or folder"),
    ("sample-vae-only", "sample --n 4 --checkpoint runs/vae", None, "holds only a VAE"),
    ("sample-hub-path-escape", "sample --n 4 --checkpoint hf://../../etc/passwd", None,
     "not a hub address"),
    ("sample-training-checkpoint", f"sample --n 4 --checkpoint {CHECKPOINT}", None,
     "a training checkpoint (the state to resume a run), not an export"),
    ("sample-folder-without-export", "sample --n 4 --checkpoint images", None,
     "a folder without a spherear config.json"),
    ("sample-config-damaged", f"sample --n 4 --checkpoint {EXPORT}",
     _write(f"{EXPORT}/config.json", "{"), "config.json: damaged"),
    ("sample-export-truncated", "sample --n 4", _truncate(f"{EXPORT}/ar.safetensors"),
     "ar.safetensors: damaged"),
    ("sample-not-a-checkpoint", "sample --n 4 --checkpoint ar.toml", None,
     "not a readable torch checkpoint"),
    ("sample-out-is-a-file", "sample --n 4 --out ar.toml", None, "--out ar.toml: is a file"),
    ("sample-out-other-settings", f"sample --n 4 --batch-size 2 --cfg 3 --out "
     f"{Path(SAMPLES).parent}", None,
     "other settings (cfg 2.0 there, 3.0 now)"),
    ("sample-settings-damaged", "sample --n 4 --out runs/ar/samples/x",
     _write("runs/ar/samples/x/settings.json", '{"n": 4, "cf'), "settings.json: damaged"),
    ("sample-out-read-only", "sample --n 4 --out ro/samples", None, "ro is read-only", ["ro"]),
    # eval-fid
    ("fid-no-samples", "eval-fid nowhere.npz --ref nowhere.npz", None, "no such file"),
    ("fid-samples-not-npz", "eval-fid ar.toml --ref ar.toml", None, "not an .npz file"),
    ("fid-samples-truncated", f"eval-fid {SAMPLES} --ref {SAMPLES}", _truncate(SAMPLES, 300),
     "samples.npz: not an .npz file"),
    ("fid-no-reference", f"eval-fid {SAMPLES} --ref nowhere.npz --inception-weights ar.toml",
     None, "reference nowhere.npz does not exist"),
    ("fid-no-weights", f"eval-fid {SAMPLES} --ref {SAMPLES} --inception-weights nowhere.pth",
     None, "no such Inception weights file"),
    ("fid-weights-not-torch", f"eval-fid {SAMPLES} --ref {SAMPLES} --inception-weights ar.toml",
     None, "ar.toml: not a readable PyTorch state dict"),
    ("fid-json-is-a-folder", f"eval-fid {SAMPLES} --ref {SAMPLES} --json runs", None,
     "--json runs: is a folder"),
    ("fid-json-read-only", f"eval-fid {SAMPLES} --ref {SAMPLES} --json ro/fid.json", None,
     "ro is read-only", ["ro"]),
    ("fid-bad-features", f"eval-fid {SAMPLES} --ref {SAMPLES} --inception-weights ar.toml "
     "--features dino", None, "expected timm:MODEL"),
    # eval-probe
    ("probe-json-is-a-folder", f"eval-probe {SAMPLES} --json runs", None,
     "--json runs: is a folder"),
    ("probe-no-data", f"eval-probe {SAMPLES} --data nowhere", None,
     "nowhere: not a prepared dataset"),
    ("probe-labels-damaged", f"eval-probe {SAMPLES}",
     _write(str(Path(SAMPLES).parent / "labels.npy"), b"\x93NUMPY garbage"), "labels.npy"),
    # info, push-to-hub, the command line itself
    ("info-truncated-export", f"info --checkpoint {EXPORT}",
     _truncate(f"{EXPORT}/vae.safetensors"), "vae.safetensors: damaged"),
    ("info-run-checkpoint", f"info --checkpoint {CHECKPOINT}", None, "a training checkpoint"),
    ("info-both", f"info --recipe ar.toml --checkpoint {EXPORT}", None, "exactly one of"),
    ("push-unfinished-run", "push-to-hub --run images --dry-run out", None,
     "images: not a finished run"),
    ("push-bad-repo-id", "push-to-hub --run runs/ar --repo-id nobody --dry-run out", None,
     "expected USER/NAME"),
    ("push-dry-run-not-empty", "push-to-hub --run runs/ar --repo-id me/x --dry-run runs", None,
     "already exists and is not empty"),
    ("push-bad-weights", "push-to-hub --run runs/ar --repo-id me/x --weights all --dry-run out",
     None, "expected ema, raw or both"),
    ("unknown-command", "preprare-data", None, "No such command 'preprare-data'"),
]  # fmt: skip


@pytest.fixture(scope="module")
def finished(pipeline):
    """The finished workspace, restored only after a row changed it (its setup did)."""

    class Workspace:
        clean = False

        def get(self) -> Path:
            if not self.clean:
                pipeline.restore("eval-fid", after=True)
                self.clean = True
            return pipeline.run

    return Workspace()


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_one_line_and_changes_nothing(pipeline, finished, cli, row):
    _, command, setup, expected, *mounts = row
    run = finished.get()
    finished.clean = not (setup or mounts)
    if setup:
        setup(run)
    for kind in mounts[0] if mounts else []:
        (run / kind).mkdir()
    before = tree(run) if not finished.clean else pipeline.after("eval-fid")
    sizes = {"ro": [], "full": ["size=64k"]}
    done = cli.run(shlex.split(command), run, env=pipeline.env(),
                   mounts=[[kind, run / kind, *sizes[kind]] for kind in (mounts[0] if mounts
                                                                        else [])])  # fmt: skip
    if done.code == NO_NAMESPACE:
        pytest.skip("this system allows no private mount namespace (read-only/full disk rows)")
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.code == 2, done.stderr[-3000:]
    assert len(done.lines) == 1 and done.lines[0].startswith("error: "), done.stderr
    assert expected in done.lines[0]
    finished.clean = finished.clean and tree(run) == before
    assert tree(run) == before, "a bad input changed the workspace"


def test_the_table_has_sixty_rows_or_more():
    assert len(ROWS) >= 60 and len({row[0] for row in ROWS}) == len(ROWS)
