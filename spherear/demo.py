"""demo: the page of ``spherear demo`` (and of a Space that ``push-to-hub --space`` writes),
which samples a model by class in a browser.

A request is checked as a recipe's ``[sample]`` section is, made into the ``Plan`` that
``spherear sample`` would make, and sampled by ``spherear.sample.sample_images`` into a
temporary folder. The page shows the images and the ``spherear sample`` command line of that
plan: image i depends only on (seed, i) and the settings, so the command writes the same
bytes. Gradio, the optional ``demo`` extra, is imported by ``build_page`` alone.
"""

from __future__ import annotations

import ipaddress
import shlex
import signal
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spherear.checkpoint_header import Weights
from spherear.checkpoints import Loaded
from spherear.config import SampleConfig, section_from_dict
from spherear.errors import SpherearError
from spherear.hub_files import parse_address
from spherear.runs import RUNS, find_run
from spherear.sample_plan import Plan, only_a_vae

MAX_IMAGES = 64
BATCH = 16  # images per chunk: the progress bar moves once a chunk
EXTRA = "spherear demo needs the demo extra: pip install 'spherear[demo]'"


class DemoError(SpherearError):
    """A request the page cannot sample; the message is shown on the page."""


@dataclass
class Model:
    """What the page samples: the weights, where they came from (as the printed command names
    them) and the numerics a ``spherear sample`` process starts with."""

    checkpoint: str
    loaded: Loaded
    weights: Weights
    accelerator: Any
    threads: int  # intra-op threads: a matmul on 2 threads rounds unlike one on 1

    @property
    def choices(self) -> list[str]:
        """The class picker's entries, "3: name" (the bare number for a model without names)."""
        names = list(self.loaded.recipe.ar.class_names)
        count = self.loaded.recipe.ar.num_classes
        return [f"{c}: {names[c]}" if c < len(names) else str(c) for c in range(count)]


def load_model(checkpoint: str | None = None, weights: Weights = "ema", root=RUNS) -> Model:
    """The model of ``checkpoint`` (a run, an export, an authors' file, an hf:// address;
    default: the newest train-ar run under ``root``, as ``spherear sample`` finds it)."""
    import torch

    from spherear.accelerator import make_accelerator
    from spherear.checkpoints import load_checkpoint

    source = find_run(checkpoint, root, option="--checkpoint")
    loaded = load_checkpoint(source.checkpoint, weights)
    if loaded.ar is None:
        raise only_a_vae(loaded.description)
    named = source.checkpoint
    if parse_address(named) is None:  # the command runs from any folder
        named = str(Path(named).resolve())
    return Model(named, loaded, weights, make_accelerator(), torch.get_num_threads())


def pick_class(model: Model, choice: str | int | None) -> int:
    """The class of a picker entry, a class number or a class name."""
    text = str(choice if choice is not None else "").strip()
    choices = model.choices
    if text in choices:
        return choices.index(text)
    names = [name.lower() for name in model.loaded.recipe.ar.class_names]
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    if text.lower() in names:
        return names.index(text.lower())
    raise DemoError(
        f"class {text!r} is not one of this model's {len(choices)} classes; pick one from the list"
    )


def _whole(value: Any, name: str, lowest: int, highest: int | None = None) -> int:
    fits = isinstance(value, int | float) and float(value).is_integer()
    if fits and lowest <= value and (highest is None or value <= highest):
        return int(value)
    wanted = f"from {lowest} to {highest}" if highest is not None else f"{lowest} or more"
    raise DemoError(f"{name} {value}: expected a whole number {wanted}")


def plan_for(model: Model, choice: str | int | None, n: Any, seed: Any, **sampling: Any) -> Plan:
    """The plan of a request: ``sampling`` (cfg, cfg_schedule, sampler, steps, temperature,
    precision) checked as a recipe's ``[sample]`` is, the rest from the model's recipe."""
    only_class = pick_class(model, choice)
    n = _whole(n, "images", 1, MAX_IMAGES)
    seed = _whole(seed, "seed", 0)
    if "steps" in sampling:  # a page's number box gives 2.0 for 2
        sampling["steps"] = _whole(sampling["steps"], "steps", 1)
    defaults = model.loaded.recipe.sample
    given = section_from_dict(SampleConfig, sampling, "the page's settings")
    given = {k: getattr(given, k) for k in sampling}
    # compile is off: the first request would wait for the compiler
    return Plan.from_recipe(defaults, n, **given, compile=False, seed=seed, only_class=only_class,
                            batch_size=min(n, BATCH), weights=model.weights)  # fmt: skip


def command_line(model: Model, plan: Plan) -> str:
    """The ``spherear sample`` command that writes ``plan``'s images, byte for byte."""
    options = {
        "--checkpoint": model.checkpoint, "--n": plan.n, "--class": plan.only_class,
        "--cfg": repr(plan.cfg), "--cfg-schedule": plan.cfg_schedule, "--sampler": plan.sampler,
        "--steps": plan.steps, "--steps-last": plan.steps_last,
        "--temperature": repr(plan.temperature), "--normalise": plan.normalise,
        "--precision": plan.precision, "--seed": plan.seed, "--batch-size": plan.batch_size,
        "--weights": plan.weights,
    }  # fmt: skip
    words = ["spherear", "sample", *(str(w) for kv in options.items() for w in kv)]
    return shlex.join([*words, "--no-compile"])


def sample(model: Model, plan: Plan) -> tuple[np.ndarray, float]:
    """``plan``'s images (N, H, W, 3) uint8, made as ``spherear sample`` makes them, and the
    seconds they took."""
    import torch

    from spherear.sample import sample_images

    # the page samples on a server thread, which need not have the process's thread count
    torch.set_num_threads(model.threads)
    with tempfile.TemporaryDirectory(prefix="spherear-demo-") as tmp:
        out = Path(tmp) / plan.tag
        result = sample_images(model.loaded, plan, out, model.accelerator)
        with np.load(out / "samples.npz", allow_pickle=False) as samples:
            return samples["arr_0"], result.seconds


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _precisions(model: Model) -> list[str]:
    """fp32, and bf16 where the device computes it (every CPU, CUDA from Ampere on)."""
    import torch

    device = model.accelerator.device
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ["fp32"]
    return ["fp32", "bf16"]


def require_gradio():
    """The gradio module, or the one line that names the extra."""
    try:
        import gradio
    except ImportError:
        raise SpherearError(EXTRA) from None
    return gradio


def build_page(model: Model):
    """The page (a ``gradio.Blocks``); one request samples at a time, the others queue."""
    gr = require_gradio()
    defaults = model.loaded.recipe.sample
    choices = model.choices
    options = {k: typing.get_args(v) for k, v in typing.get_type_hints(SampleConfig).items()}
    precisions = _precisions(model)

    def run(choice, n, seed, cfg, cfg_schedule, sampler, steps, temperature, precision,
            progress=gr.Progress(track_tqdm=True)):  # fmt: skip
        try:
            plan = plan_for(model, choice, n, seed, cfg=cfg, cfg_schedule=cfg_schedule,
                            sampler=sampler, steps=steps, temperature=temperature,
                            precision=precision)  # fmt: skip
            images, seconds = sample(model, plan)
        except (SpherearError, OSError) as e:
            raise gr.Error(_one_line(e), print_exception=False) from None
        name = choices[plan.only_class]
        gallery = [(image, f"{name}, image {i}") for i, image in enumerate(images)]
        timing = (f"{plan.n} image(s) in {seconds:.2f} s: {1000 * seconds / plan.n:.0f} ms "
                  f"per image ({plan.precision}, batch {plan.batch_size})")  # fmt: skip
        return gallery, timing, command_line(model, plan)

    # the images of an hour ago leave the server's cache: a page left running does not fill /tmp
    with gr.Blocks(
        title="spherear demo", analytics_enabled=False, delete_cache=(600, 3600)
    ) as page:
        gr.Markdown(f"### spherear demo\n{model.loaded.description}")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                picked = gr.Dropdown(choices, value=choices[0], label="class", elem_id="class",
                                     filterable=True, allow_custom_value=True)  # fmt: skip
                n = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="images", elem_id="n")
                with gr.Row():
                    seed = gr.Number(0, precision=0, label="seed", elem_id="seed", min_width=80)
                    cfg = gr.Number(defaults.cfg, label="CFG scale (1 = off)", elem_id="cfg",
                                    min_width=80)  # fmt: skip
                cfg_schedule = gr.Radio(options["cfg_schedule"], label="CFG schedule",
                                        value=defaults.cfg_schedule)  # fmt: skip
                sampler = gr.Radio(options["sampler"], value=defaults.sampler,
                                   label="sampler", elem_id="sampler")  # fmt: skip
                with gr.Row():
                    steps = gr.Number(defaults.steps, precision=0, label="steps", elem_id="steps",
                                      min_width=80)  # fmt: skip
                    temperature = gr.Number(defaults.temperature, label="temperature",
                                            elem_id="temperature", min_width=80)  # fmt: skip
                precision = gr.Radio(precisions, value=defaults.precision, label="precision",
                                     visible=len(precisions) > 1)  # fmt: skip
                button = gr.Button("Sample", variant="primary", elem_id="sample")
            with gr.Column(scale=3):
                gallery = gr.Gallery(label="samples", columns=8, format="png", elem_id="gallery",
                                     height=320, buttons=["download", "fullscreen"])  # fmt: skip
                timing = gr.Markdown(elem_id="timing")
                command = gr.Textbox(label="the spherear sample command that writes these images",
                                     elem_id="command", interactive=False,
                                     buttons=["copy"])  # fmt: skip
        inputs = [picked, n, seed, cfg, cfg_schedule, sampler, steps, temperature, precision]
        button.click(run, inputs, [gallery, timing, command], api_name="sample")
    return page.queue(default_concurrency_limit=1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def serve(model: Model, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve the page on ``host``:``port`` until interrupted."""
    page = build_page(model)
    if not is_loopback(host):
        say(f"warning: --host {host} is not a loopback address: whoever reaches this machine "
            "on that address can use the page (and its CPU or GPU)")  # fmt: skip
    say(f"serving {model.loaded.description} at http://{host}:{port} (Ctrl-C stops it)")
    # Gradio closes its server on KeyboardInterrupt; a process started as a script's background
    # job inherits SIGINT ignored, and SIGTERM would end it without closing
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    try:
        page.launch(server_name=host, server_port=port, quiet=True, show_error=True)
    except KeyboardInterrupt:  # before Gradio's own wait, which closes the server itself
        page.close()
