"""Changing the installed extensions: install from a git URL or a local folder, enable/disable (config.json's
disabled_extensions, A1111's key). Refused when the server is reachable beyond this machine (--listen, --share)
unless --enable-insecure-extension-access, as A1111 does: installing an extension runs its code."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from webui.config.settings import Settings
from webui.core.errors import BadRequest, InvalidField

CLONE_TIMEOUT_S = 300


def access_allowed(flags) -> bool:
    """Whether extensions may be installed or switched from the UI with these command-line flags."""
    public = bool(getattr(flags, "listen", False) or getattr(flags, "share", False))
    return not public or bool(getattr(flags, "enable_insecure_extension_access", False))


def access_refusal() -> str:
    return ("Extensions cannot be installed or changed while the studio listens beyond this machine (--listen or "
            "--share): installing runs the extension's code. Restart with --enable-insecure-extension-access to "
            "allow it.")


def _is_url(source: str) -> bool:
    return bool(re.match(r"^(https?|git|ssh|file)://", source) or re.match(r"^[\w.-]+@[\w.-]+:", source))


def folder_name(source: str) -> str:
    """The folder an extension from ``source`` goes to: the last part of the URL or path, without .git."""
    tail = re.split(r"[/\\:]", source.rstrip("/\\"))[-1]
    return tail[:-4] if tail.endswith(".git") else tail


def install_extension(source: str, extensions_dir: Path, dirname: str = "", *, allowed: bool = True) -> Path:
    """Install an extension from a git URL (git clone --depth 1), a local git repository (git clone) or a
    plain local folder (copied) into extensions_dir/<dirname>. Returns the new folder; it is loaded at the
    next start (Apply and restart)."""
    if not allowed:
        raise BadRequest(access_refusal())
    source = (source or "").strip()
    if not source:
        raise InvalidField("url", "give a git URL or the path of a local folder")
    local = Path(source).expanduser()
    is_local = not _is_url(source)
    if is_local and not local.is_dir():
        raise InvalidField("url", f"{source!r} is neither a git URL (https://, git@, ssh://, file://) nor an "
                                  "existing folder")
    name = (dirname or "").strip() or folder_name(source)
    if not name or name.startswith(".") or re.search(r"[/\\:*?\"<>|]", name):
        raise InvalidField("dirname", f"{name!r} is not a usable folder name")
    extensions_dir = Path(extensions_dir)
    target = extensions_dir / name
    if target.exists():
        raise InvalidField("dirname", f"extension folder {name!r} already exists in {extensions_dir}")
    extensions_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=extensions_dir, prefix=".installing-"))
    try:
        work = tmp / name
        if is_local and not (local / ".git").exists():
            shutil.copytree(local, work, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            cmd = ["git", "clone", "--quiet"]
            if not is_local:
                cmd += ["--depth", "1"]
            cmd += [str(local.resolve()) if is_local else source, str(work)]
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=CLONE_TIMEOUT_S,
                                     env={"GIT_TERMINAL_PROMPT": "0", **_git_env()})
            except FileNotFoundError:
                raise BadRequest("git is not installed: it is needed to install from a git URL") from None
            except subprocess.TimeoutExpired:
                raise BadRequest(f"git clone did not finish within {CLONE_TIMEOUT_S} s") from None
            if res.returncode != 0:
                raise BadRequest(f"git clone failed: {(res.stderr or res.stdout).strip()[-500:]}")
        work.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _git_env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k != "GIT_DIR"}


def set_enabled(settings: Settings, all_names: list[str], enabled: list[str], *, allowed: bool = True) -> list[str]:
    """Save which extensions are enabled (config.json: disabled_extensions); returns the disabled ones."""
    if not allowed:
        raise BadRequest(access_refusal())
    unknown = [n for n in enabled if n not in all_names]
    if unknown:
        raise InvalidField("enabled", f"unknown extension {unknown[0]!r}; installed: {', '.join(all_names)}")
    disabled = [n for n in all_names if n not in enabled]
    settings.update({"disabled_extensions": disabled})
    return disabled
