"""A1111's Train tab for textual-inversion embeddings: create an embedding from words, then train its vectors on a
folder of images with prompt templates, the model's other weights frozen.

Training follows A1111's options: a learning-rate schedule ("0.005" or "0.005:100, 1e-3:1000, 1e-5": each rate
until that step, the last one to the end), batch size and gradient accumulation, clipping by value or norm,
[filewords] from a caption file beside each image (or its file name), tag shuffling and drop-out, latents sampled
once, deterministically (the mean) or afresh each step, the alpha channel as a loss weight, and a copy of the
embedding saved every N steps in the log directory. The finished embedding is written to the embeddings folder as
an A1111 ``.pt`` (``string_to_param``, ``step``, ``sd_checkpoint``) and is usable at once. Every
``create_image_every`` steps the embedding is saved and a preview is drawn with the batch's prompt into the log
directory's images/.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from webui.core.errors import InvalidField, StudioError
from webui.core.training import TrainEmbeddingRequest
from webui.engine import saving
from webui.models import embeddings as ti
from webui.models.manager import LoadedModel
from webui.models.torch_files import save_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LATENT_SAMPLING = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")
_NAME = re.compile(r"^[^/\\:*?\"<>|]+$")


@dataclass
class TrainResult:
    path: Path
    steps: int
    loss: float
    interrupted: bool
    saved: list[Path]
    images: list[Path] = field(default_factory=list)
    kind: str = "embedding"

    def info(self) -> str:
        return f"train {self.kind} complete: filename: {self.path} steps: {self.steps} loss: {self.loss:.5f}" + \
            (" (interrupted)" if self.interrupted else "")


def learn_rate_schedule(text: str, steps: int) -> list[tuple[float, int]]:
    """A1111's learning-rate syntax as (rate, last step) pairs: "0.005" or "0.005:100, 1e-3:1000, 1e-5"."""
    out: list[tuple[float, int]] = []
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InvalidField("learn_rate", "a learning rate is needed, e.g. 0.005 or 0.005:100, 1e-3:1000")
    for i, part in enumerate(parts):
        rate_text, _, until = part.partition(":")
        try:
            rate = float(rate_text)
            end = int(until) if until.strip() else steps
        except ValueError:
            raise InvalidField("learn_rate", f"{part!r} is not RATE or RATE:STEP") from None
        if rate <= 0 or (out and end <= out[-1][1]):
            raise InvalidField("learn_rate", f"{part!r}: rates must be positive and steps increasing")
        if not until.strip() and i != len(parts) - 1:
            raise InvalidField("learn_rate", "only the last rate may leave out its step")
        out.append((rate, end))
    return out


def rate_at(schedule: list[tuple[float, int]], step: int) -> float | None:
    """The rate for (1-based) ``step``; None once the schedule has ended."""
    for rate, end in schedule:
        if step <= end:
            return rate
    return None


def named_file(folder: Path, name: str, kind: str = "embedding") -> Path:
    """``folder/NAME.pt`` for a trained file's name; InvalidField("name") when it is empty or holds a path."""
    if not name or not _NAME.match(name) or name.strip() != name:
        raise InvalidField("name", f"a{'n' if kind[0] in 'aeiou' else ''} {kind} name is needed (no path "
                                   f"separators or * ? : \" < > |)")
    return folder / f"{name}.pt"


def existing_file(folder: Path, name: str, field_name: str, kind: str) -> Path:
    """The file a training request names, which must exist (InvalidField on ``field_name`` otherwise)."""
    path = named_file(folder, name, kind)
    if not path.exists():
        raise InvalidField(field_name, f"no {kind} {name!r} in {folder} (create it first)")
    return path


def _save_pt(path: Path, name: str, vectors: torch.Tensor, step: int, model: LoadedModel) -> None:
    """A1111's .pt layout, written atomically (a reader never sees half a file)."""
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.detach().float().cpu().clone()},
            "name": name, "step": step, "sd_checkpoint": model.info.shorthash,
            "sd_checkpoint_name": model.info.model_name}
    save_atomic(data, path)


def _one_encoder(model: LoadedModel):
    if getattr(model.pipe, "text_encoder_2", None) is not None:
        raise InvalidField("sd_model_checkpoint", "embeddings are created and trained for SD1.x / SD2.x models "
                                                  "(as in A1111); the loaded checkpoint is SDXL")
    return model.pipe.text_encoder, model.pipe.tokenizer


def create_embedding(model: LoadedModel, folder: Path, name: str, num_vectors_per_token: int = 1,
                     init_text: str = "*", overwrite_old: bool = False) -> Path:
    """A new embedding of ``num_vectors_per_token`` vectors taken from the token embeddings of ``init_text``
    (spread over its tokens as A1111 does; zeros for an empty text), saved as ``folder/name.pt``."""
    encoder, tokenizer = _one_encoder(model)
    path = named_file(folder, name)
    if not 1 <= int(num_vectors_per_token) <= ti.CHUNK:
        raise InvalidField("num_vectors_per_token", f"from 1 to {ti.CHUNK} vectors")
    if path.exists() and not overwrite_old:
        raise InvalidField("name", f"{path.name} already exists (overwrite_old to replace it)")
    table = encoder.get_input_embeddings().weight
    ids = tokenizer(init_text or "", add_special_tokens=False, truncation=False)["input_ids"]
    n = int(num_vectors_per_token)
    vectors = torch.zeros(n, table.shape[1])
    with torch.no_grad():
        if ids:
            rows = table[torch.tensor(ids, device=table.device)].float().cpu()
            for i in range(n):
                vectors[i] = rows[i * len(ids) // n]
    _save_pt(path, name, vectors, 0, model)
    return path


def template_names(folder: Path) -> list[str]:
    """The prompt templates (``*.txt``, a prompt per line with [name] and [filewords]) in ``folder``."""
    return sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []


@dataclass
class _Sample:
    latents_mean: torch.Tensor     # (4, h, w), scaled like the model's latents
    latents_std: torch.Tensor
    filewords: str
    weight: torch.Tensor | None    # (1, h, w) from the alpha channel, mean 1


def _filewords(path: Path) -> str:
    caption = path.with_suffix(".txt")
    if caption.exists():
        return caption.read_text(encoding="utf-8").strip()
    return re.sub(r"^\d+-", "", path.stem).replace("_", " ").strip()   # "00012-a red circle" -> "a red circle"


def _image_files(req: TrainEmbeddingRequest) -> list[Path]:
    root = Path(req.data_root)
    if not req.data_root or not root.is_dir():
        raise InvalidField("data_root", f"{req.data_root!r} is not a folder of training images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidField("data_root", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return files


def _load_dataset(req: TrainEmbeddingRequest, model: LoadedModel) -> list[_Sample]:
    from PIL import Image

    files = _image_files(req)
    vae = model.pipe.vae
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    out = []
    for f in files:
        with Image.open(f) as im:
            im.load()
            size = (req.training_width, req.training_height)
            if req.varsize:
                size = (max(8, im.width // 8 * 8), max(8, im.height // 8 * 8))
            alpha = im.getchannel("A").resize(size, Image.Resampling.BICUBIC) if "A" in im.getbands() else None
            rgb = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(rgb, np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            dist = vae.encode(pixels.to(device, dtype)).latent_dist
        scale = vae.config.scaling_factor
        weight = None
        if req.use_weight and alpha is not None:
            a = torch.from_numpy(np.asarray(alpha, np.float32) / 255.0)[None, None]
            a = torch.nn.functional.interpolate(a, size=dist.mean.shape[-2:], mode="area")[0]
            weight = a / a.mean().clamp(min=1e-6)
        out.append(_Sample(dist.mean[0].float().cpu() * scale, dist.std[0].float().cpu() * scale, _filewords(f),
                           weight))
    if len(out) < req.batch_size:
        raise InvalidField("batch_size", f"batch size {req.batch_size} is larger than the {len(out)} images")
    return out


def _prompt(line: str, name: str, filewords: str, req: TrainEmbeddingRequest, rng: random.Random) -> str:
    tags = [t.strip() for t in filewords.split(",") if t.strip()]
    if req.shuffle_tags:
        rng.shuffle(tags)
    if req.tag_drop_out:
        tags = [t for t in tags if rng.random() >= req.tag_drop_out]
    return line.replace("[name]", name).replace("[filewords]", ", ".join(tags))


def check_train_request(req: TrainEmbeddingRequest, embeddings_folder: Path, templates: Path
                        ) -> tuple[Path, list[str], list[tuple[float, int]]]:
    """(the embedding's file, the template's lines, the rate schedule); InvalidField before any work."""
    path = existing_file(embeddings_folder, req.embedding_name, "embedding_name", "embedding")
    return (path, *check_training(req, templates))


def check_training(req: TrainEmbeddingRequest, templates: Path) -> tuple[list[str], list[tuple[float, int]]]:
    """(the template's lines, the rate schedule) of any training request; InvalidField before any work."""
    if req.steps < 1 or req.batch_size < 1 or req.gradient_step < 1:
        raise InvalidField("steps", "steps, batch_size and gradient_step must be at least 1")
    if req.training_width % 8 or req.training_height % 8 or min(req.training_width, req.training_height) < 64:
        raise InvalidField("training_width", "width and height must be multiples of 8, at least 64")
    if req.latent_sampling_method not in LATENT_SAMPLING:
        raise InvalidField("latent_sampling_method", f"one of {', '.join(LATENT_SAMPLING)}")
    if req.clip_grad_mode not in CLIP_GRAD_MODES:
        raise InvalidField("clip_grad_mode", f"one of {', '.join(CLIP_GRAD_MODES)}")
    if not 0.0 <= req.tag_drop_out < 1.0:
        raise InvalidField("tag_drop_out", "tag_drop_out must be from 0 to below 1")
    _image_files(req)
    folder = templates
    template = folder / Path(req.template_filename).name
    if not template.is_file():
        raise InvalidField("template_filename", f"no template {req.template_filename!r}; valid: "
                                                f"{', '.join(template_names(folder))}")
    lines = [ln.strip() for ln in template.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise InvalidField("template_filename", f"{template.name} holds no prompt lines")
    return lines, learn_rate_schedule(req.learn_rate, req.steps)


@dataclass
class Trainee:
    """What a training run trains: its parameters, how a batch's prompts become the UNet's conditioning (through
    the parameters where they are in it), and how it is saved (to ``path``, and as copies in the log folder)."""
    kind: str                                       # "embedding" / "hypernetwork"
    name: str
    path: Path
    params: list
    encode: Callable[[list[str]], torch.Tensor]
    save: Callable[[Path, int], None]               # (file, step)
    step0: int = 0
    save_every: int = 0


def train_embedding(job, model: LoadedModel, req: TrainEmbeddingRequest, embeddings_folder: Path,
                    log_root: Path, templates: Path,
                    preview: Callable[[str], tuple[object, str]] | None = None) -> TrainResult:
    """Train the embedding's vectors (the model frozen) for ``req.steps`` optimizer steps, or until the rate
    schedule ends or the job is interrupted; then save it over its file (and copies every save_embedding_every
    steps in ``log_root/<date>/<name>/embeddings``). ``preview(prompt)`` draws (image, infotext) with the
    embedding as saved: every create_image_every steps, into ``log_root/<date>/<name>/images``."""
    path, lines, schedule = check_train_request(req, embeddings_folder, templates)
    encoder, tokenizer = _one_encoder(model)
    found = ti.read_embedding_file(path)
    width = encoder.get_input_embeddings().weight.shape[1]
    if found.is_sdxl:
        raise InvalidField("embedding_name", f"{path.name} is an SDXL embedding")
    start = next(iter(found.tensors.values()))
    if start.shape[-1] != width:
        raise InvalidField("embedding_name", f"{path.name} has width {start.shape[-1]}; this model's text "
                                             f"encoder takes {width}")
    device = next(model.pipe.unet.parameters()).device
    vectors = torch.nn.Parameter(start.detach().float().clone().to(device))
    emb = ti.Embedding(req.embedding_name, {"text_encoder": vectors}, path=path)
    lookup = ti.EmbeddingLookup({req.embedding_name: emb}, tokenizer)

    def encode(prompts: list[str]) -> torch.Tensor:
        rows, reps = [], []
        for p in prompts:
            r, rep, _ = ti.chunk_ids_with_embeddings(tokenizer, p, lookup)
            rows.append(r[0])
            reps.append(rep[0])
        return ti.encode_with_embeddings(encoder, torch.tensor(rows, device=device), reps)[0]

    trainee = Trainee("embedding", req.embedding_name, path, [vectors], encode,
                      lambda file, step: _save_pt(file, req.embedding_name, vectors, step, model),
                      found.step or 0, req.save_embedding_every)
    return train(job, model, req, trainee, lines, schedule, log_root, preview)


def train(job, model: LoadedModel, req: TrainEmbeddingRequest, trainee: Trainee, lines: list[str],
          schedule: list[tuple[float, int]], log_root: Path,
          preview: Callable[[str], tuple[object, str]] | None = None) -> TrainResult:
    """The training loop both kinds share: A1111's batches, gradient accumulation, latent sampling, alpha weights,
    clipping, rate schedule, copies and previews; the model's own weights frozen."""
    import datetime

    from diffusers import DDPMScheduler

    samples = _load_dataset(req, model)
    pipe = model.pipe
    unet, device = pipe.unet, next(pipe.unet.parameters()).device
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    v_pred = noise_sched.config.prediction_type == "v_prediction"
    params = trainee.params
    optimizer = torch.optim.AdamW(params, lr=schedule[0][0], weight_decay=0.0)
    rng, gen = random.Random(req.seed), torch.Generator().manual_seed(req.seed)
    once = [s.latents_mean + s.latents_std * torch.randn(s.latents_mean.shape, generator=gen) for s in samples]
    step0, name = trainee.step0, trainee.name
    run_dir = Path(log_root) / datetime.date.today().isoformat() / name
    log_dir = run_dir / f"{trainee.kind}s"
    saved: list[Path] = []
    images: list[Path] = []
    job.progress.sampling_steps, job.progress.job_count = req.steps, 1
    order: list[int] = []
    loss_value, done, interrupted = 0.0, 0, False
    with torch.enable_grad():
        for step in range(1, req.steps + 1):
            rate = rate_at(schedule, step)
            if rate is None:
                break
            if job.interrupted:
                interrupted = True
                break
            for group in optimizer.param_groups:
                group["lr"] = rate
            total = 0.0
            for _ in range(req.gradient_step):
                if len(order) < req.batch_size:
                    order += rng.sample(range(len(samples)), len(samples))
                batch, order = order[:req.batch_size], order[req.batch_size:]
                latents = torch.stack([
                    samples[i].latents_mean if req.latent_sampling_method == "deterministic" else
                    once[i] if req.latent_sampling_method == "once" else
                    samples[i].latents_mean + samples[i].latents_std * torch.randn(
                        samples[i].latents_mean.shape, generator=gen)
                    for i in batch]).to(device, unet.dtype)
                prompts = [_prompt(rng.choice(lines), name, samples[i].filewords, req, rng) for i in batch]
                cond = trainee.encode(prompts)
                noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
                t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(batch),), generator=gen)
                noisy = noise_sched.add_noise(latents, noise, t.to(device))
                pred = unet(noisy, t.to(device), encoder_hidden_states=cond.to(unet.dtype)).sample.float()
                target = noise_sched.get_velocity(latents, noise, t.to(device)) if v_pred else noise
                err = (pred - target.float()) ** 2
                weights = [samples[i].weight for i in batch]
                if all(w is not None for w in weights):
                    err = err * torch.stack(weights).to(err.device)
                loss = err.mean() / req.gradient_step
                loss.backward()
                total += float(loss.detach())
            if req.clip_grad_mode == "value":
                torch.nn.utils.clip_grad_value_(params, float(req.clip_grad_value))
            elif req.clip_grad_mode == "norm":
                torch.nn.utils.clip_grad_norm_(params, float(req.clip_grad_value))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value, done = total, step
            job.progress.sampling_step = step
            job.progress.textinfo = f"Training {trainee.kind} {name}: step {step}/{req.steps}, loss {total:.5f}"
            if trainee.save_every > 0 and step % trainee.save_every == 0:
                copy = log_dir / f"{name}-{step0 + step}.pt"
                trainee.save(copy, step0 + step)
                saved.append(copy)
            if preview is not None and req.create_image_every > 0 and step % req.create_image_every == 0:
                trainee.save(trainee.path, step0 + step)   # what the preview reads
                with torch.no_grad():
                    image, text = preview(prompts[0])
                images.append(saving.save_named(image, run_dir / "images", f"{name}-{step0 + step}", text))
                job.progress.sampling_steps, job.progress.sampling_step = req.steps, step
                job.progress.job_count, job.progress.job_no = 1, 0
    if not done:
        raise StudioError("training stopped before its first step (interrupted)")
    trainee.save(trainee.path, step0 + done)
    return TrainResult(trainee.path, done, loss_value, interrupted, saved, images, trainee.kind)
