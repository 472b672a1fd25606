import pytest

from spherear.config import (
    Recipe,
    RecipeError,
    load_recipe,
    recipe_from_dict,
    recipe_to_toml,
    save_recipe,
)
from spherear.models.registry import resolve_ar

from .conftest import ROOT

RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_round_trip(path, tmp_path):
    recipe = load_recipe(path)
    if recipe.ar is not None:
        resolve_ar(recipe.ar, str(path))
    written = save_recipe(recipe, tmp_path)
    assert load_recipe(written) == recipe


def test_paper_hyperparameters():
    b = load_recipe(ROOT / "recipes" / "sphere_b.toml")
    assert (b.train.lr, b.train.global_batch_size, b.train.warmup_steps) == (3e-4, 512, 20000)
    assert (b.train.ema_decay, b.ar.class_dropout, b.ar.diff_batch_mul) == (0.9999, 0.1, 4)
    assert (b.sample.cfg, b.sample.steps, b.vae.num_tokens) == (4.5, 100, 256)
    assert load_recipe(ROOT / "recipes" / "sphere_l.toml").sample.cfg == 4.6
    v = load_recipe(ROOT / "recipes" / "vae.toml")
    assert (v.train.lr, v.vae_loss.disc_start, v.vae_loss.kl_weight) == (1e-4, 20000, 0.004)
    assert v.ar is None


def _write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    path = _write(tmp_path, "[train]\nlrr = 1\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value) == f"{path}: unknown key 'train.lrr'; did you mean 'train.lr'?"


def test_unknown_section_and_wrong_types(tmp_path):
    with pytest.raises(RecipeError, match="unknown key 'trian'; did you mean 'train'"):
        load_recipe(_write(tmp_path, "[trian]\nlr = 1\n"))
    with pytest.raises(RecipeError, match="'train.lr' must be a number, got 'fast'"):
        load_recipe(_write(tmp_path, '[train]\nlr = "fast"\n'))
    with pytest.raises(
        RecipeError, match=r"'vae.channels' must be a list of integers, got \[1.5\]"
    ):
        load_recipe(_write(tmp_path, "[vae]\nchannels = [1.5]\n"))
    with pytest.raises(RecipeError, match="'sample.sampler' must be 'sde' or 'ode' or 'heun'"):
        load_recipe(_write(tmp_path, '[sample]\nsampler = "rk4"\n'))
    with pytest.raises(RecipeError, match="'run.seed' must be an integer, got True"):
        load_recipe(_write(tmp_path, "[run]\nseed = true\n"))
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, "[run\n"))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.toml")


def test_set_overrides_are_validated_the_same_way(tmp_path):
    path = ROOT / "recipes" / "tiny.toml"
    r = load_recipe(path, ["train.lr=1e-4", "run.name=my_run", "vae.channels=[8, 16]"])
    assert (r.train.lr, r.run.name, r.vae.channels) == (1e-4, "my_run", (8, 16))
    with pytest.raises(RecipeError, match=r"\(--set train.lrr=1\): unknown key 'train.lrr'"):
        load_recipe(path, ["train.lrr=1"])
    with pytest.raises(RecipeError, match="'train.epochs' must be an integer, got 'ten'"):
        load_recipe(path, ["train.epochs=ten"])
    with pytest.raises(RecipeError, match="expected section.key=value"):
        load_recipe(path, ["train.lr"])
    with pytest.raises(RecipeError, match="'train' must be a table, got 1"):
        load_recipe(path, ["train=1"])


def test_set_creates_optional_sections():
    vae_only = load_recipe(ROOT / "recipes" / "vae.toml", ["ar.size=L"])
    assert vae_only.ar.size == "L"


def test_geometry_is_checked():
    with pytest.raises(RecipeError, match="not divisible by the patch size 16"):
        recipe_from_dict({"vae": {"resolution": 100}})
    # 512 / 8 = 64 divides in 4; 512 / 32 = 16 too; 480 / 8 = 60 too, 488 / 8 = 61 not
    recipe_from_dict({"vae": {"num_heads": 32}})
    with pytest.raises(RecipeError, match="vae width 488 / vae.num_heads 8 must give a head dim"):
        recipe_from_dict({"vae": {"channels": [64, 488]}})


def test_toml_writer_escapes_strings():
    r = Recipe()
    r.run.name = 'with "quotes" and \\ slash'
    assert recipe_from_dict(__import__("tomllib").loads(recipe_to_toml(r))) == r


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ar.num_heads=0", "'ar.num_heads' must be >= 1, got 0"),
        ("sample.steps=0", "'sample.steps' must be >= 1, got 0"),
        ("ar.class_dropout=2", "'ar.class_dropout' must be between 0 and 1, got 2.0"),
        ("vae.channels=[0, 4]", "'vae.channels' must be >= 4, got (0, 4)"),
        # sizes past the documented upper bounds: refused before anything is built
        ("ar.depth=1000000", "'ar.depth' is 1000000, above 1024, the most spherear builds"),
        ("ar.width=1099511627776", "'ar.width' is 1099511627776, above 65536"),
        ("vae.resolution=1000000000", "'vae.resolution' is 1000000000, above 8192"),
        ("ar.num_classes=1000000000000", "'ar.num_classes' is 1000000000000, above 1000000"),
        (
            "sample.steps=1" + "0" * 400,
            "'sample.steps' is too large (an integer of more than 20 digits)",
        ),
        (
            "train.max_steps=" + "9" * 27,
            "'train.max_steps' is too large (an integer of more than 20 digits)",
        ),
        ("sample.cfg=inf", "'sample.cfg' must be a finite number, got inf"),
        ("train.lr=nan", "'train.lr' must be a finite number, got nan"),
        ("ar.value=" + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("ar.class_names=['a']", "ar.class_names has 1 names for ar.num_classes 1000"),
        ("run.seed=1979-05-27", "'run.seed' must be an integer"),
    ],
)
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "sphere_b.toml", [override])
    assert message in str(e.value)
