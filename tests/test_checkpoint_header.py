"""Reading what a checkpoint holds without torch and without its tensor bytes."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from spherear.checkpoint_header import CheckpointError, TensorInfo, read_header, read_pickled
from spherear.checkpoints import load_checkpoint, save_pretrained
from spherear.models import build_ar, build_vae


def _authors_file(path, classes: int = 1000, ema: bool = True):
    """The authors' layout; stride-0 views keep a 1001 x 12288 embedding a few bytes."""
    model = {
        "vae.encoder.conv_in.weight": torch.zeros(()).expand(64, 3, 3, 3),
        "cls_embedding.weight": torch.zeros(()).expand(classes + 1, 16 * 768),
        "head.net.final_layer.linear.bias": torch.nn.Parameter(torch.zeros(16)),
    }
    obj = {"model": model, "epochs": 400, "optimizer": {"state": {0: {"step": torch.ones(())}}},
           "args": argparse.Namespace(image_size=256, model="SphereAR-B")}  # fmt: skip
    if ema:
        obj["ema"] = {k: v for k, v in model.items() if not k.startswith("vae.")}
    torch.save(obj, path)
    return path


def test_shapes_and_structure_come_out_of_the_pickle_alone(tmp_path):
    obj = read_pickled(_authors_file(tmp_path / "b.pt"))
    assert obj["model"]["cls_embedding.weight"] == TensorInfo((1001, 12288))
    assert obj["model"]["head.net.final_layer.linear.bias"] == TensorInfo((16,))
    assert obj["epochs"] == 400 and obj["args"].image_size == 256


@pytest.mark.parametrize("ema, weights", [(True, ("ema", "raw")), (False, ("raw",))])
def test_an_authors_header_gives_kind_classes_and_weights(tmp_path, ema, weights):
    header = read_header(_authors_file(tmp_path / "b.pt", classes=37, ema=ema))
    assert (header.kind, header.num_classes, header.weights) == ("ar", 37, weights)
    vae = tmp_path / "vae.pt"
    torch.save({"model": {"vae.encoder.conv_in.weight": torch.zeros(64, 3, 3, 3)}}, vae)
    assert read_header(vae).kind == "vae"


def test_an_export_header_comes_from_config_json(tmp_path, tiny_recipe):
    ar = build_ar(tiny_recipe)
    out = save_pretrained(tmp_path / "e", tiny_recipe, build_vae(tiny_recipe), ar.state_dict())
    header = read_header(out / "config.json")
    assert (header.kind, header.num_classes, header.weights) == ("ar", 10, ("ema",))
    assert header.sample == tiny_recipe.sample
    assert read_header(tmp_path / "absent") is None


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_foreign_global_is_refused_without_running_it(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    torch.save({"model": {}, "args": payload}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to unpickle it \(global 'posix.system'"):
        read_header(tmp_path / "evil.pt")
    assert not payload.marker.exists()


def test_an_ar_export_of_spherear_0_1_is_refused_naming_the_fix(tmp_path, tiny_recipe):
    """0.1 trained the AR model with another RoPE table, which exports do not hold."""
    vae, ar = build_vae(tiny_recipe), build_ar(tiny_recipe)
    out = save_pretrained(tmp_path / "old", tiny_recipe, vae, ar.state_dict())
    config = json.loads((out / "config.json").read_text())
    assert config["rope"] == "2d-centre-x-first"
    del config["rope"]
    config["format_version"] = 1
    (out / "config.json").write_text(json.dumps(config))
    for read in (load_checkpoint, read_header):
        with pytest.raises(CheckpointError) as e:
            read(out)
        message = str(e.value)
        assert "\n" not in message and "no 'rope' entry (spherear 0.1)" in message
        assert "retrain it with `spherear train-ar`" in message
    vae_only = save_pretrained(tmp_path / "vae", tiny_recipe, vae)
    config = json.loads((vae_only / "config.json").read_text())
    del config["rope"]
    (vae_only / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(vae_only).ar is None  # its RoPE table is in vae.safetensors


def test_sample_checks_its_arguments_before_importing_torch(tmp_path):
    code = (
        "import sys\nfrom spherear.cli import app\n"
        "try:\n    app(['sample', '--checkpoint', sys.argv[1], '--n', '2'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    path = _authors_file(tmp_path / "SphereAR_B.pt")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: --n 2 does not split evenly over 1000 classes (--labels balanced); "
        "use --n 1000, or --labels random"
    ]
