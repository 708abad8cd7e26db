"""Stand-In Face Swap Prepare and Stand-In Flow Match Sigmas in ComfyUI: in-process (the node classes) and through
the real server (LoadImage -> Face Crop / Parse -> Face Swap Prepare), real faces, bad input worded."""
import numpy as np
import pytest
import torch

import face_files
from comfy_server import PromptError, comfy_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes_mod(comfy_pack, tmp_path, monkeypatch):
    """The node module, with empty model folders (the bundled RetinaFace detects; no parser)."""
    import importlib

    import folder_paths
    for name, exts in (("insightface", {".onnx", ".zip"}), ("face_parsing", {".pth", ".pt"})):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], exts))
    return importlib.import_module(comfy_pack.__name__ + ".nodes.face_swap")


def carphone_frames(n=9):
    return torch.from_numpy(np.ascontiguousarray(face_files.carphone()[40:40 + n])).float() / 255.0


def face_and_alpha(comfy_pack):
    """Face Crop / Parse on a real photo (astronaut), without a parser: crops_raw and masks."""
    import importlib
    face = importlib.import_module(comfy_pack.__name__ + ".nodes.face")
    photo = torch.from_numpy(face_files.astronaut()).float()[None] / 255.0
    out = face.WanIDFaceCropParse.execute(photo, "retinaface_mobilenet", "largest", 0, "error", "official",
                                          "none (fallback)", "CPU", fallback="ellipse")
    crops, masks, raw = out.result[0], out.result[1], out.result[6]
    return raw, masks, crops


def test_node_outputs_and_inputs_untouched(nodes_mod, comfy_pack):
    raw, masks, crops = face_and_alpha(comfy_pack)
    assert raw.shape == crops.shape == (1, 512, 512, 3) and not torch.equal(raw, crops)  # crops are whitened
    frames = carphone_frames(10)
    before = frames.clone(), raw.clone(), masks.clone()
    out = nodes_mod.WanIDFaceSwapPrepare.execute(frames, raw, masks, "retinaface_mobilenet", 0.5, 0.0, 0,
                                                 provider="CPU", parser_model="none (fallback)")
    pasted, m, lat, preview, info = out.result
    assert pasted.shape == (9, 144, 176, 3) and m.shape == (9, 144, 176) and preview.shape == pasted.shape
    assert lat.shape == (3, 18, 22) and set(lat.unique().tolist()) <= {0.0, 1.0} and lat.sum() > 0
    assert "9 frames 176x144" in info and "trimmed" in info and "face pasted in 9 of 9" in info
    assert all(torch.equal(a, b) for a, b in zip(before, (frames, raw, masks)))


def test_sigmas_node_is_the_official_list(comfy_pack):
    import importlib
    nodes_mod = importlib.import_module(comfy_pack.__name__ + ".nodes.face_swap")
    out = nodes_mod.WanIDFlowMatchSigmas.execute(20, 0.85, 5.0).result[0]
    s = [0.85 * (1 - k / 20) for k in range(20)]
    want = torch.tensor([5 * x / (1 + 4 * x) for x in s] + [0.0], dtype=torch.float64)
    assert torch.allclose(out.double(), want, atol=1e-7)
    with pytest.raises(ValueError, match="denoise"):
        nodes_mod.WanIDFlowMatchSigmas.execute(20, float("nan"), 5.0)


def _upload_png(server, tmp_path, name, rgb):
    from PIL import Image
    path = tmp_path / name
    Image.fromarray(rgb).save(path)
    return server.upload(path)


def swap_prompt(photo, frame, repeat, threshold=0.5):
    return {
        "photo": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "frame": {"class_type": "LoadImage", "inputs": {"image": frame}},
        "video": {"class_type": "RepeatImageBatch", "inputs": {"image": ["frame", 0], "amount": repeat}},
        "crop": {"class_type": "WanIDFaceCropParse",
                 "inputs": {"images": ["photo", 0], "detector": "retinaface_mobilenet", "face_choice": "largest",
                            "face_index": 0, "on_no_face": "error", "label_set": "official",
                            "parser_model": "none (fallback)", "provider": "CPU", "fallback": "ellipse"}},
        "swap": {"class_type": "WanIDFaceSwapPrepare",
                 "inputs": {"frames": ["video", 0], "face": ["crop", 6], "face_alpha": ["crop", 1],
                            "detector": "retinaface_mobilenet", "confidence_threshold": threshold,
                            "flip_chance": 0.0, "seed": 0, "provider": "CPU"}},
        "save": {"class_type": "WanIDTestSaveTensor",
                 "inputs": {"filename_prefix": "wanid_test/faceswap", "image": ["swap", 0], "mask": ["swap", 2]}},
    }


def test_through_the_server_and_bad_input_worded(comfy_server, tmp_path):  # noqa: F811
    photo = _upload_png(comfy_server, tmp_path, "fs_astronaut.png", face_files.astronaut())
    frame = _upload_png(comfy_server, tmp_path, "fs_carphone.png", face_files.carphone()[60])
    entry = comfy_server.queue(swap_prompt(photo, frame, 5))
    t = comfy_server.load_tensors(comfy_server.output_files(entry, "tensors")[0])
    image, mask = t["image"], t["mask"]
    assert image.shape == (5, 144, 176, 3) and mask.shape[-2:] == (18, 22)
    assert set(mask.unique().tolist()) == {0.0, 1.0}

    with pytest.raises(PromptError) as e:  # one frame: not a video
        comfy_server.queue(swap_prompt(photo, frame, 1))
    assert "frames: 1 frame" in str(e.value) and "at least 5" in str(e.value)
    grey = _upload_png(comfy_server, tmp_path, "fs_grey.png", np.full((144, 176, 3), 128, np.uint8))
    with pytest.raises(PromptError) as e:  # no face anywhere in the video
        comfy_server.queue(swap_prompt(photo, grey, 5))
    assert "no face" in str(e.value) and "frames" in str(e.value)
    comfy_server.queue(swap_prompt(photo, frame, 9))  # the server keeps serving
