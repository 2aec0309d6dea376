"""A1111's samplers that diffusers has no scheduler for: DPM++ 2S a, DPM fast, Restart (and DDIM CFG++, below).

Each is a diffusers scheduler, so the engine's loop drives it as any other (scale_model_input, the UNet, step). The
method itself is a generator that yields each point (latents, sigma) it needs the model's denoised prediction at and
is sent back (the latents the model saw, the prediction), so it reads as the published method does. Which sigmas it
asks for does not depend on the predictions, so running it once with no model, when the timesteps are set, plans the
model evaluations: ``timesteps`` holds one entry per evaluation, and ``sigmas`` the noise level of each.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

# yields (latents, sigma) to be evaluated at, is sent (latents seen, denoised), returns the final latents
Method = Generator[tuple[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[torch.Tensor], torch.Tensor]


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step goes down to sigma_down, fresh noise of sigma_up brings the
    latents back to sigma_next; eta 0 is the plain ODE step."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2))
    return math.sqrt(sigma_next ** 2 - up ** 2), up


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """n noise levels from sigma_max down to sigma_min, spaced as Karras et al. (2022) do (no trailing zero)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / max(n - 1, 1) * (lo - hi)) ** rho for i in range(n)]


class PlannedScheduler(EulerDiscreteScheduler):
    """Base: the step schedule is Euler's (so every schedule type and the schedule settings apply), the model
    evaluations are the method's. Subclasses write ``method``."""

    order = 1
    ancestral = False  # whether the method adds fresh noise by eta
    eta = 1.0          # for the ancestral methods: A1111's "Eta for ancestral samplers" or the request's eta
    s_noise = 1.0

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        raise NotImplementedError

    def plan_sigmas(self, base: list[float]) -> list[float]:
        """The schedule the method runs over for a whole pass (``base``: the step schedule, ending at 0)."""
        return base

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs) -> None:
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self._base = [float(s) for s in self.sigmas]
        self._plan(self.plan_sigmas(self._base), self.timesteps.device)

    def tail_timesteps(self, run: int) -> torch.Tensor:
        """The evaluations of the last ``run`` steps of the schedule set (img2img, a hires pass): as A1111 gives
        these samplers the tail of the schedule to run over."""
        steps = len(self._base) - 1
        self._plan(self._base[steps - min(run, steps):], self.timesteps.device)
        return self.timesteps

    def _plan(self, sigmas: list[float], device) -> None:
        self._sigmas = sigmas
        planned = []
        run = self.method(torch.zeros(1, dtype=torch.float64), sigmas, torch.zeros_like)
        try:
            x, sigma = next(run)
            while True:
                planned.append(sigma)
                x, sigma = run.send((x, torch.zeros_like(x)))
        except StopIteration:
            pass
        log_sigmas = np.log(np.array(((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5))
        timesteps = np.array([self._sigma_to_t(np.array(s), log_sigmas) for s in planned], dtype=np.float32)
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self.sigmas = torch.tensor(planned + [0.0], dtype=torch.float32)
        self.num_inference_steps = len(planned)
        self._run: Method | None = None
        self._generator = None
        self._step_index = None
        self._begin_index = 0   # timesteps may repeat (Restart): the position, not the value, says where we are

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        return randn_tensor(x.shape, generator=self._generator, device=x.device, dtype=x.dtype)

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        if self.config.prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma ** 2 + 1) ** 0.5) + sample / (sigma ** 2 + 1)
        return sample - sigma * model_output

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> EulerDiscreteSchedulerOutput | tuple:
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = float(self.sigmas[self.step_index])
        denoised = self._denoised(model_output, sample, sigma)
        self._generator = generator
        if self._run is None:
            self._run = self.method(sample, self._sigmas, self._noise)
            next(self._run)
        try:
            prev, _ = self._run.send((sample, denoised))
        except StopIteration as done:
            prev, self._run = done.value, None
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


class DPMPP2SAncestralScheduler(PlannedScheduler):
    """DPM++ 2S a: DPM-Solver++(2S) (Lu et al. 2022), single-step second order, with ancestral noise; its midpoint
    is halfway in log sigma to the step's sigma_down. The last step, to zero, is an Euler step."""

    ancestral = True

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x, denoised = yield x, sigma
            down, up = ancestral_step(sigma, sigma_next, self.eta)
            if down == 0:
                x = denoised
            else:
                mid = math.sqrt(sigma * down)
                _, denoised_mid = yield (mid / sigma) * x + (1 - mid / sigma) * denoised, mid
                x = (down / sigma) * x + (1 - down / sigma) * denoised_mid
            if sigma_next > 0 and up > 0:
                x = x + noise(x) * (self.s_noise * up)
        return x


class EulerAncestralEtaScheduler(PlannedScheduler):
    """Euler a with an eta other than 1 (A1111's "Eta for ancestral samplers"; diffusers' Euler a has no eta, so
    the studio uses this one only then): an Euler step down to sigma_down, then fresh noise of sigma_up."""

    ancestral = True

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x, denoised = yield x, sigma
            down, up = ancestral_step(sigma, sigma_next, self.eta)
            x = x + (x - denoised) / sigma * (down - sigma)
            if sigma_next > 0 and up > 0:
                x = x + noise(x) * (self.s_noise * up)
        return x


class DPM2AncestralEtaScheduler(PlannedScheduler):
    """DPM2 a with an eta other than 1 (diffusers' has none, so the studio uses this one only then): a second-order
    step down to sigma_down through a midpoint halfway in log sigma, then fresh noise of sigma_up. As A1111's DPM2
    samplers, the schedule is made for one step more and drops its next-to-last sigma."""

    ancestral = True

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      **kwargs) -> None:
        EulerDiscreteScheduler.set_timesteps(self, (num_inference_steps or 1) + 1, device=device, **kwargs)
        sigmas = [float(s) for s in self.sigmas]
        self._base = sigmas[:-2] + sigmas[-1:]
        self._plan(self._base, self.timesteps.device)

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x, denoised = yield x, sigma
            down, up = ancestral_step(sigma, sigma_next, self.eta)
            d = (x - denoised) / sigma
            if down == 0:
                x = x + d * (down - sigma)
            else:
                mid = math.exp(0.5 * (math.log(sigma) + math.log(down)))
                x_mid, denoised_mid = yield x + d * (mid - sigma), mid
                x = x + (x_mid - denoised_mid) / mid * (down - sigma)
            if sigma_next > 0 and up > 0:
                x = x + noise(x) * (self.s_noise * up)
        return x


class DPMFastScheduler(PlannedScheduler):
    """DPM fast: DPM-Solver (Lu et al. 2022) with as many model evaluations as steps, on steps uniform in log sigma
    from the highest noise level to the lowest (orders 3, 3, ..., then 2 and 1 to use the rest), with ancestral
    noise (eta). It ends at the lowest noise level, not at zero. Over a whole pass it runs from the model's own
    highest to lowest sigma (the schedule type does not matter), over a tail from that tail's first to last."""

    ancestral = True

    def _model_sigmas(self) -> tuple[float, float]:
        model = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        return float(model[-1]), float(model[0])

    def plan_sigmas(self, base: list[float]) -> list[float]:
        high, low = self._model_sigmas()
        return [high] + base[1:-2] + [low, 0.0] if len(base) > 2 else [high, 0.0]

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        n = len(sigmas) - 1
        # one step: from its sigma to the model's lowest
        low = sigmas[-2] if n > 1 else self._model_sigmas()[1]
        t_start, t_end = -math.log(sigmas[0]), -math.log(low)
        m = n // 3 + 1
        ts = [t_start + (t_end - t_start) * i / m for i in range(m + 1)]
        orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]

        def sig(t: float) -> float:
            return math.exp(-t)

        for i, order in enumerate(orders):
            t, t_next = ts[i], ts[i + 1]
            down, _ = ancestral_step(sig(t), sig(t_next), self.eta)
            t_to = min(t_end, -math.log(down)) if self.eta else t_next
            up = math.sqrt(max(sig(t_next) ** 2 - sig(t_to) ** 2, 0.0))
            x, denoised = yield x, sig(t)
            eps = (x - denoised) / sig(t)
            h = t_to - t
            if order == 1:
                x = x - sig(t_to) * math.expm1(h) * eps
            elif order == 2:
                s1 = t + h / 2
                u1, d1 = yield x - sig(s1) * math.expm1(h / 2) * eps, sig(s1)
                eps1 = (u1 - d1) / sig(s1)
                x = x - sig(t_to) * math.expm1(h) * eps - sig(t_to) * math.expm1(h) * (eps1 - eps)
            else:
                r1, r2 = 1 / 3, 2 / 3
                s1, s2 = t + r1 * h, t + r2 * h
                u1, d1 = yield x - sig(s1) * math.expm1(r1 * h) * eps, sig(s1)
                eps1 = (u1 - d1) / sig(s1)
                u2 = (x - sig(s2) * math.expm1(r2 * h) * eps
                      - sig(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps1 - eps))
                u2, d2 = yield u2, sig(s2)
                eps2 = (u2 - d2) / sig(s2)
                x = x - sig(t_to) * math.expm1(h) * eps - sig(t_to) / r2 * (math.expm1(h) / h - 1) * (eps2 - eps)
            if up > 0:
                x = x + noise(x) * (self.s_noise * up)
        return x


class RestartScheduler(PlannedScheduler):
    """Restart (Xu et al. 2023), as A1111 runs it: Heun steps; from 20 steps on, part of the steps go to going back
    up from about sigma 0.1 to about sigma 2 with fresh noise and down again (9 steps once; from 36 steps, steps / 4
    steps twice), on a Karras schedule between the step schedule's extremes."""

    def method(self, x: torch.Tensor, sigmas: list[float], noise: Noise) -> Method:
        pairs = list(zip(sigmas[:-1], sigmas[1:]))
        steps = len(pairs)
        if steps >= 20:
            restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras_sigmas(steps - restart_steps * times, sigmas[-2], sigmas[0]) + [0.0]
            low = min(range(len(sigmas)), key=lambda i: abs(sigmas[i] - 0.1))
            high = min(range(len(sigmas)), key=lambda i: abs(sigmas[i] - 2.0))
            pairs = []
            for i in range(len(sigmas) - 1):
                pairs.append((sigmas[i], sigmas[i + 1]))
                if i + 1 == low and high < low:
                    back = karras_sigmas(restart_steps + 1, sigmas[low], sigmas[high])
                    pairs.extend(list(zip(back[:-1], back[1:])) * times)
        last = None
        for sigma, sigma_next in pairs:
            if last is not None and last < sigma:
                x = x + noise(x) * (self.s_noise * math.sqrt(sigma ** 2 - last ** 2))
            x, denoised = yield x, sigma
            d = (x - denoised) / sigma
            if sigma_next == 0:
                x = denoised
            else:
                x2, denoised2 = yield x + d * (sigma_next - sigma), sigma_next
                x = x + (d + (x2 - denoised2) / sigma_next) / 2 * (sigma_next - sigma)
            last = sigma_next
        return x


class DDIMCFGPlusPlusScheduler(DDIMScheduler):
    """DDIM CFG++ (Chung et al. 2024, "manifold-constrained classifier-free guidance"), as A1111 1.10 runs it: the
    guidance scale is the CFG scale / 12.5, the step's clean-image estimate comes from the guided noise prediction
    but it is re-noised along the unconditional one. The engine's loop reads ``cfg_scale_multiplier`` and, seeing
    ``wants_uncond``, passes that prediction as ``noise_uncond``."""

    cfg_scale_multiplier = 1 / 12.5
    wants_uncond = True

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | list[torch.Generator] | None = None,
             noise_uncond: torch.Tensor | None = None, return_dict: bool = True) -> DDIMSchedulerOutput | tuple:
        out = super().step(model_output, timestep, sample, eta=eta, generator=generator)
        if noise_uncond is not None:
            prev_t = timestep - self.config.num_train_timesteps // self.num_inference_steps
            a_t = self.alphas_cumprod[timestep]
            a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
            std = eta * self._get_variance(timestep, prev_t) ** 0.5
            eps_guided, eps_uncond = model_output, noise_uncond
            if self.config.prediction_type == "v_prediction":
                eps_guided = a_t ** 0.5 * model_output + (1 - a_t) ** 0.5 * sample
                eps_uncond = a_t ** 0.5 * noise_uncond + (1 - a_t) ** 0.5 * sample
            # the direction term along the unconditional noise instead of the guided one
            out.prev_sample = out.prev_sample + (1 - a_prev - std ** 2) ** 0.5 * (eps_uncond - eps_guided)
        if not return_dict:
            return out.prev_sample, out.pred_original_sample
        return out
