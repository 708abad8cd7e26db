"""pytest hooks and fixtures: the per-run count of integration tests, and the in-process pack (wanid_testing.py has
the shared library part: where ComfyUI is, importing it).
Without a ComfyUI every test marked `integration` skips with the reason, and the session summary says how many
integration tests ran, passed, failed and skipped.
"""
import json
import os
from pathlib import Path

import pytest

from wanid_testing import COMFYUI, COMFYUI_VERSION, import_comfy

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


@pytest.fixture(scope="session")
def comfy_pack():
    """The pack imported in-process inside a real ComfyUI (CPU). Skips without ComfyUI."""
    return import_comfy()


def pytest_collection_modifyitems(items):
    # Anything that runs inside or against a real ComfyUI counts as an integration test, marked or not.
    for item in items:
        if {"comfy_pack", "comfy_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
