"""Settings stored in config.json: typed defaults, validation, atomic saving."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Setting:
    default: Any
    label: str
    section: str = "Saving images"
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


def _defs() -> dict[str, Setting]:
    s = Setting
    return {
        "sd_model_checkpoint": s("", "Stable Diffusion checkpoint", "Stable Diffusion"),
        "quicksettings_list": s(["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"],
                                "Quicksettings list: settings shown at the top of the page instead of in this tab "
                                "(requires a restart)", "User interface"),
        "sd_checkpoints_limit": s(1, "Checkpoints kept loaded (RAM cache size)", "Stable Diffusion",
                                  minimum=1, maximum=10),
        "sd_vae": s("Automatic", "SD VAE", "Stable Diffusion"),
        "sd_vae_overrides_per_model_preferences": s(True, "Selected VAE overrides per-model preferences (a "
                                                    "checkpoint card's Preferred VAE)", "Stable Diffusion"),
        "emphasis": s("Original", "Emphasis mode: how (word:1.2) weights apply", "Stable Diffusion",
                      choices=("Original", "No norm", "Ignore", "None")),
        "CLIP_stop_at_last_layers": s(1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12),
        "inpainting_mask_weight": s(1.0, "Inpainting conditioning mask strength (inpainting checkpoints)",
                                    "Stable Diffusion", minimum=0.0, maximum=1.0),
        "eta_ancestral": s(1.0, "Eta for ancestral samplers (Euler a, DPM++ 2S a, DPM fast)", "Sampler parameters",
                           minimum=0.0, maximum=1.0),
        "eta_ddim": s(0.0, "Eta for DDIM", "Sampler parameters", minimum=0.0, maximum=1.0),
        "eta_noise_seed_delta": s(0, "Eta noise seed delta (ENSD)", "Sampler parameters", minimum=0),
        "s_churn": s(0.0, "sigma churn (Euler)", "Sampler parameters", minimum=0.0, maximum=100.0),
        "s_tmin": s(0.0, "sigma tmin (Euler)", "Sampler parameters", minimum=0.0, maximum=10.0),
        "s_tmax": s(0.0, "sigma tmax (Euler; 0 = infinity)", "Sampler parameters", minimum=0.0, maximum=999.0),
        "s_noise": s(1.0, "sigma noise (Euler, DPM++ SDE)", "Sampler parameters", minimum=0.0, maximum=1.1),
        "sigma_min": s(0.0, "Schedule min sigma (Karras, Exponential, Beta schedules; 0 = the model's, ~0.03)",
                       "Sampler parameters", minimum=0.0, maximum=100.0),
        "sigma_max": s(0.0, "Schedule max sigma (Karras, Exponential, Beta schedules; 0 = the model's, ~14.6)",
                       "Sampler parameters", minimum=0.0, maximum=1000.0),
        "rho": s(0.0, "Schedule rho (Karras; 0 = 7; higher: a steeper noise schedule)", "Sampler parameters",
                 minimum=0.0, maximum=100.0),
        "initial_noise_multiplier": s(1.0, "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5),
        "img2img_color_correction": s(False, "Apply color correction to img2img results to match original colors",
                                      "img2img"),
        "img2img_extra_noise": s(0.0, "Extra noise multiplier for img2img and hires fix", "img2img",
                                 minimum=0.0, maximum=1.0),
        "sgm_noise_multiplier": s(False, "SGM noise multiplier: the start noise scaled by sqrt(1 + sigma^2), as SDXL's "
                                         "original code (sigma-based samplers)", "Sampler parameters"),
        "always_discard_next_to_last_sigma": s(False, "Always discard next-to-last sigma (Euler, Euler a, LMS, DPM++ "
                                                      "2M family, UniPC)", "Sampler parameters"),
        "uni_pc_variant": s("bh1", "UniPC variant", "Sampler parameters", choices=("bh1", "bh2")),
        "uni_pc_order": s(3, "UniPC order (below the number of steps)", "Sampler parameters", minimum=1, maximum=50),
        "s_min_uncond": s(0.0, "Negative Guidance minimum sigma (NGMS): skip the negative prompt on every other step "
                          "once the noise is below this sigma; 0 = off, higher = faster", "Optimizations",
                          minimum=0.0, maximum=15.0),
        "s_min_uncond_all": s(False, "Negative Guidance minimum sigma all steps (not every other one)",
                              "Optimizations"),
        "skip_early_cond": s(0.0, "Ignore negative prompt during early sampling (fraction of the steps; 0 = off)",
                             "Optimizations", minimum=0.0, maximum=1.0),
        "randn_source": s("GPU", "Random number generator source", "Stable Diffusion", choices=("GPU", "CPU")),
        "samples_save": s(True, "Always save all generated images"),
        "samples_format": s("png", "File format for images", choices=("png", "jpg", "jpeg", "webp")),
        "samples_filename_pattern": s("", "Images filename pattern ([seed] when empty; [seed]-[prompt_spaces] "
                                          "when not saving to a subdirectory)"),
        "save_images_add_number": s(True, "Add number to filename when saving"),
        "save_to_dirs": s(True, "Save images to a subdirectory"),
        "use_save_to_dirs_for_ui": s(False, "When using \"Save\" button, save images to a subdirectory"),
        "save_selected_only": s(True, "When using 'Save' button, only save a single selected image"),
        "grid_zip_filename_pattern": s("", "Archive filename pattern (\"Zip\" button; "
                                           "[datetime]_[[model_name]]_[seed]-[seed_last] when empty)"),
        "directories_filename_pattern": s("[date]", "Directory name pattern (\"/\" nests folders; "
                                              "[prompt_words] when empty)"),
        "directories_max_prompt_words": s(8, "Max prompt words for [prompt_words] pattern", minimum=1, maximum=20),
        "enable_pnginfo": s(True, "Save text information about generation parameters as chunks to png files"),
        "save_txt": s(False, "Create a text file next to every image with generation parameters"),
        "use_original_name_batch": s(True, "Use original name for output filename during batch process in extras "
                                           "tab"),
        "grid_save": s(True, "Always save all generated image grids"),
        "save_images_before_color_correction": s(False, "Save a copy of image before applying color correction to "
                                                        "img2img results"),
        "save_images_before_highres_fix": s(False, "Save a copy of image before applying highres fix"),
        "save_incomplete_images": s(False, "Save incomplete images (interrupted or skipped)"),
        "save_init_img": s(False, "Save init images when using img2img (outdir_init_images, named by MD5)"),
        "save_mask": s(False, "For inpainting, save a copy of the greyscale mask (beside the image, \"-mask\")"),
        "grid_format": s("png", "File format for grids", choices=("png", "jpg", "jpeg", "webp")),
        "return_grid": s(True, "Show grid in gallery"),
        "grid_only_if_multiple": s(True, "Do not save grids consisting of one picture"),
        "grid_prevent_empty_spots": s(False, "Prevent empty spots in grid (when set to autodetect)"),
        "n_rows": s(-1, "Grid row count; use -1 for autodetect and 0 for it to be same as batch size", minimum=-1,
                    maximum=16),
        "jpeg_quality": s(80, "Quality for saved jpeg and webp images", minimum=1, maximum=100),
        "outdir_samples": s("", "Output directory for images; if empty, the per-tab folders below",
                               "Paths for saving"),
        "outdir_txt2img_samples": s("outputs/txt2img-images", "Output directory for txt2img images",
                               "Paths for saving"),
        "outdir_img2img_samples": s("outputs/img2img-images", "Output directory for img2img images",
                               "Paths for saving"),
        "outdir_extras_samples": s("outputs/extras-images", "Output directory for images from extras tab",
                               "Paths for saving"),
        "outdir_txt2img_grids": s("outputs/txt2img-grids", "Output directory for txt2img grids",
                               "Paths for saving"),
        "outdir_img2img_grids": s("outputs/img2img-grids", "Output directory for img2img grids", "Paths for saving"),
        "outdir_save": s("log/images", "Directory for saving images using the Save button", "Paths for saving"),
        "outdir_init_images": s("outputs/init-images", "Directory for saving init images when using img2img",
                                "Paths for saving"),
        "sd_lora": s("None", "Add network to prompt: this LoRA's tag on every prompt", "Extra Networks"),
        "sd_hypernetwork": s("None", "Add hypernetwork to prompt: this hypernetwork's tag on every prompt",
                             "Extra Networks"),
        "extra_networks_default_multiplier": s(1.0, "Default multiplier for extra networks (a card's tag; a "
                                                    "<lora:name> tag without a weight)", "Extra Networks",
                                                    minimum=0.0, maximum=2.0),
        "lora_show_all": s(False, "Always show all networks on the Lora page (else those of the loaded model's SD "
                                  "version and of unknown version)", "Extra Networks"),
        "extra_networks_add_text_separator": s(" ", "Extra networks separator: the text put between the prompt and "
                                                    "a card's text", "Extra Networks"),
        "extra_networks_card_order_field": s("Path", "Default order field for Extra Networks cards",
                                             "Extra Networks", choices=("Path", "Name", "Date Created",
                                                                        "Date Modified")),
        "extra_networks_card_order": s("Ascending", "Default order for Extra Networks cards", "Extra Networks",
                                       choices=("Ascending", "Descending")),
        "live_previews_enable": s(True, "Show live previews of the created image", "Live previews"),
        "show_progress_every_n_steps": s(10, "Live preview display period (steps; -1 or 0: no previews while "
                                         "sampling)", "Live previews", minimum=-1, maximum=100),
        "show_progress_type": s("Full", "Live preview method", "Live previews", choices=("Full", "Approx cheap")),
        "torch_compile": s(False, "Compile the UNet with torch.compile (about a quarter less time per image on a CPU "
                           "after a one-off compile of one to three minutes per image size; not used for jobs with "
                           "a LoRA)", "Optimizations"),
        "hires_fix_refiner_pass": s("second pass", "Hires fix: which pass the refiner runs in", "Refiner",
                                    choices=("first pass", "second pass", "both passes")),
        "refiner_switch_by_sample_steps": s(False, "Switch to the refiner by sampling steps instead of by the noise "
                                            "level (timestep)", "Refiner"),
        "pad_cond_uncond": s(False, "Pad prompt/negative prompt to be same length (one UNet call per step when "
                             "their chunk counts differ; changes the picture)", "Optimizations"),
        "max_batch_size": s(8, "Largest batch size a request may ask for", "Limits", minimum=1, maximum=64),
        "max_batch_count": s(100, "Largest batch count a request may ask for", "Limits", minimum=1, maximum=10000),
        "xyz_max_cells": s(256, "Largest number of cells an X/Y/Z plot or prompt matrix may have", "Limits",
                           minimum=1, maximum=100000),
        "img_max_size_mp": s(200, "Largest grid a script may make, in megapixels", "Limits", minimum=1, maximum=2000),
        "max_image_side": s(2048, "Largest width or height a request may ask for", "Limits", minimum=64, maximum=8192),
        "control_net_unit_count": s(3, "Multi-ControlNet: ControlNet unit number (requires a restart)", "ControlNet",
                                    minimum=1, maximum=10),
        "control_net_model_cache_size": s(2, "ControlNet models kept loaded (cache size)", "ControlNet",
                                          minimum=1, maximum=10),
        "control_net_no_detectmap": s(False, "Do not append detected maps to the output", "ControlNet"),
        "upscale_max_side": s(8192, "Largest width or height an upscale (Extras, SD upscale) may produce", "Limits",
                              minimum=64, maximum=32768),
        "ESRGAN_tile": s(192, "Tile size for upscaler models (0 = no tiling)", "Upscaling", minimum=0, maximum=1024),
        "ESRGAN_tile_overlap": s(8, "Tile overlap for upscaler models, in pixels", "Upscaling", minimum=0, maximum=128),
    }


class Settings:
    """The studio's settings; one instance, built by app.py and passed down."""

    def __init__(self, path: Path | None, values: dict[str, Any] | None = None):
        self.path = path
        self.defs = _defs()
        self._lock = threading.Lock()
        self._values = {k: d.default for k, d in self.defs.items()}
        if path is not None and path.exists():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            # Unknown keys (from extensions or A1111) are kept so saving never loses them.
            self._values.update({k: v for k, v in stored.items()})
        if values:
            self._values.update(values)

    def add(self, key: str, setting: Setting) -> None:
        """Register a setting (extensions' on_ui_settings)."""
        self.defs[key] = setting
        self._values.setdefault(key, setting.default)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def validate(self, key: str, value: Any) -> Any:
        """The value coerced to the setting's type; ValueError with a message when it does not fit."""
        d = self.defs.get(key)
        if d is None:
            return value
        kind = type(d.default)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number")
            if kind is int and float(value) != int(value):
                raise ValueError(f"{key} must be a whole number")
            value = kind(value)
            if d.minimum is not None and value < d.minimum or d.maximum is not None and value > d.maximum:
                raise ValueError(f"{key} must be between {d.minimum} and {d.maximum}")
        elif kind is str and not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        elif kind is list:   # a list of names; A1111's clients also send them comma-separated
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of names")
        if d.choices and value not in d.choices:
            raise ValueError(f"{key} must be one of {', '.join(map(str, d.choices))}")
        return value

    def update(self, changes: dict[str, Any], save: bool = True) -> list[str]:
        """Validate all, then apply all (nothing applied when one fails); returns changed keys."""
        checked = {k: self.validate(k, v) for k, v in changes.items()}
        with self._lock:
            changed = [k for k, v in checked.items() if self._values.get(k) != v]
            self._values.update(checked)
            if save:
                self._save_locked()
        return changed

    def with_overrides(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """A copy of the values with per-request overrides applied (never saved)."""
        values = self.as_dict()
        for k, v in (overrides or {}).items():
            values[k] = self.validate(k, v)
        return values

    def _save_locked(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._values, f, indent=4, ensure_ascii=False)
        os.replace(tmp, self.path)
