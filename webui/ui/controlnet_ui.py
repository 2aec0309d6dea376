"""ControlNet in the UI: the units section (accordion) of txt2img and img2img, and the ControlNet tab
(preprocess and preview, and a pose editor: drag the keypoints of a detected or default pose on a canvas, load
and save OpenPose JSON, render the map). A unit's widgets become the same unit dict the API takes, in
request.alwayson_scripts["controlnet"]["args"], so both faces make the same image."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from webui.core.controlnet import CONTROL_MODES, CONTROL_TYPES, RESIZE_MODES
from webui.core.errors import StudioError
from webui.engine import saving
from webui.engine.openpose import COLOURS, LIMBS, Pose, default_pose, draw
from webui.engine.processing import Engine
from webui.ui.common import error_html

UNIT_WIDGETS = ("enabled", "image", "use_img2img", "module", "model", "weight", "guidance_start", "guidance_end",
                "control_mode", "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b")


def _editor_image_and_mask(value) -> tuple[Image.Image | None, Image.Image | None]:
    """(image, mask) from an image editor: the composite (a drawing over white), and any painted layers as a
    white-on-black mask (for the inpaint modules)."""
    if value is None:
        return None, None
    if isinstance(value, Image.Image):
        return value, None
    background, composite = value.get("background"), value.get("composite")
    layers = [lay for lay in value.get("layers") or [] if lay is not None]
    mask = None
    if layers:
        alpha = np.zeros(layers[0].size[::-1], dtype=bool)
        for lay in layers:
            alpha |= np.asarray(lay.convert("RGBA"))[..., 3] > 0
        if alpha.any():
            mask = Image.fromarray((alpha * 255).astype("uint8"))
    if composite is not None and np.asarray(composite.convert("RGBA"))[..., 3].max() == 0:
        composite = None
    return composite or background, mask


def unit_from_widgets(enabled, image, use_img2img, module, model, weight, guidance_start, guidance_end,
                      control_mode, resize_mode, pixel_perfect, processor_res, threshold_a, threshold_b) -> dict:
    """The API unit dict for one unit's widget values (images stay PIL; the engine takes both)."""
    picture, mask = (None, None) if use_img2img else _editor_image_and_mask(image)
    if picture is not None and not str(module).startswith("inpaint"):
        mask = None
    return {"enabled": bool(enabled), "image": picture, "mask": mask, "module": module or "none",
            "model": model or "None", "weight": float(weight), "guidance_start": float(guidance_start),
            "guidance_end": float(guidance_end), "control_mode": control_mode, "resize_mode": resize_mode,
            "pixel_perfect": bool(pixel_perfect), "processor_res": int(processor_res),
            "threshold_a": float(threshold_a), "threshold_b": float(threshold_b)}


class ControlNetSection:
    """N units (setting control_net_unit_count) in an accordion; ``inputs`` are all their widgets in order."""

    def __init__(self, engine: Engine, tab: str):
        self.engine = engine
        self.tab = tab
        self.units: list[dict[str, gr.components.Component]] = []
        self.inputs: list = []

    def build(self) -> None:
        e, m = self.engine, self.tab
        support = e.controlnet
        count = int(e.settings.get("control_net_unit_count", 3) or 3)
        modules = support.module_names(usable_only=True)
        with gr.Accordion("ControlNet", open=False, elem_id=f"{m}_controlnet"):
            unavailable = [p.unavailable for p in support.preprocessors.values() if p.unavailable]
            gr.Markdown(f"{len(unavailable)} preprocessors cannot run offline here (see the ControlNet tab).",
                        elem_id=f"{m}_controlnet_note")
            with gr.Tabs():
                for k in range(count):
                    with gr.Tab(f"ControlNet Unit {k}", elem_id=f"{m}_controlnet_unit_{k}"):
                        self.units.append(self._unit(k, modules))
        for u in self.units:
            self.inputs += [u[name] for name in UNIT_WIDGETS]

    def _unit(self, k: int, modules: list[str]) -> dict:
        e, m = self.engine, self.tab
        store = e.models.controlnets
        p = f"{m}_controlnet_{k}"
        w: dict = {}
        with gr.Row():
            w["image"] = gr.ImageEditor(label="Image (upload, or draw a scribble)", type="pil", format="png",
                                        elem_id=f"{p}_image",
                                        brush=gr.Brush(colors=["#000000", "#ffffff"]), height=320)
            with gr.Column():
                preview = gr.Image(label="Preprocessor preview", type="numpy", format="png", interactive=False,
                                   elem_id=f"{p}_preview", height=280)
                with gr.Row():
                    run_preview = gr.Button("💥 Preview", size="sm", elem_id=f"{p}_preview_button")
                    save_map = gr.Button("💾 Save detected map", size="sm", elem_id=f"{p}_save_map")
                status = gr.HTML("", elem_id=f"{p}_status")
        with gr.Row():
            w["enabled"] = gr.Checkbox(False, label="Enable", elem_id=f"{p}_enable")
            w["pixel_perfect"] = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{p}_pixel_perfect")
            w["use_img2img"] = gr.Checkbox(False, label="Use the img2img image", elem_id=f"{p}_use_img2img",
                                           visible=m == "img2img")
        w["control_type"] = gr.Radio(list(CONTROL_TYPES), value="All", label="Control Type",
                                     elem_id=f"{p}_control_type")
        with gr.Row():
            w["module"] = gr.Dropdown(modules, value="none", label="Preprocessor", elem_id=f"{p}_module")
            w["model"] = gr.Dropdown(["None", *store.titles()], value="None", label="Model", elem_id=f"{p}_model")
            refresh = gr.Button("🔄", size="sm", min_width=40, elem_id=f"{p}_refresh_models", scale=0)
        with gr.Row():
            w["weight"] = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight", elem_id=f"{p}_weight")
            w["guidance_start"] = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step",
                                            elem_id=f"{p}_guidance_start")
            w["guidance_end"] = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step",
                                          elem_id=f"{p}_guidance_end")
        with gr.Row():
            w["processor_res"] = gr.Slider(64, 2048, value=512, step=1, label="Preprocessor Resolution",
                                           elem_id=f"{p}_processor_res")
            w["threshold_a"] = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold A", elem_id=f"{p}_threshold_a")
            w["threshold_b"] = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold B", elem_id=f"{p}_threshold_b")
        w["control_mode"] = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                                     elem_id=f"{p}_control_mode")
        w["resize_mode"] = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                                    elem_id=f"{p}_resize_mode")

        def on_module(name):
            pre = e.controlnet.preprocessors.get(name)
            out = []
            for slider, comp_default in ((pre.resolution if pre else None, 512), (pre.slider_1 if pre else None, -1),
                                         (pre.slider_2 if pre else None, -1)):
                if slider is None:
                    out.append(gr.update(visible=False, value=comp_default))
                else:
                    out.append(gr.update(visible=True, label=slider.label, minimum=slider.minimum,
                                         maximum=slider.maximum, step=slider.step, value=slider.value))
            return out

        w["module"].change(on_module, w["module"], [w["processor_res"], w["threshold_a"], w["threshold_b"]],
                           queue=False)
        def on_control_type(name):
            shown, models, module, model = e.controlnet.control_type(name)
            return gr.update(choices=shown, value=module), gr.update(choices=models, value=model)

        w["control_type"].input(on_control_type, w["control_type"], [w["module"], w["model"]], queue=False)

        def refresh_models(control_type):
            store.refresh()
            return gr.update(choices=e.controlnet.control_type(control_type or "All")[1])

        refresh.click(refresh_models, w["control_type"], w["model"])

        def do_preview(image, module, res, a, b, pixel_perfect):
            picture, mask = _editor_image_and_mask(image)
            if picture is None:
                return None, error_html("upload or draw an image first")
            try:
                if pixel_perfect:
                    from webui.engine.controlnet import pixel_perfect_resolution
                    arr = np.asarray(picture.convert("RGB"))
                    res = pixel_perfect_resolution(arr, arr.shape[0], arr.shape[1], "Crop and Resize")
                out, _ = e.jobs.run(lambda job: e.controlnet.detect(module, picture, res, a, b, mask=mask),
                                    "controlnet preview")
            except StudioError as err:
                return None, error_html(err)
            return out[:, :, :3], ""

        run_preview.click(do_preview, [w["image"], w["module"], w["processor_res"], w["threshold_a"],
                                       w["threshold_b"], w["pixel_perfect"]], [preview, status])
        save_map.click(lambda im: save_detected_map(e, im), preview, status)
        w["preview"] = preview
        return w

    def units_for_request(self, values: list) -> list[dict]:
        """The unit dicts from the section's input values (in ``inputs`` order)."""
        n = len(UNIT_WIDGETS)
        return [unit_from_widgets(*values[i:i + n]) for i in range(0, len(values), n)]

    def paste_updates(self, units: dict[int, dict]) -> list:
        """Updates for every unit widget from parsed "ControlNet N" infotext fields (others unchanged)."""
        out = []
        for k in range(len(self.units)):
            fields = units.get(k)
            for name in UNIT_WIDGETS:
                if fields is None:
                    out.append(gr.update())
                elif name == "enabled":
                    out.append(True)
                elif name == "model":
                    # the whole list again: a Control Type may have narrowed it
                    titles = ["None", *self.engine.models.controlnets.titles()]
                    try:
                        out.append(gr.update(choices=titles,
                                             value=self.engine.models.controlnets.find(str(fields["model"])).title))
                    except (StudioError, KeyError):
                        out.append(gr.update())
                elif name == "module" and name in fields:
                    out.append(gr.update(choices=self.engine.controlnet.module_names(usable_only=True),
                                         value=fields[name]))
                elif name in fields:
                    out.append(fields[name])
                else:
                    out.append(gr.update())
        return out


def save_detected_map(engine: Engine, image) -> str:
    """Save a preview map as a PNG under outputs/controlnet-detected-maps/; the message says where."""
    if image is None:
        return error_html("no detected map yet: press Preview first")
    folder = engine.paths.outputs / "controlnet-detected-maps"
    path = saving.save_image(Image.fromarray(np.asarray(image).astype("uint8")), folder, None,
                             pattern="[datetime]")
    return f"<div>Saved {path}</div>"


# ------------------------------------------------------------------------------------------- the ControlNet tab
_POSE_JS = """
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
const LIMBS = %LIMBS%;
const COLOURS = %COLOURS%;
let pose = null, last = null, drag = null;
const box = () => document.querySelector('#controlnet_pose_json textarea');
function scale() { return pose ? canvas.width / pose.canvas_width : 1; }
function redraw() {
  ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!pose) return;
  canvas.height = Math.round(canvas.width * pose.canvas_height / pose.canvas_width);
  ctx.fillStyle = '#000'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const s = scale();
  for (const person of pose.people) {
    const k = person.pose_keypoints_2d || [];
    const pt = i => (k[3 * i + 2] > 0 ? [k[3 * i] * s, k[3 * i + 1] * s] : null);
    LIMBS.forEach(([a, b], i) => {
      const pa = pt(a - 1), pb = pt(b - 1);
      if (!pa || !pb) return;
      const c = COLOURS[i];
      ctx.strokeStyle = `rgb(${c[0] * 0.6},${c[1] * 0.6},${c[2] * 0.6})`; ctx.lineWidth = 6;
      ctx.beginPath(); ctx.moveTo(pa[0], pa[1]); ctx.lineTo(pb[0], pb[1]); ctx.stroke();
    });
    for (let i = 0; i < 18; i++) {
      const p = pt(i); if (!p) continue;
      const c = COLOURS[i];
      ctx.fillStyle = `rgb(${c[0]},${c[1]},${c[2]})`;
      ctx.beginPath(); ctx.arc(p[0], p[1], 5, 0, 2 * Math.PI); ctx.fill();
    }
  }
}
function sync() {
  const b = box(); if (!b) return;
  if (b.value !== last) { last = b.value; try { pose = JSON.parse(b.value); } catch (e) { pose = null; } redraw(); }
}
setInterval(sync, 250);
function at(ev) { const r = canvas.getBoundingClientRect(); return [(ev.clientX - r.left) * canvas.width / r.width,
                                                                  (ev.clientY - r.top) * canvas.height / r.height]; }
canvas.addEventListener('mousedown', ev => {
  if (!pose) return;
  const [x, y] = at(ev), s = scale(); let best = null, bd = 15;
  pose.people.forEach((person, pi) => { const k = person.pose_keypoints_2d || [];
    for (let i = 0; i < 18; i++) { if (!(k[3 * i + 2] > 0)) continue;
      const d = Math.hypot(k[3 * i] * s - x, k[3 * i + 1] * s - y); if (d < bd) { bd = d; best = [pi, i]; } } });
  drag = best;
});
canvas.addEventListener('mousemove', ev => {
  if (!drag) return; const [x, y] = at(ev), s = scale(); const k = pose.people[drag[0]].pose_keypoints_2d;
  k[3 * drag[1]] = Math.round(x / s * 100) / 100; k[3 * drag[1] + 1] = Math.round(y / s * 100) / 100; redraw();
});
const drop = () => { if (!drag) return; drag = null; const b = box(); b.value = JSON.stringify(pose); last = b.value;
  b.dispatchEvent(new Event('input', { bubbles: true })); };
canvas.addEventListener('mouseup', drop); canvas.addEventListener('mouseleave', drop);
"""


def build_tab(engine: Engine) -> dict:
    """The ControlNet tab; returns its components (the map and the pose JSON) for "send to" wiring."""
    e = engine
    support = e.controlnet
    out: dict = {}
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Input image", type="pil", format="png", elem_id="controlnet_tab_image")
            module = gr.Dropdown(support.module_names(usable_only=True), value="canny", label="Preprocessor",
                                 elem_id="controlnet_tab_module")
            with gr.Row():
                res = gr.Slider(64, 2048, value=512, step=1, label="Preprocessor Resolution",
                                elem_id="controlnet_tab_res")
                a = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold A (-1: default)",
                              elem_id="controlnet_tab_threshold_a")
                b = gr.Slider(-1, 255, value=-1, step=0.01, label="Threshold B (-1: default)",
                              elem_id="controlnet_tab_threshold_b")
            run = gr.Button("Preprocess", variant="primary", elem_id="controlnet_tab_run")
        with gr.Column():
            detected = gr.Image(label="Detected map", type="numpy", format="png",
                                interactive=False, elem_id="controlnet_tab_map")
            save = gr.Button("💾 Save detected map", size="sm", elem_id="controlnet_tab_save")
            status = gr.HTML("", elem_id="controlnet_tab_status")
    gr.Markdown("### Pose editor\nDrag the keypoints; the JSON below is the pose (OpenPose format).")
    with gr.Row():
        with gr.Column():
            gr.HTML("<canvas width='512' height='512' style='width:100%;max-width:512px;background:#000;"
                    "cursor:crosshair' id='controlnet_pose_canvas'></canvas>",
                    js_on_load=_POSE_JS.replace("%LIMBS%", json.dumps([list(x) for x in LIMBS]))
                    .replace("%COLOURS%", json.dumps([list(c) for c in COLOURS])),
                    elem_id="controlnet_pose_editor")
            with gr.Row():
                default = gr.Button("Default pose", size="sm", elem_id="controlnet_pose_default")
                detect = gr.Button("Detect pose from the input image", size="sm", elem_id="controlnet_pose_detect")
                render = gr.Button("Render map", size="sm", variant="primary", elem_id="controlnet_pose_render")
        with gr.Column():
            pose_json = gr.Textbox(label="Pose JSON", lines=6, elem_id="controlnet_pose_json")
            with gr.Row():
                upload = gr.File(label="Load OpenPose JSON", file_types=[".json"], elem_id="controlnet_pose_load")
                download = gr.File(label="Saved JSON", interactive=False, elem_id="controlnet_pose_file")
            save_json = gr.Button("Save JSON", size="sm", elem_id="controlnet_pose_save")
            pose_map = gr.Image(label="Pose map", type="numpy", format="png",
                                interactive=False, elem_id="controlnet_pose_map")
            pose_status = gr.HTML("", elem_id="controlnet_pose_status")
    unavailable = [f"<li>{p.unavailable}</li>" for p in support.preprocessors.values() if p.unavailable]
    if unavailable:
        with gr.Accordion("Preprocessors that cannot run here", open=False):
            gr.HTML("<ul>" + "".join(unavailable) + "</ul>", elem_id="controlnet_unavailable")

    def preprocess(img, name, r, ta, tb):
        if img is None:
            return None, "", error_html("upload an image first")
        try:
            arr, poses = e.jobs.run(lambda job: support.detect(name, img, r, ta, tb), "controlnet preprocess")
        except StudioError as err:
            return None, gr.update(), error_html(err)
        return arr[:, :, :3], (poses[0].to_json() if poses else gr.update()), ""

    def detect_pose(img):
        if img is None:
            return gr.update(), error_html("upload an image first")
        try:
            _, poses = e.jobs.run(lambda job: support.detect("openpose_full", img), "pose detection")
        except StudioError as err:
            return gr.update(), error_html(err)
        if not poses or not poses[0].people:
            return gr.update(), error_html("no person found in the image")
        return poses[0].to_json(), ""

    def render_map(text):
        try:
            pose = Pose.from_json(text)
        except StudioError as err:
            return None, error_html(err)
        return draw(pose), ""

    def load_json(file):
        if not file:
            return gr.update(), ""
        try:
            return Pose.from_json(Path(file).read_text()).to_json(), ""
        except (StudioError, OSError) as err:
            return gr.update(), error_html(err)

    def save_pose(text):
        try:
            pose = Pose.from_json(text)
        except StudioError as err:
            return None, error_html(err)
        folder = Path(tempfile.mkdtemp(prefix="pose-"))
        path = folder / f"pose-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(pose.to_dict(), indent=1))
        return str(path), ""

    run.click(preprocess, [image, module, res, a, b], [detected, pose_json, status])
    save.click(lambda im: save_detected_map(e, im), detected, status)
    default.click(lambda: default_pose().to_json(), None, pose_json, queue=False)
    detect.click(detect_pose, image, [pose_json, pose_status])
    render.click(render_map, pose_json, [pose_map, pose_status])
    upload.change(load_json, upload, [pose_json, pose_status])
    save_json.click(save_pose, pose_json, [download, pose_status])
    out.update(map=detected, pose_map=pose_map, pose_json=pose_json)
    return out


def wire_send_map(tab: dict, section: ControlNetSection, button: gr.Button, tabs: gr.Tabs, target_tab: str) -> None:
    """Put the pose map (or else the detected map) into unit 0 of a section, module none, enabled."""
    unit = section.units[0]

    def send(pose_map, detected):
        picture = pose_map if pose_map is not None else detected
        if picture is None:
            return [gr.update()] * 4
        im = Image.fromarray(np.asarray(picture).astype("uint8"))
        return [{"background": im, "layers": [], "composite": im}, True, "none", gr.Tabs(selected=target_tab)]

    button.click(send, [tab["pose_map"], tab["map"]], [unit["image"], unit["enabled"], unit["module"], tabs])
