"""Where the studio's files live, derived once from the flags."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = REPO_ROOT / "webui" / "models" / "configs"


@dataclass(frozen=True)
class Paths:
    data: Path
    checkpoints: tuple[Path, ...]
    lora: Path
    embeddings: Path
    vae: Path
    controlnet: Path
    esrgan: Path
    extensions: Path
    outputs: Path
    ti_templates: Path = REPO_ROOT / "textual_inversion_templates"   # the Train tab's prompt templates
    hypernetwork: Path | None = None   # None: models/hypernetworks under the data dir
    controlnet_extra: tuple[Path, ...] = ()   # also scanned: --controlnet-dir, the bundled ControlNet's folder

    @property
    def controlnets(self) -> tuple[Path, ...]:
        """The ControlNet folders, the data dir's first (its annotators/ holds the preprocessors' weights)."""
        return (self.controlnet, *self.controlnet_extra)

    @property
    def config_file(self) -> Path:
        return self.data / "config.json"

    @property
    def hash_cache(self) -> Path:
        return self.data / "cache.json"

    @property
    def styles_file(self) -> Path:
        return self.data / "styles.csv"

    @property
    def upscaler_dirs(self) -> dict[str, Path]:
        """A1111's upscaler model folders, beside models/ESRGAN: ESRGAN, RealESRGAN, SwinIR, DAT."""
        return {kind: self.esrgan.parent / kind for kind in ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")}

    @classmethod
    def from_flags(cls, args) -> Paths:
        data = Path(args.data_dir).resolve() if getattr(args, "data_dir", None) else REPO_ROOT
        models = data / "models"
        ckpts = [models / "Stable-diffusion"]
        if getattr(args, "ckpt_dir", None):
            ckpts.append(Path(args.ckpt_dir).resolve())
        # The bundled model ships in the repository; a separate data dir still sees it.
        bundled = REPO_ROOT / "models" / "Stable-diffusion"
        if bundled not in ckpts:
            ckpts.append(bundled)

        def pick(flag: str, default: Path) -> Path:
            value = getattr(args, flag, None)
            return Path(value).resolve() if value else default

        controlnet = models / "ControlNet"
        controlnet_extra = [pick("controlnet_dir", controlnet), REPO_ROOT / "models" / "ControlNet"]
        controlnet_extra = tuple(dict.fromkeys(p for p in controlnet_extra if p != controlnet))
        return cls(
            data=data,
            checkpoints=tuple(ckpts),
            lora=pick("lora_dir", models / "Lora"),
            embeddings=pick("embeddings_dir", data / "embeddings"),
            vae=pick("vae_dir", models / "VAE"),
            controlnet=controlnet,
            controlnet_extra=controlnet_extra,
            esrgan=models / "ESRGAN",
            extensions=data / "extensions",
            outputs=data / "outputs",
            ti_templates=pick("textual_inversion_templates_dir", REPO_ROOT / "textual_inversion_templates"),
            hypernetwork=pick("hypernetwork_dir", models / "hypernetworks"),
        )

    @property
    def hypernetworks(self) -> Path:
        return self.hypernetwork or self.data / "models" / "hypernetworks"
