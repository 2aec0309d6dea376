"""The extensions/ folder: discovery, order (metadata.ini), preload.py, install.py, loading scripts and callbacks,
and what failed.

An extension is a folder extensions/NAME/ with any of: scripts/*.py (Script classes and callbacks),
install.py (run at every start-up unless --skip-install, in a subprocess, its output logged), preload.py
(``preload(parser)`` adds command-line flags before they are parsed), javascript/*.js and style.css (put into the
page), metadata.ini::

    [Extension]
    Name = canonical-name         ; defaults to the folder name (lower case)
    Requires = other-ext          ; must be installed and enabled, else this one is not loaded
    Before = some-ext             ; load (preload, install, scripts, callbacks) before that one
    After = another-ext           ; ... after that one

Lists are separated by commas or spaces. Without constraints extensions load in folder-name order.

Anything that fails (preload, install.py, importing a script, a callback or a script hook raising) is printed
with its traceback, kept for the Extensions tab and GET /sdapi/v1/extensions, and disables that extension for
the rest of the run; the studio and the job carry on. An extension is loaded all or nothing: if one of its
script files fails to import, none of its scripts or callbacks are registered.
"""
from __future__ import annotations

import configparser
import functools
import heapq
import importlib.util
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.config.paths import REPO_ROOT
from webui.core.errors import StudioError
from webui.extensions.callbacks import MARK, Callbacks
from webui.extensions.script import Script

INSTALL_TIMEOUT_S = 900
_GUARDED = ("setup", "before_process", "process", "before_process_batch", "process_batch", "postprocess_image",
            "postprocess", "run", "ui")


def _parse_list(text: str) -> list[str]:
    return [x for x in re.split(r"[,\s]+", (text or "").strip().lower()) if x]


@dataclass
class Extension:
    name: str                       # the folder name
    path: Path
    enabled: bool = True
    canonical_name: str = ""
    requires: list[str] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    failed: bool = False            # disabled for this run after an error
    loaded: bool = False
    errors: list[str] = field(default_factory=list)    # "where:\ntraceback"
    notes: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)   # titles of the Script classes it registered
    callbacks: list[str] = field(default_factory=list)
    git: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, enabled: bool) -> Extension:
        ext = cls(path.name, path, enabled, canonical_name=path.name.lower())
        meta = path / "metadata.ini"
        if meta.is_file():
            config = configparser.ConfigParser()
            try:
                config.read(meta, encoding="utf-8")
                ext.canonical_name = config.get("Extension", "Name", fallback=path.name).strip().lower()
                ext.requires = _parse_list(config.get("Extension", "Requires", fallback=""))
                ext.before = _parse_list(config.get("Extension", "Before", fallback=""))
                ext.after = _parse_list(config.get("Extension", "After", fallback=""))
            except configparser.Error as e:
                ext.notes.append(f"metadata.ini could not be read ({type(e).__name__}: {e}); defaults used")
        return ext

    @property
    def active(self) -> bool:
        return self.enabled and not self.failed

    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        if self.failed:
            return "failed"
        return "loaded" if self.loaded else "not loaded"

    def files(self, sub: str, suffix: str) -> list[Path]:
        folder = self.path / sub
        return sorted(p for p in folder.glob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []

    def read_git_info(self) -> dict[str, Any]:
        """Remote, branch, commit of a cloned extension (empty for a plain folder); read once."""
        if self.git or not (self.path / ".git").exists():
            return self.git

        def git(*args: str) -> str:
            res = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True, text=True, timeout=30)
            return res.stdout.strip() if res.returncode == 0 else ""

        try:
            commit = git("rev-parse", "HEAD")
            date = git("log", "-1", "--format=%ct")
            self.git = {"remote": git("config", "--get", "remote.origin.url") or None,
                        "branch": git("rev-parse", "--abbrev-ref", "HEAD") or None,
                        "commit_hash": commit or None, "version": commit[:8] if commit else "",
                        "commit_date": int(date) if date.isdigit() else None}
        except (OSError, subprocess.SubprocessError):
            self.git = {}
        return self.git

    def api_item(self) -> dict[str, Any]:
        """An item of GET /sdapi/v1/extensions (A1111's fields, then the studio's)."""
        g = self.read_git_info()
        return {"name": self.name, "remote": g.get("remote"), "branch": g.get("branch"),
                "commit_hash": g.get("commit_hash"), "version": g.get("version", ""),
                "commit_date": g.get("commit_date"), "enabled": self.enabled, "canonical_name": self.canonical_name,
                "path": str(self.path), "status": self.status, "scripts": list(self.scripts),
                "callbacks": list(self.callbacks), "errors": list(self.errors), "notes": list(self.notes)}


class Extensions:
    """The installed extensions of one run, in load order; built once by app.py and passed down."""

    def __init__(self, folder: Path, disabled: list[str] | None = None, disable_all: bool = False,
                 log: Callable[[str], None] | None = None):
        self.folder = Path(folder)
        self.disable_all = disable_all
        self.log = log or (lambda text: print(text, flush=True))
        disabled_names = {d.lower() for d in disabled or []}
        found = []
        if self.folder.is_dir():
            for path in sorted(self.folder.iterdir(), key=lambda p: p.name.lower()):
                if path.is_dir() and not path.name.startswith("."):
                    enabled = not disable_all and path.name.lower() not in disabled_names
                    found.append(Extension.read(path, enabled))
        self.all = self._ordered(found)

    @classmethod
    def from_config(cls, folder: Path, config_file: Path, disable_all: bool = False, **kw) -> Extensions:
        """The extensions of a data dir, enabled as config.json says (disabled_extensions, A1111's key)."""
        import json
        disabled: list[str] = []
        try:
            stored = json.loads(Path(config_file).read_text(encoding="utf-8"))
            disabled = [str(x) for x in stored.get("disabled_extensions") or []]
            disable_all = disable_all or stored.get("disable_all_extensions") == "all"
        except (OSError, ValueError, AttributeError):
            pass
        return cls(folder, disabled, disable_all, **kw)

    # -- order ---------------------------------------------------------------------------------------------
    def _ordered(self, found: list[Extension]) -> list[Extension]:
        """Folder-name order changed only as Requires / Before / After say; a cycle is reported and broken."""
        by_name = {e.canonical_name: e for e in found}
        for e in found:
            if e.enabled:
                missing = [r for r in e.requires if r not in by_name or not by_name[r].enabled]
                if missing:
                    e.failed = True
                    e.errors.append(f"requires {', '.join(missing)}: not installed or disabled; not loaded")
        index = {e.canonical_name: i for i, e in enumerate(found)}
        edges: dict[str, set[str]] = {e.canonical_name: set() for e in found}
        for e in found:
            for other in (*e.after, *e.requires):
                if other in edges and other != e.canonical_name:
                    edges[other].add(e.canonical_name)
            for other in e.before:
                if other in edges and other != e.canonical_name:
                    edges[e.canonical_name].add(other)
        incoming = {n: 0 for n in edges}
        for targets in edges.values():
            for t in targets:
                incoming[t] += 1
        ready = [(index[n], n) for n, k in incoming.items() if k == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for t in edges[n]:
                incoming[t] -= 1
                if incoming[t] == 0:
                    heapq.heappush(ready, (index[t], t))
        if len(order) < len(found):
            stuck = sorted((n for n in edges if n not in order), key=index.__getitem__)
            for n in stuck:
                by_name[n].notes.append(f"metadata.ini Before/After form a cycle among {', '.join(stuck)}: "
                                        "loaded in folder-name order")
            order += stuck
        return [by_name[n] for n in order]

    # -- state ---------------------------------------------------------------------------------------------
    def active(self) -> list[Extension]:
        return [e for e in self.all if e.active]

    def find(self, name: str) -> Extension | None:
        name = name.lower()
        return next((e for e in self.all if e.name.lower() == name or e.canonical_name == name), None)

    def report(self, ext: Extension, where: str, exc: BaseException | None, text: str | None = None) -> None:
        """Record a failure of ``ext`` with its traceback (console and Extensions tab); disable it for the run."""
        if text is None:
            text = "".join(traceback.format_exception(exc)) if exc is not None else ""
        ext.errors.append(f"{where}:\n{text}".rstrip())
        ext.failed = True
        print(f"*** Extension {ext.name!r} failed in {where}; it is disabled until the next start.\n{text}",
              file=sys.stderr, flush=True)

    # -- start-up ------------------------------------------------------------------------------------------
    def run_preloads(self, parser) -> None:
        """preload.py of each active extension: ``preload(parser)`` may add command-line flags."""
        for ext in self.active():
            script = ext.path / "preload.py"
            if not script.is_file():
                continue
            try:
                module = _import_file(script, f"studio_preload_{_ident(ext.canonical_name)}")
                if hasattr(module, "preload"):
                    module.preload(parser)
            except Exception as e:  # noqa: BLE001 - a broken extension must not stop the studio
                self.report(ext, "preload.py", e)

    def run_installers(self) -> None:
        """install.py of each active extension, in a subprocess (the studio's interpreter, the repository on
        PYTHONPATH, the extension's folder as working directory); a failure disables that extension."""
        for ext in self.active():
            script = ext.path / "install.py"
            if not script.is_file():
                continue
            self.log(f"Extension {ext.name}: running install.py")
            started = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                                 os.environ.get("PYTHONPATH")]))}
            try:
                res = subprocess.run([sys.executable, str(script)], cwd=ext.path, env=env, capture_output=True,
                                     text=True, timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.report(ext, "install.py", None, f"did not finish within {INSTALL_TIMEOUT_S} s")
                continue
            output = (res.stdout + res.stderr).strip()
            if res.returncode != 0:
                self.report(ext, "install.py", None, f"exited with status {res.returncode}\n{output[-4000:]}")
                continue
            for line in output.splitlines()[-20:]:
                self.log(f"  [{ext.name}] {line}")
            self.log(f"Extension {ext.name}: install.py done in {time.perf_counter() - started:.1f} s")

    def load(self, registry, callbacks: Callbacks) -> None:
        """Import each active extension's scripts/*.py (its folder on sys.path, as A1111 does), then register
        its Script classes (hooks guarded) in ``registry`` and its callbacks in ``callbacks``."""
        self.registry = registry
        for ext in self.active():
            before = set(sys.modules)
            classes: list[tuple[type, Path]] = []
            try:
                if str(ext.path) not in sys.path:
                    sys.path.insert(0, str(ext.path))
                for i, file in enumerate(ext.files("scripts", ".py")):
                    name = f"studio_ext_{_ident(ext.canonical_name)}_{i}_{_ident(file.stem)}"
                    module = _import_file(file, name)
                    classes += [(obj, file) for obj in vars(module).values()
                                if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script
                                and obj.__module__ == name]
            except BaseException as e:  # noqa: BLE001 - SystemExit in an import must not stop the studio either
                if isinstance(e, KeyboardInterrupt):
                    raise
                self.report(ext, f"importing {file.relative_to(ext.path)}", e)
                continue
            marks = [m for mod_name in set(sys.modules) - before
                     for m in getattr(sys.modules[mod_name], MARK, [])]
            for cls, file in classes:
                cls.filename = str(file)
                guarded = _guarded(cls, ext, self.report)
                registry.register(guarded, path=file, origin=ext.name)
                ext.scripts.append(cls.__name__)
            for kind, fn in marks:
                callbacks.add(kind, fn, ext)
                ext.callbacks.append(f"on_{kind}")
            ext.loaded = True

    # -- the page ------------------------------------------------------------------------------------------
    def head_html(self) -> str:
        """<script> tags: a small A1111-compatible helper (gradioApp, onUiLoaded, onUiUpdate) and every
        active extension's javascript/*.js."""
        scripts = [(e, f) for e in self.active() if e.loaded for f in e.files("javascript", ".js")]
        if not scripts:
            return ""
        parts = [f"<script>{JS_HELPERS}</script>"]
        for ext, f in scripts:
            code = f.read_text(encoding="utf-8", errors="replace").replace("</script", "<\\/script")
            parts.append(f"<script data-extension=\"{ext.name}\">\n{code}\n</script>")
        return "\n".join(parts)

    def css(self) -> str:
        return "\n".join(e.path.joinpath("style.css").read_text(encoding="utf-8", errors="replace")
                         for e in self.active() if e.loaded and e.path.joinpath("style.css").is_file())

    def script_errors(self, ext: Extension) -> list[str]:
        """Errors the script registry recorded for an extension (a Script's title()/show() raising)."""
        registry = getattr(self, "registry", None)
        return [err.message for err in getattr(registry, "errors", []) if err.origin == ext.name]


# A1111's page helpers many extension scripts call.
JS_HELPERS = """
window.gradioApp = window.gradioApp || function () { return document; };
window.studioUiLoaded = window.studioUiLoaded || [];
window.studioUiUpdate = window.studioUiUpdate || [];
window.onUiLoaded = window.onUiLoaded || function (cb) { window.studioUiLoaded.push(cb); };
window.onUiUpdate = window.onUiUpdate || function (cb) { window.studioUiUpdate.push(cb); };
(function () {
  var fired = false;
  var observer = new MutationObserver(function (mutations) {
    if (!fired && document.querySelector('#tabs')) {
      fired = true;
      window.studioUiLoaded.forEach(function (cb) { try { cb(); } catch (e) { console.error(e); } });
    }
    if (fired) {
      window.studioUiUpdate.forEach(function (cb) { try { cb(mutations); } catch (e) { console.error(e); } });
    }
  });
  observer.observe(document.documentElement, { childList: true, subtree: true });
})();
"""


def _ident(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _guarded(cls: type, ext: Extension, report: Callable) -> type:
    """A subclass of an extension's Script whose own hooks (those it defines) report an exception, disable the
    extension for the run and let the job go on (dropdown scripts' run() fails its job with a clear message).
    Signatures are kept (functools.wraps), so the runner sees the same arguments and defaults."""
    ns: dict[str, Any] = {}
    for hook in _GUARDED:
        original = getattr(cls, hook, None)
        if original is None or original is getattr(Script, hook, None):
            continue
        ns[hook] = _guard(cls, hook, original, ext, report)
    if not ns:
        return cls
    guarded = type(cls.__name__, (cls,), ns)
    guarded.__module__, guarded.__qualname__ = cls.__module__, cls.__qualname__
    return guarded


def _guard(cls: type, hook: str, fn: Callable, ext: Extension, report: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if ext.failed:
            if hook == "run":
                raise StudioError(f"extension {ext.name!r} is disabled for this run after an error (see the "
                                  "Extensions tab)")
            return [] if hook == "ui" else None
        try:
            return fn(self, *args, **kwargs)
        except StudioError:
            raise
        except Exception as e:  # noqa: BLE001 - an extension's bug must not take the job down
            report(ext, f"{cls.__name__}.{hook}()", e)
            if hook == "run":
                raise StudioError(f"script {self.title()!r} of extension {ext.name!r} failed: "
                                  f"{type(e).__name__}: {e}") from e
            notes = getattr(getattr(args[0] if args else None, "scripts", None), "notes", None)
            if isinstance(notes, list):
                notes.append(f"extension {ext.name!r} failed in {cls.__name__}.{hook}() ({type(e).__name__}: "
                             f"{e}); disabled until the next start")
            return [] if hook == "ui" else None
    return wrapper
