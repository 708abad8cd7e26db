"""Shared test fixtures: where ComfyUI is, importing it in-process, and a count of integration tests.

ComfyUI is found through COMFYUI_PATH, else ~/ComfyUI, else the ComfyUI checkout this pack sits in
(custom_nodes/<pack>). Without one, every test marked `integration` skips with the reason, and the session
summary says how many integration tests ran.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the core package `wanid` imports as a top-level package in tests

PACK_MODULE = "wanid_pack"  # the name the pack is imported under in-process (ComfyUI uses the folder name)


def find_comfyui():
    """The ComfyUI root to test against, or None."""
    candidates = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Path(os.environ["COMFYUI_PATH"]).expanduser())
    candidates.append(Path.home() / "ComfyUI")
    if REPO.parent.name == "custom_nodes":
        candidates.append(REPO.parent.parent)
    for c in candidates:
        if (c / "main.py").is_file() and (c / "comfy").is_dir():
            return c.resolve()
    return None


COMFYUI = find_comfyui()
NO_COMFY_REASON = ("no ComfyUI found: set COMFYUI_PATH, or put a checkout at ~/ComfyUI "
                   "(see README, Tests); integration tests skipped")

_integration = {"ran": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    if "integration" in report.keywords and report.when == "call" and report.passed:
        _integration["ran"] += 1
    elif "integration" in report.keywords and report.skipped and report.when in ("setup", "call"):
        _integration["skipped"] += 1


def pytest_terminal_summary(terminalreporter):
    where = str(COMFYUI) if COMFYUI else "none"
    terminalreporter.write_line(
        f"[wanid] real-ComfyUI integration tests: {_integration['ran']} passed, "
        f"{_integration['skipped']} skipped (ComfyUI: {where})")


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


@pytest.fixture(scope="session")
def comfy_pack():
    """The pack imported in-process inside a real ComfyUI (CPU). Skips without ComfyUI."""
    return import_comfy()


def pytest_collection_modifyitems(items):
    # Anything that runs inside or against a real ComfyUI counts as an integration test, marked or not.
    for item in items:
        if {"comfy_pack", "comfy_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
