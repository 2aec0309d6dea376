"""launch.py's tcmalloc preload: found, switched off, not doubled, and the studio really runs with it."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import start_server

import launch


def _needs_tcmalloc() -> str:
    lib = launch.tcmalloc_library()
    if lib is None:
        pytest.skip("tcmalloc is not installed (apt-get install libtcmalloc-minimal4; .ci/run installs it)")
    return lib


def test_tcmalloc_env_rules():
    lib = _needs_tcmalloc()
    assert Path(lib).exists() and "tcmalloc" in Path(lib).name
    env = launch.tcmalloc_env({"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "LD_PRELOAD": lib}
    assert launch.tcmalloc_env({"LD_PRELOAD": "/x/libfoo.so"})["LD_PRELOAD"] == f"/x/libfoo.so {lib}"
    assert launch.tcmalloc_env({"LD_PRELOAD": lib}) is None            # never preloaded twice (no exec loop)
    assert launch.tcmalloc_env({"NO_TCMALLOC": "1"}) is None           # A1111's switch turns it off


def test_torch_runs_under_the_preloaded_tcmalloc():
    """What launch.py execs into: torch computes the same numbers with the library mapped into the process."""
    _needs_tcmalloc()
    env = launch.tcmalloc_env({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    code = ("import torch; g = torch.Generator().manual_seed(0); a = torch.randn(64, 64, generator=g); "
            "print(float((a @ a).sum())); print('tcmalloc' in open('/proc/self/maps').read())")
    with_lib = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    without = subprocess.run([sys.executable, "-c", code], env={**env, "LD_PRELOAD": ""}, capture_output=True,
                             text=True, check=True)
    assert with_lib.stdout.split() == [without.stdout.split()[0], "True"]
    assert without.stdout.split()[1] == "False"


def test_studio_restarts_itself_with_tcmalloc(tmp_path, monkeypatch):
    """Started without the preload, launch.py execs itself with it (same pid) and serves."""
    _needs_tcmalloc()
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("NO_TCMALLOC", raising=False)
    proc, url = start_server(tmp_path)
    try:
        assert "tcmalloc" in Path(f"/proc/{proc.pid}/maps").read_text()
        with urllib.request.urlopen(f"{url}/sdapi/v1/samplers", timeout=60) as r:
            assert r.status == 200
        log = next(tmp_path.glob("server-*.log")).read_text()
        assert "Using TCMalloc:" in log
    finally:
        proc.terminate()
        proc.wait(30)
