"""Built-in scripts, written on the same Script API extensions use (webui/extensions/api.py)."""
from __future__ import annotations

import importlib

from webui.extensions.runner import ScriptRegistry, ScriptRunner
from webui.extensions.script import Script

# Module names in the order their scripts appear in the Script dropdown.
BUILTIN_MODULES: tuple[str, ...] = ("xyz_grid", "prompt_matrix", "prompts_from_file", "loopback", "outpainting",
                                     "sd_upscale")


def builtin_registry() -> ScriptRegistry:
    """A registry holding the built-in scripts (extensions' scripts are added after them)."""
    registry = ScriptRegistry()
    for name in BUILTIN_MODULES:
        module = importlib.import_module(f"webui.scripts.{name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Script) and obj.__module__ == module.__name__:
                registry.register(obj)
    return registry


def default_runner(engine) -> ScriptRunner:
    """A runner over the built-in scripts (what app.py builds when it has no registry of its own)."""
    return ScriptRunner(engine, builtin_registry())
