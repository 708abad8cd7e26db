"""The pack reaches ComfyUI's V3 API through one pinned module (nodes/v3.py), never through names newer ComfyUI
dropped."""
import re

import pytest

from conftest import REPO


def test_node_modules_import_the_v3_api_only_through_the_pinned_module():
    offenders = []
    for path in [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]:
        if path.name == "v3.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"\bcomfy_io\b|comfy_api\.(latest|v\d)", text):
            offenders.append(path.name)
    assert offenders == [], f"import io/ui from nodes/v3.py instead: {offenders}"


@pytest.mark.integration
def test_the_pinned_api_is_the_versioned_one(comfy_pack):
    import comfy_api.v0_0_2
    from wanid_pack.nodes import v3
    assert v3.io is comfy_api.v0_0_2.io and v3.ui is comfy_api.v0_0_2.ui
    assert v3.ComfyExtension is comfy_api.v0_0_2.ComfyExtension
