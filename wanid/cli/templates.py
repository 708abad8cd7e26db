"""The pack's example workflows, defined here once and written as JSON files.

    python -m wanid workflows --server http://127.0.0.1:8188      (rewrite example_workflows/ from these graphs)
    python -m wanid workflows --object-info object_info.json     (same, from a saved GET /object_info)

example_workflows/<name>.json      UI workflows: ComfyUI's template browser lists these (Workflow > Browse
                                   Templates > ComfyUI-WanIdentity); the editor opens them.
example_workflows/api/<name>.json  their API-format twins, for POST /prompt and `python -m wanid queue`.
The API graphs below are the source; the UI twins are generated from them with the server's node schemas
(workflow.api_to_ui), so the two cannot drift. Node ids are the same in both: `--set 12.steps=30` names the
node the editor shows as #12.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from ..face.names import AUTO_PARSER, PARSER_FILE as BISENET
from ..lynx import files as lynx_files
from ..model_inputs import INPUTS as MODEL_INPUTS
from . import workflow as wf

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "example_workflows"
API_FOLDER = FOLDER / "api"

# Model files, as the README documents them (folder under ComfyUI/models, file name).
WAN21_T2V = "wan2.1_t2v_14B_fp8_e4m3fn.safetensors"
WAN21_VACE = "wan2.1_vace_14B_fp16.safetensors"  # ComfyUI's repackaged Wan 2.1 VACE 14B
WAN22_HIGH = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"
WAN22_LOW = "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
STANDIN_21 = "Stand-In_wan2.1_T2V_14B.ckpt"
STANDIN_22_HIGH = "Stand-In_wan2.2_T2V_A14B_high.ckpt"
STANDIN_22_LOW = "Stand-In_wan2.2_T2V_A14B_low.ckpt"
SLOT_ID = "slot-id_wan2.1_t2v_14B.safetensors"
LYNX_FULL = lynx_files.FULL  # a folder of models/lynx (ByteDance/lynx): resampler, ip_layers, ref_layers
LYNX_ARCFACE = lynx_files.ARCFACE_FILE  # facexlib's IR-SE50, in models/facexlib
LYNX_REFERENCE_TEXT = "image of a face"  # the text the official code passes the reference face with
# Face Crop / Parse's parser_model in the shipped files: "auto" uses BiSeNet (the official background whitening)
# when it is installed and runs without it otherwise, since the README calls it optional.
REFERENCE = "reference.mp4"  # placeholder: the user's clip (uploaded with the node's button or --reference)
POSE_VIDEO = "pose.mp4"  # placeholder: VACE's pose / depth video (LoadVideo's upload button, or --video)
# Official Stand-In + VACE (infer_with_vace.py): vace_scale 0.8; its reference image is the same photo as ip_image.
VACE_STRENGTH = 0.8
TARGET_VIDEO = "target.mp4"  # placeholder: the face swap's target video (LoadVideo's upload button)
# Official face swap (infer_face_swap.py): denoising_strength 0.85 over the official 20-step, shift-5 schedule.
FACE_SWAP_DENOISE = 0.85
FACE_SWAP_FPS = 25.0  # infer_face_swap.py's --fps (set it to the target video's rate)

POSITIVE = ("A man sits at a desk facing the camera and talks as if on a video call with friends, smiling "
            "naturally. Warm indoor light; behind him a tidy shelf with photos and a world map on the wall.")
# Wan's own default negative prompt (the one its reference code and Stand-In use).
NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
            "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
            "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

# Official Stand-In inference defaults (Wan 2.1): 480x832, 81 frames, 20 steps, cfg 5.0, shift 5.0.
WIDTH, HEIGHT, LENGTH, STEPS, CFG, SHIFT, FPS = 832, 480, 81, 20, 5.0, 5.0, 16.0
# Wan 2.2 A14B as ComfyUI's own template runs it: high-noise expert steps 0-10, low-noise 10-20.
CFG_22, SHIFT_22, SWITCH_22 = 3.5, 8.0, 10
SEED = 42
# Official Lynx inference (infer.py): 832x480, 81 frames, 50 steps, cfg 5.0 (its extra face guidance,
# guidance_scale_i, has no ComfyUI equivalent; plain cfg is the one KSampler has).
LYNX_STEPS, LYNX_CFG = 50, 5.0
# The files are generated against this ComfyUI (and tested on it and on OLDEST_COMFYUI).
NEWEST_COMFYUI, OLDEST_COMFYUI = "0.33.0", "0.3.64"


class Graph:
    def __init__(self):
        self.nodes = {}

    def add(self, class_type, title=None, **inputs):
        nid = str(len(self.nodes) + 1)
        node = {"class_type": class_type, "inputs": inputs}
        if title:
            node["_meta"] = {"title": title}
        self.nodes[nid] = node
        return nid


def out(nid, slot=0):
    return [nid, slot]


# ---- building blocks

def _text(g):
    clip = g.add("CLIPLoader", "Load umT5 text encoder", clip_name=UMT5, type="wan", device="default")
    pos = g.add("CLIPTextEncode", "Positive Prompt", text=POSITIVE, clip=out(clip))
    neg = g.add("CLIPTextEncode", "Negative Prompt", text=NEGATIVE, clip=out(clip))
    return pos, neg


def _face(g, on_no_face="skip"):
    clip = g.add("WanIDReferenceClipLoader", "Reference clip", video=REFERENCE, num_frames=16, start_time=0.0,
                 duration=0.0, stride=0, max_side=1024)
    face = g.add("WanIDFaceCropParse", None, images=out(clip, 0), times=out(clip, 1), detector="auto",
                 face_choice="largest", face_index=0, on_no_face=on_no_face, label_set="official",
                 parser_model=AUTO_PARSER, provider="auto", fallback="keep_all", normalization="official")
    g.add("PreviewImage", "Faces found (gold = anchor)", images=out(face, 4))
    return clip, face


def _photo_face(g):
    """One photo (the methods that take a single image: face swap, VACE) and its face; no face is an error."""
    photo = g.add("WanIDReferenceClipLoader", "Reference clip", video=REFERENCE, num_frames=1, start_time=0.0,
                  duration=0.0, stride=0, max_side=1024)
    face = g.add("WanIDFaceCropParse", None, images=out(photo, 0), detector="auto", face_choice="largest",
                 face_index=0, on_no_face="error", label_set="official", parser_model=AUTO_PARSER,
                 provider="auto", fallback="keep_all", normalization="official")
    return photo, face


def _output(g, samples, vae, prefix):
    images = g.add("VAEDecode", None, samples=out(samples), vae=out(vae))
    video = g.add("CreateVideo", None, images=out(images), fps=FPS)
    g.add("SaveVideo", None, video=out(video), filename_prefix=prefix, format="auto", codec="auto")


def _ksampler(g, model, positive, negative, latent, cfg=CFG):
    return g.add("KSampler", None, model=model, positive=positive, negative=negative, latent_image=out(latent),
                 seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple", denoise=1.0)


def _latent(g):
    # titled: its display name differs between ComfyUI versions, and the editor queues a node's title
    return g.add("EmptyHunyuanLatentVideo", "Empty Latent Video", width=WIDTH, height=HEIGHT, length=LENGTH,
                 batch_size=1)


def _standin(g, model, name, face, vae, title):
    return g.add("WanIDRestrictedAttnPatch", title, model=out(model), standin_name=name, strength=1.0,
                 reference_image=out(face, 2), vae=out(vae))


# ---- the workflows

def standin_wan21():
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 T2V 14B", unet_name=WAN21_T2V, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _face(g)
    patched = _standin(g, unet, STANDIN_21, face, vae, "Stand-In")
    model = g.add("ModelSamplingSD3", None, model=out(patched), shift=SHIFT)
    latent = _latent(g)
    samples = _ksampler(g, out(model), out(pos), out(neg), latent)
    _output(g, samples, vae, "WanIdentity/standin_wan21")
    return g.nodes


def standin_wan22():
    g = Graph()
    high = g.add("UNETLoader", "Load Wan 2.2 T2V A14B high noise", unet_name=WAN22_HIGH, weight_dtype="default")
    low = g.add("UNETLoader", "Load Wan 2.2 T2V A14B low noise", unet_name=WAN22_LOW, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _face(g)
    high_p = _standin(g, high, STANDIN_22_HIGH, face, vae, "Stand-In (high-noise expert)")
    low_p = _standin(g, low, STANDIN_22_LOW, face, vae, "Stand-In (low-noise expert)")
    high_m = g.add("ModelSamplingSD3", None, model=out(high_p), shift=SHIFT_22)
    low_m = g.add("ModelSamplingSD3", None, model=out(low_p), shift=SHIFT_22)
    latent = _latent(g)
    first = g.add("KSamplerAdvanced", "KSampler (high noise, steps 0-10)", model=out(high_m), add_noise="enable",
                  noise_seed=SEED, steps=STEPS, cfg=CFG_22, sampler_name="euler", scheduler="simple",
                  positive=out(pos), negative=out(neg), latent_image=out(latent), start_at_step=0,
                  end_at_step=SWITCH_22, return_with_leftover_noise="enable")
    second = g.add("KSamplerAdvanced", "KSampler (low noise, steps 10-20)", model=out(low_m), add_noise="disable",
                   noise_seed=0, steps=STEPS, cfg=CFG_22, sampler_name="euler", scheduler="simple",
                   positive=out(pos), negative=out(neg), latent_image=out(first), start_at_step=SWITCH_22,
                   end_at_step=10000, return_with_leftover_noise="disable")
    _output(g, second, vae, "WanIdentity/standin_wan22")
    return g.nodes


def _slot(g, unet, face, vae, pos, neg):
    loader = g.add("WanIDSlotIDLoader", None, model=out(unet), slot_id_name=SLOT_ID, lora_strength=1.0)
    tokens = g.add("WanIDSlotEncoder", None, slot_id=out(loader, 1), face_clip=out(face, 3), vae=out(vae))
    g.add("PreviewImage", "Slot routing (slots x frames)", images=out(tokens, 1))
    inject = g.add("WanIDIdentityTokenInject", None, positive=out(pos), identity_tokens=out(tokens, 0),
                   strength=1.0, pad_negative=True, negative=out(neg))
    return loader, inject


def slotid_wan21():
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 T2V 14B", unet_name=WAN21_T2V, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _face(g)
    loader, inject = _slot(g, unet, face, vae, pos, neg)
    model = g.add("ModelSamplingSD3", None, model=out(loader), shift=SHIFT)
    latent = _latent(g)
    samples = _ksampler(g, out(model), out(inject, 0), out(inject, 1), latent)
    _output(g, samples, vae, "WanIdentity/slotid_wan21")
    return g.nodes


def slotid_standin_wan21():
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 T2V 14B", unet_name=WAN21_T2V, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _face(g)
    loader, inject = _slot(g, unet, face, vae, pos, neg)
    patched = _standin(g, loader, STANDIN_21, face, vae, "Stand-In")
    model = g.add("ModelSamplingSD3", None, model=out(patched), shift=SHIFT)
    latent = _latent(g)
    samples = _ksampler(g, out(model), out(inject, 0), out(inject, 1), latent)
    _output(g, samples, vae, "WanIdentity/slotid_standin_wan21")
    return g.nodes


def lynx_wan21():
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 T2V 14B", unet_name=WAN21_T2V, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _face(g)
    loader = g.add("WanIDLynxLoader", None, lynx_name=LYNX_FULL, arcface_name=LYNX_ARCFACE)
    ref_text = g.add("CLIPTextEncode", "Lynx reference text", text=LYNX_REFERENCE_TEXT,
                     clip=g.nodes[pos]["inputs"]["clip"])
    patched = g.add("WanIDLynxApply", "Lynx", model=out(unet), lynx=out(loader), face_clip=out(face, 3),
                    ip_scale=1.0, ref_scale=1.0, start=0.0, end=1.0, ref_blocks="all", vae=out(vae),
                    reference_text=out(ref_text))
    model = g.add("ModelSamplingSD3", None, model=out(patched), shift=SHIFT)
    latent = _latent(g)
    samples = g.add("KSampler", None, model=out(model), positive=out(pos), negative=out(neg),
                    latent_image=out(latent), seed=SEED, steps=LYNX_STEPS, cfg=LYNX_CFG, sampler_name="euler",
                    scheduler="simple", denoise=1.0)
    _output(g, samples, vae, "WanIdentity/lynx_wan21")
    return g.nodes


def standin_faceswap_wan21():
    """The official Stand-In face swap: the photo's face pasted onto the target video (VideoMaskGenerator), the
    pasted frames encoded, the background held by the official hard latent mask, sampled from 0.85 on the official
    schedule (SamplerCustom: KSampler's denoise cannot give the official 20-step list) with Stand-In."""
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 T2V 14B", unet_name=WAN21_T2V, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    _, face = _photo_face(g)
    target = g.add("LoadVideo", "Target video", file=TARGET_VIDEO)
    parts = g.add("GetVideoComponents", None, video=out(target))
    swap = g.add("WanIDFaceSwapPrepare", None, frames=out(parts, 0), face=out(face, 6), face_alpha=out(face, 1),
                 detector="auto", confidence_threshold=0.5, flip_chance=0.0, seed=0, match_angle_and_size=True,
                 face_crop_scale=1.5, dilation_kernel_size=10, feather_amount=21, parser_model=AUTO_PARSER,
                 provider="auto")
    g.add("PreviewImage", "Pasted faces (red = mask)", images=out(swap, 3))
    patched = _standin(g, unet, STANDIN_21, face, vae, "Stand-In")
    model = g.add("ModelSamplingSD3", None, model=out(patched), shift=SHIFT)
    encoded = g.add("VAEEncode", None, pixels=out(swap, 0), vae=out(vae))
    masked = g.add("SetLatentNoiseMask", "Keep the background (official hard mask)", samples=out(encoded),
                   mask=out(swap, 2))
    sigmas = g.add("WanIDFlowMatchSigmas", None, steps=STEPS, denoise=FACE_SWAP_DENOISE, shift=SHIFT)
    sampler = g.add("KSamplerSelect", None, sampler_name="euler")
    samples = g.add("SamplerCustom", None, model=out(model), add_noise=True, noise_seed=SEED, cfg=CFG,
                    positive=out(pos), negative=out(neg), sampler=out(sampler), sigmas=out(sigmas),
                    latent_image=out(masked))
    images = g.add("VAEDecode", None, samples=out(samples), vae=out(vae))
    video = g.add("CreateVideo", None, images=out(images), fps=FACE_SWAP_FPS)
    g.add("SaveVideo", None, video=out(video), filename_prefix="WanIdentity/standin_faceswap_wan21", format="auto",
          codec="auto")
    return g.nodes


def standin_vace_pose_wan21():
    """The official Stand-In + VACE (infer_with_vace.py): the photo's face through Stand-In, the pose video and the
    same photo through VACE, their inputs prepared as the official pipeline does (WanIDVaceReferencePrep: the
    video cropped to multiples of 16 and 4k+1 frames, the photo letterboxed on white), then core WanVaceToVideo at
    the prepared size; the reference frame VACE adds in front is trimmed before decoding."""
    g = Graph()
    unet = g.add("UNETLoader", "Load Wan 2.1 VACE 14B", unet_name=WAN21_VACE, weight_dtype="default")
    vae = g.add("VAELoader", None, vae_name=WAN_VAE)
    pos, neg = _text(g)
    photo, face = _photo_face(g)
    patched = _standin(g, unet, STANDIN_21, face, vae, "Stand-In")
    model = g.add("ModelSamplingSD3", None, model=out(patched), shift=SHIFT)
    pose = g.add("LoadVideo", "Target video (pose)", file=POSE_VIDEO)
    parts = g.add("GetVideoComponents", None, video=out(pose))
    prep = g.add("WanIDVaceReferencePrep", None, control_video=out(parts, 0), reference_image=out(photo, 0))
    vace = g.add("WanVaceToVideo", None, positive=out(pos), negative=out(neg), vae=out(vae), width=out(prep, 2),
                 height=out(prep, 3), length=out(prep, 4), batch_size=1, strength=VACE_STRENGTH,
                 control_video=out(prep, 0), reference_image=out(prep, 1))
    samples = g.add("KSampler", None, model=out(model), positive=out(vace, 0), negative=out(vace, 1),
                    latent_image=out(vace, 2), seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                    scheduler="simple", denoise=1.0)
    # titled: its display name differs between ComfyUI versions
    trimmed = g.add("TrimVideoLatent", "Drop VACE's reference frame", samples=out(samples), trim_amount=out(vace, 3))
    images = g.add("VAEDecode", None, samples=out(trimmed), vae=out(vae))
    video = g.add("CreateVideo", None, images=out(images), fps=out(parts, 2))
    g.add("SaveVideo", None, video=out(video), filename_prefix="WanIdentity/standin_vace_pose_wan21", format="auto",
          codec="auto")
    return g.nodes


def face_preprocess():
    g = Graph()
    _, face = _face(g)
    g.add("SaveImage", "Save anchor (Stand-In reference)", images=out(face, 2),
          filename_prefix="WanIdentity/face_anchor")
    g.add("SaveImage", "Save crops", images=out(face, 0), filename_prefix="WanIdentity/face_crops")
    masks = g.add("MaskToImage", None, mask=out(face, 1))
    g.add("PreviewImage", "Parser masks", images=out(masks))
    g.add("PreviewAny", "Face info", source=out(face, 5))
    return g.nodes


_MODELS = {  # (model input, what the note lists): the folder is the one of the table of model inputs
    "wan21vace": [("unet_name", WAN21_VACE)],
    "wan21": [("unet_name", WAN21_T2V)],
    "wan22": [("unet_name", WAN22_HIGH), ("unet_name", WAN22_LOW)],
    "text": [("clip_name", UMT5), ("vae_name", WAN_VAE)],
    "standin21": [("standin_name", STANDIN_21)],
    "standin22": [("standin_name", STANDIN_22_HIGH), ("standin_name", STANDIN_22_LOW)],
    "slot": [("slot_id_name", SLOT_ID)],
    "lynx": [("lynx_name", f"{LYNX_FULL}/ (resampler, ip_layers, ref_layers .safetensors; ByteDance/lynx)"),
             ("arcface_name", f"{LYNX_ARCFACE} (facexlib's ArcFace IR-SE50, Lynx's face embedding)")],
    "face": [("parser_model", BISENET + "  (optional; parser_model auto uses it when installed, for Stand-In's "
                              "official white background; the workflow runs without it)"),
             ("insightface/models/antelopev2", "antelopev2 (optional for Stand-In; Slot-ID needs its ArcFace)")],
}


def _note(summary, *groups, extra=""):
    lines = [summary, "", "**Models** (ComfyUI/models/...):"]
    for key in groups:
        lines += [f"- `{MODEL_INPUTS[i].folder if i in MODEL_INPUTS else i}/` {name}" for i, name in _MODELS[key]]
    lines += ["", "**Use**: upload your reference clip in *Reference clip* (one person, face visible), write the "
              "prompt, queue. Headless: `python -m wanid queue example_workflows/api/<this file> --server URL "
              "--reference clip.mp4 --prompt \"...\"`."]
    if extra:
        lines += ["", extra]
    return [("About this workflow", "\n".join(lines))]


WORKFLOWS = {
    "standin_wan21_t2v_14b": (
        standin_wan21,
        _note("**Stand-In** text-to-video on native **Wan 2.1 T2V 14B** (fp8): the best face of the reference "
              "clip joins every block's self-attention. Official defaults: 832x480, 81 frames, 20 steps, cfg 5, "
              "shift 5.", "wan21", "text", "standin21", "face")),
    "standin_wan22_t2v_a14b": (
        standin_wan22,
        _note("**Stand-In** text-to-video on **Wan 2.2 T2V A14B**: both experts, each patched with its own "
              "Stand-In file; high-noise expert steps 0-10, low-noise expert 10-20 (as ComfyUI's Wan 2.2 "
              "template, cfg 3.5, shift 8).", "wan22", "text", "standin22", "face")),
    "slotid_wan21_t2v_from_clip": (
        slotid_wan21,
        _note("**Slot-ID** text-to-video from a reference clip on **Wan 2.1 T2V 14B**: faces of the clip become "
              "identity tokens prepended to the prompt; the checkpoint's LoRA adapts cross-attention.",
              "wan21", "text", "slot", "face")),
    "slotid_standin_wan21_t2v": (
        slotid_standin_wan21,
        _note("**Slot-ID + Stand-In** on **Wan 2.1 T2V 14B**: identity tokens in the text stream and the anchor "
              "face in self-attention. Lower either strength if the face looks over-constrained.",
              "wan21", "text", "slot", "standin21", "face")),
    "lynx_wan21_t2v_14b": (
        lynx_wan21,
        _note("**Lynx** text-to-video on native **Wan 2.1 T2V 14B** (fp8): the anchor face's ArcFace IR-SE50 "
              "embedding becomes 16 identity tokens in every block's cross-attention (ID adapter), and its 256 "
              "crop, encoded by the VAE and passed with the text \"image of a face\", joins self-attention (Ref "
              "adapter). Official defaults: 832x480, 81 frames, 50 steps, cfg 5. lynx_lite: pick it in Lynx "
              "Loader (ID adapter only; VAE and reference text are then unused).",
              "wan21", "text", "lynx", "face")),
    "standin_faceswap_wan21_t2v_14b": (
        standin_faceswap_wan21,
        _note("**Stand-In face swap** on native **Wan 2.1 T2V 14B** (fp8), as the official infer_face_swap.py: "
              "the face of the reference (a photo, or the first frame of a clip) is pasted onto the largest face "
              "of every frame of the *Target video* (Stand-In Face Swap Prepare: crop to multiples of 16, 4k+1 "
              "frames), the pasted frames are encoded, and Stand-In regenerates them from denoise 0.85 on the "
              "official schedule (Stand-In Flow Match Sigmas: 20 steps, shift 5; cfg 5), the background held "
              "by the official hard latent mask (force_background_consistency; bypass *Keep the background* for "
              "the official default, which regenerates the whole frame).", "wan21", "text", "standin21", "face",
              extra="**Target video**: upload it in *Target video* (480x832 is what Wan is made for; 81 frames "
                    "are 4k+1). Describe the video in the prompt.")),
    "standin_vace_pose_wan21_14b": (
        standin_vace_pose_wan21,
        _note("**Stand-In + VACE**, pose-guided, on native **Wan 2.1 VACE 14B**, as the official infer_with_vace.py: "
              "the face of the reference (a photo, or the first frame of a clip) joins self-attention through "
              "Stand-In, and VACE follows the *Target video (pose)* (a pose or depth video) and keeps the photo as "
              "its reference image (strength 0.8). VACE Inputs prepares both as the official pipeline does (video "
              "cropped to multiples of 16 and 4k+1 frames, the photo scaled to fit and letterboxed on white) and "
              "sets WanVaceToVideo's size and length; WanVaceToVideo alone would resize the video and crop the "
              "photo to fill the frame, which cuts off the parts of a photo of another shape. Official defaults: "
              "20 steps, cfg 5, shift 5.", "wan21vace", "text", "standin21", "face",
              extra="**Pose video**: upload it in *Target video (pose)* (headless: `--video pose.mp4`; 480x832 "
                    "and 81 frames are what Wan is made for). Stand-In does not touch the VACE blocks; the hints "
                    "reach only the video tokens, as in the official code.")),
    "face_crop_parse": (
        face_preprocess,
        _note("**Face preprocessing alone**: the reference clip's frames, face crops on white (what Stand-In "
              "and Slot-ID see), parser masks, the anchor frame and a contact sheet. Check a clip here first.",
              "face")),
}


def api_workflow(name, object_info=None):
    api = WORKFLOWS[name][0]()
    return wf.complete_api(api, object_info) if object_info is not None else api


def dump(data):
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# Layout, in canvas units, as ComfyUI's editor draws a node: a 30 px title bar above `pos`, and for the pack's
# own nodes a source badge ("WanIdentity", 2 + 20 px) above the title. Nodes in a column keep ~30 px between
# one's body and the next one's badge or title; columns keep room for the links between them.
TITLE_HEIGHT = 30
BADGE_HEIGHT = 24
ROW_GAP = 30
COLUMN_GAP = 60
OUTPUT_CHAIN = {"VAEDecode", "CreateVideo", "SaveVideo"}


def _above(node):
    """Height a node takes above its `pos`: the title bar, and the badge when it has one."""
    return TITLE_HEIGHT + (BADGE_HEIGHT if node["type"].startswith("WanID") else 0)


def tidy(ui):
    """Re-space the columns api_to_ui made (one per x) so that no node, badge included, overlaps another:
    each column starts right of the widest node of the one before, each node ROW_GAP below the one above.
    Positions only: ids, sizes, links and values stay as generated."""
    by_x = {}
    for node in ui["nodes"]:
        by_x.setdefault(node["pos"][0], []).append(node)
    columns = []
    for left in sorted(by_x):
        nodes = sorted(by_x[left], key=lambda n: n["pos"][1])
        if columns and all(n["type"] in OUTPUT_CHAIN for n in nodes):
            columns[-1][1].extend(nodes)  # decode -> video -> save go under the sampler: a narrower graph
        else:
            columns.append((left, nodes))
    x = None
    for left, nodes in columns:
        x = left if x is None else x
        bottom = 6 - ROW_GAP  # the first row's titles line up, badges above them stay on the canvas
        for node in nodes:
            top = bottom + ROW_GAP + (TITLE_HEIGHT + BADGE_HEIGHT if node is nodes[0] else _above(node))
            node["pos"] = [x, top]
            bottom = top + node["size"][1]
        x += max(n["size"][0] for n in nodes) + COLUMN_GAP
    return ui


def write_all(object_info, folder=FOLDER):
    """Both twins of every workflow, from the node schemas of a server running the newest supported ComfyUI
    (an older one is refused: the files must carry the inputs newer versions added, see wf.ADDED_INPUTS)."""
    folder = Path(folder)
    apis = {name: wf.complete_api(build(), object_info) for name, (build, _) in WORKFLOWS.items()}
    missing = sorted({m for api in apis.values() for m in wf.missing_added_inputs(api, object_info)})
    if missing:
        raise wf.WorkflowError(f"this server lacks {', '.join(missing)}: its ComfyUI is older than the one the "
                               f"workflows are written for; run against ComfyUI {NEWEST_COMFYUI} or newer")
    (folder / "api").mkdir(parents=True, exist_ok=True)
    written = []
    for name, (build, notes) in WORKFLOWS.items():
        api = apis[name]
        ui = tidy(wf.api_to_ui(api, object_info, notes=notes))
        for path, data in ((folder / "api" / f"{name}.json", api), (folder / f"{name}.json", ui)):
            path.write_text(dump(data), encoding="utf-8")
            written.append(path)
    return written


def fetch_object_info(server):
    import urllib.request

    with urllib.request.urlopen(server.rstrip("/") + "/object_info", timeout=60) as r:
        return json.load(r)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m wanid workflows", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", help="a running ComfyUI with this pack (its /object_info gives the node schemas)")
    src.add_argument("--object-info", help="a saved GET /object_info JSON file")
    ap.add_argument("--out", default=str(FOLDER), help=f"folder to write (default {FOLDER})")
    args = ap.parse_args(argv)
    if args.server:
        info = fetch_object_info(args.server)
    else:
        with open(args.object_info, encoding="utf-8") as f:
            info = json.load(f)
    try:
        for path in write_all(info, args.out):
            print(os.path.relpath(path))
    except wf.WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
