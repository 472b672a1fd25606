"""``spherear compare``: comparison files checked before any work, runs shared between arms
and comparisons, and the report's figures from runs whose numbers are written here."""

import json
import threading
from pathlib import Path

import pytest

from spherear.compare import (
    CompareError,
    Runner,
    _Stopped,
    ar_dir,
    ar_overrides,
    load_comparison,
    samples_dir,
    vae_dir,
    vae_overrides,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
HEAD = f"""
vae_recipe = "{ROOT / "recipes" / "tiny_vae.toml"}"
ar_recipe = "{ROOT / "recipes" / "tiny.toml"}"
seeds = [0, 1]
token_cfg_scales = [1.0, 4.0]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'name = "c"\ntitle = "C"\noutput_dir = "{tmp_path / "runs"}"\n' + HEAD + text)
    return path


ARMS = """
[[arm]]
name = "sphere"

[[arm]]
name = "sphere, no normalisation"
sample = { normalise = "none" }

[[arm]]
name = "gaussian raw"
vae = ["vae.posterior=gaussian", "vae_loss.initial_kappa=0", "vae_loss.initial_std=0.05"]
ar = ["ar.token_space=raw"]
"""


@pytest.mark.parametrize(
    "text, words",
    [
        ('colour = "red"\n' + ARMS, ["unknown key", "colour"]),
        ('[[arm]]\nname = "a"\nsample = { steps_fast = 3 }\n', ["arm 'a'", "steps_fast"]),
        ('[[arm]]\nname = "a"\nar = ["ar.token_space=raw"]\n', ["arm 'a'", "gaussian"]),
        ('[[arm]]\nname = "a"\n[[arm]]\nname = "A"\n', ["same name"]),
        ("", ["no [[arm]]"]),
        ('samples = 25\n[[arm]]\nname = "a"\n', ["25 samples", "10 classes", "samples = 20"]),
    ],
)
def test_a_bad_comparison_stops_in_one_line_before_any_work(tmp_path, text, words):
    with pytest.raises(CompareError) as e:
        load_comparison(write(tmp_path, text))
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "runs").exists()


def test_arms_that_differ_only_at_sampling_share_their_runs(tmp_path):
    c = load_comparison(write(tmp_path, ARMS))
    sphere, unnormalised, gaussian = c.arms
    data = c.datasets[0]
    assert ar_dir(c, sphere, data, 0) == ar_dir(c, unnormalised, data, 0)
    assert vae_dir(c, sphere, data, 0) != vae_dir(c, gaussian, data, 0)
    assert vae_dir(c, sphere, data, 0) != vae_dir(c, sphere, data, 1)
    assert samples_dir(c, sphere, data, 0) != samples_dir(c, unnormalised, data, 0)
    # another comparison in the same output_dir with the same arm trains nothing new
    other = tmp_path / "other.toml"
    other.write_text(write(tmp_path, ARMS).read_text().replace('name = "c"', 'name = "d"'))
    d = load_comparison(other)
    assert ar_dir(d, d.arms[0], data, 0) == ar_dir(c, sphere, data, 0)
    # a --set of the user's changes every run
    e = load_comparison(write(tmp_path, ARMS), ["data.num_images=100"])
    assert ar_dir(e, e.arms[0], data, 0) != ar_dir(c, sphere, data, 0)


def _fake_results(c, arm, seed, cc, psnr, norm):
    data = c.datasets[0]
    vae, ar = vae_dir(c, arm, data, seed), ar_dir(c, arm, data, seed)
    for run, lines in [(vae, [{"step": 10, "held_out_psnr": psnr - 1},
                              {"step": 20, "held_out_psnr": psnr}]),
                       (ar, [{"step": 10, "loss": 1}, {"step": 20, "loss": 1}])]:  # fmt: skip
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # the AR run trained in two calls: 20 steps in 10 s, then 10 in 2.5 s
    timings_path = Path(c.output_dir) / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    timings[ar.name] = [{"steps": 20, "seconds": 10.0}, {"steps": 10, "seconds": 2.5}]
    timings_path.write_text(json.dumps(timings))

    def summary(mean):
        return {"norm": {"mean": mean, "std": 0.5}, "dim_variance": [1.0, 2.0],
                "norm_by_position": {"mean": [mean] * 4, "std": [0.5] * 4}}  # fmt: skip

    stats = {"samples": summary(norm), "data": summary(4.0)}
    for cfg in (None, *c.token_cfg_scales):
        out = samples_dir(c, arm, data, seed, cfg)
        out.mkdir(parents=True, exist_ok=True)
        (out / "token_stats.json").write_text(json.dumps(stats))
        (out / "eval-probe.json").write_text(
            json.dumps({"metrics": {"probe_class_consistency": cc, "FD_probe": 10.0}})
        )


def test_the_report_gives_each_figure_as_its_mean_and_seed_range(tmp_path):
    c = load_comparison(write(tmp_path, ARMS))
    for arm, results in zip(c.arms, [(0.9, 0.8), (0.5, 0.7), (0.6, 0.6)], strict=True):
        for seed, cc in zip(c.seeds, results, strict=True):
            _fake_results(c, arm, seed, cc, psnr=25.0 + seed, norm=4.0 + seed)
    report = write_report(c)
    text = (report / "README.md").read_text()
    rows = {}  # the first table's line of each arm (the token table repeats the names)
    for line in text.splitlines():
        if line.startswith(("| sphere", "| gaussian")):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    # class-consistency 0.9 and 0.8: mean 0.850, range 0.800-0.900; PSNR the last logged
    assert "0.850 (0.800–0.900)" in rows["sphere"]
    assert "25.50 (25.00–26.00)" in rows["sphere"]
    assert "0.600 (0.600–0.600)" in rows["gaussian raw"]
    # AR steps per second: 30 steps in 12.5 s
    assert rows["sphere"].rstrip(" |").endswith("2.4 (2.4–2.4)")
    # head evaluations per token: the tiny recipe's Heun 8 is 16 per row, twice with CFG
    assert " 32 " in rows["sphere"]
    for name in ("quality.png", "token_norms_vs_cfg.png"):
        assert (report / name).stat().st_size > 1000 and f"]({name})" in text
    assert "4.000 ± 0.500" in text  # the token norms against CFG, first seed


def test_a_datasets_ar_settings_reach_the_ar_recipe_only(tmp_path):
    marks = 'set = ["data.source=synthetic:marks", "ar.num_classes=8"]'
    text = ARMS + f'\n[[dataset]]\nname = "marks"\n{marks}\n'
    c = load_comparison(write(tmp_path, text))

    data = c.datasets[0]
    assert "ar.num_classes=8" in ar_overrides(c, c.arms[0], data, 0)
    assert "ar.num_classes=8" not in vae_overrides(c, c.arms[0], data, 0)
    assert "data.source=synthetic:marks" in vae_overrides(c, c.arms[0], data, 0)


def test_the_paper_sized_recipes_load_and_fid_joins_the_table(tmp_path):
    c = load_comparison(
        ROOT / "recipes" / "ablations" / "latents.toml",
        ["train.epochs=400"],
        vae_recipe=str(ROOT / "recipes" / "vae.toml"),
        ar_recipe=str(ROOT / "recipes" / "sphere_b.toml"),
        eval_fid=True,
        samples=50000,
        output_dir=str(tmp_path / "runs"),
    )
    arm, data = c.arms[0], c.datasets[0]
    sets = ar_overrides(c, arm, data, 0)
    assert sets.index("train.epochs=400") > sets.index("train.epochs=3")  # the command line wins
    out = samples_dir(c, arm, data, 0)
    out.mkdir(parents=True)
    (out / "eval-fid.json").write_text(json.dumps({"metrics": {"FID": 2.5}}))
    text = (write_report(c) / "README.md").read_text()
    assert "| FID |" in text and "2.50" in text


def test_a_failed_chain_stops_the_others_before_their_next_command(tmp_path):
    c = load_comparison(write(tmp_path, ARMS))
    issued, seed_0_started = [], threading.Event()

    class Fake(Runner):
        def spherear(self, log, *args):
            if self.failed.is_set():
                raise _Stopped
            issued.append(log)
            if log == "synthetic-s1":  # fails while seed 0 runs its first command
                assert seed_0_started.wait(10)
                raise CompareError("seed 1 failed")
            if log == "synthetic-s0":
                seed_0_started.set()
                assert self.failed.wait(10)
            return 0.0

    with pytest.raises(CompareError, match="seed 1 failed"):
        Fake(c, say=lambda _: None, jobs=2).run()
    # seed 0 finished the command it had started and began no other
    assert issued.count("synthetic-s0") == 1 and issued.count("synthetic-s1") == 1


@pytest.mark.slow
def test_two_chains_at_once_finish_a_comparison_and_a_rerun_trains_nothing(tmp_path):
    small = ["data.num_images=200", "train.max_steps=2", "train.checkpoint_every=2",
             "train.sample_every=0"]  # fmt: skip
    text = (
        f"set = {json.dumps(small)}\nsamples = 10\n"
        + """
sample = { sampler = "heun", steps = 2 }

[[arm]]
name = "paper"
"""
    )
    path = write(tmp_path, text)
    path.write_text(path.read_text().replace("[1.0, 4.0]", "[]"))  # each command costs seconds
    c = load_comparison(path)
    Runner(c, say=lambda _: None, jobs=2).run()

    rows = json.loads((c.out / "report" / "rows.json").read_text())
    assert [r["arm"] for r in rows] == ["paper"]
    assert all(0 <= s["cc"] <= 1 for s in rows[0]["per_seed"]), rows  # scored at both seeds
    assert {p.name for p in (c.out / "logs").iterdir()} == {
        "prepare-synthetic.log", "synthetic-s0.log", "synthetic-s1.log"}  # fmt: skip
    timings = json.loads((Path(c.output_dir) / "timings.json").read_text())
    # one VAE and one AR run per seed, each trained 2 steps in one call
    assert sorted(timings) == sorted(
        run(c, c.arms[0], c.datasets[0], seed).name for run in (vae_dir, ar_dir) for seed in (0, 1)
    )
    assert all(calls == [{"steps": 2, "seconds": calls[0]["seconds"], "jobs": 2}]
               for calls in timings.values())  # fmt: skip
    assert "2 commands running at once" in (c.out / "report" / "README.md").read_text()

    samples = samples_dir(c, c.arms[0], c.datasets[0], 1) / "samples.npz"
    written = samples.stat().st_mtime_ns
    Runner(c, say=lambda _: None, jobs=2).run()
    assert json.loads((Path(c.output_dir) / "timings.json").read_text()) == timings
    assert samples.stat().st_mtime_ns == written
