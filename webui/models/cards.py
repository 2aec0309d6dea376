"""The extra-network cards: every LoRA, hypernetwork, embedding and checkpoint with its preview, description and
user metadata (webui/models/user_metadata.py), searched and sorted as A1111's cards are."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from webui.models import lora as lora_lib
from webui.models import user_metadata

KINDS = ("lora", "hypernetwork", "embedding", "checkpoint")
SORT_FIELDS = ("Path", "Name", "Date Created", "Date Modified")


@dataclass
class Card:
    kind: str
    name: str                 # what the prompt tag uses; a checkpoint's title
    path: Path | None         # the model file (None: an embedding made in memory)
    rel: str = ""             # path relative to its folder (the "Path" order, the search)
    preview: Path | None = None
    description: str = ""
    metadata: dict = field(default_factory=dict)
    created: float = 0.0
    modified: float = 0.0

    @property
    def search_text(self) -> str:
        return " ".join((self.name, self.rel, self.description, str(self.metadata.get("activation text") or ""),
                         str(self.metadata.get("notes") or ""))).lower()


def make_card(kind: str, name: str, path: Path | None, rel: str = "") -> Card:
    """A card with what lies beside the file; the user metadata's "description" wins over the .txt file's."""
    if path is None:
        return Card(kind, name, None, rel or name)
    metadata = user_metadata.read(path)
    try:
        st = path.stat()
        created, modified = st.st_ctime, st.st_mtime
    except OSError:
        created = modified = 0.0
    description = str(metadata.get("description") or "") or user_metadata.find_description(path)
    return Card(kind, name, path, rel or path.name, user_metadata.find_preview(path), description, metadata,
                created, modified)


# the loaded checkpoint's family as the LoRA page names SD versions
_FAMILY_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def list_cards(models, kind: str, show_all: bool = True) -> list[Card]:
    """The cards of one kind from the model manager's current lists (embeddings: those the loaded model takes).
    LoRAs: without ``show_all`` (A1111's setting lora_show_all off) only those of the loaded checkpoint's SD version
    (the card's "sd version" if set, else the trainer's metadata) and those of unknown version."""
    if kind == "lora":
        current = models.current
        wanted = None if show_all or current is None else _FAMILY_VERSIONS.get(current.family)
        out = []
        for i in models.loras:
            card = make_card(kind, i.name, i.path, i.rel)
            version = str(card.metadata.get("sd version") or "Unknown")
            version = version if version != "Unknown" else lora_lib.sd_version(i)
            if wanted is None or version in ("Unknown", wanted):
                out.append(card)
        return out
    if kind == "hypernetwork":
        return [make_card(kind, i.name, i.path) for i in models.hypernetworks]
    if kind == "embedding":
        loaded, _ = models.embeddings()
        return [make_card(kind, name, e.path) for name, e in sorted(loaded.items())]
    if kind == "checkpoint":
        return [make_card(kind, c.title, c.filename, c.name) for c in models.usable()]
    raise ValueError(f"unknown card kind {kind!r}; valid: {', '.join(KINDS)}")


def folders(cards: list[Card]) -> list[str]:
    """The sub-folders the cards' files lie in (and their parents), as A1111's folder buttons list them."""
    found = set()
    for c in cards:
        parts = c.rel.split("/")[:-1]
        found.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    return sorted(found, key=str.lower)


def select(cards: list[Card], search: str = "", order: str = "Path", descending: bool = False,
           folder: str = "") -> list[Card]:
    """The cards whose name, path, description, activation text or notes hold every word of ``search`` (and, with
    ``folder``, whose file lies in that sub-folder or below), sorted by ``order`` (one of SORT_FIELDS)."""
    words = (search or "").lower().split()
    kept = [c for c in cards if all(w in c.search_text for w in words)
            and (not folder or c.rel.startswith(folder.rstrip("/") + "/"))]
    key = {"Path": lambda c: c.rel.lower(), "Name": lambda c: c.name.lower(),
           "Date Created": lambda c: c.created, "Date Modified": lambda c: c.modified}.get(order)
    if key is None:
        raise ValueError(f"unknown card order {order!r}; valid: {', '.join(SORT_FIELDS)}")
    return sorted(kept, key=key, reverse=descending)
