"""The PNG Info tab: read an image's generation parameters and send them to txt2img."""
from __future__ import annotations

import html

import gradio as gr

from webui.core import infotext as infotext_fmt
from webui.core import soft_inpainting as soft_settings
from webui.core.request import fields_from_infotext
from webui.engine import saving
from webui.models.lora import relink_loras


def read_image_info(path: str | None) -> tuple[str, str]:
    """(infotext or "", an HTML table of every info item)."""
    if not path:
        return "", ""
    try:
        text, items = saving.read_infotext(path)
    except OSError as e:
        return "", f"<div style='color:#c00'>Not an image: {html.escape(str(e))}</div>"
    rows = "".join(f"<tr><td><b>{html.escape(str(k))}</b></td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items.items())
    body = f"<p>{html.escape(text).replace(chr(10), '<br>')}</p>" if text else "<p>No parameters found.</p>"
    return text or "", body + (f"<table>{rows}</table>" if rows else "")


USE_SAME = {"hr_checkpoint_name": "Use same checkpoint", "hr_sampler_name": "Use same sampler",
            "hr_scheduler": "Use same scheduler"}
"""The hires dropdowns' first choice: the first pass's checkpoint, sampler, schedule (a request's None)."""


# the img2img tab's soft inpainting sliders, in the order of the script's args after "enabled"
SOFT_FIELDS = ("soft_schedule_bias", "soft_preservation_strength", "soft_transition_contrast_boost",
               "soft_mask_influence", "soft_difference_threshold", "soft_difference_contrast")


def soft_paste_values(fields: dict) -> dict:
    """The soft inpainting fields from the request fields an infotext gave (off when it says nothing of it)."""
    args = ((fields.get("alwayson_scripts") or {}).get(soft_settings.SCRIPT_KEY) or {}).get("args")
    if not args:
        return {"soft_inpainting": False}
    return {"soft_inpainting": True, **dict(zip(SOFT_FIELDS, args[1:]))}


def paste_values(text: str, fields: dict, models=None) -> list:
    """Values for a generation tab's components from an infotext (unchanged where the infotext says nothing);
    with the model manager, the prompt's LoRA tags name the files whose hashes the infotext records, and checkpoint
    names become the local checkpoints' titles. What an infotext leaves out means its default: no variation seed,
    no refiner, hires fix on the first pass's checkpoint, sampler and schedule."""
    if not text:
        return [gr.update() for _ in fields]
    parsed = infotext_fmt.parse_infotext(text, defaults=True)
    relink = None if models is None else (lambda prompt, hashes: relink_loras(prompt, hashes, models.loras))
    values = {"subseed_strength": 0.0, "seed_resize_from_w": 0, "seed_resize_from_h": 0, **USE_SAME,
              **fields_from_infotext(parsed, relink=relink)}
    values["subseed_show"] = bool(values["subseed_strength"]) or values["seed_resize_from_w"] > 0
    values["refiner_enabled"] = bool(values.get("refiner_checkpoint"))
    values.update(soft_paste_values(values))
    for key in ("refiner_checkpoint", "hr_checkpoint_name"):
        if models is not None and values.get(key) and values[key] != USE_SAME.get(key):
            try:
                values[key] = models.find(str(values[key])).title
            except Exception:  # noqa: BLE001 - not here: the name stays as written, the job will say so
                pass
    for key, same in USE_SAME.items():
        if not values.get(key):
            values[key] = same
    out = []
    for name in fields:
        out.append(values[name] if name in values else gr.update())
    return out


def build(txt2img_fields: dict, tabs: gr.Tabs, controlnet=None, models=None, img2img=None,
          extras_image=None) -> None:
    """The PNG Info tab. "Send to txt2img" fills the txt2img fields and its ControlNet units (when given); with the
    img2img tab (a GenerationTab) "Send to img2img" / "Send to inpaint" put the image there with its parameters,
    and with the Extras tab's input image "Send to extras" puts it there, as A1111's PNG Info does."""
    with gr.Row():
        image = gr.Image(label="Source", type="filepath", elem_id="pnginfo_image", sources=["upload"])
        with gr.Column():
            html_out = gr.HTML(elem_id="pnginfo_html")
            text = gr.Textbox(label="Parameters", lines=6, elem_id="pnginfo_generation_info", interactive=False)
            with gr.Row():
                send = gr.Button("Send to txt2img", elem_id="txt2img_tab")
                send_i2i = gr.Button("Send to img2img", elem_id="img2img_tab", visible=img2img is not None)
                send_inpaint = gr.Button("Send to inpaint", elem_id="inpaint_tab", visible=img2img is not None)
                send_extras = gr.Button("Send to extras", elem_id="extras_tab", visible=extras_image is not None)
    image.change(lambda p: read_image_info(p)[::-1], image, [html_out, text])
    from webui.ui.generation_tab import paste_controlnet
    cn_outputs = controlnet.inputs if controlnet is not None else []

    def send_to_txt2img(t: str) -> list:
        cn = paste_controlnet(controlnet, t) if controlnet is not None and t else [gr.update() for _ in cn_outputs]
        return [*paste_values(t, txt2img_fields, models), *cn, gr.Tabs(selected="tab_txt2img")]

    send.click(send_to_txt2img, text, [*txt2img_fields.values(), *cn_outputs, tabs])

    def opened(path):
        from PIL import Image
        if not path:
            return None
        with Image.open(path) as im:
            return im.convert("RGB")

    if img2img is not None:
        hires = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_scale", "hr_resize_x", "hr_resize_y",
                 "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt")
        fields = {k: v for k, v in img2img.fields.items()
                  if k not in img2img.i2i_fields and k not in hires and k != "styles"}
        tail = [img2img.mode_state, img2img.subtabs, tabs, *fields.values()]

        def to_img2img(path, t):
            return [opened(path), "img2img", gr.Tabs(selected="img2img"), gr.Tabs(selected="tab_img2img"),
                    *paste_values(t, fields, models)]

        def to_inpaint(path, t):
            im = opened(path)
            editor = {"background": im, "layers": [], "composite": im} if im is not None else None
            return [editor, "inpaint", gr.Tabs(selected="inpaint"), gr.Tabs(selected="tab_img2img"),
                    *paste_values(t, fields, models)]

        send_i2i.click(to_img2img, [image, text], [img2img.plain_image, *tail])
        send_inpaint.click(to_inpaint, [image, text], [img2img.inpaint_editor, *tail])
    if extras_image is not None:
        send_extras.click(lambda path: [opened(path), gr.Tabs(selected="tab_extras")], image, [extras_image, tabs])
