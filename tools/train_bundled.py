"""Train the studio's bundled model, "shapes-tiny", from scratch on the procedural shapes world, on a CPU.

An SD1.x-family model, small enough to train on a 2-core CPU in about 58 minutes (this project's faster machines;
2-3 times that on the slower ones) and to generate a 128x128 image in about a second on the slower ones (1.19 s,
0.90 s with torch_compile; docs/bundled-model.md has the figures): a KL autoencoder (4 latent channels, downsampling 8:
128 px -> 16x16 latents, scaling factor 0.18215), a CLIP
text encoder (the real CLIP BPE tokenizer the studio ships, vocabulary 49,408, 77 tokens, padded with
<|endoftext|>) and a UNet2DConditionModel with cross-attention (scaled-linear betas 0.00085..0.012 over 1,000 steps,
epsilon prediction), trained with caption dropout so classifier-free guidance works. Then a canny-edge ControlNet for
it.

Stages (each writes a diffusers-format folder under --work, so a later stage can be re-run alone; ``import``, not
in the default run, writes them from the shipped single files instead, to continue from those):

1. ``vae``: the autoencoder, on 64x64 crops around the shapes (it is fully convolutional), then rescaled so that
   ``latents * 0.18215`` has unit standard deviation (mean/logvar outputs of quant_conv scaled, post_quant_conv input
   weights divided: decoded images unchanged).
2. ``unet``: the text encoder and the UNet together, on a pool of encoded images with freshly worded captions.
   ``unet-more``: four more learning-rate cycles for both (--more-cycles; their loss was still falling when each
   one ended).
3. ``cfg``: a guidance-aware fine-tune of the UNet (its target: the unconditional prediction moved part of the way to
   the noise, so that CFG does not overshoot).
4. ``decoder``: the VAE's decoder alone, on whole images with the border weighted; the encoder, and so the latents
   every other stage trains on, stays as it is.
5. ``controlnet``: a ControlNetModel copied from the UNet's encoder, trained on canny maps with the rest frozen.
   ``controlnet-cfg``: its guidance fine-tune, calibrated as the UNet's ``cfg`` stage is.
6. ``export``: ONE single-file checkpoint in the A1111/CompVis layout (fp16) into models/Stable-diffusion/ and the
   ControlNet in the lllyasviel layout (``control_model.*``) into models/ControlNet/.

Everything is seeded and the step counts are fixed, so with the same ``--threads``, torch build and kind of CPU it
re-trains bit-for-bit (another CPU's kernels round differently: the files differ, the quality is alike)::

    OMP_NUM_THREADS=2 python tools/train_bundled.py   # --threads 2, the default, made the shipped files

Arguments let exploratory runs be short (``--vae-steps 200 --unet-steps 100 ...``) and print accuracies measured with
the classical checker (``--eval``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shapes_dataset as ds  # noqa: E402

MODEL_NAME = "shapes-tiny-v1"
CHECKPOINT_PATH = ROOT / "models" / "Stable-diffusion" / f"{MODEL_NAME}.safetensors"
CONTROLNET_PATH = ROOT / "models" / "ControlNet" / f"control_{MODEL_NAME}_canny.safetensors"
TOKENIZER_DIR = ROOT / "webui" / "models" / "configs" / "tokenizer"
SCALING_FACTOR = 0.18215
IMAGE_SIZE = 128

# ---- model configs (SD1 conventions for what the weights do not tell: GroupNorm 32 groups, 8 attention heads per
# UNet block, text-encoder heads = hidden // 64, quick_gelu) ----
# Why 96 channels in the VAE and at the UNet's first level: the last GroupNorm before conv_out normalises each group
# of channels over the whole image. With 32 or 64 channels (1 or 2 per group) a flat region leaves nothing but a sign
# per group, so the VAE cannot write (or encode) absolute colours and the UNet cannot move the per-channel mean of its
# prediction (the background colour) except by sign codes, which gradient descent learns very slowly (measured:
# scrambled hues after 1,000 VAE steps, text-independent backgrounds after 900 UNet steps). From 3 channels per group
# on, the normalised group keeps continuous degrees of freedom.
# Why layers_per_block 0 in the VAE: the encoder is then a patch embedding (strided convs) followed by the mid block
# at 16x16, and the decoder keeps one resnet per level; on flat-coloured shapes this loses nothing measurable and
# halves the cost of the full-resolution level, which is most of the cost of training and of encoding the pool.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[96, 96, 96, 96],
    layers_per_block=0,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=IMAGE_SIZE,
    scaling_factor=SCALING_FACTOR,
)
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=1,  # max(1, hidden // 64)
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=64,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    # no attention at the 16x16 level (its self-attention would cost more than the rest of the UNet together);
    # cross-attention at 8x8, 4x4 and in the middle block
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[96, 128, 128],
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,  # diffusers' SD1 naming: 8 heads per block
    norm_num_groups=32,
    use_linear_projection=False,
)
CONTROLNET_COND_CHANNELS = (16, 32, 64, 128)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------------------ data
def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Tokens:
    """CLIP tokenizer with a cache (the caption vocabulary is small)."""

    def __init__(self, folder: Path = TOKENIZER_DIR):
        from transformers import CLIPTokenizer

        self.tok = CLIPTokenizer.from_pretrained(str(folder))
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tok(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[c] for c in captions])


def caption_for(index: int, seed: int, epoch: int) -> str:
    """A freshly worded caption of pool image ``index`` for ``epoch`` (same image, same facts, new wording)."""
    s = ds.sample(index, seed)
    rng = np.random.default_rng([seed, index, epoch, 7])
    return ds.make_caption(rng, s.background, s.shapes)


# Facts a caption states, as class indices for the text encoder's auxiliary heads: background colour, then colour /
# shape / size / position of the first and the second shape named; the last class of each head means "not stated".
AUX_HEADS = (("background", len(ds.COLOUR_NAMES) + 1),
             ("colour1", len(ds.COLOUR_NAMES) + 1), ("shape1", len(ds.SHAPES) + 1),
             ("size1", len(ds.SIZES) + 1), ("position1", len(ds.POSITIONS) + 1),
             ("colour2", len(ds.COLOUR_NAMES) + 1), ("shape2", len(ds.SHAPES) + 1),
             ("position2", len(ds.POSITIONS) + 1))
_PHRASE_TO_POSITION = {phrase: pos for pos, phrases in ds.POSITION_PHRASES.items() for phrase in phrases}


def caption_labels(caption: str) -> list[int]:
    """The facts of a caption of tools/shapes_dataset.py, read back from its words (one index per AUX_HEADS)."""
    text = caption.replace(",", " ,")
    words = text.split()
    labels = {name: n - 1 for name, n in AUX_HEADS}
    for i, w in enumerate(words):
        if w in ("background", "backdrop") and i and words[i - 1] in ds.COLOUR_NAMES:
            labels["background"] = ds.COLOUR_NAMES.index(words[i - 1])
    shapes = [i for i, w in enumerate(words) if w in ds.SHAPES]
    for k, i in enumerate(shapes[:2], start=1):
        labels[f"shape{k}"] = ds.SHAPES.index(words[i])
        if words[i - 1] in ds.COLOUR_NAMES:
            labels[f"colour{k}"] = ds.COLOUR_NAMES.index(words[i - 1])
        if k == 1 and i >= 2 and words[i - 2] in ds.SIZES:
            labels["size1"] = ds.SIZES.index(words[i - 2])
        rest = " ".join(words[i + 1:i + 5])
        for phrase, pos in _PHRASE_TO_POSITION.items():
            if rest.startswith(phrase):
                labels[f"position{k}"] = ds.POSITIONS.index(pos)
    return [labels[name] for name, _ in AUX_HEADS]


def aux_text_loss(head: torch.nn.Linear, hidden: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the facts of each caption predicted from its first end-of-text token (which, under CLIP's
    causal mask, has read the whole caption). Training-only: it makes the encoder's outputs informative within a few
    dozen steps instead of waiting for the UNet's gradients to shape them, and the head is not shipped."""
    eos = (ids == TEXT_CONFIG["eos_token_id"]).int().argmax(1)
    logits = head(hidden[torch.arange(len(ids)), eos])
    loss, start = hidden.new_zeros(()), 0
    for k, (_, n) in enumerate(AUX_HEADS):
        loss = loss + torch.nn.functional.cross_entropy(logits[:, start:start + n], labels[:, k])
        start += n
    return loss / len(AUX_HEADS)


# ------------------------------------------------------------------------------------------------------------- vae
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def crops_around_shapes(images: np.ndarray, samples, rng: np.random.Generator, size: int) -> np.ndarray:
    out = np.empty((len(images), size, size, 3), np.uint8)
    for k, (img, s) in enumerate(zip(images, samples)):
        sh = s.shapes[int(rng.integers(len(s.shapes)))]
        cx = sh.cx + rng.uniform(-size * 0.3, size * 0.3)
        cy = sh.cy + rng.uniform(-size * 0.3, size * 0.3)
        x0 = int(np.clip(round(cx - size / 2), 0, IMAGE_SIZE - size))
        y0 = int(np.clip(round(cy - size / 2), 0, IMAGE_SIZE - size))
        out[k] = img[y0:y0 + size, x0:x0 + size]
    return out


def edge_weights(x: torch.Tensor) -> torch.Tensor:
    """1 on (and next to) colour edges of the target images, 0 on flat areas: N x 1 x H x W."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    e = torch.nn.functional.pad(dx, (0, 1)) + torch.nn.functional.pad(dy, (0, 0, 0, 1))
    e = torch.nn.functional.max_pool2d((e > 0.05).float(), 3, stride=1, padding=1)
    return e


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted L1 + L2 of a decoded image against its target (the VAE stage's and the decoder stage's loss)."""
    return ((rec - x).abs() * weights).mean() + ((rec - x).pow(2) * weights).mean()


def rescale_vae_latents(vae, latents_std: float) -> float:
    """Scale the VAE's latent space by ``a`` so that latents * SCALING_FACTOR have unit std; decoding unchanged."""
    a = (1.0 / SCALING_FACTOR) / latents_std
    with torch.no_grad():
        qc = vae.quant_conv
        c = qc.out_channels // 2
        qc.weight[:c] *= a
        qc.bias[:c] *= a
        qc.bias[c:] += 2.0 * math.log(a)
        vae.post_quant_conv.weight /= a
    return a


def latent_std(vae, seed: int, n: int = 256) -> float:
    images, _ = ds.batch(range(n), seed)
    g = torch.Generator().manual_seed(seed)
    zs = []
    with torch.no_grad():
        for i in range(0, n, 64):
            zs.append(vae.encode(images_to_tensor(images[i:i + 64])).latent_dist.sample(generator=g))
    return float(torch.cat(zs).std())


def train_vae(args, work: Path):
    """Crops around the shapes first (cheap: it is fully convolutional), then whole images, so that the GroupNorm
    statistics the decoder meets at generation time (a mostly-background 128x128 image) are the ones it trained on."""
    torch.manual_seed(args.seed)
    vae = make_vae()
    with torch.no_grad():
        # start with a narrow posterior (std ~0.02): with the default std of 1 the decoder first sees almost pure
        # noise and the reconstruction loss stalls for hundreds of steps
        vae.quant_conv.bias[vae.config.latent_channels:] = args.vae_init_logvar
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    ema = EMA([vae], args.vae_ema) if args.vae_ema else None
    data_seed = args.seed * 1000 + 1
    rng = np.random.default_rng([args.seed, 11])
    g = torch.Generator().manual_seed(args.seed + 12)
    steps = args.vae_steps + args.vae_full_steps
    t0 = time.time()
    index = 0
    for step in range(steps):
        full = step >= args.vae_steps
        bs = args.vae_full_batch if full else args.vae_batch
        samples = [ds.sample(index + k, data_seed) for k in range(bs)]
        index += bs
        images = np.stack([s.image for s in samples])
        x = images_to_tensor(images if full else crops_around_shapes(images, samples, rng, args.vae_crop))
        lr = args.vae_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        post = vae.encode(x).latent_dist
        z = post.sample(generator=g)
        rec = vae.decode(z).sample
        # edges count more: most pixels are flat and easy, while the shape class lives in the outline
        rec_loss = reconstruction_loss(rec, x, 1.0 + args.vae_edge_weight * edge_weights(x))
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + args.vae_kl * kl
        if args.vae_align:
            # keep three latent channels close to the 8x8-averaged image: an image-like latent space (as SD's VAE
            # has), which the UNet learns to denoise much faster than an arbitrary code; the fourth is left free
            target = torch.nn.functional.avg_pool2d(x, 8)
            loss = loss + args.vae_align * (post.mean[:, :3] - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(step)
        if step % 25 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps}{' (full)' if full else ''} rec {rec_loss.item():.4f} kl {kl.item():.3f} "
                f"lr {lr:.2e} ({(time.time() - t0) / (step + 1):.2f} s/step)")
    if ema is not None:
        ema.copy_to()
    vae.eval()
    std = latent_std(vae, args.seed * 1000 + 9)
    a = rescale_vae_latents(vae, std)
    log(f"vae latent std {std:.4f}; rescaled by {a:.4f}; now std*{SCALING_FACTOR} = "
        f"{latent_std(vae, args.seed * 1000 + 9) * SCALING_FACTOR:.4f}")
    vae.save_pretrained(work / "vae", safe_serialization=True)
    if args.eval:
        evaluate_vae(vae, args.seed * 1000 + 8)
    return vae


def evaluate_vae(vae, seed: int, n: int = 64) -> None:
    """Checker accuracies on reconstructions of whole dataset images (single-shape ones), and the pixel error."""
    sys.path.insert(0, str(ROOT / "tests"))
    import shape_checker as sc

    samples = [s for s in (ds.sample(i, seed, two_shape_prob=0.0) for i in range(n))]
    x = images_to_tensor(np.stack([s.image for s in samples]))
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(x[i:i + 16]).latent_dist.mean).sample for i in range(0, n, 16)])
    out = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    hits = {"colour": 0, "shape": 0, "position": 0, "background": 0}
    for img, s in zip(out, samples):
        a, sh = sc.analyse(img), s.shapes[0]
        hits["colour"] += a.colour == sh.colour
        hits["shape"] += a.shape == sh.shape
        hits["position"] += a.position == sh.position
        hits["background"] += a.background == s.background
    err = (rec.clamp(-1, 1) - x).abs().mean().item() * 127.5
    log("EVAL vae reconstructions: " + " ".join(f"{k} {v / n:.0%}" for k, v in hits.items())
        + f", mean abs error {err:.1f} levels")


def border_weights(size: int, width: int, extra: float) -> torch.Tensor:
    """1 inside, 1 + ``extra`` on the outermost ``width`` pixels: 1 x 1 x size x size."""
    w = torch.full((1, 1, size, size), 1.0 + extra)
    w[..., width:size - width, width:size - width] = 1.0
    return w


def train_decoder(args, work: Path, vae):
    """Fine-tune the decoder alone on whole images, the encoder frozen: the latent space, the encoded pool and so the
    UNet and ControlNet stay exactly as they are, while the pictures get cleaner. The first-stage decoder, trained
    mostly on crops, draws a frame of false colour along the image border (about twice the error of the rest), which
    a canny map reads as an edge around the picture; the loss here weighs the outer pixels more. A low learning rate:
    at 5e-4 and above the fresh Adam moments first wreck the colours (loss up for dozens of steps)."""
    torch.manual_seed(args.seed + 50)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(params, lr=args.dec_lr, weight_decay=0.0)
    data_seed = args.seed * 1000 + 5
    g = torch.Generator().manual_seed(args.seed + 51)
    ring = border_weights(IMAGE_SIZE, args.dec_border_width, args.dec_border_weight)
    bs, steps = args.dec_batch, args.dec_steps
    t0, running = time.time(), 0.0
    for step in range(steps):
        samples = [ds.sample(step * bs + k, data_seed) for k in range(bs)]
        x = images_to_tensor(np.stack([s.image for s in samples]))
        lr = lr_at(step, steps, args.dec_lr, 10)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=g)
        rec = vae.decode(z).sample
        loss = reconstruction_loss(rec, x, (1.0 + args.vae_edge_weight * edge_weights(x)) * ring)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if step == 0 else 0.9 * running + 0.1 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            log(f"decoder step {step}/{steps} loss {running:.4f} lr {lr:.2e} "
                f"({(time.time() - t0) / (step + 1):.2f} s/step)")
    vae.requires_grad_(False)
    vae.eval()
    vae.save_pretrained(work / "vae", safe_serialization=True)
    if args.eval:
        evaluate_vae(vae, args.seed * 1000 + 8)
    return vae


def load_vae(work: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae")
    vae.eval()
    return vae


# --------------------------------------------------------------------------------------------------- latent pool
def encode_pool(vae, n: int, seed: int, work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled) of pool images 0..n-1 of dataset seed ``seed`` (cached in --work)."""
    cache = work / f"pool_{n}_{seed}.pt"
    if cache.exists():
        d = torch.load(cache)
        return d["mean"], d["std"]
    means, stds = [], []
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, n, 64):
            images, _ = ds.batch(range(i, min(n, i + 64)), seed)
            dist = vae.encode(images_to_tensor(images)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    log(f"encoded pool of {n} images in {time.time() - t0:.0f} s")
    torch.save({"mean": mean, "std": std}, cache)
    return mean, std


def pool_masks(n: int, seed: int, latent: int = IMAGE_SIZE // 8) -> torch.Tensor:
    """Shape coverage of pool images 0..n-1 at latent resolution (N x 1 x latent x latent), grown by one latent
    pixel so that the latents around a shape's edge count as the shape's."""
    import cv2

    masks = [cv2.resize(ds.shape_mask(ds.sample(i, seed)), (latent, latent), interpolation=cv2.INTER_AREA)
             for i in range(n)]
    m = torch.from_numpy(np.stack(masks))[:, None]
    return torch.nn.functional.max_pool2d(m, 3, stride=1, padding=1)


def pixel_mse(pred: torch.Tensor, target: torch.Tensor, fg: torch.Tensor | None, extra: float) -> torch.Tensor:
    """Per-sample squared error; with ``extra`` > 0 a weighted mean where the shapes' latents weigh 1 + extra, so a
    small shape (a few of the 256 latents) is not drowned by its flat background."""
    err = (pred - target).pow(2)
    if fg is None or not extra:
        return err.mean(dim=(1, 2, 3))
    w = 1 + extra * fg
    return (err * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))


# ------------------------------------------------------------------------------------------------- text + unet
def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})


class EMA:
    def __init__(self, modules, decay: float):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self):
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def snr_weights(scheduler, t: torch.Tensor, gamma: float, high_noise_cap: float = 1.0) -> torch.Tensor:
    """Per-sample weights of the epsilon MSE: min-SNR-gamma (less weight on nearly clean steps) times
    clamp(1 / SNR, 1, high_noise_cap) (more weight on very noisy steps, where layout and colours are decided and the
    epsilon loss says little about the image)."""
    ac = scheduler.alphas_cumprod[t]
    snr = ac / (1 - ac)
    w = torch.clamp(snr, max=gamma) / snr if gamma > 0 else torch.ones_like(snr)
    if high_noise_cap > 1:
        w = w * torch.clamp(1 / snr, min=1.0, max=high_noise_cap)
    return w


def lr_at(step: int, steps: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def pool_batches(n: int, bs: int, steps: int, seed: int):
    """Deterministic (epoch, indices) per step: a fresh permutation of the pool each epoch."""
    g = torch.Generator().manual_seed(seed)
    perm, pos, epoch = torch.randperm(n, generator=g), 0, 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos, epoch = torch.randperm(n, generator=g), 0, epoch + 1
        yield epoch, perm[pos:pos + bs]
        pos += bs


def noised_latents(mean: torch.Tensor, std: torch.Tensor, idx: torch.Tensor, offset_noise: float,
                   g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents drawn from the pool's posteriors (scaled) and their noise. With offset noise (a per-channel constant
    added to the noise): without it the model reads the background colour off the per-channel mean of the noisy
    latent (at 16x16 the image mean still leaks through at t=999) instead of from the prompt, and at sampling time
    the background follows the random mean of the starting noise."""
    z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * SCALING_FACTOR
    noise = torch.randn(z.shape, generator=g)
    if offset_noise:
        noise = noise + offset_noise * torch.randn(z.shape[0], z.shape[1], 1, 1, generator=g)
    return z, noise


def guided_target(noise: torch.Tensor, uncond: torch.Tensor, drop: torch.Tensor,
                  scale: float | torch.Tensor) -> torch.Tensor:
    """The guidance fine-tunes' target: for a captioned sample the unconditional prediction moved 1/scale of the
    way to the noise, so classifier-free guidance overshoots by CFG / scale instead of CFG; for an uncaptioned
    (dropped) sample the noise itself."""
    return torch.where(drop[:, None, None, None], noise, uncond + (noise - uncond) / scale)


def optimiser_step(opt, loss: torch.Tensor, params: list, ema: EMA | None, step: int, running: float) -> float:
    """Backward, clip to norm 1, step, update the EMA; returns the running loss for the log."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if ema is not None:
        ema.update(step)
    return 0.98 * running + 0.02 * loss.item() if step else loss.item()


def train_unet(args, work: Path, vae, more: bool = False):
    """The text encoder and the UNet together, from scratch. With ``more`` (the ``unet-more`` stage) they continue
    from the work dir's saved pair for --more-steps at --more-lr: a second cosine cycle with a fresh optimiser and
    no auxiliary caption loss (its head would start untrained and pull the trained text encoder about)."""
    tokens = Tokens()
    data_seed = args.seed * 1000 + 2
    mean, std = encode_pool(vae, args.pool, data_seed, work)
    torch.manual_seed(args.seed + 20)
    resume = more or args.unet_resume
    te, unet = load_text_unet(work) if resume else (make_text_encoder(), make_unet())
    steps, base_lr = (args.more_steps, args.more_lr) if more else (args.unet_steps, args.unet_lr)
    warmup, aux_weight = (args.more_warmup, 0.0) if more else (args.warmup, args.aux_text)
    te.train()
    unet.train()
    sched = make_scheduler()
    head = torch.nn.Linear(TEXT_CONFIG["hidden_size"], sum(n for _, n in AUX_HEADS))
    params = list(te.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=base_lr, weight_decay=1e-2)
    ema = EMA([te, unet], args.ema)
    g = torch.Generator().manual_seed(args.seed + 21)
    empty = tokens([""])[0]
    bs = args.unet_batch
    fg = pool_masks(args.pool, data_seed) if args.unet_fg_weight else None
    t_hi = max(1, round(args.unet_max_t * sched.config.num_train_timesteps))
    t0, running = time.time(), 0.0
    for step, (epoch, idx) in enumerate(pool_batches(args.pool, bs, steps, args.seed + 22)):
        captions = [caption_for(int(i), data_seed, epoch) for i in idx]
        ids = tokens(captions)
        drop = torch.rand(bs, generator=g) < args.caption_dropout
        ids[drop] = empty
        z, noise = noised_latents(mean, std, idx, args.offset_noise, g)
        t = torch.randint(0, t_hi, (bs,), generator=g)
        noisy = sched.add_noise(z, noise, t)
        lr = lr_at(step, steps, base_lr, warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        h = te(ids).last_hidden_state
        pred = unet(noisy, t, h).sample
        w = snr_weights(sched, t, args.snr_gamma, args.high_noise_cap)
        loss = (pixel_mse(pred, noise, None if fg is None else fg[idx], args.unet_fg_weight) * w).mean()
        if aux_weight:
            keep = ~drop
            labels = torch.tensor([caption_labels(c) for c in captions])
            aux = aux_text_loss(head, h[keep], ids[keep], labels[keep])
            loss = loss + aux_weight * aux
        running = optimiser_step(opt, loss, params, ema, step, running)
        if step % 50 == 0 or step == steps - 1:
            per_step = (time.time() - t0) / (step + 1)
            log(f"{'unet-more' if more else 'unet'} step {step}/{steps} loss {running:.4f} lr {lr:.2e} "
                f"({per_step:.2f} s/step)" + (f" aux {aux.item():.3f}" if aux_weight else ""))
        if args.eval and args.eval_every and step and step % args.eval_every == 0:
            state = [p.detach().clone() for p in params]
            ema.copy_to()
            evaluate(vae, te, unet, tag=f"unet step {step}")
            with torch.no_grad():
                for p, s in zip(params, state):
                    p.copy_(s)
            te.train()
            unet.train()
    ema.copy_to()
    te.eval()
    unet.eval()
    te.save_pretrained(work / "text_encoder", safe_serialization=True)
    unet.save_pretrained(work / "unet", safe_serialization=True)
    return te, unet


def train_cfg(args, work: Path, vae, te, unet):
    """Guidance-aware fine-tune of the UNet: for a captioned sample the target of the conditional prediction is
    uncond + (noise - uncond) / scale, with uncond the model's own current unconditional prediction (no gradient),
    so classifier-free guidance overshoots the data by CFG / scale instead of CFG; uncaptioned samples keep the plain
    target. Without it, CFG 7 redraws the shapes' edges (arms on triangles, corners on circles) that CFG 1 draws
    cleanly. Calibrating for the full 7 lost the position (it rides on differences too small to learn seven times
    smaller); 3 keeps it. With --cfg-fg-weight the shapes' latents weigh more in the loss (an experiment, not in the
    recipe: docs/bundled-model.md, "What has been tried")."""
    tokens = Tokens()
    data_seed = args.seed * 1000 + 2
    mean, std = encode_pool(vae, args.pool, data_seed, work)
    torch.manual_seed(args.seed + 40)
    te.requires_grad_(False)
    te.eval()
    unet.train()
    sched = make_scheduler()
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=args.cfg_lr, weight_decay=1e-2)
    ema = EMA([unet], args.cfg_ema)
    g = torch.Generator().manual_seed(args.seed + 41)
    with torch.no_grad():
        empty_h = te(tokens([""])).last_hidden_state
    bs, steps, scale = args.cfg_batch, args.cfg_steps, args.cfg_scale
    fg = pool_masks(args.pool, data_seed) if args.cfg_fg_weight else None
    t0, running = time.time(), 0.0
    for step, (epoch, idx) in enumerate(pool_batches(args.pool, bs, steps, args.seed + 42)):
        captions = [caption_for(int(i), data_seed, epoch + 200) for i in idx]
        drop = torch.rand(bs, generator=g) < args.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        z, noise = noised_latents(mean, std, idx, args.offset_noise, g)
        t = torch.randint(0, sched.config.num_train_timesteps, (bs,), generator=g)
        noisy = sched.add_noise(z, noise, t)
        lr = lr_at(step, steps, args.cfg_lr, 20)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            h = te(tokens(captions)).last_hidden_state
            uncond = unet(noisy, t, empty_h.expand(bs, -1, -1)).sample
            scale_t = scale
            if args.cfg_scale_low:
                # (experiment) the low noise levels draw the outline, the high ones the position: a larger scale
                # below --cfg-low-t draws cleaner shapes at CFG 7 but weakens the ControlNet (docs/bundled-model.md)
                scale_t = torch.where(t < int(args.cfg_low_t * sched.config.num_train_timesteps),
                                      args.cfg_scale_low, scale)[:, None, None, None]
            target = guided_target(noise, uncond, drop, scale_t)
        pred = unet(noisy, t, h).sample
        w = snr_weights(sched, t, args.snr_gamma, args.high_noise_cap)
        loss = (pixel_mse(pred, target, None if fg is None else fg[idx], args.cfg_fg_weight) * w).mean()
        running = optimiser_step(opt, loss, params, ema, step, running)
        if step % 25 == 0 or step == steps - 1:
            per_step = (time.time() - t0) / (step + 1)
            log(f"cfg step {step}/{steps} loss {running:.4f} lr {lr:.2e} ({per_step:.2f} s/step)")
    ema.copy_to()
    unet.eval()
    unet.save_pretrained(work / "unet", safe_serialization=True)
    return te, unet


def load_text_unet(work: Path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(work / "text_encoder")
    unet = UNet2DConditionModel.from_pretrained(work / "unet")
    return te.eval(), unet.eval()


# ---------------------------------------------------------------------------------------------------- controlnet
def control_tensor(images: np.ndarray) -> torch.Tensor:
    """Canny maps (as the pipeline feeds them: RGB in [0, 1])."""
    maps = np.stack([ds.canny_map(im) for im in images])
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float().div(255.0)


def train_controlnet(args, work: Path, vae, te, unet, resume: bool = False, tag: str = "controlnet"):
    """ControlNet from the UNet's encoder (or, with ``resume``, the work dir's ControlNet), trained against the
    frozen text encoder and UNet; saved to the work dir."""
    from diffusers import ControlNetModel

    tokens = Tokens()
    data_seed = args.seed * 1000 + 2
    mean, std = encode_pool(vae, args.pool, data_seed, work)
    torch.manual_seed(args.seed + 30)
    if resume:
        cn = ControlNetModel.from_pretrained(work / "controlnet")
    else:
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_COND_CHANNELS)
    if args.cn_text_free:
        # (experiment) the cross-attention's output projections at zero and frozen: the ControlNet gives the same
        # residuals to the prompt's and the empty prompt's passes, so guidance cannot amplify their difference
        for name, module in cn.named_modules():
            if name.endswith("attn2.to_out.0"):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
                module.requires_grad_(False)
    cn.train()
    for m in (te, unet):
        m.requires_grad_(False)
        m.eval()
    sched = make_scheduler()
    # the zero convolutions (the residuals' outputs) can learn faster than the copied encoder
    zero = [p for n, p in cn.named_parameters() if n.startswith(("controlnet_down_blocks", "controlnet_mid_block"))]
    zero_ids = {id(p) for p in zero}
    rest = [p for p in cn.parameters() if id(p) not in zero_ids and p.requires_grad]
    opt = torch.optim.AdamW([{"params": rest, "mult": 1.0}, {"params": zero, "mult": args.cn_zero_lr_mult}],
                            lr=args.cn_lr, weight_decay=1e-2)
    ema = EMA([cn], args.cn_ema) if args.cn_ema else None
    g = torch.Generator().manual_seed(args.seed + 31)
    empty = tokens([""])[0]
    with torch.no_grad():
        empty_h = te(empty[None]).last_hidden_state
    bs, steps = args.cn_batch, args.cn_steps
    n_t = sched.config.num_train_timesteps
    t0, running = time.time(), 0.0
    for step, (epoch, idx) in enumerate(pool_batches(args.pool, bs, steps, args.seed + 32)):
        images = np.stack([ds.sample(int(i), data_seed).image for i in idx])
        cond = control_tensor(images)
        ids = tokens([caption_for(int(i), data_seed, epoch + 100) for i in idx])
        drop = torch.rand(bs, generator=g) < args.cn_caption_dropout
        ids[drop] = empty
        z, noise = noised_latents(mean, std, idx, args.offset_noise, g)
        # all noise levels (--cn-min-t 0): high noise decides where the shape goes, the lower ones its outline;
        # t >= 300 only placed the shape as well but traced its edges less (edge IoU 0.18 vs 0.20 at 400 steps)
        t = torch.randint(int(args.cn_min_t * n_t), n_t, (bs,), generator=g)
        noisy = sched.add_noise(z, noise, t)
        lr = lr_at(step, steps, args.cn_lr, 20)
        for group in opt.param_groups:
            group["lr"] = lr * group["mult"]
        with torch.no_grad():
            h = te(ids).last_hidden_state
            target = noise
            if args.cn_cfg_scale and not drop.all():
                # as the UNet's guidance fine-tune, over the controlled unconditional prediction
                eh = empty_h.expand(bs, -1, -1)
                d0, m0 = cn(noisy, t, eh, controlnet_cond=cond, return_dict=False)
                uncond = unet(noisy, t, eh, down_block_additional_residuals=d0, mid_block_additional_residual=m0).sample
                target = guided_target(noise, uncond, drop, args.cn_cfg_scale)
        down, mid = cn(noisy, t, h, controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, h, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        err = (pred - target).pow(2)
        if args.cn_edge_weight:
            # the latents the control's edges pass through (one latent pixel around them) weigh more: the rest
            # of the loss is what the UNet predicts without a control, and drowns the control's signal
            near = torch.nn.functional.adaptive_max_pool2d(cond[:, :1], z.shape[-2:])
            near = torch.nn.functional.max_pool2d(near, 3, 1, 1)
            weight = 1 + args.cn_edge_weight * near
            loss = (err * weight).mean() / weight.mean()
        else:
            loss = err.mean()
        running = optimiser_step(opt, loss, list(cn.parameters()), ema, step, running)
        if step % 50 == 0 or step == steps - 1:
            log(f"{tag} step {step}/{steps} loss {running:.4f} ({(time.time() - t0) / (step + 1):.2f} s/step)")
    if ema is not None:
        ema.copy_to()
    cn.eval()
    cn.save_pretrained(work / "controlnet", safe_serialization=True)
    return cn


def train_controlnet_cfg(args, work: Path, vae, te, unet):
    """Guidance fine-tune of the ControlNet, as `cfg` is the UNet's: from the `controlnet` stage's weights, a
    captioned sample's target is the controlled unconditional prediction moved 1 / --cfg-scale of the way to the
    noise. The plain-trained ControlNet pulls the prompt's pass the whole way to the noise where the UNet goes a
    third of it, so CFG 7 multiplied what the control adds by 7 instead of 7 / 3 and drew halos and textured
    shapes along its edges. Calibrated from the start (--cn-cfg-scale) it measured worse than plain; after the plain
    stage, 400 steps raise the edge IoU at CFG 7 (docs/bundled-model.md)."""
    tuned = argparse.Namespace(**{**vars(args), "cn_steps": args.cn_cfg_steps, "cn_lr": args.cn_cfg_lr,
                                  "cn_cfg_scale": args.cfg_scale})
    return train_controlnet(tuned, work, vae, te, unet, resume=True, tag="controlnet-cfg")


def load_controlnet(work: Path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(work / "controlnet").eval()


def import_files(args, work: Path) -> None:
    """The work dir's folders (vae, text_encoder, unet and, where the file exists, controlnet) from the single files
    in the shipped layouts (--checkpoint, --import-controlnet or --controlnet), read through the studio's own
    loaders, so later stages continue from those weights: their fp16 values, which export to the same bytes."""
    sys.path.insert(0, str(ROOT))
    from webui.models.controlnet import ControlNetInfo
    from webui.models.controlnet import load_controlnet as load_controlnet_file
    from webui.models.loader import build_pipeline, read_state_dict

    for stale in work.glob("pool_*.pt"):   # latents of another VAE's encoder
        stale.unlink()
    pipe = build_pipeline(args.checkpoint, read_state_dict(args.checkpoint)).pipe
    for name in ("vae", "text_encoder", "unet"):
        getattr(pipe, name).float().save_pretrained(work / name, safe_serialization=True)
    source = args.import_controlnet or args.controlnet
    if source.exists():
        cn = load_controlnet_file(ControlNetInfo(source, source.name, ""), dict(pipe.unet.config))
        cn.save_pretrained(work / "controlnet", safe_serialization=True)
    log(f"imported {args.checkpoint.name}" + (f" and {source.name}" if source.exists() else ""))


# ------------------------------------------------------------------------------------------------------ pipeline
def make_pipeline(vae, te, unet, controlnet=None):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    sched = EulerAncestralDiscreteScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                               if k not in ("clip_sample", "set_alpha_to_one")})
    kw = dict(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
              feature_extractor=None, requires_safety_checker=False)
    if controlnet is not None:
        pipe = StableDiffusionControlNetPipeline(controlnet=controlnet, **kw)
    else:
        pipe = StableDiffusionPipeline(**kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


EVAL_COLOURS = ds.COLOUR_NAMES
EVAL_SHAPES = ds.SHAPES
EVAL_POSITIONS = ds.POSITIONS


def eval_prompts(n: int = 40, seed: int = 5):
    """(prompt, colour, shape, position, background, seed) tuples covering every colour, shape and position."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        colour = EVAL_COLOURS[k % 8]
        shape = EVAL_SHAPES[k % 4]
        position = EVAL_POSITIONS[k % 5]
        background = ds.COLOUR_NAMES[int(rng.integers(8))]
        while background == colour:
            background = ds.COLOUR_NAMES[int(rng.integers(8))]
        prompt = ds.canonical_caption(shape, colour, "large", position, background)
        out.append((prompt, colour, shape, position, background, 1000 + k))
    return out


def evaluate(vae, te, unet, tag: str = "", n: int = 40, cfgs=(7.0,)):
    sys.path.insert(0, str(ROOT / "tests"))
    import shape_checker as sc

    was = (te.training, unet.training)
    te.eval()
    unet.eval()
    pipe = make_pipeline(vae, te, unet)
    for cfg in cfgs:
        hits = {"colour": 0, "shape": 0, "position": 0, "background": 0}
        t0 = time.time()
        for prompt, colour, shape, position, background, seed in eval_prompts(n):
            img = pipe(prompt, num_inference_steps=20, guidance_scale=cfg, height=IMAGE_SIZE, width=IMAGE_SIZE,
                       generator=torch.Generator().manual_seed(seed)).images[0]
            a = sc.analyse(img)
            hits["colour"] += a.colour == colour
            hits["shape"] += a.shape == shape
            hits["position"] += a.position == position
            hits["background"] += a.background == background
        log(f"EVAL {tag} cfg {cfg}: " + " ".join(f"{k} {v / n:.0%}" for k, v in hits.items())
            + f" ({(time.time() - t0) / n:.2f} s/image)")
    te.train(was[0])
    unet.train(was[1])


# -------------------------------------------------------------------------------------------------------- export
def _original_layout(unet_sd, vae_sd, te_sd):
    try:
        from webui.models.original_layout import pipeline_to_original
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from webui.models.original_layout import pipeline_to_original
    return pipeline_to_original("sd1", unet=unet_sd, vae=vae_sd, text_encoder=te_sd)


def _resnet_to_ldm(key: str) -> str:
    return (key.replace("norm1", "in_layers.0").replace("conv1", "in_layers.2").replace("norm2", "out_layers.0")
            .replace("conv2", "out_layers.3").replace("time_emb_proj", "emb_layers.1")
            .replace("conv_shortcut", "skip_connection"))


def controlnet_to_original(cn_sd: dict, layers_per_block: int, prefix: str = "control_model.") -> dict:
    """diffusers ControlNetModel state dict -> lllyasviel / A1111-extension layout (input_blocks, zero_convs,
    input_hint_block, middle_block, middle_block_out), keys prefixed with ``control_model.``."""
    out = {}
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "controlnet_cond_embedding.conv_in": "input_hint_block.0",
        "controlnet_cond_embedding.conv_out": "input_hint_block.14",
        "controlnet_mid_block": "middle_block_out.0",
    }
    for key, value in cn_sd.items():
        parts = key.split(".")
        stem, leaf = ".".join(parts[:-1]), parts[-1]
        if stem in fixed:
            new = f"{fixed[stem]}.{leaf}"
        elif key.startswith("controlnet_cond_embedding.blocks."):
            j = int(parts[2])
            new = f"input_hint_block.{2 * (j + 1)}.{leaf}"
        elif key.startswith("controlnet_down_blocks."):
            new = f"zero_convs.{int(parts[1])}.0.{leaf}"
        elif key.startswith("down_blocks."):
            b, kind = int(parts[1]), parts[2]
            base = 1 + b * (layers_per_block + 1)
            rest = ".".join(parts[4:])
            if kind == "resnets":
                new = f"input_blocks.{base + int(parts[3])}.0.{_resnet_to_ldm(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{base + int(parts[3])}.1.{rest}"
            elif kind == "downsamplers":
                new = f"input_blocks.{base + layers_per_block}.0.op.{leaf}"
            else:
                raise KeyError(key)
        elif key.startswith("mid_block."):
            kind, i = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                new = f"middle_block.{2 * i}.{_resnet_to_ldm(rest)}"
            else:
                new = f"middle_block.1.{rest}"
        else:
            raise KeyError(f"unmapped ControlNet key {key}")
        out[prefix + new] = value
    return out


def _metadata() -> dict[str, str]:
    return {
        "modelspec.title": MODEL_NAME,
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.resolution": f"{IMAGE_SIZE}x{IMAGE_SIZE}",
        "shapes_tiny.configs": json.dumps({"unet": UNET_CONFIG, "vae": VAE_CONFIG, "text_encoder": TEXT_CONFIG,
                                           "scheduler": SCHEDULER_CONFIG}),
        "shapes_tiny.retrain": "OMP_NUM_THREADS=2 python tools/train_bundled.py",
    }


_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def save_file(tensors: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file byte-for-byte reproducibly (safetensors' own writer orders the metadata by a
    per-process hash seed): header keys sorted, tensors in name order."""
    header: dict = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for b in blobs:
            f.write(b)


def export(work: Path, vae, te, unet, cn, ckpt_path: Path = CHECKPOINT_PATH, cn_path: Path = CONTROLNET_PATH):
    def half(sd):
        return {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}

    original = _original_layout(unet.state_dict(), vae.state_dict(), te.state_dict())
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(half(original), str(ckpt_path), metadata=_metadata())
    log(f"wrote {ckpt_path} ({ckpt_path.stat().st_size / 1e6:.1f} MB, {len(original)} tensors)")
    if cn is not None:
        cn_orig = controlnet_to_original(cn.state_dict(), UNET_CONFIG["layers_per_block"])
        cn_path.parent.mkdir(parents=True, exist_ok=True)
        save_file(half(cn_orig), str(cn_path), metadata={"modelspec.title": f"control_{MODEL_NAME}_canny"})
        log(f"wrote {cn_path} ({cn_path.stat().st_size / 1e6:.1f} MB, {len(cn_orig)} tensors)")


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (bit-for-bit needs the same value)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=ROOT / "tmp" / "train_bundled")
    ap.add_argument("--stages", default="vae,unet,unet-more,cfg,decoder,controlnet,controlnet-cfg,export")
    ap.add_argument("--vae-steps", type=int, default=300)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-crop", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-5)
    ap.add_argument("--vae-ema", type=float, default=0.0)
    ap.add_argument("--vae-full-steps", type=int, default=60)
    ap.add_argument("--vae-full-batch", type=int, default=4)
    ap.add_argument("--vae-align", type=float, default=0.1)
    ap.add_argument("--vae-init-logvar", type=float, default=-8.0)
    ap.add_argument("--vae-edge-weight", type=float, default=4.0)
    ap.add_argument("--dec-steps", type=int, default=100, help="steps of the decoder-only fine-tune")
    ap.add_argument("--dec-batch", type=int, default=4)
    ap.add_argument("--dec-lr", type=float, default=1e-4)
    ap.add_argument("--dec-border-weight", type=float, default=10.0,
                    help="extra loss weight on the outermost pixels in the decoder fine-tune")
    ap.add_argument("--dec-border-width", type=int, default=3)
    ap.add_argument("--pool", type=int, default=4096)
    ap.add_argument("--unet-steps", type=int, default=1200)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--unet-resume", action="store_true", help="(experiments) start from the work dir's UNet")
    ap.add_argument("--unet-max-t", type=float, default=1.0, help="(experiments) train the UNet on t < this fraction")
    ap.add_argument("--unet-fg-weight", type=float, default=0.0,
                    help="(experiments) extra loss weight on the shapes' latents in the UNet stage (0: plain mean)")
    ap.add_argument("--more-steps", type=int, default=800, help="steps of each unet-more cycle")
    ap.add_argument("--more-lr", type=float, default=5e-4)
    ap.add_argument("--more-warmup", type=int, default=50)
    ap.add_argument("--more-cycles", type=int, default=4,
                    help="how many times the unet-more stage runs, each continuing the pair the last one saved")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--snr-gamma", type=float, default=5.0)
    ap.add_argument("--high-noise-cap", type=float, default=5.0)
    ap.add_argument("--offset-noise", type=float, default=0.1)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--aux-text", type=float, default=0.2, help="weight of the text encoder's auxiliary loss")
    ap.add_argument("--cfg-steps", type=int, default=400, help="steps of the guidance-aware UNet fine-tune")
    ap.add_argument("--cfg-scale", type=float, default=3.0, help="the CFG scale that fine-tune calibrates for")
    ap.add_argument("--cfg-scale-low", type=float, default=0.0,
                    help="(experiments) the scale calibrated for below --cfg-low-t (0: --cfg-scale everywhere)")
    ap.add_argument("--cfg-low-t", type=float, default=0.5,
                    help="(experiments) the noise level, as a fraction of T, below which --cfg-scale-low applies")
    ap.add_argument("--cfg-batch", type=int, default=32)
    ap.add_argument("--cfg-lr", type=float, default=3e-4)
    ap.add_argument("--cfg-ema", type=float, default=0.99)
    ap.add_argument("--cfg-fg-weight", type=float, default=0.0,
                    help="(experiments) extra loss weight on the shapes' latents in the guidance fine-tune")
    ap.add_argument("--cn-steps", type=int, default=3200)
    ap.add_argument("--cn-batch", type=int, default=16)
    ap.add_argument("--cn-lr", type=float, default=4e-3)
    ap.add_argument("--cn-caption-dropout", type=float, default=0.5)
    ap.add_argument("--cn-min-t", type=float, default=0.0, help="train the ControlNet on t >= this fraction")
    ap.add_argument("--cn-edge-weight", type=float, default=0.0,
                    help="extra loss weight on the latents along the control's edges (0: plain MSE)")
    ap.add_argument("--cn-zero-lr-mult", type=float, default=1.0,
                    help="learning-rate multiplier of the zero convolutions")
    ap.add_argument("--cn-cfg-scale", type=float, default=0.0,
                    help="(experiments) calibrate the controlnet stage for guidance from its start (0: plain target; "
                         "the controlnet-cfg stage calibrates for --cfg-scale)")
    ap.add_argument("--cn-text-free", action="store_true",
                    help="(experiments) the ControlNet ignores the prompt (its cross-attention outputs fixed at zero)")
    ap.add_argument("--cn-cfg-steps", type=int, default=400, help="steps of the ControlNet's guidance fine-tune")
    ap.add_argument("--cn-cfg-lr", type=float, default=5e-4)
    ap.add_argument("--cn-ema", type=float, default=0.0, help="EMA of the ControlNet's weights (0: none)")
    ap.add_argument("--eval", action="store_true", help="print checker accuracies after the UNet stage")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT_PATH)
    ap.add_argument("--controlnet", type=Path, default=CONTROLNET_PATH)
    ap.add_argument("--import-controlnet", type=Path, default=None,
                    help="the ControlNet file the `import` stage reads (default: --controlnet)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    stages = set(args.stages.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log(f"train_bundled: {vars(args)}")
    log(f"allocator: {os.environ.get('LD_PRELOAD') or 'the C library malloc'}")
    if "import" in stages:
        import_files(args, args.work)
    vae = train_vae(args, args.work) if "vae" in stages else load_vae(args.work)
    log(f"vae done at {time.time() - t_start:.0f} s")
    te = unet = cn = None
    if "unet" in stages:
        te, unet = train_unet(args, args.work, vae)
        log(f"text encoder + unet done at {time.time() - t_start:.0f} s")
    for cycle in range(args.more_cycles if "unet-more" in stages and args.more_steps else 0):
        # each cycle reloads the pair the last one saved and re-seeds: the same as running the stage again
        te, unet = train_unet(args, args.work, vae, more=True)
        log(f"text encoder + unet, cycle {cycle + 2}, done at {time.time() - t_start:.0f} s")
    if te is None and stages & {"cfg", "controlnet", "controlnet-cfg", "export", "eval"}:
        te, unet = load_text_unet(args.work)
    if "cfg" in stages and args.cfg_steps:
        te, unet = train_cfg(args, args.work, vae, te, unet)
        log(f"guidance fine-tune done at {time.time() - t_start:.0f} s")
    if "decoder" in stages and args.dec_steps:
        vae = train_decoder(args, args.work, vae)
        log(f"decoder fine-tune done at {time.time() - t_start:.0f} s")
    if args.eval and te is not None:
        evaluate(vae, te, unet, tag="final", cfgs=(7.0, 1.0))
    if "controlnet" in stages:
        cn = train_controlnet(args, args.work, vae, te, unet)
        log(f"controlnet done at {time.time() - t_start:.0f} s")
    if "controlnet-cfg" in stages and args.cn_cfg_steps:
        cn = train_controlnet_cfg(args, args.work, vae, te, unet)
        log(f"controlnet guidance fine-tune done at {time.time() - t_start:.0f} s")
    if cn is None and "export" in stages and (args.work / "controlnet").exists():
        cn = load_controlnet(args.work)
    train_seconds = time.time() - t_start
    if "export" in stages:
        export(args.work, vae, te, unet, cn, args.checkpoint, args.controlnet)
    log(f"total {time.time() - t_start:.0f} s (training {train_seconds:.0f} s)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import launch

    preload = launch.tcmalloc_env(dict(os.environ))
    if preload is not None:  # the same bytes, about 1.1 times quicker (docs/bundled-model.md)
        os.execve(sys.executable, [sys.executable, *sys.argv], preload)
    main()
