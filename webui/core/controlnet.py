"""ControlNet units as plain data: the fields of sd-webui-controlnet's ControlNetUnit (its API and infotext),
parsing from an API dict (with the extension's aliases), and the "ControlNet N" infotext values.

A unit rides in a request as ``alwayson_scripts = {"controlnet": {"args": [unit, ...]}}``; images stay base64
strings (or PIL images when a face builds the unit itself) so a request remains serialisable data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from webui.core.errors import InvalidField

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
_RESIZE_ALIASES = {
    "inner fit (scale to fit)": "Crop and Resize", "scale to fit (inner fit)": "Crop and Resize",
    "outer fit (shrink to fit)": "Resize and Fill", "envelope (outer fit)": "Resize and Fill",
    "just resize": "Just Resize", "crop and resize": "Crop and Resize", "resize and fill": "Resize and Fill",
}
_FIELD_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
SCRIPT_KEY = "controlnet"


@dataclass
class ControlNetUnit:
    """One ControlNet unit. ``image`` is None (txt2img: an error; img2img: the img2img image), a base64 string,
    a PIL image, or {"image": ..., "mask": ...}. -1 for processor_res / thresholds means the module's default."""

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: Any = None
    mask: Any = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    save_detected_map: bool = True
    hr_option: str = "Both"          # "Both", "Low res only", "High res only"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)   # fields we keep but do not use

    def infotext(self) -> str:
        """The value of "ControlNet N" in the infotext: "Module: canny, Model: ..., Weight: 1.0, ..." (the
        extension writes each field with str(); its parser splits on ", " and ": ")."""
        parts = []
        for name in INFOTEXT_FIELDS:
            value = getattr(self, name)
            text = str(value)
            if "," in text or ":" in text:
                raise InvalidField(name, f"{name} {text!r} cannot be written into the infotext (',' or ':')")
            parts.append(f"{' '.join(w.capitalize() for w in name.split('_'))}: {text}")
        return ", ".join(parts)


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidField(name, f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidField(name, f"{name} must be a number, got {value!r}") from None
    return int(number) if kind is int else number


def _choice(name: str, value: Any, choices: tuple[str, ...], aliases: dict[str, str] | None = None) -> str:
    if isinstance(value, bool):
        raise InvalidField(name, f"{name} must be one of {', '.join(choices)} (or 0-{len(choices) - 1})")
    if isinstance(value, int | float) and int(value) == value and 0 <= int(value) < len(choices):
        return choices[int(value)]
    if isinstance(value, str):
        key = value.strip().lower()
        for c in choices:
            if c.lower() == key:
                return c
        if aliases and key in aliases:
            return aliases[key]
    raise InvalidField(name, f"{name} must be one of {', '.join(choices)} (or 0-{len(choices) - 1}), got {value!r}")


def unit_from_dict(data: dict[str, Any], index: int = 0) -> ControlNetUnit:
    """A unit from the API's JSON object (aliases input_image -> image, guidance -> guidance_end, ...).
    Raises InvalidField naming ``controlnet[index].<field>``."""
    if isinstance(data, ControlNetUnit):
        return data
    if not isinstance(data, dict):
        raise InvalidField(f"controlnet[{index}]", "a ControlNet unit must be a JSON object")
    known = {f.name for f in fields(ControlNetUnit)} - {"extra"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        key = _FIELD_ALIASES.get(key, key)
        (values if key in known else extra)[key] = value
    unit = ControlNetUnit(extra=extra)
    prefix = f"controlnet[{index}]."
    try:
        for key, value in values.items():
            if value is None and key not in ("image", "mask"):
                continue
            if key in ("enabled", "low_vram", "pixel_perfect", "save_detected_map"):
                if not isinstance(value, bool | int):
                    raise InvalidField(key, f"{key} must be true or false")
                value = bool(value)
            elif key in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
                value = _number(key, value, float)
            elif key == "processor_res":
                value = _number(key, value, int)
            elif key == "resize_mode":
                value = _choice(key, value, RESIZE_MODES, _RESIZE_ALIASES)
            elif key == "control_mode":
                value = _choice(key, value, CONTROL_MODES)
            elif key == "hr_option":
                value = _choice(key, value, ("Both", "Low res only", "High res only"))
            elif key in ("module", "model"):
                if not isinstance(value, str):
                    raise InvalidField(key, f"{key} must be a string")
            setattr(unit, key, value)
        if not 0.0 <= unit.weight <= 2.0:
            raise InvalidField("weight", f"weight must be between 0 and 2, got {unit.weight!r}")
        for name in ("guidance_start", "guidance_end"):
            if not 0.0 <= getattr(unit, name) <= 1.0:
                raise InvalidField(name, f"{name} must be between 0 and 1, got {getattr(unit, name)!r}")
        if unit.guidance_start > unit.guidance_end:
            raise InvalidField("guidance_start", f"guidance_start ({unit.guidance_start}) is after guidance_end "
                                                 f"({unit.guidance_end})")
    except InvalidField as e:
        raise InvalidField(prefix + (e.field or ""), e.message.split(": ", 1)[-1]) from None
    return unit


def units_from_request(alwayson_scripts: dict[str, Any] | None) -> list[ControlNetUnit]:
    """The enabled units of a request's alwayson_scripts["controlnet"] (key matched case-insensitively)."""
    scripts = alwayson_scripts or {}
    entry = next((v for k, v in scripts.items() if isinstance(k, str) and k.lower() == SCRIPT_KEY), None)
    if entry is None:
        return []
    args = entry.get("args") if isinstance(entry, dict) else entry
    if args is None:
        return []
    if not isinstance(args, list):
        raise InvalidField("alwayson_scripts.controlnet.args", "args must be a list of ControlNet units")
    units = [unit_from_dict(a, i) for i, a in enumerate(args)]
    for i, u in enumerate(units):
        u.extra.setdefault("index", i)
    return [u for u in units if u.enabled]


def _parse_value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_unit_infotext(text: str) -> dict[str, Any]:
    """The fields of one "ControlNet N" infotext value ("Module: canny, Model: x [hash], Weight: 1.0, ...")."""
    out: dict[str, Any] = {}
    for item in str(text).split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            continue
        name = "_".join(w.lower() for w in key.split(" "))
        if name in INFOTEXT_FIELDS:
            out[name] = _parse_value(value.strip())
    return out


def units_from_infotext(parsed: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """{unit index: fields} for every "ControlNet N" key of a parsed infotext."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in parsed.items():
        if not key.startswith("ControlNet "):
            continue
        number = key[len("ControlNet "):]
        if number.isdigit():
            found[int(number)] = parse_unit_infotext(str(value))
    return dict(sorted(found.items()))


# sd-webui-controlnet's "Control Type" choice: each type with the preprocessor it picks first. A type keeps the
# preprocessors and models whose names hold its name (lower case) or one of its other words below.
CONTROL_TYPES: dict[str, str] = {
    "All": "none", "Canny": "canny", "Depth": "depth_midas", "NormalMap": "normal_bae", "OpenPose": "openpose_full",
    "MLSD": "mlsd", "Lineart": "lineart_standard", "SoftEdge": "softedge_pidinet",
    "Scribble/Sketch": "scribble_pidinet", "Segmentation": "seg_ofade20k", "Shuffle": "shuffle",
    "Tile/Blur": "tile_resample", "Inpaint": "inpaint_only", "InstructP2P": "none", "Reference": "reference_only",
    "Recolor": "recolor_luminance", "Revision": "revision_clipvision", "T2I-Adapter": "none",
    "IP-Adapter": "ip-adapter_clip_sd15", "Instant_ID": "instant_id",
}
_TYPE_WORDS = {
    "instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
    "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"), "ip-adapter": ("ip_adapter", "ipadapter"),
    "scribble/sketch": ("scribble", "sketch"), "tile/blur": ("tile", "blur"), "openpose": ("openpose", "densepose"),
}
# line-drawing types also offer the inverting preprocessor (white-background drawings)
_WITH_INVERT = ("canny", "lineart", "scribble/sketch", "mlsd")


def control_type_choices(control_type: str, modules: list[str], models: list[tuple[str, str | None]],
                         base_kind: str | None = None) -> tuple[list[str], list[str], str, str]:
    """(preprocessors, models, default preprocessor, default model) that a Control Type offers.

    ``modules``: preprocessor names, "none" first; ``models``: (title, kind "SD1.x" / "SD2.x" / "SDXL") of the
    usable ControlNets; ``base_kind``: the loaded checkpoint's kind, which a type's models must match (all match
    when it is unknown). "All" offers everything and picks nothing."""
    if control_type not in CONTROL_TYPES:
        raise InvalidField("control_type", f"unknown Control Type {control_type!r}; valid: "
                                           f"{', '.join(CONTROL_TYPES)}")
    if control_type == "All":
        return list(modules), ["None", *(title for title, _ in models)], "none", "None"
    pattern = control_type.lower()
    words = (pattern, *_TYPE_WORDS.get(pattern, ()))
    shown = [m for m in modules if m.lower() == "none" or any(w in m.lower() for w in words)]
    if pattern in _WITH_INVERT:
        shown += [m for m in modules if "invert" in m.lower() and m not in shown]
    kept = ["None", *(title for title, kind in models if any(w in title.lower() for w in words)
                      and (base_kind is None or kind is None or kind == base_kind))]
    default = CONTROL_TYPES[control_type]
    if default not in shown:
        default = shown[0]
    default_model = "None"
    if len(kept) > 1:
        # the extension prefers a ControlNet 1.1 file ("control_v11p_sd15_canny") where there is one
        default_model = next((t for t in kept[1:] if "11" in t.split("[")[0]), kept[1])
    return shown, kept, default, default_model
