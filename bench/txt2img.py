"""txt2img speed: the studio's engine vs a plain diffusers StableDiffusionPipeline, same weights, settings
and seed, in one process. Prints seconds per image, it/s and the ratio studio/diffusers; with --compile also the
studio with the setting torch_compile on (its one-off compile time, then its steady speed).

    python bench/txt2img.py [--ckpt PATH] [--steps 20] [--size 128] [--runs 5] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None, help="checkpoint file (default: the bundled model, else a tiny SD1)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--previews", action="store_true", help="keep the studio's live previews on")
    ap.add_argument("--compile", action="store_true", help="also measure the studio with torch_compile on")
    args = ap.parse_args()

    import torch
    from diffusers import EulerAncestralDiscreteScheduler
    from diffusers.utils import logging as diffusers_logging

    from app import build_engine
    from webui.config.flags import parse_args
    from webui.core.request import GenerationRequest

    data = Path(tempfile.mkdtemp(prefix="bench-"))
    ckpt_dir = data / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    if args.ckpt:
        (ckpt_dir / Path(args.ckpt).name).symlink_to(Path(args.ckpt).resolve())
        name = Path(args.ckpt).name
    else:
        bundled = sorted((ROOT / "models" / "Stable-diffusion").glob("shapes-*.safetensors"))
        if bundled:
            name = bundled[0].name
        else:
            from checkpoint_factory import make_tiny_checkpoint
            make_tiny_checkpoint(ckpt_dir / "tiny-sd1.safetensors", "sd1")
            name = "tiny-sd1.safetensors"
    engine = build_engine(parse_args(["--data-dir", str(data), "--device", args.device]))
    if not args.previews:
        engine.settings.update({"live_previews_enable": False}, save=False)
    # All torch work runs on the engine's one worker thread, as in the studio: each thread that runs torch ops
    # gets its own OpenMP team, and with more team threads than cores libgomp all but stops spinning between
    # parallel regions, which made every run here (studio and diffusers alike) about twice as slow on 2 cores.
    model = engine.jobs.run(lambda job: engine.models.get(name), "bench: load")
    device = model.placement.device
    # plain diffusers as a user sets it up: the same weights, in the layout they load in, and Euler a
    diffusers_logging.set_verbosity_error()   # the notice on building a pipeline without a safety checker
    pipe = engine.jobs.run(lambda job: type(model.pipe)(**{
        **model.pipe.components,
        "unet": copy.deepcopy(model.pipe.unet).to(memory_format=torch.contiguous_format),
        "vae": copy.deepcopy(model.pipe.vae).to(memory_format=torch.contiguous_format),
        "scheduler": EulerAncestralDiscreteScheduler.from_config(model.pipe.scheduler.config)}), "bench: copy")
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = "a large red circle on the left, blue background", "green"
    req = GenerationRequest(prompt=prompt, negative_prompt=negative, steps=args.steps, width=args.size,
                            height=args.size, cfg_scale=args.cfg, sampler_name="Euler a", seed=1,
                            override_settings={"sd_model_checkpoint": name})

    def studio():
        engine.txt2img(req, save=False)

    compiled_req = dataclasses.replace(req, override_settings={**req.override_settings, "torch_compile": True})

    def studio_compiled():
        engine.txt2img(compiled_req, save=False)

    def diffusers_plain():
        engine.jobs.run(lambda job: pipe(prompt, negative_prompt=negative, num_inference_steps=args.steps,
                                         guidance_scale=args.cfg, width=args.size, height=args.size,
                                         generator=torch.Generator("cpu").manual_seed(1)), "bench: diffusers")

    def timed(fn) -> list[float]:
        fn()  # warm-up
        out = []
        for _ in range(args.runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return out

    first_compiled = None
    if args.compile:
        t = time.perf_counter()
        studio_compiled()
        first_compiled = time.perf_counter() - t
    # interleave to share any drift in machine load fairly
    s_times, d_times, c_times = [], [], []
    for _ in range(2):
        s_times += timed(studio)
        d_times += timed(diffusers_plain)
        if args.compile:
            c_times += timed(studio_compiled)
    s, d = statistics.median(s_times), statistics.median(d_times)
    print(f"model: {model.info.title} ({model.family}), {args.size}x{args.size}, {args.steps} steps, "
          f"Euler a, CFG {args.cfg}, device {device}, dtype {model.placement.dtype}, threads "
          f"{torch.get_num_threads()}")
    print(f"studio:    {s:.3f} s/image  {args.steps / s:.1f} it/s   (runs: {', '.join(f'{x:.3f}' for x in s_times)})")
    print(f"diffusers: {d:.3f} s/image  {args.steps / d:.1f} it/s   (runs: {', '.join(f'{x:.3f}' for x in d_times)})")
    print(f"ratio studio/diffusers: {s / d:.3f}")
    if args.compile:
        c = statistics.median(c_times)
        print(f"studio, torch_compile on: {c:.3f} s/image  {args.steps / c:.1f} it/s   (first image, compiling: "
              f"{first_compiled:.1f} s; runs: {', '.join(f'{x:.3f}' for x in c_times)})")
        print(f"ratio compiled/diffusers: {c / d:.3f}   compiled/studio: {c / s:.3f}")
    engine.jobs.stop()


if __name__ == "__main__":
    main()
