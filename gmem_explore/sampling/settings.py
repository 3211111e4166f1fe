"""SamplerSettings: what a sampler run is asked to do (method, steps, guidance and its interval; the time grid
follows from method and steps), checked once, when made. Each checkpoint family's recipe lives here, in RECIPES.

    settings = SamplerSettings("heun", 8)                  # ValueError with what to do when a value is wrong
    settings.replace(steps=20)                             # a checked copy with another field
    SamplerSettings.from_config({"method": "sde"})         # a checkpoint's "sampler" section, gaps from the recipe

Functions that take a SamplerSettings trust it: the check ran when it was made (validate at the boundaries).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace as dataclass_replace

import torch

from .grids import check_guidance, check_method_and_steps, check_time_shift, evaluations, time_grid


@dataclass(frozen=True)
class SamplerSettings:
    method: str
    steps: int
    guidance: float = 1.0  # classifier-free guidance with a zero snippet; 1 = none
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # guided only at times t in [low, high]
    time_shift: float = 1.0  # the ODE grid's shift (grids.py); 1 = none

    def __post_init__(self):
        check_method_and_steps(self.method, self.steps)
        object.__setattr__(self, "time_shift", check_time_shift(self.time_shift, self.method))
        guidance, interval = check_guidance(self.guidance, self.guidance_interval)
        object.__setattr__(self, "steps", int(self.steps))  # a NumPy integer passes the check; keep a plain int
        object.__setattr__(self, "guidance", guidance)
        object.__setattr__(self, "guidance_interval", interval)

    def replace(self, **changes) -> "SamplerSettings":
        """A checked copy with some fields changed."""
        return dataclass_replace(self, **changes)

    def time_grid(self) -> torch.Tensor:
        """The float64 times visited, from 1 down to 0 (steps + 1 of them)."""
        return time_grid(self.method, self.steps, self.time_shift)

    @property
    def evaluations(self) -> int:
        """Network evaluations per image (without guidance)."""
        return evaluations(self.method, self.steps)

    def to_config(self) -> dict:
        """The checkpoint config's "sampler" section: method and steps, guidance and its interval only where they
        differ from none (so that configs written before they were recorded stay byte for byte the same)."""
        out = {"method": self.method, "steps": self.steps}
        if self.guidance != 1.0:
            out["guidance"] = self.guidance
        if self.guidance_interval != (0.0, 1.0):
            out["guidance_interval"] = list(self.guidance_interval)
        if self.time_shift != 1.0:
            out["time_shift"] = self.time_shift
        return out

    @classmethod
    def from_config(cls, section: dict | None, recipe: str = "gmem-v1") -> "SamplerSettings":
        """A checkpoint config's "sampler" section; what it leaves out comes from RECIPES[recipe]."""
        base = RECIPES[recipe]
        if section is None:
            return base
        if isinstance(section, SamplerSettings):
            return section
        if not isinstance(section, dict):
            raise ValueError(f"the sampler settings must be an object such as {{'method': 'sde', 'steps': 250}}; "
                             f"got {section!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown sampler settings {unknown}; the known ones are {sorted(known)}")
        return dataclass_replace(base, **section)


# The recipes the checkpoints were made with; a checkpoint's own "sampler" section overrides them (the embedded
# emoji-32's config.json says heun, 8 steps).
RECIPES = {
    # GMem v1 as released (samplers/samplers.py): 250-step Euler-Maruyama, no guidance
    "gmem-v1": SamplerSettings("sde", 250),
    # checkpoints exported by our trainer: a short ODE, enough for small models' previews
    "gmem-explore-trained": SamplerSettings("euler", 20),
    # GMem v2 (LINs-lab/GMem configs): gmem_sde_xl.yaml, stochastic Heun on 50 time points (99 evaluations)
    "gmem-v2": SamplerSettings("sde-heun", 50),
    # gmem_sde_xl_cfg.yaml: guidance 7.75 with a zero snippet where upstream's t >= 0.89, i.e. t <= 0.11 here
    "gmem-v2-cfg": SamplerSettings("sde-heun", 50, guidance=7.75, guidance_interval=(0.0, 0.11)),
    # gmem_ode_xl.yaml: Euler on 50 shifted time points (49 steps), timestep_shift 0.3
    "gmem-v2-ode": SamplerSettings("euler", 49, time_shift=0.3),
}
