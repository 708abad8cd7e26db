"""What tests and benchmarks share: where the ComfyUI under test is, importing it (and the pack) in-process, the
relative error every numerical comparison uses, and the environments of the official code (official_code).

ComfyUI is found as tests/comfy_roots.py says; scripts/test.py runs the suite once per root. Plain module (no pytest
hooks: those live in conftest.py), so benchmarks import it too.
"""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the core package `wanid` imports as a top-level package in tests

import comfy_roots  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative imports)

PACK_MODULE = "wanid_pack"  # the name the pack is imported under in-process (ComfyUI uses the folder name)


def find_comfyui():
    """The ComfyUI root to test against (the first that tests/comfy_roots.py finds), or None.
    scripts/test.py runs the suite once per root, each time with COMFYUI_PATH naming that one root."""
    for root in comfy_roots.find_roots():
        if comfy_roots.is_comfyui(root):
            return root
    return None


COMFYUI = find_comfyui()
COMFYUI_VERSION = comfy_roots.comfyui_version(COMFYUI) if COMFYUI else None
NO_COMFY_REASON = ("no ComfyUI found: set COMFYUI_PATH, or put a checkout at ~/ComfyUI "
                   "(see README, Tests); integration tests skipped")

def import_comfy(cpu=True):
    """Import ComfyUI in-process (on the CPU unless cpu=False: benchmarks on a GPU) and the pack as `wanid_pack`;
    skip the test without ComfyUI."""
    if COMFYUI is None:
        pytest.skip(NO_COMFY_REASON)
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.cli_args
    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = cpu  # read once, when model_management is first imported
    import comfy.model_management  # noqa: F401
    if PACK_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_MODULE, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK_MODULE]


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 on the CPU: the relative error of `a` against the reference `b`."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def official_code(script, method, github, build_when):
    """(python, repo, None) of the official `method` code's environment that scripts/<script> makes (a venv and a
    copy of github.com/<github>), or (None, None, why). The script builds what is missing (up to 15 minutes) when
    build_when(found) says so, found: {"python": ..., "repo": ...} as it exists now ("" for what is missing)."""
    command = [sys.executable, str(REPO / "scripts" / script)]

    def ask(*extra, timeout=60):
        r = subprocess.run(command + list(extra), capture_output=True, text=True, timeout=timeout)
        return r, dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    r, found = ask("--print")
    if build_when(found):
        try:
            r, found = ask(timeout=900)
        except subprocess.TimeoutExpired:
            return None, None, f"building the {method} oracle venv took over 15 minutes"
    if r.returncode != 0 or not found.get("python") or not found.get("repo"):
        return None, None, (f"the official {method} code is not set up here ("
                            + (r.stderr.strip().splitlines() or ["?"])[-1]
                            + f"); run: python scripts/{script} --repo <copy of github.com/{github}>")
    return found["python"], found["repo"], None
