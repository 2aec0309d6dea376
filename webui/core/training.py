"""The Train tab's requests (A1111's /sdapi/v1/create/embedding, /train/embedding, /create/hypernetwork and
/train/hypernetwork fields)."""
from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass
class CreateHypernetworkRequest:
    """A1111's /sdapi/v1/create/hypernetwork fields."""
    name: str = ""
    enable_sizes: list = field(default_factory=lambda: [768, 320, 640, 1024, 1280])
    overwrite_old: bool = False
    layer_structure: object = "1, 2, 1"     # "1, 2, 1" or [1, 2, 1]: widths as multiples of the input's
    activation_func: str = "linear"
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False


@dataclass
class TrainHypernetworkRequest(TrainEmbeddingRequest):
    """A1111's /sdapi/v1/train/hypernetwork fields: the embedding ones, for a hypernetwork."""
    hypernetwork_name: str = ""
    learn_rate: str = "0.00001"
    save_hypernetwork_every: int = 500
