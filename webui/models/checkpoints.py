"""Finding checkpoint files and naming them as A1111 does ("sub/name.safetensors [0123456789]")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from webui.models.hashes import HashCache
from webui.models.loader import check_file

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class CheckpointInfo:
    filename: Path          # absolute path
    name: str               # path relative to its folder, "/"-separated
    sha256: str | None
    error: str | None = None  # why the file cannot be used, when it cannot

    @property
    def model_name(self) -> str:
        """The "Model" of the infotext: the name without extension, sub-folders joined by "_"."""
        return self.name.rsplit(".", 1)[0].replace("/", "_")

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def short_title(self) -> str:
        """A1111's short title, which its infotext uses for "Refiner" and "Hires checkpoint": the file's stem (no
        folders, no extension) and the short hash."""
        stem = self.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return f"{stem} [{self.shorthash}]" if self.shorthash else stem

    def matches(self, query: str) -> bool:
        q = query.strip()
        if not q:
            return False
        candidates = {self.title, self.short_title, self.name, self.model_name, self.name.rsplit(".", 1)[0],
                      self.filename.name, str(self.filename)}
        if self.sha256:
            candidates |= {self.sha256, self.shorthash, self.sha256[:8]}
        return q in candidates or q.lower() in {c.lower() for c in candidates if c}


def scan(folders: tuple[Path, ...], cache: HashCache) -> list[CheckpointInfo]:
    """Every checkpoint under the folders (sub-folders too), sorted by name; unusable files carry an error."""
    found: dict[str, CheckpointInfo] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
                continue
            name = path.relative_to(folder).as_posix()
            if name in found:
                continue
            error = check_file(path)
            sha = None if error else cache.sha256(path, name)
            found[name] = CheckpointInfo(path.resolve(), name, sha, error)
    return sorted(found.values(), key=lambda c: c.name.lower())
