"""The pack reaches ComfyUI's V3 API through one pinned module (nodes/v3.py), never through names newer ComfyUI
dropped."""
import re

import pytest

from wanid_testing import REPO


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


@pytest.mark.integration
def test_every_node_class_is_named_as_its_node_id(comfy_pack):
    """Issue #11: a node is found by one name in code, logs and saved workflows (and the Slot-ID Encoder node no
    longer shares its name with the nn.Module wanid.slot.encoder.SlotEncoder)."""
    from wanid_pack import nodes
    found = nodes.all_nodes()
    assert found
    assert [(c.__name__, c.GET_SCHEMA().node_id) for c in found if c.__name__ != c.GET_SCHEMA().node_id] == []
