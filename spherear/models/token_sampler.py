"""How one token is drawn at sampling time: guidance, the head's sampler, the sphere.

``SphereAR.sample`` hands a ``TokenSampler`` to its KV-cached decoding loop, which calls it
once per token with the trunk's conditions for that token (the class rows, then with
guidance the null-class rows). The head runs many times per token, so everything that does
not change between its calls is computed once: the embedding of each solver time once per
sampling call (every row and token at a given step shares it), and per token the
projection of the condition and the adaLN modulations of all of the token's solver times,
in one matrix product (at small batch each step would otherwise re-read those weights,
about a quarter of the head's). With ``compile``, the guided head step goes through
``torch.compile`` (on a GPU in "reduce-overhead" mode, i.e. CUDA graphs); where that fails,
one warning says so and sampling goes on eagerly.

Where the token goes back onto the sphere (``normalise``): ``after_cfg``, the paper's, guides
the velocities at every solver step and normalises the token it ends at; ``before_cfg``
runs the head unguided for the class rows and the null-class rows from the same noise,
normalises both tokens and guides them, c_u + scale (c_c - c_u), off the sphere; ``none``
feeds back the guided token as it comes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from spherear.config import SampleConfig
from spherear.models.diffusion_head import DiffusionHead
from spherear.models.flow import run_sampler, sampler_times, token_steps
from spherear.models.token_space import to_sphere

Generators = torch.Generator | Sequence[torch.Generator] | None
# torch.compile's mode for the head step by device type; "reduce-overhead" captures CUDA graphs
COMPILE_MODES: dict[str, str | None] = {"cuda": "reduce-overhead", "cpu": None}
# inductor's options where no mode is set: on a CPU, freezing packs the head's weights for
# oneDNN once (they are constants while sampling) instead of at every call
COMPILE_OPTIONS: dict[str, dict] = {"cpu": {"freezing": True}}
# above this size a token's table of modulations is not kept: each step computes its own
TABLE_BYTES = 1 << 30


NORMALISATIONS = ("after_cfg", "before_cfg", "none")


def cfg_scales(guidance: float, schedule: str, num_tokens: int) -> list[float]:
    """Guidance scale per token: constant, or rising linearly from 1 towards ``guidance``."""
    if schedule == "constant":
        return [guidance] * num_tokens
    if schedule == "linear":
        return [1 + (guidance - 1) * i / num_tokens for i in range(num_tokens)]
    raise ValueError(f"unknown CFG schedule '{schedule}'; use 'linear' or 'constant'")


class GuidedHead(nn.Module):
    """The head's velocity for rows ``x`` given the adaLN ``modulations`` of their step. With
    ``guided``, the modulations hold the class rows and then the null-class rows: the head
    runs on ``x`` twice and the velocities combine as v_uncond + scale (v_cond - v_uncond).
    Unguided, ``x`` has a row for each row of the modulations (with guidance before
    normalisation: the class rows' and the null-class rows' own flows)."""

    def __init__(self, head: DiffusionHead, guided: bool):
        super().__init__()
        self.head, self.guided = head, guided

    def forward(self, x, modulations: list[torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        if not self.guided:
            return self.head.run_modulated(x, modulations).float()
        both = self.head.run_modulated(torch.cat([x, x]), modulations).float()
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)


class TokenSampler:
    """``sampler(i, z)`` draws token i for conditions ``z`` and returns what to feed back."""

    def __init__(
        self,
        head: DiffusionHead,
        batch: int,
        num_tokens: int,
        settings: SampleConfig,
        generator: Generators,
        device: torch.device,
        normalise: str = "after_cfg",
    ):
        if normalise not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation '{normalise}'; use one of {NORMALISATIONS}")
        self.head, self.settings, self.generator = head, settings, generator
        self.guided = settings.cfg != 1.0
        self.normalise = normalise
        # guidance before normalisation needs each half's own flow: the head step is unguided
        self.paired = self.guided and normalise == "before_cfg"
        self.scales = cfg_scales(settings.cfg, settings.cfg_schedule, num_tokens)
        self.steps = token_steps(settings.steps, settings.steps_last, num_tokens)
        self.tokens = torch.empty(batch, num_tokens, head.input_proj.in_features, device=device)
        self.step = self.eager = GuidedHead(head, self.guided and not self.paired)
        if settings.compile:
            mode = COMPILE_MODES.get(device.type)
            options = None if mode else COMPILE_OPTIONS.get(device.type)
            self.step = torch.compile(self.eager, dynamic=False, mode=mode, options=options)
        # per step count: each solver time's row, and the embeddings of all of them
        self.solver_times: dict[int, tuple[dict[float, int], torch.Tensor]] = {}
        self.modulation_columns = sum(
            layer.out_features
            for layer in [*head.ada_ln_blocks, head.final_layer.ada_ln_modulation]
        )

    def embedded_times(self, steps: int) -> tuple[dict[float, int], torch.Tensor]:
        """The sampler's times with ``steps`` steps (time -> row) and their embeddings."""
        if steps not in self.solver_times:
            times = sampler_times(self.settings.sampler, steps)
            embedded = self.head.time_embed(torch.tensor(times, device=self.tokens.device))
            self.solver_times[steps] = ({t: k for k, t in enumerate(times)}, embedded)
        return self.solver_times[steps]

    def modulation_table(self, steps: int, z_emb: torch.Tensor):
        """``table(t)``: the head's modulations at solver time t for conditions ``z_emb``."""
        row, t_emb = self.embedded_times(steps)
        if len(row) * len(z_emb) * self.modulation_columns * z_emb.element_size() > TABLE_BYTES:
            return lambda t: self.head.modulations(t_emb[row[t]], z_emb)
        table = self.head.modulations(t_emb[:, None], z_emb[None])
        return lambda t: [m[row[t]] for m in table]

    def velocity(self, x, t: float, *, table, scale) -> torch.Tensor:
        args = (x, table(t), scale)
        if self.step is self.eager:
            return self.eager(*args)
        try:
            # CUDA graphs reuse their output buffers: keep this step's result
            return self.step(*args).clone()
        except Exception as e:  # any compiler failure: fall back, and say so once
            warnings.warn(
                f"torch.compile of the head step failed ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); sampling without it", stacklevel=2
            )  # fmt: skip
            self.step = self.eager
            return self.eager(*args)

    def __call__(self, i: int, z: torch.Tensor) -> torch.Tensor:
        sampler, steps = self.settings.sampler, self.steps[i]
        table = self.modulation_table(steps, self.head.cond_embed(z))
        scale = torch.tensor(self.scales[i], device=z.device)
        velocity = functools.partial(self.velocity, table=table, scale=scale)
        noise, eps = self.draw_noise(steps if sampler == "sde" else 0)
        single = self.generator if isinstance(self.generator, torch.Generator) else None
        if self.paired:  # both halves from the same noise, as a guided step would see it
            noise = noise.repeat(2, 1)
            if sampler == "sde" and eps is None:  # drawn step by step, as the SDE would
                half = (noise.shape[0] // 2, noise.shape[1])
                draws = [torch.randn(half, device=noise.device, generator=single)
                         for _ in range(steps)]  # fmt: skip
                eps = torch.stack(draws).repeat(1, 2, 1)
            elif eps is not None:
                eps = eps.repeat(1, 2, 1)
        x = run_sampler(sampler, velocity, noise, steps, single, eps, self.settings.temperature)
        self.tokens[:, i] = self.finish(x, scale)
        return self.tokens[:, i].repeat(2, 1) if self.guided else self.tokens[:, i]

    def finish(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The token fed back, from what the sampler ended at."""
        if self.paired:
            cond, uncond = to_sphere(x).chunk(2)
            return uncond + scale * (cond - uncond)
        # after guidance: it changes the norm, not the sphere
        return to_sphere(x) if self.normalise == "after_cfg" else x.float()

    def draw_noise(self, steps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A token's starting noise (rows, latent_dim) and, with per-row generators, the
        normals of its ``steps`` SDE steps (steps, rows, latent_dim), drawn row by row so
        that a row's draws do not depend on the rows beside it."""
        rows, dim, device = self.tokens.shape[0], self.tokens.shape[2], self.tokens.device
        if self.generator is None or isinstance(self.generator, torch.Generator):
            return torch.randn((rows, dim), device=device, generator=self.generator), None
        draws = torch.stack(
            [torch.randn((1 + steps, dim), device=device, generator=g) for g in self.generator], 1
        )
        return draws[0], draws[1:]
