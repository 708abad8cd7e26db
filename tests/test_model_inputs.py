"""The one table of model inputs (wanid/model_inputs.py) against a real server: every input of the pack's nodes
that lists model files is a row of it, with the folder the node really lists; and the queue command's pre-flight
check, which reads it, names the folder of every model file a shipped workflow needs, the Lynx folder and
facexlib's IR-SE50 included."""
import shutil

import pytest

import wanid_testing
from comfy_server import comfy_server  # noqa: F401  (fixture)
from wanid.cli import workflow as wf
from wanid.model_inputs import INPUTS, TABLE, pack_folders

pytestmark = pytest.mark.integration

MARK = "wanid_marker_model_inputs"


def test_every_file_list_of_the_pack_is_a_row_of_the_table(comfy_server):
    """A marker file in each folder the pack registers, then /object_info: an input whose options list a folder's
    marker is a model input of that folder in the table, and every row with an input is found on some node."""
    markers = {}  # what a node lists for the marker of each folder
    made = []
    for folder, exts in pack_folders().items():
        if folder == "lynx":  # Lynx Loader lists folders holding resampler.safetensors
            path = comfy_server.models_dir / folder / MARK / "resampler.safetensors"
            markers[folder] = MARK
        else:
            path = comfy_server.models_dir / folder / f"{MARK}_{folder}_arcface{exts[0]}"  # facexlib: *arcface*
            markers[folder] = path.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        made.append(path)
    try:
        info = comfy_server.object_info()
    finally:
        for path in made:
            shutil.rmtree(path.parent) if path.parent.name == MARK else path.unlink()
    found = {}
    for class_type, schema in info.items():
        if not class_type.startswith("WanID"):
            continue
        for name, spec, _ in wf.input_specs(schema):
            if wf.spec_type(spec) != "COMBO":
                continue
            for folder, marker in markers.items():
                if marker in wf.combo_values(spec):
                    found.setdefault(name, set()).add(folder)
                    assert name in INPUTS, f"{class_type}.{name} lists models/{folder}: add it to the table"
                    assert INPUTS[name].folder == folder, f"{class_type}.{name} lists models/{folder}"
    rows = {r.input for r in TABLE if r.input and r.pack}
    assert set(found) == rows, f"rows no node lists: {rows - set(found)}"


def test_missing_files_names_the_lynx_folder_and_the_irse50_file(comfy_server):
    """The shipped Lynx workflow against a server that has none of its files: each model input is named with the
    folder of ComfyUI/models its file goes in and what the file is; the Lynx folder and facexlib's IR-SE50 too."""
    import json
    import re

    from wanid.cli.client import Client
    from wanid.cli.queue import missing_files

    api = json.loads((wanid_testing.REPO / "example_workflows" / "api" / "lynx_wan21_t2v_14b.json").read_text())
    problems = missing_files(api, comfy_server.object_info(), Client(comfy_server.url))
    by_input = {re.search(r"\) (\w+): ", line).group(1): line for line in problems}
    assert set(by_input) == {"unet_name", "vae_name", "clip_name", "video", "lynx_name", "arcface_name"}, problems
    assert ("node 9 (WanIDLynxLoader: Lynx Loader) lynx_name: model folder 'lynx_full' is not installed on the "
            "server; put it in ComfyUI/models/lynx/ (a Lynx folder: lynx_full (resampler.safetensors, "
            "ip_layers.safetensors, ref_layers.safetensors) or lynx_lite") in by_input["lynx_name"]
    assert ("arcface_name: model file 'recognition_arcface_ir_se50.pth' is not installed on the server; put it in "
            "ComfyUI/models/facexlib/ (facexlib's ArcFace IR-SE50") in by_input["arcface_name"]
    for name, folder in (("unet_name", "diffusion_models"), ("vae_name", "vae"), ("clip_name", "text_encoders")):
        assert f"put it in ComfyUI/models/{folder}/" in by_input[name]
