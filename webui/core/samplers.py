"""Sampler and schedule-type names as A1111 users know them (pure data; the engine maps them to diffusers)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplerDef:
    name: str
    aliases: tuple[str, ...] = ()
    default_schedule: str = "automatic"  # what "Automatic" means for this sampler
    options: dict = field(default_factory=dict)   # A1111's other option flags, as /samplers lists them
    uses_ensd: bool = False   # A1111's "Eta noise seed delta" moves this sampler's noise over the steps

    def api_options(self) -> dict:
        """The "options" of GET /sdapi/v1/samplers, as A1111 1.10 gives them."""
        out: dict = {} if self.default_schedule == "automatic" else {"scheduler": self.default_schedule}
        if self.uses_ensd:
            out["uses_ensd"] = True
        return {**out, **self.options}


# A1111 v1.10 sampler names the studio runs (diffusers' schedulers and webui/engine/k_samplers.py), with that
# sampler's own default schedule. Not offered: DPM adaptive (its step count is not fixed).
SAMPLERS: tuple[SamplerDef, ...] = (
    SamplerDef("DPM++ 2M", ("k_dpmpp_2m",), "karras"),
    SamplerDef("DPM++ SDE", ("k_dpmpp_sde",), "karras", {"second_order": True, "brownian_noise": True}),
    SamplerDef("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "exponential", {"brownian_noise": True}),
    SamplerDef("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "exponential",
               {"brownian_noise": True, "solver_type": "heun"}),
    SamplerDef("DPM++ 2S a", ("k_dpmpp_2s_a",), "karras", {"second_order": True}, uses_ensd=True),
    SamplerDef("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "exponential",
               {"discard_next_to_last_sigma": True, "brownian_noise": True}),
    SamplerDef("Euler a", ("k_euler_a", "k_euler_ancestral"), uses_ensd=True),
    SamplerDef("Euler", ("k_euler",)),
    SamplerDef("LMS", ("k_lms",)),
    SamplerDef("Heun", ("k_heun",), options={"second_order": True}),
    SamplerDef("DPM2", ("k_dpm_2",), "karras", {"discard_next_to_last_sigma": True, "second_order": True}),
    SamplerDef("DPM2 a", ("k_dpm_2_a",), "karras", {"discard_next_to_last_sigma": True, "second_order": True},
               uses_ensd=True),
    SamplerDef("DPM fast", ("k_dpm_fast",), uses_ensd=True),
    SamplerDef("Restart", ("restart",), "karras", {"second_order": True}),
    SamplerDef("DDIM", ("ddim",)),
    SamplerDef("DDIM CFG++", ("ddim_cfgpp",)),
    SamplerDef("PLMS", ("plms",)),
    SamplerDef("UniPC", ("unipc",)),
    SamplerDef("LCM", ("k_lcm",)),
)

# (name, label) as GET /sdapi/v1/schedulers reports them.
SCHEDULES: tuple[tuple[str, str], ...] = (
    ("automatic", "Automatic"),
    ("uniform", "Uniform"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("beta", "Beta"),
)


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_labels() -> list[str]:
    return [label for _, label in SCHEDULES]


def find_sampler(name: str) -> SamplerDef | None:
    low = name.strip().lower()
    for s in SAMPLERS:
        if low == s.name.lower() or low in s.aliases:
            return s
    return None


def find_schedule(name: str) -> str | None:
    """Schedule name ("karras") from a name or label ("Karras"); None when unknown."""
    low = name.strip().lower()
    for key, label in SCHEDULES:
        if low in (key, label.lower()):
            return key
    return None


def split_sampler(name: str, schedule: str | None) -> tuple[str, str]:
    """("DPM++ 2M Karras", None) -> ("DPM++ 2M", "karras"); raises ValueError naming the valid choices."""
    sched = find_schedule(schedule) if schedule else "automatic"
    if sched is None:
        raise ValueError(f"unknown schedule type {schedule!r}; valid: {', '.join(schedule_labels())}")
    s = find_sampler(name)
    if s is None:
        for key, label in SCHEDULES[1:]:
            if name.lower().endswith(" " + label.lower()):
                s = find_sampler(name[: -len(label) - 1])
                if s is not None:
                    if sched == "automatic":
                        sched = key
                    break
    if s is None:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(sampler_names())}")
    return s.name, sched


def schedule_label(key: str) -> str:
    return dict(SCHEDULES).get(key, key)
