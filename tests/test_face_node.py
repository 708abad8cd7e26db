"""The Face Crop / Parse node inside a real ComfyUI: in-process (schema, outputs, model folders, cache, errors)
and end to end through a real server (ReferenceClipLoader -> FaceCrop/Parse on the carphone clip via /prompt)."""
import importlib
import os
import shutil

import numpy as np
import pytest
import torch

from comfy_server import comfy_server  # noqa: F401  (session fixture: the real server)
from face_files import carphone, carphone_path, write_arcface, write_pack


@pytest.fixture(scope="module")
def face_nodes(comfy_pack):
    return importlib.import_module(f"{comfy_pack.__name__}.nodes.face")


@pytest.fixture
def models_dir(tmp_path, monkeypatch, comfy_pack):
    import folder_paths
    for name, sub in (("insightface", "insightface"), ("face_parsing", "face_parsing")):
        d = tmp_path / sub
        d.mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(d)], {".onnx", ".zip"} if name == "insightface" else {".pth", ".pt"}))
    folder_paths.filename_list_cache.clear() if hasattr(folder_paths, "filename_list_cache") else None
    return tmp_path


def run(node, **kw):
    args = dict(detector="retinaface_mobilenet", face_choice="largest", face_index=0, on_no_face="error",
                label_set="official", parser_model="none (fallback)", provider="CPU")
    args.update(kw)
    return node.execute(**args)


def test_schema(face_nodes, comfy_pack):
    schema = face_nodes.WanIDFaceCropParse.define_schema()
    assert schema.node_id == "WanIDFaceCropParse" and schema.display_name == "Face Crop / Parse"
    names = [i.id for i in schema.inputs]
    assert names[:8] == ["images", "detector", "face_choice", "face_index", "on_no_face", "label_set",
                         "parser_model", "provider"]
    assert {"times", "similar_to"} <= set(names)
    assert [o.id for o in schema.outputs] == ["crops", "masks", "anchor", "face_clip", "preview", "info", "crops_raw"]
    assert face_nodes.WanIDFaceCropParse in comfy_pack.nodes.all_nodes()


def test_node_outputs_on_carphone(face_nodes, models_dir):
    frames = torch.from_numpy(carphone()[:6]).float() / 255
    out = run(face_nodes.WanIDFaceCropParse, images=frames, times=torch.arange(6) / 29.97)
    crops, masks, anchor, clip, preview, info, raw = out.result
    assert crops.shape == (6, 512, 512, 3) and masks.shape == (6, 512, 512) and anchor.shape == (1, 512, 512, 3)
    # crops_raw: the crops before whitening, equal to them where the parser kept the pixel
    assert raw.shape == crops.shape and torch.equal(raw[masks > 0], crops[masks > 0])
    torch.testing.assert_close(anchor[0], crops[clip.anchor_index])
    torch.testing.assert_close(clip.times, torch.arange(6) / 29.97)
    assert preview.ndim == 4 and preview.shape[0] == 1
    assert "retinaface_mobilenet on CPUExecutionProvider" in info and "anchor: frame" in info


def test_node_uses_insightface_pack_and_caches_it(face_nodes, models_dir):
    write_pack(models_dir / "insightface" / "models" / "antelopev2" / "antelopev2")  # nested-zip layout
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[200:208, 320:328, 0] = 255  # the test SCRFD's "face" (see face_files.TinySCRFD)
    images = torch.from_numpy(frame)[None].float() / 255
    out = run(face_nodes.WanIDFaceCropParse, images=images, detector="auto")
    clip, info = out.result[3], out.result[5]
    assert "antelopev2/scrfd_10g_bnkps.onnx" in info and "glintr100.onnx" in info
    assert clip.embeddings.shape == (1, 512)
    n = len(face_nodes._cache)
    run(face_nodes.WanIDFaceCropParse, images=images, detector="auto")
    assert len(face_nodes._cache) == n  # a re-queue does not reload


def test_node_errors_name_the_input(face_nodes, models_dir):
    frames = torch.from_numpy(carphone()[:2]).float() / 255
    with pytest.raises(FileNotFoundError, match=r"antelopev2 not found: put the antelopev2 \.onnx files in .*"
                                                r"models.antelopev2"):
        run(face_nodes.WanIDFaceCropParse, images=frames, detector="antelopev2")
    with pytest.raises(ValueError, match="similar_to"):
        run(face_nodes.WanIDFaceCropParse, images=frames, face_choice="most_similar")
    with pytest.raises(ValueError, match="needs an ArcFace model"):
        run(face_nodes.WanIDFaceCropParse, images=frames, face_choice="most_similar", similar_to=frames[:1])
    with pytest.raises(FileNotFoundError, match="parser_model"):
        run(face_nodes.WanIDFaceCropParse, images=frames, parser_model="missing.pth")
    black = torch.zeros(3, 144, 176, 3)
    with pytest.raises(RuntimeError, match=r"no face found in 3 of 3 frames: 0-2"):
        run(face_nodes.WanIDFaceCropParse, images=black)


def test_parser_from_the_model_folder(face_nodes, models_dir):
    wparsing = importlib.import_module(face_nodes.__name__.rsplit(".", 2)[0] + ".wanid.face.parsing")
    frames = torch.from_numpy(carphone()[:1]).float() / 255
    target = models_dir / "face_parsing" / "parsing_bisenet.pth"
    target.unlink(missing_ok=True)
    # auto without a parser installed: the fallback, said in info
    out = run(face_nodes.WanIDFaceCropParse, images=frames, parser_model="auto")
    assert "parser: none: fallback" in out.result[5]
    torch.save(wparsing.BiSeNet(19).state_dict(), target)
    assert face_nodes.parser_files()[:2] == ["auto", "parsing_bisenet.pth"]
    for choice in ("parsing_bisenet.pth", "auto"):  # auto takes BiSeNet once it is there
        out = run(face_nodes.WanIDFaceCropParse, images=frames, parser_model=choice)
        crops, masks = out.result[0], out.result[1]
        assert torch.all(crops[masks == 0] == 1.0)
        assert "parsing_bisenet.pth" in out.result[5], choice


# ------------------------------------------------------------------------------------------- real server
@pytest.mark.integration
def test_reference_clip_to_face_crop_through_a_real_server(comfy_server):
    shutil.copy(carphone_path(), os.path.join(comfy_server.input_dir, "carphone_face.mp4"))
    prompt = {
        "clip": {"class_type": "WanIDReferenceClipLoader",
                 "inputs": {"video": "carphone_face.mp4", "num_frames": 8, "start_time": 0.0, "duration": 0.0,
                            "stride": 0, "max_side": 1024}},
        "face": {"class_type": "WanIDFaceCropParse",
                 "inputs": {"images": ["clip", 0], "times": ["clip", 1], "detector": "auto",
                            "face_choice": "largest", "face_index": 0, "on_no_face": "error",
                            "label_set": "official", "parser_model": "none (fallback)", "provider": "auto",
                            "fallback": "ellipse"}},
        "save": {"class_type": "WanIDTestSaveTensor",
                 "inputs": {"filename_prefix": "wanid_test/face", "image": ["face", 0], "mask": ["face", 1]}},
        "save_anchor": {"class_type": "WanIDTestSaveTensor",
                        "inputs": {"filename_prefix": "wanid_test/anchor", "image": ["face", 2],
                                   "mask": ["face", 1]}},
    }
    entry = comfy_server.queue(prompt)
    files = comfy_server.output_files(entry)
    crops = comfy_server.load_tensors(next(f for f in files if f.name.startswith("face_")))
    anchor = comfy_server.load_tensors(next(f for f in files if f.name.startswith("anchor_")))["image"]
    assert crops["image"].shape == (8, 512, 512, 3) and crops["mask"].shape == (8, 512, 512)
    assert anchor.shape == (1, 512, 512, 3)
    assert torch.all(crops["image"][crops["mask"] == 0] == 1.0)  # white outside the face region
    assert any(torch.equal(anchor[0], c) for c in crops["image"])
    assert not comfy_server.pack_problems()


def test_bundled_detector_uses_an_installed_arcface_for_embeddings(face_nodes, models_dir):
    frames = torch.from_numpy(carphone()[:3]).float() / 255
    assert run(face_nodes.WanIDFaceCropParse, images=frames).result[3].embeddings is None
    folder = models_dir / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    write_arcface(folder / "w600k_r50.onnx")  # a recognition model only: no detector beside it
    clip, info = (lambda r: (r[3], r[5]))(run(face_nodes.WanIDFaceCropParse, images=frames).result)
    assert clip.embeddings.shape == (3, 512)
    assert torch.allclose(clip.embeddings.norm(dim=1), torch.ones(3), atol=1e-4)
    assert "buffalo_l/w600k_r50.onnx" in info


def test_node_builder_and_trainer_pick_the_same_face_models(face_nodes, models_dir, monkeypatch):
    """The glintr100 case of issue #11: the bundled RetinaFace and a loose antelopev2/glintr100.onnx (no SCRFD beside
    it). Face Crop / Parse, the dataset builder and the trainer all follow wanid.face.tools: same detector, same
    ArcFace model, the same embeddings."""
    from wanid.face.pipeline import process_clip
    from wanid.train import __main__ as train_main
    from wanid.train import builder

    root = models_dir / "insightface"
    (root / "models" / "antelopev2").mkdir(parents=True)
    write_arcface(root / "models" / "antelopev2" / "glintr100.onnx")
    frames = torch.from_numpy(carphone()[:3]).float() / 255
    node_clip, info = (lambda r: (r[3], r[5]))(run(face_nodes.WanIDFaceCropParse, images=frames,
                                                   detector="auto").result)
    assert "antelopev2/glintr100.onnx" in info and node_clip.embeddings is not None

    seen = {}
    monkeypatch.setattr(builder, "build_manifest",
                        lambda videos, out, settings, detector, embedder, parser, captions: seen.update(
                            detector=detector, embedder=embedder, parser=parser))
    builder.main(["--videos", str(models_dir), "--out", str(models_dir / "rows.jsonl"), "--insightface", str(root)])
    trainer_tools = train_main.load_face_tools("auto", str(root), None)

    node_det, node_emb = face_nodes.detector_and_embedder("auto", "CPU")
    for det, emb in ((seen["detector"], seen["embedder"]), (trainer_tools.detector, trainer_tools.embedder)):
        assert det.name == node_det.name == "retinaface_mobilenet"
        assert emb is not None and emb.name == node_emb.name == "antelopev2/glintr100.onnx"
        clip, _ = process_clip(frames, det, embedder=emb, on_no_face="skip")
        torch.testing.assert_close(clip.embeddings, node_clip.embeddings, atol=1e-5, rtol=0)
