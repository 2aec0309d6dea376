"""Other checkpoints inside one job: A1111's refiner (sampling goes on with another checkpoint from a point of the
pass on) and hires fix's own checkpoint. Both need a checkpoint that shares the first one's latent space."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from webui.core.errors import InvalidField

REFINER_PASSES = ("first pass", "second pass", "both passes")   # A1111's setting hires_fix_refiner_pass
NO_CHECKPOINT = ("", "none", "use same checkpoint")


def chosen(name: str | None) -> str | None:
    """The checkpoint a refiner_checkpoint / hr_checkpoint_name field names; None for "None", "Use same
    checkpoint" or empty (A1111's values for "off")."""
    if name is None or str(name).strip().lower() in NO_CHECKPOINT:
        return None
    return str(name)


@dataclass
class ModelSwitch:
    """Where the sampling loop hands over to another UNet and conditioning, and how it gets them.

    ``at`` is the fraction of the pass done when the switch happens (A1111's "Switch at"); as A1111 by default, the
    fraction is read from the timestep ((999 - t) / 1000, so a partial pass of img2img or hires fix switches at
    the same noise level as a full one), or from the step count with ``by_steps``. ``at`` None switches at once.
    ``load()`` gives (unet, conditioning per step)."""
    at: float | None
    by_steps: bool
    load: Callable[[], tuple]

    def due(self, i: int, t, steps: int) -> bool:
        if self.at is None:
            return True
        done = i / steps if self.by_steps else (999 - round(float(t))) / 1000
        return done >= self.at


def refiner_passes(setting: str, hires: bool) -> tuple[bool, bool]:
    """(in the first pass, in hires fix's second pass): where a refiner runs. Without hires fix it runs in the only
    pass; with it, where the setting hires_fix_refiner_pass says (A1111's default: the second pass)."""
    if not hires:
        return True, False
    setting = setting if setting in REFINER_PASSES else "second pass"
    return setting != "second pass", setting != "first pass"


def check_compatible(base, other, field: str) -> None:
    """A second checkpoint must read the first one's latents: same latent space (SD1.x and SD2.x share one,
    SDXL has its own) and the same UNet input (an inpainting checkpoint takes mask channels)."""
    def space(model) -> str:
        return "sdxl" if model.is_sdxl else "sd"
    if space(base) != space(other):
        raise InvalidField(field, f"{other.info.title} ({other.family}) cannot continue from {base.info.title} "
                                  f"({base.family}): their latent spaces differ")
    if bool(base.inpainting) != bool(other.inpainting):
        kind = "an inpainting" if other.inpainting else "a plain"
        raise InvalidField(field, f"{other.info.title} is {kind} checkpoint and {base.info.title} is not: the UNet "
                                  f"inputs differ")


@dataclass
class JobModel:
    """A checkpoint set up for a job: its prompt encoder (its own text encoder, embeddings and clip skip)."""
    model: object
    encoder: object


class OtherModels:
    """The checkpoints a job uses besides its own (refiner, hires checkpoint): each loaded and set up once per job
    (the job's VAE choice, LoRAs and tiling entered on ``stack``), kept in the model cache while the job runs."""

    def __init__(self, engine, stack, base, opts: dict, networks, req):
        self.engine, self.stack, self.base = engine, stack, base
        self.opts, self.networks, self.req = opts, networks, req
        self.loaded: dict[str, JobModel] = {}

    def _keep(self) -> tuple[str, ...]:
        return (self.base.info.name, *self.loaded)

    def get(self, name: str, field: str) -> JobModel | None:
        """The set-up checkpoint ``name`` names; None when it is the job's own (no switch, as in A1111)."""
        from webui.engine.conditioning import PromptEncoder
        info = self.engine.models.find(name)
        if info.name == self.base.info.name:
            return None
        if info.name not in self.loaded:
            model = self.engine.models.get(info.name, keep=self._keep())
            check_compatible(self.base, model, field)
            _, vae = self.engine.models.vae_for(model, self.opts)
            self.engine.enter_model(self.stack, model, vae, self.networks, self.req)
            embeddings, _ = self.engine.models.embeddings(model)
            encoder = PromptEncoder(model.pipe, model.family, int(self.opts.get("CLIP_stop_at_last_layers", 1)),
                                    str(self.opts.get("emphasis", "Original")), embeddings)
            self.loaded[info.name] = JobModel(model, encoder)
        return self.loaded[info.name]

    def close(self) -> None:
        """After the job: its own checkpoint is the current one again, and the cache back within its limit."""
        if self.loaded:
            self.engine.models.get(self.base.info.name)
            self.engine.models.trim()

    def unet(self, model, res):
        """``model``'s UNet for sampling, with the model on the run device (another checkpoint of the job may have
        taken its place there on a GPU)."""
        if self.loaded:
            self.engine.models.get(model.info.name, keep=self._keep())
        return self.engine.sampling_unet(model, self.opts, self.networks, res, self.req)

    def switch(self, name: str, res, state: dict, conditioning_for: Callable) -> ModelSwitch | None:
        """The refiner's switch for one pass: at req.refiner_switch_at, sampling goes on with the refiner's UNet and
        its encoding of the pass's prompts (``conditioning_for(encoder)``). ``state["model"]``: the checkpoint the pass
        runs with; it becomes the refiner at the switch (the one whose VAE decodes). The infotext keys are A1111's,
        written only when a switch happens."""
        by_steps = bool(self.opts.get("refiner_switch_by_sample_steps"))

        def load():
            jm = self.get(name, "refiner_checkpoint")
            res.switch_params["Refiner"] = jm.model.info.short_title
            res.switch_params["Refiner switch at"] = self.req.refiner_switch_at
            if by_steps:
                res.switch_params["Refiner switch by sampling steps"] = True
            if res.hires is not None and self.opts.get("hires_fix_refiner_pass") != "second pass":
                res.switch_params["Hires refiner"] = self.opts.get("hires_fix_refiner_pass")
            state["model"] = jm.model
            return self.unet(jm.model, res), conditioning_for(jm.encoder)

        if self.engine.models.find(name).name == state["model"].info.name:   # the pass's own: no switch
            return None
        return ModelSwitch(self.req.refiner_switch_at, by_steps, load)
