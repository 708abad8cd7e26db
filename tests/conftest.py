"""Shared test fixtures: where ComfyUI is, importing it in-process, and a count of integration tests.

ComfyUI is found as tests/comfy_roots.py says (COMFYUI_PATH, else ~/ComfyUI and ~/ComfyUI-*, else the ComfyUI
checkout this pack sits in); scripts/test.py runs the suite once per root. Without one, every test marked `integration` skips with the reason, and the session
summary says how many integration tests ran.
"""
import importlib.util
import json
import os
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

_integration = {"passed": 0, "failed": 0, "skipped": 0}
_all = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    outcome = None
    if report.when == "call" or report.outcome in ("failed", "skipped") and report.when == "setup":
        outcome = report.outcome
    elif report.when == "teardown" and report.failed:
        outcome = "failed"
    if outcome is None:
        return
    _all[outcome] += 1
    if "integration" in report.keywords:
        _integration[outcome] += 1


def pytest_terminal_summary(terminalreporter):
    where = f"{COMFYUI_VERSION} at {COMFYUI}" if COMFYUI else "none"
    ran = _integration["passed"] + _integration["failed"]
    terminalreporter.write_line(
        f"[wanid] real-ComfyUI integration tests: {ran} ran, {_integration['passed']} passed, "
        f"{_integration['failed']} failed, {_integration['skipped']} skipped (ComfyUI: {where})")
    report = os.environ.get("WANID_TEST_REPORT")
    if report:  # scripts/test.py's per-version table
        Path(report).write_text(json.dumps({
            "comfyui": str(COMFYUI) if COMFYUI else None, "version": COMFYUI_VERSION,
            "integration": _integration, "all": _all}))


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
