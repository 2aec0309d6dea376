"""Soft inpainting (A1111 1.8's built-in "Soft Inpainting" script): its settings, as they ride in a request
(``alwayson_scripts {"soft inpainting": {"args": [enabled, schedule bias, preservation strength, transition
contrast boost, mask influence, difference threshold, difference contrast]}}``) and in the infotext. Pure data;
webui/engine/soft_inpainting.py does the work."""
from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from typing import Any

from webui.core.errors import InvalidField

SCRIPT_KEY = "soft inpainting"


@dataclass(frozen=True)
class SoftInpainting:
    schedule_bias: float = 1.0             # A1111's mask_blend_power
    preservation_strength: float = 0.5     # mask_blend_scale
    transition_contrast_boost: float = 4.0  # inpaint_detail_preservation
    mask_influence: float = 0.0            # composite_mask_influence
    difference_threshold: float = 0.5      # composite_difference_threshold
    difference_contrast: float = 2.0       # composite_difference_contrast


# the infotext keys, in A1111's order (after "Soft inpainting enabled: True")
INFOTEXT_KEYS = ("Soft inpainting schedule bias", "Soft inpainting preservation strength",
                 "Soft inpainting transition contrast boost", "Soft inpainting mask influence",
                 "Soft inpainting difference threshold", "Soft inpainting difference contrast")
ENABLED_KEY = "Soft inpainting enabled"
# (minimum, maximum) of each value, as A1111's sliders
RANGES = ((0.0, 8.0), (0.0, 8.0), (1.0, 32.0), (0.0, 1.0), (0.0, 8.0), (0.0, 8.0))


def from_request(alwayson_scripts: dict[str, Any] | None) -> SoftInpainting | None:
    """The request's settings when soft inpainting is on (key matched case-insensitively), else None. Missing
    trailing args take A1111's defaults; InvalidField for values that are not numbers or out of range."""
    entry = next((v for k, v in (alwayson_scripts or {}).items()
                  if isinstance(k, str) and k.strip().lower() == SCRIPT_KEY), None)
    if entry is None:
        return None
    args = entry.get("args") if isinstance(entry, dict) else entry
    if not isinstance(args, list | tuple):
        raise InvalidField("alwayson_scripts.soft inpainting.args", "args must be a list: [enabled, schedule "
                                                                    "bias, preservation strength, ...]")
    if not args or not args[0]:
        return None
    values = []
    for i, (f, (low, high)) in enumerate(zip(fields(SoftInpainting), RANGES)):
        value = args[i + 1] if i + 1 < len(args) else f.default
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InvalidField(f"alwayson_scripts.soft inpainting.args[{i + 1}]",
                               f"{f.name} must be a number, got {value!r}") from None
        if not low <= value <= high:
            raise InvalidField(f"alwayson_scripts.soft inpainting.args[{i + 1}]",
                               f"{f.name} must be between {low:g} and {high:g}, got {value:g}")
        values.append(value)
    return SoftInpainting(*values)


def to_args(settings: SoftInpainting | None) -> list:
    """The alwayson_scripts args for these settings (None: off)."""
    return [False, *astuple(SoftInpainting())] if settings is None else [True, *astuple(settings)]


def infotext(settings: SoftInpainting) -> dict[str, Any]:
    return {ENABLED_KEY: True, **dict(zip(INFOTEXT_KEYS, astuple(settings)))}


def from_infotext(parsed: dict[str, Any]) -> list | None:
    """The alwayson args an infotext's keys give (None when it has no "Soft inpainting enabled: True")."""
    if str(parsed.get(ENABLED_KEY, "")).lower() != "true":
        return None
    values = []
    for key, f in zip(INFOTEXT_KEYS, fields(SoftInpainting)):
        try:
            values.append(float(parsed.get(key, f.default)))
        except (TypeError, ValueError):
            values.append(f.default)
    return [True, *values]
