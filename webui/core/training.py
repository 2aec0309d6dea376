"""The Train tab's requests (A1111's /sdapi/v1/create/embedding and /sdapi/v1/train/embedding fields)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CreateEmbeddingRequest:
    name: str = ""
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


@dataclass
class TrainEmbeddingRequest:
    """A1111's /sdapi/v1/train/embedding fields (those this studio reads)."""
    embedding_name: str = ""
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = 500
    save_embedding_every: int = 500
    template_filename: str = "subject_filewords.txt"
    seed: int = 0
