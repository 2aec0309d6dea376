"""Which scripts exist (ScriptRegistry) and running a request with them (ScriptRunner).

app.py builds one registry (the built-in scripts, then extensions' scripts/*.py through ``load_file``) and
one runner over the engine; the UI and the API both submit requests through the runner. A request with
no script_name and no always-on script goes straight to the engine, as if scripts did not exist.
"""
from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.core.errors import InvalidField
from webui.core.request import GenerationRequest, Img2ImgRequest
from webui.engine.jobs import Job
from webui.engine.processing import Engine, GenerationResult
from webui.extensions.processing import ENGINE_ALWAYSON, RunContext, ScriptRun, process_images, processing_for
from webui.extensions.script import AlwaysVisible, Script

_HOOKS = ("process", "before_process", "process_batch", "postprocess_image", "postprocess", "setup",
          "before_process_batch")
_MISSING = inspect.Parameter.empty


@dataclass
class ScriptSource:
    cls: type[Script]
    path: Path | None = None
    origin: str = "builtin"            # "builtin" or the extension's name


@dataclass
class ScriptError:
    origin: str
    path: Path | None
    message: str                       # the traceback


class ScriptRegistry:
    """The Script classes of this studio, in load order. Extensions' loader calls ``load_file`` for each
    extensions/NAME/scripts/*.py (or ``register`` for a class it has); failures are kept in ``errors``."""

    def __init__(self) -> None:
        self._sources: list[ScriptSource] = []
        self.errors: list[ScriptError] = []
        self.version = 0
        self._modules = itertools.count()

    def register(self, cls: type[Script], *, path: Path | None = None, origin: str = "builtin") -> type[Script]:
        """Add a Script subclass (usable as a decorator); a class already registered is not added twice."""
        if not (isinstance(cls, type) and issubclass(cls, Script)) or cls is Script:
            raise TypeError(f"{cls!r} is not a subclass of Script")
        if all(s.cls is not cls for s in self._sources):
            self._sources.append(ScriptSource(cls, Path(path) if path else None, origin))
            self.version += 1
        return cls

    def load_file(self, path: str | Path, origin: str = "extension") -> list[type[Script]]:
        """Import a script file and register every Script subclass it defines. Raises what the import
        raises (the caller reports it); the file's own folder is importable while it loads."""
        path = Path(path)
        name = f"studio_script_{next(self._modules)}_{path.stem}"
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
        found = [obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, Script) and obj is not Script
                 and obj.__module__ == name]
        for cls in found:
            cls.filename = str(path)
            self.register(cls, path=path, origin=origin)
        return found

    def record_error(self, origin: str, path: Path | None, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(f"Error loading script {path or origin}:\n{text}", file=sys.stderr, flush=True)
        self.errors.append(ScriptError(origin, path, text))

    def sources(self) -> list[ScriptSource]:
        return list(self._sources)


class TabScripts:
    """Instances of the scripts for one tab (A1111 makes one set for txt2img and one for img2img)."""

    def __init__(self, registry: ScriptRegistry, is_img2img: bool, engine: Engine | None = None):
        self.is_img2img = is_img2img
        self.version = registry.version
        self.scripts: list[Script] = []
        self.selectable: list[Script] = []
        self.alwayson: list[Script] = []
        for src in registry.sources():
            try:
                script = src.cls()
                script.filename = str(src.path) if src.path else None
                script.engine = engine
                script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
                script.tabname = "img2img" if is_img2img else "txt2img"
                shown = script.show(is_img2img)
                script.name = script.title().lower()
            except Exception as e:  # noqa: BLE001 - one broken script is reported and left out
                registry.record_error(src.origin, src.path, e)
                continue
            if shown is AlwaysVisible:
                script.alwayson = True
                self.alwayson.append(script)
            elif shown:
                self.selectable.append(script)
            else:
                continue
            self.scripts.append(script)
        self.alwayson.sort(key=lambda s: s.sorting_priority)


def _params(fn: Callable) -> list[inspect.Parameter]:
    """The positional parameters after p (and after pp / processed for those hooks)."""
    params = [q for q in inspect.signature(fn).parameters.values()
              if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    skip = 2 if fn.__name__ in ("postprocess_image", "postprocess") else 1
    return params[skip:]


def _entry_point(script: Script) -> Callable | None:
    """run() of a dropdown script; the first hook an always-on script overrides."""
    if not script.alwayson:
        return script.run
    for hook in _HOOKS:
        if getattr(type(script), hook) is not getattr(Script, hook):
            return getattr(script, hook)
    return None


def _control_value(c: Any) -> Any:
    value = getattr(c, "value", None)
    return value() if callable(value) else value


class ScriptRunner:
    """Runs requests with their script (script_name / script_args) and always-on scripts
    (alwayson_scripts {"title": {"args": [...]}}); lists them for the API."""

    def __init__(self, engine: Engine, registry: ScriptRegistry):
        self.engine = engine
        self.registry = registry
        self._tabs: dict[bool, TabScripts] = {}

    def tab(self, is_img2img: bool) -> TabScripts:
        t = self._tabs.get(is_img2img)
        if t is None or t.version != self.registry.version:
            t = self._tabs[is_img2img] = TabScripts(self.registry, is_img2img, self.engine)
        return t

    def selectable(self, is_img2img: bool) -> list[Script]:
        return self.tab(is_img2img).selectable

    def alwayson(self, is_img2img: bool) -> list[Script]:
        return self.tab(is_img2img).alwayson

    def find(self, name: str, is_img2img: bool) -> Script:
        """The dropdown script titled ``name`` (case-insensitive); InvalidField (422) naming the valid ones."""
        tab = self.tab(is_img2img)
        wanted = str(name).strip().lower()
        for s in tab.selectable:
            if s.name == wanted:
                return s
        if any(s.name == wanted for s in tab.alwayson):
            raise InvalidField("script_name", f"{name!r} is an always-on script: give its args in alwayson_scripts")
        valid = ", ".join(repr(s.title()) for s in tab.selectable) or "none"
        kind = "img2img" if is_img2img else "txt2img"
        raise InvalidField("script_name", f"unknown script {name!r} for {kind}; valid: {valid}")

    def args_for(self, script: Script, given: list | tuple | None) -> tuple:
        """The script's args: those given, then defaults (the entry point's defaults, else the values of
        its UI components when the UI is built). InvalidField when a needed one is missing."""
        given = list(given or [])
        fn = _entry_point(script)
        if fn is None:
            return tuple(given)
        params = _params(fn)
        has_varargs = any(q.kind == q.VAR_POSITIONAL for q in inspect.signature(fn).parameters.values())
        if len(given) > len(params) and not has_varargs:
            raise InvalidField("script_args", f"script {script.title()!r} takes {len(params)} args "
                                              f"({', '.join(q.name for q in params)}), got {len(given)}")
        controls = script.controls or []
        args = list(given)
        for i in range(len(given), len(params)):
            if params[i].default is not _MISSING:
                args.append(params[i].default)
            elif i < len(controls):
                args.append(_control_value(controls[i]))
            else:
                raise InvalidField("script_args", f"script {script.title()!r} needs its argument "
                                                  f"{params[i].name!r} (#{i}); got {len(given)} args")
        if has_varargs and len(given) < len(controls):
            args += [_control_value(c) for c in controls[len(given):]]
        return tuple(args)

    def plan(self, req: GenerationRequest, is_img2img: bool) -> tuple[Script | None, tuple, list[tuple]]:
        """(dropdown script, its args, [(always-on script, args)]) of a request, checked before any work."""
        script, args = None, ()
        if req.script_name:
            script = self.find(req.script_name, is_img2img)
            args = self.args_for(script, req.script_args)
        given = req.alwayson_scripts or {}
        if not isinstance(given, dict):
            raise InvalidField("alwayson_scripts", 'alwayson_scripts must be {"<title>": {"args": [...]}}')
        tab = self.tab(is_img2img)
        by_name = {s.name: s for s in tab.alwayson}
        wanted: dict[str, list] = {}
        for name, body in given.items():
            key = str(name).strip().lower()
            if key not in by_name:
                if key in ENGINE_ALWAYSON:
                    continue
                if any(s.name == key for s in tab.selectable):
                    raise InvalidField("alwayson_scripts", f"{name!r} is a dropdown script: use script_name")
                valid = ", ".join(repr(s.title()) for s in tab.alwayson) or "none"
                raise InvalidField("alwayson_scripts", f"always-on script {name!r} not found; valid: {valid}")
            if isinstance(body, dict):
                a = body.get("args", [])
            elif isinstance(body, list):
                a = body
            else:
                raise InvalidField("alwayson_scripts", f'alwayson_scripts[{name!r}] must be {{"args": [...]}}')
            wanted[key] = list(a or [])
        alwayson = [(s, self.args_for(s, wanted.get(s.name, []))) for s in tab.alwayson]
        return script, args, alwayson

    # -- running ------------------------------------------------------------------------------------------
    def submit(self, req: GenerationRequest, images: list | None = None, mask=None, *, save: bool = True) -> Job:
        """Check everything (fields, script, its args), then queue the job. img2img when ``images``."""
        is_img2img = images is not None or isinstance(req, Img2ImgRequest)
        script, args, alwayson = self.plan(req, is_img2img)
        e = self.engine
        if script is None and not alwayson:
            if is_img2img:
                return e.submit_img2img(req, images or [], mask, save=save)  # type: ignore[arg-type]
            return e.submit_txt2img(req, save=save)
        opts, sampler, schedule = e.prepare(req)
        if is_img2img:
            e.init_images(req, images or [], mask, opts)  # type: ignore[arg-type]
        else:
            e.hires_plan(req, opts, sampler, schedule)
        what = script.title() if script else ("img2img" if is_img2img else "txt2img")
        return e.jobs.submit(lambda job: self._run(job, req, images, mask, save, script, args, alwayson), what)

    def run(self, req: GenerationRequest, images: list | None = None, mask=None, *,
            save: bool = True) -> GenerationResult:
        return self.submit(req, images, mask, save=save).wait()

    def _run(self, job: Job, req: GenerationRequest, images, mask, save: bool, script: Script | None,
             args: tuple, alwayson: list[tuple]) -> GenerationResult:
        run = RunContext(self.engine, job, save)
        p = processing_for(req, init_images=list(images or []), image_mask=mask)
        p._run = run
        p.scripts = ScriptRun(alwayson)
        p.scripts.setup(p)
        processed = None
        if script is not None:
            p.script_args = args
            processed = script.run(p, *args)
        if processed is None:
            processed = process_images(p)
        result = processed.to_result()
        result.saved = list(run.saved)
        for note in [*run.notes, *p.scripts.notes]:
            if note not in result.notes:
                result.notes.append(note)
        result.interrupted = result.interrupted or job.interrupted
        job.progress.stage = ""
        return result

    # -- listings ----------------------------------------------------------------------------------------
    def api_scripts(self) -> dict[str, list[str]]:
        """GET /sdapi/v1/scripts: the dropdown scripts' names (lower-case titles) per tab."""
        return {"txt2img": [s.name for s in self.selectable(False)],
                "img2img": [s.name for s in self.selectable(True)]}

    def api_script_info(self) -> list[dict[str, Any]]:
        """GET /sdapi/v1/script-info: every script of both tabs with its args (label, value, range, choices)."""
        out = []
        for is_img2img in (False, True):
            for s in self.tab(is_img2img).scripts:
                out.append({"name": s.name, "is_alwayson": s.alwayson, "is_img2img": is_img2img,
                            "args": self._arg_info(s)})
        return out

    @staticmethod
    def _arg_info(script: Script) -> list[dict[str, Any]]:
        if script.controls:
            items = []
            for c in script.controls:
                choices = getattr(c, "choices", None)
                if choices:
                    choices = [x[0] if isinstance(x, (tuple, list)) else x for x in choices]
                items.append({"label": getattr(c, "label", None), "value": _control_value(c),
                              "minimum": getattr(c, "minimum", None), "maximum": getattr(c, "maximum", None),
                              "step": getattr(c, "step", None), "choices": choices or None})
            return items
        fn = _entry_point(script)
        if fn is None:
            return []
        return [{"label": q.name, "value": None if q.default is _MISSING else q.default, "minimum": None,
                 "maximum": None, "step": None, "choices": None} for q in _params(fn)]
