"""Where ComfyUI's template browser finds the pack's workflows, on every route it has had.

- 0.3.64 and 0.33.0 (app/custom_node_manager.py): GET /workflow_templates lists `<pack>/<folder>/*.json` for the
  folder names example_workflows, example, examples, workflow, workflows; each such folder is mounted whole as static
  files under /api/workflow_templates/<pack>/, so the `.jpg` thumbnail beside each file is served too (checked on the
  real server below).
- About 0.38 (Comfy-Org/ComfyUI app/custom_node_manager.py, commit fcd026bf, read from the public code index; it
  cannot be installed here): collect_workflow_templates() scans the same names, example_workflows first, takes each
  folder's `*.json` once, renames a name seen in an earlier folder to `<name>-<folder>`, and
  GET /workflow_templates/{module}/{filename} serves a listed `.json` and nothing else. No thumbnail is served there:
  the README says what the browser shows. The emulation below is that published code's logic, run on this repository.
"""
import glob
import os

import pytest

import wanid_testing
from comfy_server import comfy_server  # noqa: F401  (comfy_server is a fixture)
from wanid.cli import templates

NAMES = sorted(templates.WORKFLOWS)
ALIASES = ["example_workflows", "example", "examples", "workflow", "workflows"]  # ~0.38's order (0.33.0's too)
PACK_NAMES = ("ComfyUI-WanIdentity", "comfyui-wan-identity")  # a git clone's folder, the registry/Manager's


def newer_collect(custom_nodes):
    """~0.38's collect_workflow_templates() for one custom_nodes folder: {module: {visible name: file}}."""
    found, seen = {}, {}
    for alias in ALIASES:
        for folder in sorted(glob.glob(os.path.join(custom_nodes, "*", alias))):
            if not os.path.isdir(folder):
                continue
            module = os.path.basename(os.path.dirname(folder))
            real = os.path.realpath(folder)
            if real in seen.setdefault(module, set()):
                continue
            seen[module].add(real)
            names = found.setdefault(module, {})
            for file in sorted(glob.glob(os.path.join(folder, "*.json"))):
                stem = os.path.splitext(os.path.basename(file))[0]
                name, suffix = stem, 2
                while name in names:
                    name = f"{stem}-{alias}" if suffix == 2 else f"{stem}-{alias}-{suffix}"
                    suffix += 1
                names[name] = file
    return found


def newer_get(found, module, filename):
    """~0.38's GET /workflow_templates/{module}/{filename}: the file served, or None for its 404."""
    if not filename.endswith(".json"):
        return None
    return found.get(module, {}).get(filename[:-len(".json")])


@pytest.fixture(params=PACK_NAMES)
def installed(request, tmp_path):
    """A custom_nodes folder holding this repository under a name users get, beside another pack with templates."""
    root = tmp_path / "custom_nodes"
    root.mkdir()
    os.symlink(wanid_testing.REPO, root / request.param, target_is_directory=True)
    (root / "other-pack" / "examples").mkdir(parents=True)
    (root / "other-pack" / "examples" / "standin_wan21_t2v_14b.json").write_text("{}")
    return root, request.param


def test_the_newer_route_lists_and_serves_each_ui_workflow_once(installed):
    root, module = installed
    found = newer_collect(str(root))
    assert sorted(found[module]) == NAMES, "every UI workflow once, under its own name; api/ twins not listed"
    assert sorted(found["other-pack"]) == ["standin_wan21_t2v_14b"]  # another pack's same name stays apart
    for name in NAMES:
        served = newer_get(found, module, f"{name}.json")
        assert served and os.path.samefile(served, wanid_testing.REPO / "example_workflows" / f"{name}.json")
        assert (wanid_testing.REPO / "example_workflows" / f"{name}.jpg").is_file()
        assert newer_get(found, module, f"{name}.jpg") is None  # thumbnails: not served by that route


@pytest.mark.integration
def test_this_versions_route_serves_the_thumbnails(comfy_server):
    """On 0.3.64 and 0.33.0 the browser's thumbnail request (/api/workflow_templates/<pack>/<name>.jpg) is served."""
    import requests
    for name in NAMES:
        r = requests.get(f"{comfy_server.url}/api/workflow_templates/ComfyUI-WanIdentity/{name}.jpg", timeout=30)
        assert r.ok and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8", name
