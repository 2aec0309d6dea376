"""Writing ``torch.save`` files (embeddings, hypernetworks) atomically: a reader never sees half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(data: object, path: Path) -> None:
    """``torch.save(data)`` into a temporary file beside ``path``, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
