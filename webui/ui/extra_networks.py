"""The extra networks panel, as A1111's: cards (preview picture and name) for LoRAs, hypernetworks, embeddings and
checkpoints, searched and sorted; a click puts the card's text into the prompt (a LoRA's preferred weight and
activation text, its negative text into the negative prompt) or takes it out when it is there already, and a
checkpoint card picks that checkpoint. The card editor keeps a card's description, activation text, preferred
weight, negative text, SD version, notes and (a checkpoint) preferred VAE in the JSON file beside the model,
and "Replace preview" makes the selected result picture the card's preview."""
from __future__ import annotations

import gradio as gr
from PIL import Image, ImageDraw

from webui.core import card_prompts
from webui.core.errors import StudioError
from webui.engine.processing import Engine
from webui.models import cards as cards_lib
from webui.models import user_metadata
from webui.ui.common import error_html, info_html

TABS = (("lora", "Lora"), ("hypernetwork", "Hypernetworks"), ("embedding", "Textual Inversion"),
        ("checkpoint", "Checkpoints"))


def _no_preview() -> Image.Image:
    """The picture of a card without a preview file (as A1111's card-no-preview)."""
    im = Image.new("RGB", (192, 256), (58, 62, 70))
    ImageDraw.Draw(im).text((60, 122), "no preview", fill=(190, 190, 190))
    return im


def _gallery_value(shown: list[cards_lib.Card], blank: Image.Image) -> list:
    return [(str(c.preview) if c.preview else blank, c.name) for c in shown]


def build(engine: Engine, prompt: gr.Textbox, negative: gr.Textbox | None, checkpoint, prefix: str,
          results: gr.Gallery | None = None, selected: gr.State | None = None,
          infotexts: gr.State | None = None) -> None:
    """``checkpoint``: the page's CheckpointBar (a card click picks that checkpoint), or None; ``results``,
    ``selected`` and ``infotexts``: the tab's result gallery, its selected index and the pictures' infotexts, for
    "Replace preview"."""
    models = engine.models
    blank = _no_preview()

    def shown_cards(kind: str, search: str, order: str, descending: bool, folder: str = "All"
                    ) -> list[cards_lib.Card]:
        show_all = bool(engine.settings.get("lora_show_all", False))
        return cards_lib.select(cards_lib.list_cards(models, kind, show_all), search, order, bool(descending),
                                "" if folder in (None, "All") else folder)

    def folder_choices() -> list[str]:
        every = [c for kind, _ in TABS for c in cards_lib.list_cards(models, kind)]
        return ["All", *cards_lib.folders(every)]

    def multiplier() -> float:
        return float(engine.settings.get("extra_networks_default_multiplier", 1.0))

    def separator() -> str:
        return str(engine.settings.get("extra_networks_add_text_separator", " "))

    galleries, names = {}, {}
    with gr.Accordion("Extra networks", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Row():
            search = gr.Textbox(label="Search", placeholder="name, path, description, activation text",
                                elem_id=f"{prefix}_extra_search", scale=3)
            order = gr.Dropdown(list(cards_lib.SORT_FIELDS), value=str(engine.settings.get(
                "extra_networks_card_order_field", "Path")), label="Sort by", elem_id=f"{prefix}_extra_sort")
            descending = gr.Checkbox(engine.settings.get("extra_networks_card_order", "Ascending") == "Descending",
                                     label="Descending", elem_id=f"{prefix}_extra_descending")
            folder = gr.Dropdown(folder_choices(), value="All", label="Folder", elem_id=f"{prefix}_extra_folder")
            refresh = gr.Button("Refresh", size="sm", elem_id=f"{prefix}_extra_refresh", scale=0)
        with gr.Tabs():
            for kind, label in TABS:
                with gr.Tab(label, elem_id=f"{prefix}_{kind}_tab"):
                    first = shown_cards(kind, "", order.value, descending.value)
                    galleries[kind] = gr.Gallery(_gallery_value(first, blank), label=label, columns=6, height=340,
                                                 allow_preview=False, object_fit="cover", show_label=False,
                                                 elem_id=f"{prefix}_{kind}_cards")
                    names[kind] = gr.State([c.name for c in first])
        with gr.Accordion("Edit card metadata (the last card clicked)", open=False, elem_id=f"{prefix}_card_editor"):
            current = gr.State(None)      # (kind, name) of the card the editor shows
            title = gr.Markdown("No card clicked yet.", elem_id=f"{prefix}_card_title")
            description = gr.Textbox(label="Description", lines=2, elem_id=f"{prefix}_card_description")
            with gr.Row():
                activation = gr.Textbox(label="Activation text (LoRA)", elem_id=f"{prefix}_card_activation")
                weight = gr.Slider(0, 2, value=0, step=0.05, label="Preferred weight (LoRA; 0: the default multiplier)",
                                   elem_id=f"{prefix}_card_weight")
            with gr.Row():
                neg_text = gr.Textbox(label="Negative prompt (LoRA)", elem_id=f"{prefix}_card_negative")
                sd_version = gr.Dropdown(list(user_metadata.SD_VERSIONS), value="Unknown", label="SD version",
                                         elem_id=f"{prefix}_card_sd_version")
            with gr.Row():
                notes = gr.Textbox(label="Notes", lines=2, elem_id=f"{prefix}_card_notes", scale=3)
                vae = gr.Dropdown(models.vae_names(), value="Automatic", label="Preferred VAE (checkpoint)",
                                  elem_id=f"{prefix}_card_vae")
            with gr.Row():
                save = gr.Button("Save", size="sm", elem_id=f"{prefix}_card_save")
                replace = gr.Button("Replace preview (the selected result)", size="sm",
                                    elem_id=f"{prefix}_card_replace_preview", visible=results is not None)
            status = gr.HTML("", elem_id=f"{prefix}_card_status")
    editor = [title, description, activation, weight, neg_text, sd_version, notes, vae]

    def find_card(kind: str, name: str) -> cards_lib.Card | None:
        return next((c for c in cards_lib.list_cards(models, kind) if c.name == name), None)

    def editor_values(card: cards_lib.Card) -> list:
        md = card.metadata
        try:
            w = float(md.get("preferred weight") or 0)
        except (TypeError, ValueError):
            w = 0.0
        version = str(md.get("sd version") or "Unknown")
        choices = models.vae_names()
        preferred = str(md.get("vae") or "Automatic")
        return [f"**{card.name}** ({card.kind}, `{card.rel}`)", card.description, str(md.get("activation text") or ""),
                w, str(md.get("negative text") or ""),
                version if version in user_metadata.SD_VERSIONS else "Unknown", str(md.get("notes") or ""),
                gr.update(choices=choices, value=preferred if preferred in choices else "Automatic")]

    def picked(kind: str):
        def pick(shown_names, prompt_text, negative_text, evt: gr.SelectData):
            name = shown_names[evt.index] if 0 <= evt.index < len(shown_names) else None
            card = find_card(kind, name) if name else None
            if card is None:
                return [gr.update(), gr.update(), *[gr.update()] * len(editor), None, gr.update()]
            values = [*editor_values(card), (kind, name)]
            if kind == "checkpoint":
                return [gr.update(), gr.update(), *values, card.name]
            text, neg = card_prompts.card_texts(kind, card.name, card.metadata, multiplier())
            new_prompt, added = card_prompts.toggle(prompt_text, kind, card.name, text, separator())
            new_negative = card_prompts.toggle_negative(negative_text, neg, added, separator())
            return [new_prompt, new_negative, *values, gr.update()]
        return pick

    dropdown = checkpoint.dropdown if checkpoint is not None else gr.State(None)
    negative_box = negative if negative is not None else gr.State("")
    for kind, _ in TABS:
        event = galleries[kind].select(picked(kind), [names[kind], prompt, negative_box],
                                       [prompt, negative_box, *editor, current, dropdown], queue=False)
        if kind == "checkpoint" and checkpoint is not None:
            event.then(checkpoint.choose, checkpoint.dropdown, checkpoint.status)

    def redraw(search_text, order_field, desc, folder_name="All"):
        out = []
        for kind, _ in TABS:
            shown = shown_cards(kind, search_text, order_field, desc, folder_name)
            out += [_gallery_value(shown, blank), [c.name for c in shown]]
        return out

    lists = [x for kind, _ in TABS for x in (galleries[kind], names[kind])]
    for trigger in (search.submit, order.input, descending.input, folder.input):
        trigger(redraw, [search, order, descending, folder], lists, queue=False)

    def do_refresh(search_text, order_field, desc, folder_name):
        models.refresh_loras()
        models.refresh_hypernetworks()
        models.refresh_embeddings()
        models.refresh()
        choices = folder_choices()
        folder_name = folder_name if folder_name in choices else "All"
        return [gr.update(choices=choices, value=folder_name),
                *redraw(search_text, order_field, desc, folder_name)]

    refresh.click(do_refresh, [search, order, descending, folder], [folder, *lists])

    def do_save(card_key, desc, act, w, neg, version, note, preferred_vae, search_text, order_field, sort_desc,
                folder_name):
        if not card_key:
            return [error_html("click a card first"), *redraw(search_text, order_field, sort_desc, folder_name)]
        card = find_card(*card_key)
        if card is None or card.path is None:
            return [error_html(f"{card_key[1]} is no longer there (press Refresh)"),
                    *redraw(search_text, order_field, sort_desc, folder_name)]
        data = {"description": desc or "", "sd version": version or "Unknown", "notes": note or ""}
        if card.kind == "lora":
            data.update({"activation text": act or "", "preferred weight": float(w or 0), "negative text": neg or ""})
        if card.kind == "checkpoint":
            data["vae"] = preferred_vae or "Automatic"
        try:
            target = user_metadata.write(card.path, data)
        except OSError as err:
            return [error_html(f"could not save {card.name}'s metadata: {err}"),
                    *redraw(search_text, order_field, sort_desc, folder_name)]
        return [info_html(f"Saved {target.name}"), *redraw(search_text, order_field, sort_desc, folder_name)]

    save.click(do_save, [current, *editor[1:], search, order, descending, folder], [status, *lists])

    if results is not None and selected is not None and infotexts is not None:
        from webui.ui.generation_tab import gallery_images

        def do_replace(card_key, gallery_value, index, texts, search_text, order_field, sort_desc, folder_name):
            if not card_key:
                return [error_html("click a card first"), *redraw(search_text, order_field, sort_desc, folder_name)]
            card = find_card(*card_key)
            pictures = gallery_images(gallery_value)
            # as A1111: the selected picture, the first when none is selected
            k = min(max(int(index or 0), 0), len(pictures) - 1)
            picture = pictures[k] if pictures else None
            texts = list(texts or [])
            if card is None or card.path is None:
                message = error_html(f"{card_key[1]} is no longer there (press Refresh)")
            elif picture is None:
                message = error_html("there is no picture in the results to use as the preview")
            else:
                try:
                    saved = user_metadata.save_preview(card.path, picture, texts[k] if k < len(texts) else None)
                    message = info_html(f"Saved {saved.name}")
                except (OSError, StudioError) as err:
                    message = error_html(f"could not save the preview: {err}")
            return [message, *redraw(search_text, order_field, sort_desc, folder_name)]

        replace.click(do_replace, [current, results, selected, infotexts, search, order, descending, folder],
                      [status, *lists])
