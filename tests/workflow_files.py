"""The shipped workflows (example_workflows/) and their tiny variants, for the tests that run them (no tests here).

    FOLDER, load(name, api=True)     the workflow files
    server, slot_server              fixtures: the shared server with the variants' models (slot_server adds the
                                     Slot-ID ones, and removes its face models afterwards)
    tiny_variant(api, video, ...), tiny_for(server, name)    a workflow on test-sized models and inputs
    check_video(path, frames, size)  a video a variant saved: its frame count and size

Tiny variants keep each graph and swap what cannot run here: the tiny Wan for the 14B models,
the test conditioning node for umT5 + CLIPTextEncode, 32x32x5 latents and 2 steps, test Stand-In / Slot-ID
checkpoints, a Wan 2.1 VAE of the real architecture with zero weights (a 250 MB file written once per session;
its decode of a 32x32 clip takes seconds on CPU), and the bundled RetinaFace without a parser. One change to the
graph: the 512x512 anchor is scaled to 32x32 (an inserted ImageScale) before Stand-In encodes it, because the real
VAE encoding a 512x512 image takes about 40 s on CPU. Slot-ID needs ArcFace embeddings, which the bundled
RetinaFace does not give: its variants use the face tests' antelopev2 stand-ins (an SCRFD that detects bright
blocks, a random ArcFace: tests/face_files.py) on a clip of a moving bright block, as tests/test_slot_server.py does.
Lynx's variant: random-weight Lynx files in the official formats sized for the tiny Wan (tests/lynx_files.py), a
random IR-SE50 in facexlib's format, and the reference text from the test conditioning node. VACE's variant: the
tiny Wan with one VACE block (WAN21_Vace) and a 6-frame 38x36 pose clip in its "Target video (pose)" loader.
"""
import copy
import json
import shutil

import pytest

import wanid_testing
from comfy_server import TINY_WAN
from wanid.cli import workflow as wf

FOLDER = wanid_testing.REPO / "example_workflows"
SLOT = {"slotid_wan21_t2v_from_clip", "slotid_standin_wan21_t2v"}  # the variants that need slot_server
TEST_VAE = "wanid_test_wan21_vae_zero.safetensors"
STANDIN_CKPT = "wanid_test_wf_standin.ckpt"
SLOT_CKPT = "wanid_test_wf_slot.safetensors"
LYNX_FOLDER = "wanid_test_wf_lynx_full"  # a models/lynx folder: official file names and formats, random weights
LYNX_ARCFACE = "wanid_test_wf_arcface_ir_se50.pth"  # facexlib's key format, random weights
TINY_VACE = "wanid_test_wf_tiny_wan21_vace.safetensors"  # the tiny Wan with one VACE block (WAN21_Vace)


def load(name, api=True):
    return json.loads((FOLDER / ("api" if api else "") / f"{name}.json").read_text(encoding="utf-8"))


def zero_wan21_vae():
    """A Wan 2.1 VAE state dict (the real architecture, so ComfyUI detects it) with zero weights, in fp16."""
    wanid_testing.import_comfy()
    import torch
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):  # shapes only: no 500 MB of random init
        model = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True], dropout=0.0)
    return {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def server(comfy_server):
    from face_files import carphone_path
    from standin_files import ckpt_bytes, standin_state_dict

    if not (comfy_server.models_dir / "vae" / TEST_VAE).exists():
        comfy_server.add_model("vae", TEST_VAE, zero_wan21_vae())
    comfy_server.add_model("stand_in", STANDIN_CKPT, ckpt_bytes(standin_state_dict()))
    comfy_server.carphone = comfy_server.upload(carphone_path(), name="wanid_wf_carphone.mp4")
    write_lynx_models(comfy_server.models_dir)
    if not (comfy_server.models_dir / "diffusion_models" / TINY_VACE).exists():
        import tiny_wan
        comfy_server.add_model("diffusion_models", TINY_VACE, tiny_wan.tiny_wan_state_dict(vace_layers=1))
    comfy_server.pose = comfy_server.upload(write_pose_video(comfy_server.base / "wanid_wf_pose.mp4"))
    return comfy_server


def write_pose_video(path, frames=6, width=38, height=36):
    """A small lossless clip for VACE's pose input: 38x36 (the official crop keeps 32x32) and 6 frames (trimmed to
    5 = 4k+1), so the tiny variant's output is 32x32x5 like the others'."""
    import numpy as np

    from face_files import write_lossless_video

    g = np.random.default_rng(0)
    return write_lossless_video(path, (g.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)))


def write_lynx_models(models_dir):
    """lynx/<LYNX_FOLDER>/ (lynx_full's three files, sized for the tiny Wan) and facexlib/<LYNX_ARCFACE>."""
    import lynx_files
    from face_files import write_ir_se50

    lynx_files.write_lynx(models_dir / "lynx" / LYNX_FOLDER, "full", dim=128, layers=2)
    arcface = models_dir / "facexlib" / LYNX_ARCFACE
    if not arcface.exists():
        write_ir_se50(arcface)


@pytest.fixture(scope="module")
def slot_server(server, tmp_path_factory):
    """The server with the face tests' antelopev2 stand-ins (removed afterwards, so 'auto' detection elsewhere is
    unaffected), a random Slot-ID checkpoint without VAE tokens, and the bright-block clip."""

    from face_files import write_blocks_video, write_pack
    from wanid.slot.checkpoint import fresh_checkpoint, save_checkpoint
    from wanid.slot.encoder import SlotIDConfig

    pack = server.models_dir / "insightface" / "models" / "antelopev2"
    write_pack(pack)  # SCRFD + ArcFace signatures, random weights
    cfg = SlotIDConfig(dim=64, num_slots=4, anchor_tokens=2, pool=0, lora_rank=4, time_features=32)
    save_checkpoint(fresh_checkpoint(128, 2, cfg, backbone="wanid-tiny", seed=0),
                    server.models_dir / "slot_id" / SLOT_CKPT)
    server.blocks = server.upload(write_blocks_video(tmp_path_factory.mktemp("wf_blocks") / "wanid_wf_blocks.mp4"))
    yield server
    shutil.rmtree(pack, ignore_errors=True)


def tiny_variant(api, video, detector="retinaface_mobilenet", prefix="wanid_test/wf", pose=None):
    """The same graph on test-sized models and inputs (see the module docstring)."""
    api = copy.deepcopy(api)
    positive, negative = set(wf.prompt_nodes(api, "positive")), set(wf.prompt_nodes(api, "negative"))
    next_id = max(int(n) for n in api) + 1
    for nid in list(api):
        node = api[nid]
        ct, ins = node["class_type"], node["inputs"]
        if ct == "UNETLoader":
            vace = any(n["class_type"] == "WanVaceToVideo" for n in api.values())
            ins.update(unet_name=TINY_VACE if vace else TINY_WAN, weight_dtype="default")
        elif ct == "LoadVideo" and wf.title_of(node).startswith("Target video (pose)") and pose:
            ins["file"] = pose
        elif ct == "VAELoader":
            ins["vae_name"] = TEST_VAE
        elif ct == "CLIPLoader":
            del api[nid]
        elif ct == "CLIPTextEncode":
            lynx_text = any(n["class_type"] == "WanIDLynxApply" and n["inputs"].get("reference_text") == [nid, 0]
                            for n in api.values())
            assert nid in positive | negative or lynx_text, f"node {nid}: a text encoder that feeds no sampler"
            seed = 1 if nid in positive else 2 if nid in negative else 3
            api[nid] = {"class_type": "WanIDTestWanConditioning",
                        "inputs": {"seed": seed, "tokens": 16 if seed < 3 else 6}, "_meta": node.get("_meta")}
        elif ct == "EmptyHunyuanLatentVideo":
            ins.update(width=32, height=32, length=5)
        elif ct == "KSampler":
            ins["steps"] = 2
        elif ct == "KSamplerAdvanced":  # keep the expert split: first step high noise, second low noise
            first = ins["start_at_step"] == 0
            ins.update(steps=2, start_at_step=0 if first else 1, end_at_step=1 if first else 10000)
        elif ct == "WanIDRestrictedAttnPatch":
            ins["standin_name"] = STANDIN_CKPT
            if wf.is_link(ins.get("reference_image")):
                scale = str(next_id)
                next_id += 1
                api[scale] = {"class_type": "ImageScale", "inputs": {
                    "image": ins["reference_image"], "upscale_method": "area", "width": 32, "height": 32,
                    "crop": "disabled"}}
                ins["reference_image"] = [scale, 0]
        elif ct == "WanIDReferenceClipLoader":
            ins.update(video=video, num_frames=min(ins.get("num_frames", 4), 4), max_side=256)
        elif ct == "LoadVideo":  # the face swap's target video: the clip's first 5 frames (4k+1), cut to 80x96
            ins["file"] = video   # around the face (the real VAE on 176x144 frames takes minutes on CPU)
        elif ct == "WanIDFaceSwapPrepare":
            first, cut = str(next_id), str(next_id + 1)
            next_id += 2
            api[first] = {"class_type": "ImageFromBatch", "inputs": {"image": ins["frames"], "batch_index": 0,
                                                                     "length": 5}}
            api[cut] = {"class_type": "ImageCrop", "inputs": {"image": [first, 0], "width": 80, "height": 96,
                                                              "x": 48, "y": 16}}
            ins.update(frames=[cut, 0], detector=detector, parser_model="none (fallback)", provider="CPU")
        elif ct == "WanIDFlowMatchSigmas":
            ins["steps"] = 2
        elif ct == "WanIDFaceCropParse":
            ins.update(detector=detector, parser_model="none (fallback)", provider="CPU")
        elif ct == "WanIDSlotIDLoader":
            ins["slot_id_name"] = SLOT_CKPT
        elif ct == "WanIDLynxLoader":
            ins.update(lynx_name=LYNX_FOLDER, arcface_name=LYNX_ARCFACE)
        elif ct in ("SaveVideo", "SaveImage"):
            ins["filename_prefix"] = f"{prefix}/{nid}"
    for nid, node in api.items():
        for name, value in node["inputs"].items():
            assert not wf.is_link(value) or str(value[0]) in api, f"node {nid}.{name}: dangling link"
    return api


def tiny_for(srv, name):
    if name in SLOT:
        return tiny_variant(load(name), srv.blocks, detector="antelopev2", prefix=f"wanid_test/wf_{name}")
    return tiny_variant(load(name), srv.carphone, prefix=f"wanid_test/wf_{name}", pose=getattr(srv, "pose", None))


def check_video(path, frames, size):
    import av

    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == frames and decoded[0].shape[:2] == size
