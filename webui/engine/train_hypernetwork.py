"""A1111's Train tab for hypernetworks: create one (its widths, layer structure, activation, initialisation),
then train its key and value MLPs on a folder of images with prompt templates, the model frozen. The loop is the
embeddings' (webui/engine/train_embedding.py): the hypernetwork's hooks are on the UNet's attentions for the run,
the prompts are encoded as they are, and the file is A1111's ``.pt``, usable at once as ``<hypernet:NAME:1>``."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from webui.core.errors import InvalidField
from webui.core.training import CreateHypernetworkRequest, TrainHypernetworkRequest
from webui.engine import train_embedding as train_emb
from webui.models import hypernetworks as hn
from webui.models.manager import LoadedModel


def create_hypernetwork(model: LoadedModel, folder: Path, req: CreateHypernetworkRequest) -> Path:
    """``folder/NAME.pt``: a fresh hypernetwork for the attention widths asked (A1111's default: 768, 320, 640,
    1024, 1280; the ones this model has are what it acts on)."""
    path = train_emb.named_file(folder, req.name, "hypernetwork")
    if path.exists() and not req.overwrite_old:
        raise InvalidField("name", f"{path.name} already exists (overwrite_old to replace it)")
    try:
        sizes = sorted({int(s) for s in req.enable_sizes or []})
    except (TypeError, ValueError):
        raise InvalidField("enable_sizes", "the attention widths are whole numbers, e.g. 768, 320, 640") from None
    if not sizes or min(sizes) < 1:
        raise InvalidField("enable_sizes", "at least one attention width is needed, e.g. 768, 320, 640, 1280")
    try:
        structure = hn.parse_structure(req.layer_structure)
    except (TypeError, ValueError) as e:
        raise InvalidField("layer_structure", str(e)) from None
    activation, init = req.activation_func or "linear", req.weight_init or "Normal"
    if activation not in hn.ACTIVATIONS:
        raise InvalidField("activation_func", f"valid: {', '.join(hn.ACTIVATIONS)}")
    if init not in hn.WEIGHT_INITS:
        raise InvalidField("weight_init", f"valid: {', '.join(hn.WEIGHT_INITS)}")
    net = hn.new_hypernetwork(req.name, sizes, structure, activation, init, bool(req.add_layer_norm),
                              bool(req.use_dropout))
    hn.save_hypernetwork(net, path, 0, (model.info.shorthash, model.info.model_name))
    return path


def check_train_request(req: TrainHypernetworkRequest, folder: Path, templates: Path
                        ) -> tuple[Path, list[str], list[tuple[float, int]]]:
    path = train_emb.existing_file(folder, req.hypernetwork_name, "hypernetwork_name", "hypernetwork")
    return (path, *train_emb.check_training(req, templates))


def train_hypernetwork(job, model: LoadedModel, req: TrainHypernetworkRequest, folder: Path, log_root: Path,
                       templates: Path, preview: Callable[[str], tuple[object, str]] | None = None
                       ) -> train_emb.TrainResult:
    """Train the hypernetwork's MLPs (dropout active, as A1111 trains them) for ``req.steps``; save it over its
    file, copies every save_hypernetwork_every steps in ``log_root/<date>/<name>/hypernetworks``, previews (drawn
    with ``<hypernet:NAME:1>``) every create_image_every steps."""
    path, lines, schedule = check_train_request(req, folder, templates)
    net = hn.load_hypernetwork(hn.HypernetworkInfo(req.hypernetwork_name, path))
    pipe = model.pipe
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise InvalidField("sd_model_checkpoint", "hypernetworks are trained for SD1.x / SD2.x models here; the "
                                                  "loaded checkpoint is SDXL")
    device = next(pipe.unet.parameters()).device
    for pair in net.layers.values():
        for module in pair:
            module.to(device).train().requires_grad_(True)
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            return encoder(ids)[0]

    checkpoint = (model.info.shorthash, model.info.model_name)
    trainee = train_emb.Trainee("hypernetwork", req.hypernetwork_name, path, net.parameters(), encode,
                                lambda file, step: hn.save_hypernetwork(net, file, step, checkpoint),
                                net.step, req.save_hypernetwork_every)
    def drawn(prompt: str) -> tuple[object, str]:
        # the hooks are on for the run: the preview draws with the MLPs as trained so far, dropout off
        for pair in net.layers.values():
            for module in pair:
                module.eval()
        try:
            return preview(prompt)
        finally:
            for pair in net.layers.values():
                for module in pair:
                    module.train()

    with hn.apply_hypernetworks(pipe.unet, [(net, 1.0)]):
        return train_emb.train(job, model, req, trainee, lines, schedule, log_root,
                               drawn if preview is not None else None)
