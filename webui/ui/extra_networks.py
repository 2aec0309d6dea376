"""The extra networks panel: cards for LoRAs, hypernetworks, embeddings and checkpoints; a click inserts the tag
into the prompt (or, for a checkpoint, picks it), as in A1111."""
from __future__ import annotations

import gradio as gr

from webui.engine.processing import Engine


def _samples(names: list[str]) -> list[list[str]]:
    return [[n] for n in names] or [["(none found)"]]


def build(engine: Engine, prompt: gr.Textbox, checkpoint, prefix: str) -> None:
    """``checkpoint``: the page's CheckpointBar (a card click picks that checkpoint), or None."""
    models = engine.models

    def lora_names() -> list[str]:
        return [i.name for i in models.loras]

    def hypernetwork_names() -> list[str]:
        return [i.name for i in models.hypernetworks]

    def embedding_names() -> list[str]:
        loaded, _ = models.embeddings()
        return sorted(loaded)

    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Tabs():
            with gr.Tab("Lora", elem_id=f"{prefix}_lora_tab"):
                loras = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(lora_names()),
                                   label="LoRA (click to add to the prompt)", elem_id=f"{prefix}_lora_cards")
            with gr.Tab("Hypernetworks", elem_id=f"{prefix}_hypernetworks_tab"):
                hypernets = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(hypernetwork_names()),
                                       label="Hypernetworks (click to add to the prompt)",
                                       elem_id=f"{prefix}_hypernetwork_cards")
            with gr.Tab("Textual Inversion", elem_id=f"{prefix}_textual_inversion_tab"):
                embs = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(embedding_names()),
                                  label="Embeddings (click to add to the prompt)",
                                  elem_id=f"{prefix}_textual_inversion_cards")
            with gr.Tab("Checkpoints", elem_id=f"{prefix}_checkpoints_tab"):
                ckpts = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(models.titles()),
                                   label="Checkpoints (click to use)", elem_id=f"{prefix}_checkpoints_cards")
        refresh = gr.Button("Refresh", size="sm", elem_id=f"{prefix}_extra_refresh")

    def add(tag: str, text: str) -> str:
        text = text or ""
        return f"{text}{' ' if text and not text.endswith(' ') else ''}{tag}"

    def multiplier() -> str:
        """The setting extra_networks_default_multiplier, as the tag writes it (1, 0.7)."""
        value = float(engine.settings.get("extra_networks_default_multiplier", 1.0))
        return f"{value:g}"

    def on_lora(sample, text):
        name = sample[0]
        return text if name.startswith("(") else add(f"<lora:{name}:{multiplier()}>", text)

    def on_hypernet(sample, text):
        name = sample[0]
        return text if name.startswith("(") else add(f"<hypernet:{name}:{multiplier()}>", text)

    def on_embedding(sample, text):
        name = sample[0]
        return text if name.startswith("(") else add(name, text)

    loras.click(on_lora, [loras, prompt], prompt, queue=False)
    hypernets.click(on_hypernet, [hypernets, prompt], prompt, queue=False)
    embs.click(on_embedding, [embs, prompt], prompt, queue=False)
    if checkpoint is not None:
        ckpts.click(lambda s: gr.update() if s[0].startswith("(") else s[0], ckpts, checkpoint.dropdown,
                    queue=False).then(checkpoint.choose, checkpoint.dropdown, checkpoint.status)

    def do_refresh():
        models.refresh_loras()
        models.refresh_hypernetworks()
        models.refresh_embeddings()
        models.refresh()
        return (gr.Dataset(samples=_samples(lora_names())), gr.Dataset(samples=_samples(hypernetwork_names())),
                gr.Dataset(samples=_samples(embedding_names())), gr.Dataset(samples=_samples(models.titles())))

    refresh.click(do_refresh, None, [loras, hypernets, embs, ckpts])
