"""Slot-ID end to end in a real ComfyUI server: ReferenceClipLoader -> FaceCrop/Parse -> SlotEncoder ->
IdentityTokenInject -> KSampler on the tiny Wan, with the Slot-ID loader's LoRA on the model.

No real weights can be downloaded: the antelopev2 pack is the face tests' ONNX files with insightface's signatures
(SCRFD that "detects" bright blocks, random-weight ArcFace: tests/face_files.py), so the clip is a lossless
video of a moving bright block (the bundled RetinaFace finds real faces but gives no ArcFace embeddings), and
the Slot-ID checkpoint is a random one with pool 0 (no low-frequency tokens, so no Wan VAE file is needed: a
random Wan VAE would be a 500 MB file). The VAE path of SlotEncoder is tested in-process (test_slot_nodes.py).
"""
import pytest
import torch

from comfy_server import comfy_server, wan_t2v_prompt  # noqa: F401  (comfy_server is a fixture)

pytestmark = pytest.mark.integration

CKPT = "wanid_test_slot_tiny.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    """The shared server with an antelopev2 pack of test ONNX files (removed afterwards, so 'auto' detection of
    other tests is unaffected), a Slot-ID checkpoint and the clip."""
    import shutil

    from face_files import write_blocks_video, write_pack
    from wanid.slot.checkpoint import fresh_checkpoint, save_checkpoint
    from wanid.slot.encoder import SlotIDConfig

    pack = comfy_server.models_dir / "insightface" / "models" / "antelopev2"
    write_pack(pack)  # SCRFD + ArcFace signatures, random weights
    cfg = SlotIDConfig(dim=64, num_slots=4, anchor_tokens=2, pool=0, lora_rank=4, time_features=32)
    ckpt = fresh_checkpoint(128, 2, cfg, backbone="wanid-tiny", seed=0)
    g = torch.Generator().manual_seed(1)
    for k in ckpt.lora:  # a "trained" file: the LoRA and the gate are not at their zero init
        if k.endswith("lora_up.weight"):
            ckpt.lora[k] = torch.randn(ckpt.lora[k].shape, generator=g) * 0.2
    ckpt.encoder_state["gate"] = torch.full((4,), 0.8)
    save_checkpoint(ckpt, comfy_server.models_dir / "slot_id" / CKPT)
    video = write_blocks_video(tmp_path_factory.mktemp("slot_video") / "wanid_slot_blocks.mp4")
    comfy_server.video_name = comfy_server.upload(video)
    yield comfy_server
    shutil.rmtree(pack, ignore_errors=True)


def slot_prompt(video, strength=1.0, pad_negative=True, seed=0):
    p = wan_t2v_prompt(seed=seed, filename_prefix="wanid_test/slot_latent")
    p["clip"] = {"class_type": "WanIDReferenceClipLoader", "inputs": {
        "video": video, "num_frames": 4, "start_time": 0.0, "duration": 0.0, "stride": 0, "max_side": 256}}
    p["face"] = {"class_type": "WanIDFaceCropParse", "inputs": {
        "images": ["clip", 0], "times": ["clip", 1], "detector": "auto", "face_choice": "largest",
        "face_index": 0, "on_no_face": "skip", "label_set": "official", "parser_model": "none (fallback)",
        "provider": "CPU"}}
    p["slot"] = {"class_type": "WanIDSlotIDLoader", "inputs": {
        "model": ["unet", 0], "slot_id_name": CKPT, "lora_strength": 1.0}}
    p["enc"] = {"class_type": "WanIDSlotEncoder", "inputs": {"slot_id": ["slot", 1], "face_clip": ["face", 3]}}
    p["inject"] = {"class_type": "WanIDIdentityTokenInject", "inputs": {
        "positive": ["pos", 0], "identity_tokens": ["enc", 0], "strength": strength,
        "pad_negative": pad_negative, "negative": ["neg", 0]}}
    p["sampler"]["inputs"].update(model=["slot", 0], positive=["inject", 0], negative=["inject", 1])
    p["routing"] = {"class_type": "WanIDTestSaveTensor", "inputs": {
        "filename_prefix": "wanid_test/slot_routing", "image": ["enc", 1]}}
    return p


def test_schemas(server):
    info = server.object_info()
    loader = info["WanIDSlotIDLoader"]["input"]
    assert CKPT in loader["required"]["slot_id_name"][0] or CKPT in str(loader["required"]["slot_id_name"])
    assert loader["required"]["lora_strength"][1]["default"] == 1.0
    assert info["WanIDSlotIDLoader"]["output"] == ["MODEL", "SLOT_ID_MODEL"]
    enc = info["WanIDSlotEncoder"]
    assert set(enc["input"]["required"]) == {"slot_id", "face_clip"} and set(enc["input"]["optional"]) == {"vae"}
    assert enc["output"] == ["IDENTITY_TOKENS", "IMAGE"]
    inj = info["WanIDIdentityTokenInject"]
    assert inj["input"]["required"]["pad_negative"][1]["default"] is True
    assert inj["input"]["required"]["strength"][1]["default"] == 1.0
    assert list(inj["input"]["required"]) == ["positive", "negative", "identity_tokens", "strength", "pad_negative"]
    assert inj["output"] == ["CONDITIONING", "CONDITIONING"]


def test_reference_clip_to_ksampler(server):
    entry = server.queue(slot_prompt(server.video_name))
    with_ids = server.output_latent(entry)
    assert torch.isfinite(with_ids).all()
    routing = server.load_tensors(server.output_files(entry, "tensors")[0])["image"]
    assert routing.shape == (1, 4 * 34 + 2, 4 * 34 + 2, 3)  # 4 slots x 4 frames, 32 px cells, 2 px gaps
    centres = routing[0, 18::34, 18::34][:4, :4]  # the centre pixel of each cell
    assert centres.std(-1).min() > 0.05  # every frame in colour: faces found in all 4 (a dropped one is grey)
    plain = server.output_latent(server.queue(wan_t2v_prompt(seed=0, filename_prefix="wanid_test/slot_plain")))
    assert (with_ids - plain).abs().max() > 1e-3
    # the tokens themselves reach cross-attention: the slot part alone changes the result
    no_slots = server.output_latent(server.queue(slot_prompt(server.video_name, strength=0.0)))
    assert (with_ids - no_slots).abs().max() > 1e-3
    # padding the negative with zero rows is not a no-op (Wan's cross-attention has no mask) but a small change:
    # its umT5 conditioning already ends in hundreds of zero padding rows
    unpadded = server.output_latent(server.queue(slot_prompt(server.video_name, pad_negative=False)))
    assert (unpadded - with_ids).abs().max() < 0.1 * (with_ids - plain).abs().max()
