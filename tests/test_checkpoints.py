"""Loading the authors' release format and our own export format.

The authors' files cannot be downloaded here, so the tests write files with the same key
set and shapes (tests/fixtures/authors_keys.tsv holds the rows of the released vae.pt and
SphereAR_B.pt). Every tensor is one constant, unique per key, stored as a stride-0 view so
that the 280M-parameter file stays a few kilobytes; after loading, each of our parameters
must hold the constant of the authors' key it maps to.
"""

import argparse
import ast
import csv
import dataclasses
import json
import os
import warnings

import pytest
import torch

from spherear import checkpoints
from spherear.checkpoints import (
    CheckpointError,
    authors_to_ours,
    inspect_checkpoint,
    load_authors_checkpoint,
    load_checkpoint,
    load_vae,
    ours_to_authors,
    save_pretrained,
)
from spherear.models import build_ar, build_vae
from spherear.models.registry import resolve_ar

from .conftest import ROOT, spec_rope_table


def _rows(model: str) -> list[tuple[str, tuple]]:
    with open(ROOT / "tests" / "fixtures" / "authors_keys.tsv") as f:
        return [
            (r["key"], ast.literal_eval(r["shape"]))
            for r in csv.DictReader(f, delimiter="\t")
            if r["model"] == model
        ]


def _state(model: str, offset: float) -> dict[str, torch.Tensor]:
    state = {}
    for i, (key, shape) in enumerate(_rows(model)):
        if key.endswith("freqs_cis"):
            state[key] = spec_rope_table(16, 64, 4).float()  # a buffer, by the released rule
        else:
            state[key] = torch.tensor(i + offset).expand(shape)
    return state


def _save(path, model, **extra):
    obj = {
        "model": _state(model, 0.0),
        "ema": _state(model, 0.5),
        "optimizer": {},
        "epochs": 400,
        "args": argparse.Namespace(image_size=256, model=model),
    }
    obj.update(extra)
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def authors_b(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ckpt") / "SphereAR_B.pt", "SphereAR-B")


@pytest.fixture(scope="module")
def authors_vae(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "vae.pt"
    return _save(path, "vae_only", model_disc={"w": torch.zeros(2)}, optimizer_disc={})


def _assert_values(loaded_state, rows_state, prefix=""):
    for key, value in loaded_state.items():
        expected = rows_state[ours_to_authors(prefix + key)]
        assert torch.equal(value, expected.expand(value.shape)), key


def test_full_b_checkpoint_loads_strictly_with_ema_preferred(authors_b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our RoPE table matches the saved one: no warning
        loaded = load_authors_checkpoint(authors_b)
    assert loaded.recipe.ar.size == "B" and loaded.recipe.ar.num_classes == 1000
    ema = _state("SphereAR-B", 0.5)
    _assert_values(loaded.ar.state_dict(), ema)
    _assert_values(loaded.vae.state_dict(), ema, prefix="vae.")
    raw = load_authors_checkpoint(authors_b, weights="raw", expect="B")
    _assert_values(raw.ar.state_dict(), _state("SphereAR-B", 0.0))
    assert loaded.ar.rope.shape == (16 + 256, 32, 2)  # rebuilt: the file does not hold it


def test_vae_only_checkpoint_loads(authors_vae):
    loaded = load_authors_checkpoint(authors_vae, expect="vae")
    assert loaded.ar is None
    _assert_values(loaded.vae.state_dict(), _state("vae_only", 0.5), prefix="vae.")
    images = torch.zeros(1, 3, 256, 256)
    assert loaded.vae.encode(images).mu.shape == (1, 256, 16)


def test_rename_map_round_trips_every_key():
    for key, _ in _rows("SphereAR-B"):
        assert ours_to_authors(authors_to_ours(key)) == key


def test_wrong_size_is_refused_naming_keys_and_the_size_it_looks_like(authors_b):
    with pytest.raises(CheckpointError) as e:
        load_authors_checkpoint(authors_b, expect="L")
    msg = str(e.value)
    assert "not SphereAR-L" in msg and "looks most like SphereAR-B" in msg
    assert msg.count("'") >= 2 and "more" in msg and "\n" not in msg


@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_damaged_state_dict_is_refused(tmp_path, damage):
    state = _state("SphereAR-B", 0.0)
    if damage == "missing":
        del state["layers.3.attention.wqkv.weight"]
        needle = "missing 'layers.3.attention.wqkv.weight'"
    elif damage == "extra":
        state["layers.99.attention.wqkv.weight"] = torch.zeros(1)
        needle = "unexpected 'layers.99.attention.wqkv.weight'"
    else:
        state["pos_for_diff.weight"] = torch.zeros(255, 768)
        needle = "'pos_for_diff.weight' has shape (255, 768), expected (256, 768)"
    path = tmp_path / "damaged.pt"
    torch.save({"model": state, "args": argparse.Namespace()}, path)
    with pytest.raises(CheckpointError, match="looks most like SphereAR-B") as e:
        load_authors_checkpoint(path, expect="B")
    assert needle in str(e.value)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_pickle_is_refused_without_running_it(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "args": payload}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_authors_checkpoint(path)
    assert not payload.marker.exists()


def test_a_changed_rope_table_is_reported(tmp_path):
    obj = {"model": _state("vae_only", 0.0), "args": argparse.Namespace()}
    obj["model"]["vae.encoder.freqs_cis"] = obj["model"]["vae.encoder.freqs_cis"].flip(0)
    torch.save(obj, tmp_path / "vae.pt")
    with pytest.warns(UserWarning, match="RoPE table differs"):
        load_authors_checkpoint(tmp_path / "vae.pt")


def test_a_pt_file_inside_an_export_folder_is_not_the_export(tmp_path, tiny_recipe):
    export = save_pretrained(tmp_path / "exp", tiny_recipe, build_vae(tiny_recipe))
    (export / "other.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="other.pt: not a readable torch checkpoint"):
        load_checkpoint(export / "other.pt")
    assert load_checkpoint(export / "config.json").ar is None


def test_damaged_export_is_refused_in_one_line(tmp_path, tiny_recipe):
    export = save_pretrained(tmp_path / "exp", tiny_recipe, build_vae(tiny_recipe))
    written = (export / "vae.safetensors").stat().st_size
    (export / "vae.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=f"damaged \\(vae.safetensors has 7 bytes, {written}"):
        load_checkpoint(export)
    with pytest.raises(CheckpointError, match="vae.safetensors: damaged"):
        inspect_checkpoint(export)  # `spherear info` does not call it healthy
    # an export written before the sizes were recorded: its weights are still checked
    config = json.loads((export / "config.json").read_text())
    del config["files"]
    (export / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="vae.safetensors has no safetensors header"):
        load_checkpoint(export)
    other = tiny_recipe.vae.__class__(**{**tiny_recipe.vae.__dict__, "channels": (8, 16, 16)})
    small = save_pretrained(tmp_path / "small", tiny_recipe.__class__(vae=other),
                            build_vae(tiny_recipe.__class__(vae=other)))  # fmt: skip
    (small / "vae.safetensors").replace(export / "vae.safetensors")
    with pytest.raises(CheckpointError, match="does not fit its recipe"):
        load_checkpoint(export)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_authors_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_authors_checkpoint(tmp_path / "absent.pt")


def test_inspect_describes_authors_files(authors_b, authors_vae):
    b = inspect_checkpoint(authors_b)
    assert (b.origin, b.kind, b.size, b.has_ema, b.epochs) == ("authors", "full", "B", True, 400)
    v = inspect_checkpoint(authors_vae)
    assert (v.origin, v.kind, v.size) == ("authors", "vae", None)
    assert "VAE only" in v.describe()


# small models are built with a plain init, big ones on the meta device: both must load
@pytest.mark.parametrize("meta_above", [checkpoints.META_ABOVE, 0], ids=["plain", "meta"])
def test_export_round_trip(tmp_path, tiny_recipe, monkeypatch, meta_above):
    monkeypatch.setattr(checkpoints, "META_ABOVE", meta_above)
    vae, ar = build_vae(tiny_recipe).eval(), build_ar(tiny_recipe).eval()
    ema = {k: v + 1 for k, v in ar.state_dict().items()}
    out = save_pretrained(tmp_path / "export", tiny_recipe, vae, ema, ar.state_dict())
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "recipe.toml", "vae.safetensors", "ar.safetensors", "ar_raw.safetensors"
    }  # fmt: skip
    rng = torch.get_rng_state()
    loaded = load_checkpoint(out)
    assert torch.equal(torch.get_rng_state(), rng)  # loading draws no random numbers
    # the export spells the architecture out: a changed size registry cannot change it
    assert loaded.recipe.ar == resolve_ar(tiny_recipe.ar)
    assert loaded.recipe == dataclasses.replace(tiny_recipe, ar=loaded.recipe.ar)
    assert 'size = "tiny"' in (out / "recipe.toml").read_text()
    assert f"width = {loaded.ar.config.width}" in (out / "recipe.toml").read_text()
    for k, v in loaded.ar.state_dict().items():
        assert torch.equal(v, ema[k])
    raw = load_checkpoint(out, weights="raw")
    for k, v in raw.ar.state_dict().items():
        assert torch.equal(v, ar.state_dict()[k])
    n, d, k = ar.num_tokens, ar.latent_dim, tiny_recipe.ar.diff_batch_mul
    draws = (torch.randn(1, n, d), torch.tensor([3]), torch.tensor([False]),
             torch.rand(1, k, n), torch.randn(1, k, n, d))  # fmt: skip
    torch.testing.assert_close(raw.ar(*draws), ar(*draws))  # buffers (RoPE) rebuilt too
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(loaded.vae.encode(images).mu, vae.encode(images).mu)
    info = inspect_checkpoint(out / "config.json")
    assert (info.origin, info.kind, info.size, info.has_ema) == ("spherear", "full", "tiny", True)


def test_a_vae_unlike_the_recipes_is_refused_before_its_weights_load(tmp_path, tiny_recipe):
    export = save_pretrained(tmp_path / "exp", tiny_recipe, build_vae(tiny_recipe))
    (export / "vae.safetensors").write_bytes(b"never read")
    other = dataclasses.replace(tiny_recipe.vae, resolution=64, latent_dim=8)
    with pytest.raises(CheckpointError) as e:
        load_vae(export, other)
    assert str(e.value) == (
        f"{export}: its S-VAE is not the recipe's [vae] (resolution 32 there, 64 in the "
        "recipe; latent_dim 16 there, 8 in the recipe); point train.vae_checkpoint (or --vae) "
        "at the S-VAE the recipe describes, or fix [vae]"
    )
