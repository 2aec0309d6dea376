"""sha256 of model files, cached in cache.json (A1111's layout) so start-up does not re-hash."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path


class HashCache:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self._data = {}

    def sha256(self, file: Path, title: str) -> str:
        """The file's sha256, from the cache when its mtime and size are unchanged."""
        st = file.stat()
        key = f"checkpoint/{title}"
        with self._lock:
            entry = self._data.setdefault("hashes", {}).get(key)
        if entry and entry.get("mtime") == st.st_mtime and entry.get("size", st.st_size) == st.st_size:
            return entry["sha256"]
        digest = file_sha256(file)
        with self._lock:
            self._data["hashes"][key] = {"mtime": st.st_mtime, "size": st.st_size, "sha256": digest}
            self._save_locked()
        return digest

    def _save_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cache-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._data, f, indent=2)
        os.replace(tmp, self.path)


def file_sha256(file: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
