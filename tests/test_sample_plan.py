"""The plan of ``spherear sample``, before any weights load: the labels of every image, the
refusals read from a checkpoint's header, and where the samples go."""

import re
from pathlib import Path

import numpy as np
import pytest

from spherear.checkpoint_header import Header
from spherear.config import SampleConfig
from spherear.runs import Found
from spherear.sample_plan import Plan, SampleError, check_plan, class_labels, default_out


def test_balanced_labels_split_n_evenly_or_name_the_nearest_n():
    labels = class_labels(50, 10, "balanced", seed=0)
    assert np.bincount(labels).tolist() == [5] * 10
    for n, nearest in [(24, 20), (26, 30), (3, 10)]:
        with pytest.raises(SampleError, match=rf"use --n {nearest}, or --labels random"):
            class_labels(n, 10, "balanced", seed=0)


def test_random_labels_are_a_function_of_seed_and_index():
    a = class_labels(2000, 10, "random", seed=3)
    assert np.array_equal(a, class_labels(2000, 10, "random", seed=3))
    assert np.array_equal(a[:20], class_labels(20, 10, "random", seed=3))  # image i keeps its
    assert not np.array_equal(a, class_labels(2000, 10, "random", seed=4))
    counts = np.bincount(a, minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # uniform: 200 +- 5 sigma


def test_a_plan_the_checkpoint_cannot_meet_is_refused_from_its_header():
    plan = Plan.from_recipe(SampleConfig(), 20, weights="raw")
    cases = [
        (Header("v.pt", "vae", None, ()), "v.pt holds only a VAE"),
        (Header("e", "ar", 10, ("ema",)), "e holds no raw AR weights (it has: ema); pass --wei"),
        (Header("b.pt", "ar", 1000, ("ema", "raw")), "--n 20 does not split evenly over 1000"),
    ]  # fmt: skip
    for header, message in cases:
        with pytest.raises(SampleError, match=re.escape(message)):
            check_plan(plan, header)
    check_plan(plan, Header("b.pt", "ar", 10, ("ema", "raw")))


def test_samples_go_into_their_run_else_beside_their_checkpoint():
    plan = Plan.from_recipe(SampleConfig(cfg=2.0, steps=4), 8)
    tag = "n8-cfg2-linear-steps4-sde-balanced-seed0"
    assert plan.tag == tag
    cooler = Plan.from_recipe(SampleConfig(cfg=2.0, steps=4), 8, temperature=0.75, steps_last=2)
    assert cooler.tag == "n8-cfg2-linear-steps4to2-sde-temp0.75-balanced-seed0"
    assert cooler.sampling.temperature == 0.75
    run = Found("runs/x/export", Path("runs/x"), "as given")
    assert default_out(run, plan) == Path(f"runs/x/samples/{tag}")
    authors = Found("weights/SphereAR_B.pt", None, "as given")
    assert default_out(authors, plan) == Path(f"weights/samples/SphereAR_B-{tag}")
    hub = Found("hf://guolinke/SphereAR/SphereAR_B.pt", None, "as given")
    assert default_out(hub, plan) == Path(f"samples/SphereAR_B-{tag}")


def test_one_class_gives_every_image_that_class_and_names_it_in_the_tag():
    assert class_labels(5, 10, "balanced", seed=0, only_class=7).tolist() == [7] * 5
    with pytest.raises(SampleError, match=re.escape("--class 10: the model has classes 0 to 9")):
        class_labels(5, 10, "balanced", seed=0, only_class=10)
    plan = Plan.from_recipe(SampleConfig(cfg=2.0, steps=4), 3, only_class=1)
    assert plan.tag == "n3-cfg2-linear-steps4-sde-class1-seed0"
    check_plan(plan, Header("e", "ar", 2, ("ema",)))  # 3 images need not split over classes
    with pytest.raises(SampleError, match=re.escape("--class 1: the model has classes 0 to 0")):
        check_plan(plan, Header("e", "ar", 1, ("ema",)))
