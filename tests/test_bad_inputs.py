"""Bad input never ends as a raw traceback or a silent wrong result (issue #10, the nodes), through the REAL server.

Every case is one prompt with one bad input. It must end in a worded error (refused with node_errors, or failed
with an execution_error) whose message names the input, says what is wrong and what to do, under a clean
exception type (no PyAV/OpenCV/IndexError/ZeroDivisionError, no filesystem path as its module); or, where refusing
would be wrong, succeed with a warning in the node's info. After each case the server still serves (a fresh
good prompt samples) and no file the user made (input/, output/, models/) changed.
"""
import os
import threading

import numpy as np
import pytest
import torch

from comfy_server import comfy_server, wan_t2v_prompt  # noqa: F401  (fixture)
from server_cases import (MARKER, EvilPickle as _Evil, assert_worded, face_node, face_prompt, load_image, outcome,
                          post_raw, save_image, still_serves, tensor_node, torch_bytes as _ckpt_bytes, user_files)
from standin_files import standin_state_dict

pytestmark = pytest.mark.integration

GOOD_STANDIN = "bad_inputs_good.safetensors"
GOOD_SLOT = "bad_inputs_slot.safetensors"
def _safetensors_bytes(sd):
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in sd.items()})


def _write_video(path, frames=30, w=128, h=96):
    import av
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if frames == 0:
        c.start_encoding()
    for i in range(frames):
        img = np.random.RandomState(i).randint(0, 255, (h, w, 3)).astype(np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    if frames:
        for p in s.encode():
            c.mux(p)
    c.close()
    return path


def _png(path, img):
    from PIL import Image
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def server(comfy_server, tmp_path_factory):
    """The shared server with this module's files: Stand-In and Slot-ID files good and bad, videos, images, and
    two insightface packs of test ONNX files (antelopev2: normal faces; buffalo_l: 12 px faces), removed after."""
    import shutil

    from face_files import bright_blocks, write_pack
    from wanid.slot.checkpoint import fresh_checkpoint, save_checkpoint
    from wanid.slot.encoder import SlotIDConfig

    s = comfy_server
    tmp = tmp_path_factory.mktemp("bad_inputs")
    sd = standin_state_dict()
    s.add_model("stand_in", GOOD_STANDIN, sd)
    s.add_model("stand_in", "bad_empty.ckpt", b"")
    s.add_model("stand_in", "bad_truncated.ckpt", _ckpt_bytes({"state_dict": sd})[:3000])
    s.add_model("stand_in", "bad_pickle.ckpt", _ckpt_bytes({"state_dict": sd, "x": _Evil()}))
    nan = dict(sd)
    nan["blocks.1.self_attn.k_loras.up.weight"] = sd["blocks.1.self_attn.k_loras.up.weight"].clone()
    nan["blocks.1.self_attn.k_loras.up.weight"][3, 2] = float("nan")
    s.add_model("stand_in", "bad_nan.ckpt", _ckpt_bytes({"state_dict": nan}))
    inf = {k: v.clone() for k, v in sd.items()}
    inf["blocks.0.self_attn.q_loras.down.weight"][0, 0] = float("inf")
    s.add_model("stand_in", "bad_inf.safetensors", inf)
    s.add_model("stand_in", "bad_int.safetensors", {k: (v * 100).to(torch.int32) for k, v in sd.items()})
    s.add_model("stand_in", "bad_truncated.safetensors", _safetensors_bytes(sd)[:5000])

    cfg = SlotIDConfig(dim=64, num_slots=4, anchor_tokens=2, pool=0, lora_rank=4, time_features=32)
    ckpt = fresh_checkpoint(128, 2, cfg, backbone="wanid-tiny", seed=0)
    save_checkpoint(ckpt, s.models_dir / "slot_id" / GOOD_SLOT)
    key = sorted(ckpt.encoder_state)[0]
    ckpt.encoder_state[key] = ckpt.encoder_state[key].clone().fill_(float("nan"))
    save_checkpoint(ckpt, s.models_dir / "slot_id" / "bad_slot_nan.safetensors")
    data = (s.models_dir / "slot_id" / GOOD_SLOT).read_bytes()
    s.add_model("slot_id", "bad_slot_truncated.safetensors", data[:len(data) // 2])
    s.add_model("slot_id", "bad_slot_is_standin.safetensors", sd)

    good = _write_video(tmp / "bad_inputs_good.mp4", 60)
    b = bytearray(good.read_bytes())
    rng = np.random.RandomState(0)
    lo, hi = int(len(b) * 0.3), int(len(b) * 0.7)
    b[lo:hi] = rng.randint(0, 256, hi - lo).astype(np.uint8).tobytes()
    (tmp / "bad_inputs_damaged.mp4").write_bytes(bytes(b))
    _write_video(tmp / "bad_inputs_zero.mkv", 0)
    (tmp / "bad_inputs_notes.mp4").write_text("not a video\n")
    s.names = {n: s.upload(tmp / n) for n in ("bad_inputs_good.mp4", "bad_inputs_damaged.mp4",
                                              "bad_inputs_zero.mkv", "bad_inputs_notes.mp4")}
    outside = tmp / "outside_secret.mp4"
    outside.write_bytes(good.read_bytes())
    link = s.input_dir / "bad_inputs_link.mp4"
    if not link.exists():
        link.symlink_to(outside)
    s.names["link"] = link.name
    face = bright_blocks(160, 192, [(8 + dy, 6 + dx) for dy in range(3) for dx in range(3)])
    s.names["face.png"] = s.upload(_png(tmp / "bad_inputs_face.png", face))
    big = bright_blocks(640, 640, [(30 + dy, 30 + dx) for dy in range(3) for dx in range(3)])
    s.names["big_face.png"] = s.upload(_png(tmp / "bad_inputs_big_face.png", big))
    tiny = bright_blocks(640, 640, [(40, 40)])
    s.names["tiny_face.png"] = s.upload(_png(tmp / "bad_inputs_tiny_face.png", tiny))

    packs = s.models_dir / "insightface" / "models"
    write_pack(packs / "antelopev2")
    write_pack(packs / "buffalo_l", det_name="det_10g.onnx", rec_name="w600k_r50.onnx", half=6.0,
               kps=np.array([[-3, -2], [3, -2], [0, 1], [-2, 4], [2, 4]], np.float32))
    if os.path.exists(f"/tmp/{MARKER}"):
        os.remove(f"/tmp/{MARKER}")
    s.case_seed = 1000
    yield s
    shutil.rmtree(packs / "antelopev2", ignore_errors=True)
    shutil.rmtree(packs / "buffalo_l", ignore_errors=True)
    link.unlink()


# ---------------------------------------------------------------------------------------------- prompt pieces
def standin_prompt(standin_name=GOOD_STANDIN, strength=1.0, ref=None, seed=3, ref_out=1, **kw):
    """Tiny Wan + RestrictedAttnPatch; ref: the reference node (default: a random 16-channel latent)."""
    p = wan_t2v_prompt(seed=seed, **kw)
    p["ref"] = ref or tensor_node("1,16,1,8,8")
    p["standin"] = {"class_type": "WanIDRestrictedAttnPatch", "inputs": {
        "model": ["unet", 0], "standin_name": standin_name, "strength": strength, "reference_latent": ["ref", ref_out]}}
    p["sampler"]["inputs"]["model"] = ["standin", 0]
    return p


def clip_prompt(video="bad_inputs_good.mp4", use_names=True, extra=None, **inputs):
    return lambda s: {
        **(extra or {}),
        "clip": {"class_type": "WanIDReferenceClipLoader", "inputs": {
            "video": s.names[video] if use_names else video, "num_frames": 4, "start_time": 0.0, "duration": 0.0,
            "stride": 0, "max_side": 256, **inputs}},
        "save": save_image(["clip", 0])}


def video_in_prompt(name):
    def build(s):
        p = clip_prompt()(s)
        p["load"] = {"class_type": "LoadVideo", "inputs": {"file": s.names[name]}}
        p["clip"]["inputs"]["video_in"] = ["load", 0]
        return p
    return build


def slot_prompt(slot_id_name=GOOD_SLOT, lora_strength=1.0, strength=1.0, positive=None, seed=5):
    def build(s):
        p = wan_t2v_prompt(seed=seed)
        p["img"] = load_image("face.png")(s)
        p["face"] = face_node(["img", 0])
        p["slot"] = {"class_type": "WanIDSlotIDLoader", "inputs": {
            "model": ["unet", 0], "slot_id_name": slot_id_name, "lora_strength": lora_strength}}
        p["enc"] = {"class_type": "WanIDSlotEncoder", "inputs": {"slot_id": ["slot", 1], "face_clip": ["face", 3]}}
        p["inject"] = {"class_type": "WanIDIdentityTokenInject", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "identity_tokens": ["enc", 0], "strength": strength,
            "pad_negative": True}}
        if positive is not None:
            p["badpos"] = positive
            p["inject"]["inputs"]["positive"] = ["badpos", 2]
        p["sampler"]["inputs"].update(model=["slot", 0], positive=["inject", 0], negative=["inject", 1])
        return p
    return build


# (id, build(server) -> prompt, regex the message must match). Messages name the input, what and what to do.
CASES = [
    # Stand-In Restricted Attention
    ("standin_0_byte_ckpt", lambda s: standin_prompt("bad_empty.ckpt"),
     r"bad_empty\.ckpt is empty \(0 bytes\).*Download it again"),
    ("standin_truncated_ckpt", lambda s: standin_prompt("bad_truncated.ckpt"),
     r"bad_truncated\.ckpt is unreadable.*Download it again"),
    ("standin_pickle_with_code", lambda s: standin_prompt("bad_pickle.ckpt"),
     r"bad_pickle\.ckpt is refused: it holds pickled code.*Download it again"),
    ("standin_nan_weights", lambda s: standin_prompt("bad_nan.ckpt"),
     r"Stand-In file bad_nan\.ckpt blocks\.1\.self_attn\.k_loras\.up\.weight: holds 1 NaN.*download it again"),
    ("standin_inf_weights", lambda s: standin_prompt("bad_inf.safetensors"),
     r"bad_inf\.safetensors blocks\.0\.self_attn\.q_loras\.down\.weight: holds 1 inf"),
    ("standin_int_dtype_weights", lambda s: standin_prompt("bad_int.safetensors"),
     r"bad_int\.safetensors: blocks\..* holds int32 numbers, not floating-point weights"),
    ("standin_truncated_safetensors", lambda s: standin_prompt("bad_truncated.safetensors"),
     r"bad_truncated\.safetensors is unreadable"),
    ("standin_strength_nan", lambda s: standin_prompt(strength=float("nan")),
     r"strength: nan is not a number; set a finite value \(0 to 3"),
    ("standin_latent_48_channels", lambda s: standin_prompt(ref=tensor_node("1,48,1,8,8")),
     r"reference_latent: a 48-channel latent \(a Wan 2\.2 5B latent\), but this model takes 16 channels\. "
     r"Encode the face crop with the Wan 2\.1 VAE"),
    ("standin_latent_4_channel_sd", lambda s: standin_prompt(ref={
        "class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}, ref_out=0),
     r"reference_latent: a 4-channel latent \(an SD 1\.x/SDXL latent\)"),
    ("standin_latent_nan", lambda s: standin_prompt(ref=tensor_node("1,16,1,8,8", "one_nan")),
     r"reference_latent: holds 1 NaN of 1024 values.*encode the face crop again"),
    ("standin_latent_inf", lambda s: standin_prompt(ref=tensor_node("1,16,1,8,8", "inf")),
     r"reference_latent: holds 1024 inf"),
    ("standin_latent_int_dtype", lambda s: standin_prompt(ref=tensor_node("1,16,1,8,8", dtype="int32")),
     r"reference_latent: holds int32 values, not a latent"),
    ("standin_latent_batch_of_3", lambda s: standin_prompt(ref=tensor_node("3,16,1,8,8")),
     r"reference_latent: expected one encoded image"),
    # Reference Clip Loader
    ("video_damaged_mid_file", clip_prompt("bad_inputs_damaged.mp4"),
     r"video 'bad_inputs_damaged\.mp4': the video data is damaged.*re-encode it"),
    ("video_in_zero_frame_mkv", video_in_prompt("bad_inputs_zero.mkv"),
     r"video_in: (could not open it as a video|the video ended).*(empty|cut short)"),
    ("video_zero_frame_mkv_file", clip_prompt("bad_inputs_zero.mkv"),
     r"video 'bad_inputs_zero\.mkv': could not open it as a video.*empty, cut short"),
    ("video_text_file_named_mp4", clip_prompt("bad_inputs_notes.mp4"),
     r"bad_inputs_notes\.mp4': could not open it as a video.*choose a video file"),
    ("video_symlink_out_of_input", clip_prompt("link"),
     r"video.*bad_inputs_link\.mp4' is outside ComfyUI's input folder"),
    ("video_dotdot_path", clip_prompt("../models/x.mp4", use_names=False),
     r"(outside ComfyUI's input folder|Invalid file path|not in)"),
    ("video_huge_num_frames", clip_prompt(num_frames=10 ** 9), r"bigger than max of 256.*num_frames"),
    ("video_start_time_nan", clip_prompt(start_time=float("nan")), r"start_time must be a number of seconds"),
    ("video_start_past_end", clip_prompt(start_time=500.0), r"no frame in the window 500\.\.inf s; lower start_time"),
    ("images_wrong_shape", clip_prompt(extra={"t": tensor_node("2,8,8,4")}, images=["t", 0]),
     r"images: expected an image batch \[N, H, W, 3\]"),
    # Face Crop / Parse
    ("face_0x0_image", face_prompt(tensor_node("1,0,0,3")), r"images: the frames are 0x0 pixels \(empty\)"),
    ("face_none_found", face_prompt(tensor_node("2,64,64,3", "zeros")),
     r"no face found in 2 of 2 frames: 0-1.*Set on_no_face"),
    ("face_most_similar_without_photo", face_prompt(load_image("face.png"), face_choice="most_similar"),
     r"similar_to: connect a photo"),
    ("face_empty_batch", face_prompt(tensor_node("0,64,64,3")), r"images: expected a batch"),
    # Slot-ID
    ("slot_nan_encoder_weights", slot_prompt("bad_slot_nan.safetensors"),
     r"Slot-ID bad_slot_nan\.safetensors: encoder weights .*: holds \d+ NaN.*export it again"),
    ("slot_truncated_safetensors", slot_prompt("bad_slot_truncated.safetensors"),
     r"Slot-ID file bad_slot_truncated\.safetensors is unreadable"),
    ("slot_standin_file_in_slot_folder", slot_prompt("bad_slot_is_standin.safetensors"),
     r"not a Slot-ID checkpoint"),
    ("slot_lora_strength_nan", slot_prompt(lora_strength=float("nan")), r"lora_strength: nan is not a number"),
    ("inject_strength_nan", slot_prompt(strength=float("nan")), r"strength: nan is not a number; set a finite"),
    ("inject_empty_positive_list", slot_prompt(positive=tensor_node("1,4,4096", "empty_list")),
     r"positive: the conditioning is empty \(no entries\).*connect"),
    ("inject_positive_batch_0", slot_prompt(positive=tensor_node("0,512,4096")),
     r"positive: entry 0 is empty \(shape \[0, 512, 4096\]"),
    ("inject_positive_wrong_width", slot_prompt(positive=tensor_node("1,77,768")),
     r"positive: entry 0 has shape \[1, 77, 768\]"),
]


@pytest.mark.parametrize("case_id, build, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_worded_and_harmless(server, case_id, build, pattern):
    before = user_files(server)
    kind, etype, message, _ = outcome(server, build(server))
    assert_worded(kind, etype, message, pattern)
    if kind == "failed" and etype.startswith("wanid."):
        assert etype.count(".") >= 2  # e.g. wanid.video.VideoError: the module reads as the pack's own
    after = user_files(server)
    changed = [str(p) for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed by a bad prompt: {changed}"
    assert not os.path.exists(f"/tmp/{MARKER}"), "the pickle's code ran"
    still_serves(server)


def test_pack_errors_have_a_clean_type_name(server):
    kind, etype, message, _ = outcome(server, clip_prompt("bad_inputs_damaged.mp4")(server))
    assert etype == "wanid.video.VideoError", etype
    kind, etype, _, _ = outcome(server, standin_prompt("bad_empty.ckpt"))
    assert etype == "wanid.standin.checkpoint.StandInCheckpointError", etype


def test_small_face_succeeds_with_a_warning_in_info(server):
    """A 12 px face is not refused (a far shot is a valid reference), but the node's info says the crop is
    enlarged and will look pixelated."""
    p = face_prompt(load_image("tiny_face.png"), detector="buffalo_l")(server)
    kind, etype, message, entry = outcome(server, p)
    assert kind == "ok", f"{etype}: {message}"
    info = "\n".join(entry["outputs"]["face"]["text"])
    assert "WARNING: small face in frames 0 (down to 12 px, under 64 px)" in info, info
    assert "pixelated" in info and "higher-resolution reference" in info
    normal = outcome(server, face_prompt(load_image("big_face.png"))(server))  # an 80 px face
    assert normal[0] == "ok" and "small face" not in "\n".join(normal[3]["outputs"]["face"]["text"])


def test_face_progress_counts_frames(server):
    """The progress of Face Crop reads frames (N/N at the end), not internal steps (N/3N)."""
    import json
    import uuid

    import websocket
    ws = websocket.WebSocket()
    cid = uuid.uuid4().hex
    ws.connect(f"ws://127.0.0.1:{server.port}/ws?clientId={cid}", timeout=30)
    try:
        p = face_prompt({"class_type": "RepeatImageBatch", "inputs": {"image": ["one", 0], "amount": 16}})(server)
        p["one"] = load_image("face.png")(server)
        p["face"]["inputs"]["on_no_face"] = "whole_frame"
        p["face"]["inputs"]["face_index"] = 1  # a fresh cache key
        status, data = post_raw(server, p, client_id=cid)
        assert status == 200, data
        seen = []
        while True:
            msg = ws.recv()
            if not isinstance(msg, str):
                continue
            msg = json.loads(msg)
            d = msg.get("data", {})
            if msg["type"] == "progress" and d.get("node") == "face":
                seen.append((d["value"], d["max"]))
            if msg["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == data["prompt_id"]:
                break
            if msg["type"] == "execution_error":
                pytest.fail(str(d))
    finally:
        ws.close()
    assert seen and all(m == 16 for _, m in seen), seen
    assert seen[-1] == (16, 16), seen


def test_setup_check_warns_for_files_the_node_refuses(server):
    kind, etype, message, entry = outcome(server, {"check": {"class_type": "WanIDSetupCheck",
                                                             "inputs": {"test_providers": False}}})
    assert kind == "ok", message
    report = entry["outputs"]["check"]["text"][0]
    lines = {ln.split()[2]: ln for ln in report.splitlines() if ln.split()[1:2] == ["Stand-In"] and
             len(ln.split()) > 2}
    for name in ("bad_empty.ckpt", "bad_truncated.ckpt", "bad_pickle.ckpt", "bad_nan.ckpt", "bad_inf.safetensors",
                 "bad_int.safetensors", "bad_truncated.safetensors"):
        assert lines[name].startswith("WARN"), lines[name]
    assert lines["bad_empty.ckpt"].endswith("is empty (0 bytes): a download or copy that did not finish. Download "
                                            "it again (Stand-In_wan2.1_T2V_14B.ckpt, or the Wan 2.2 high/low pair).")
    assert "pickled code" in lines["bad_pickle.ckpt"] and "NaN" in lines["bad_nan.ckpt"]
    assert "rank 8, dim 128, 2 blocks" in lines[GOOD_STANDIN]  # read (a tiny test file: no released Wan fits)


def test_setup_check_is_not_ready_with_only_bad_files(tmp_path):
    """With only the files the node refuses, the summary does not claim "ready: Stand-In"."""
    from wanid.setup_report import HostFacts, build_report
    sd = standin_state_dict()
    files = {"empty.ckpt": b"", "truncated.ckpt": _ckpt_bytes({"state_dict": sd})[:3000],
             "pickle.ckpt": _ckpt_bytes({"state_dict": sd, "x": _Evil()})}
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append((name, str(tmp_path / name)))
    host = HostFacts(comfyui_version="0.3.64", folders={"stand_in": ([str(tmp_path)], paths)})
    text = build_report(host, test_providers=False).text()
    summary = text.split("== Summary ==")[1]
    assert "not ready: Stand-In (no usable file in models/stand_in)" in summary, text
    for name in files:
        assert any(ln.startswith("WARN") and f"Stand-In {name}" in ln for ln in text.splitlines()), text
    assert not os.path.exists(f"/tmp/{MARKER}")


# ---------------------------------------------------------------------------------------------- harder cases
def test_file_replaced_while_a_prompt_runs(server):
    """A Stand-In file overwritten while a prompt that uses it samples: that prompt keeps the weights it loaded,
    the server keeps serving, and the next prompt with the same name reads the new file (not the node cache)."""
    import json
    import uuid

    import websocket
    name = "bad_inputs_swap.safetensors"
    old, new = standin_state_dict(seed=11), standin_state_dict(seed=12)
    server.add_model("stand_in", name, new)
    want_new = server.output_latent(server.queue(standin_prompt(name, seed=21, steps=12,
                                                             filename_prefix="wanid_test/swap_new")))
    server.add_model("stand_in", name, old)
    stamp = os.stat(server.models_dir / "stand_in" / name).st_mtime_ns + 10**9  # a coarse-clock filesystem too
    os.utime(server.models_dir / "stand_in" / name, ns=(stamp, stamp))
    want_old = server.output_latent(server.queue(standin_prompt(name, seed=21, steps=12,
                                                             filename_prefix="wanid_test/swap_old")))
    assert not torch.equal(want_old, want_new)

    server.reset_cache()
    ws = websocket.WebSocket()
    cid = uuid.uuid4().hex
    ws.connect(f"ws://127.0.0.1:{server.port}/ws?clientId={cid}", timeout=30)
    try:
        status, data = post_raw(server, standin_prompt(name, seed=21, steps=12,
                                                             filename_prefix="wanid_test/swap_during"), cid)
        assert status == 200, data
        while True:  # replace the file once sampling has started
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "progress" and m["data"].get("node") == "sampler":
                    server.add_model("stand_in", name, new)
                    break
    finally:
        ws.close()
    during = server.output_latent(server.wait(data["prompt_id"]))
    assert torch.equal(during, want_old), "the running prompt must keep the weights it loaded"
    after = server.output_latent(server.queue(standin_prompt(name, seed=21, steps=12,
                                                          filename_prefix="wanid_test/swap_after")))
    assert torch.equal(after, want_new), "the replaced file must be read again, not answered from the cache"


def test_concurrent_prompts_good_and_bad(server):
    """Prompts posted together without waiting, bad ones among them: each good one gives exactly what it gives
    alone, each bad one its worded error."""
    goods = [standin_prompt(seed=40 + i, filename_prefix=f"wanid_test/conc_{i}") for i in range(3)]
    bads = [standin_prompt("bad_nan.ckpt", seed=50), standin_prompt(ref=tensor_node("1,48,1,8,8"), seed=51)]
    order = [goods[0], bads[0], goods[1], bads[1], goods[2]]
    ids = [None] * len(order)

    def post(i):
        ids[i] = post_raw(server, order[i])[1]["prompt_id"]

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(order))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = [server.wait(pid) for pid in ids]
    for prompt, entry in zip(order, entries):
        if prompt in bads:
            err = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]
            assert_worded("failed", err["exception_type"], err["exception_message"], r"(NaN|48-channel)")
        else:
            assert entry["status"]["status_str"] == "success"
    server.reset_cache()
    for prompt, entry in zip(order, entries):
        if prompt in goods:
            alone = server.output_latent(server.queue(prompt))
            assert torch.equal(alone, server.output_latent(entry))


def test_model_unloaded_with_free_mid_queue(server):
    """POST /free (unload models, drop caches) between queued prompts: the next prompt really runs again (the
    unet and the patch are not answered from the node cache) and gives the bit-identical result as before."""
    import requests
    ref = standin_prompt(seed=61, filename_prefix="wanid_test/free_ref")
    want = server.output_latent(server.queue(ref))
    long = standin_prompt(seed=62, steps=15, filename_prefix="wanid_test/free_long")
    first = post_raw(server, long)[1]["prompt_id"]
    requests.post(server.url + "/free", json={"unload_models": True, "free_memory": True},
                  timeout=30).raise_for_status()
    second = post_raw(server, ref)[1]["prompt_id"]
    assert server.wait(first)["status"]["status_str"] == "success"
    entry = server.wait(second)
    assert entry["status"]["status_str"] == "success"
    assert torch.equal(server.output_latent(entry), want)
    cached = {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}
    assert not {"unet", "standin", "sampler"} & cached, f"answered from the cache after /free: {cached}"
