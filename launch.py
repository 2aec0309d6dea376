"""Start the studio, or run its tests, preparing the environment first.

    python3 launch.py         # prepare .venv if needed, then serve the UI + API on 127.0.0.1:7860
    python3 launch.py --test  # the same preparation, then the whole test suite (pytest)

Preparation: when this interpreter already has everything in requirements.txt it is used as it is;
otherwise a virtual environment .venv is created (sharing an already-installed torch) and filled.
torch comes first, as a CPU build where there is no NVIDIA GPU, so that no multi-GB CUDA build lands
on a CPU machine.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
# Installed with --no-deps: packages whose declared dependencies would pull what must not come (spandrel declares
# torchvision, whose PyPI build does not load next to a CPU torch and then breaks transformers' imports).
NODEPS_REQUIREMENTS = ROOT / "requirements-nodeps.txt"
CPU_TORCH = "torch==2.13.0"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _requirements(path: Path = REQUIREMENTS) -> list[tuple[str, str | None]]:
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:==\s*([^\s;,]+))?", line)
        if m:
            reqs.append((m.group(1), m.group(2)))
    return reqs


def _missing(checks: list[tuple[str, str | None]]) -> list[str]:
    import importlib.metadata as md
    out = []
    for name, ver in checks:
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            out.append(name)
            continue
        if ver and have.split("+")[0] != ver:
            out.append(f"{name}=={ver}")
    return out


def missing_requirements(python: str | Path | None = None) -> list[str]:
    """Requirements (torch included) that the interpreter lacks or has at another pinned version."""
    checks = [("torch", None), *_requirements(), *_requirements(NODEPS_REQUIREMENTS)]
    if python is None:
        return _missing(checks)
    code = ("import json, sys; sys.path.insert(0, sys.argv[2]); import launch; "
            "print(json.dumps(launch._missing(json.loads(sys.argv[1]))))")
    try:
        res = subprocess.run([str(python), "-c", code, json.dumps(checks), str(ROOT)], capture_output=True,
                             text=True, timeout=120)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return ["?"]


def _has_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare() -> Path:
    """The interpreter to run with, after installing what is missing."""
    if not missing_requirements():
        return Path(sys.executable)
    python = _venv_python()
    if not python.exists():
        base_has_torch = "torch" not in missing_requirements()
        print(f"Creating virtual environment {VENV}" + (" (sharing this interpreter's torch)" if base_has_torch
                                                        else ""), flush=True)
        venv_args = [sys.executable, "-m", "venv", str(VENV)]
        if base_has_torch:
            venv_args.insert(3, "--system-site-packages")
        subprocess.run(venv_args, check=True)
    missing = missing_requirements(python)
    if missing:
        constraints = VENV / "torch-constraint.txt"
        if "torch" in missing:
            torch_spec = "torch" if _has_cuda_gpu() else CPU_TORCH
            _pip(python, torch_spec)
        torch_version = subprocess.run([str(python), "-c", "import torch; print(torch.__version__.split('+')[0])"],
                                       capture_output=True, text=True, check=True).stdout.strip()
        constraints.write_text(f"torch=={torch_version}\n")  # keeps other packages from swapping torch
        _pip(python, "-r", str(REQUIREMENTS), "-c", str(constraints))
        _pip(python, "--no-deps", "-r", str(NODEPS_REQUIREMENTS))
    return python


def tcmalloc_library() -> str | None:
    """The system's tcmalloc (Debian/Ubuntu: libtcmalloc-minimal4 or google-perftools), found through the dynamic
    linker's cache as A1111's webui.sh finds it; None where there is none or on other systems."""
    if not sys.platform.startswith("linux"):
        return None
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        cache = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    arch = {"x86_64": "x86-64", "aarch64": "AArch64"}.get(platform.machine(), "")
    for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"):
        for line in cache.splitlines():
            fields = line.strip().split(" => ")
            if len(fields) == 2 and fields[0].startswith(name + " ") and arch in fields[0]:
                return fields[1].strip()
    return None


def tcmalloc_env(env: dict[str, str]) -> dict[str, str] | None:
    """``env`` with tcmalloc preloaded, or None where it already is, is turned off (NO_TCMALLOC, A1111's switch) or
    is not installed. Torch's many small CPU allocations cost less with it: one training step of the bundled model
    0.65 s instead of 0.74 s, generation about 7 % quicker (docs/bundled-model.md), with bit-identical results."""
    if env.get("NO_TCMALLOC") or "tcmalloc" in env.get("LD_PRELOAD", ""):
        return None
    lib = tcmalloc_library()
    if lib is None:
        return None
    return {**env, "LD_PRELOAD": " ".join(filter(None, [env.get("LD_PRELOAD", ""), lib]))}


def test_command(extra: list[str]) -> list[str]:
    """pytest over tests/, a module per worker process (pytest-xdist), one worker per core (at most 4)."""
    workers = max(1, min(4, os.cpu_count() or 1))
    parallel = ["-n", str(workers), "--dist", "loadfile"] if workers > 1 else []
    return [sys.executable, "-m", "pytest", "tests", "--durations=30", *parallel, *extra]


def test_env() -> dict[str, str]:
    # One torch thread per worker: on the 2-core machines the suite runs on, two one-thread workers took 431 s
    # where one two-thread run took 798 s (small tensors scale poorly across threads; browser waits overlap).
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def main() -> None:
    argv = sys.argv[1:]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")          # the studio never downloads weights
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    python = Path(sys.executable) if "--skip-install" in argv else prepare()
    preload = tcmalloc_env(dict(os.environ))
    if preload is not None:
        print(f"Using TCMalloc: {preload['LD_PRELOAD'].split()[-1]}", flush=True)
    if preload is not None or python.absolute() != Path(sys.executable).absolute():
        # LD_PRELOAD only acts on a process's start, so the studio (and the tests it spawns) start again with it
        os.execve(str(python), [str(python), str(ROOT / "launch.py"), *argv], preload or dict(os.environ))
    os.chdir(ROOT)
    if "--test" in argv:
        extra = [a for a in argv if a not in ("--test", "--skip-install")]
        sys.exit(subprocess.call(test_command(extra), cwd=ROOT, env=test_env()))
    sys.path.insert(0, str(ROOT))
    import app
    app.main(argv)


if __name__ == "__main__":
    main()
