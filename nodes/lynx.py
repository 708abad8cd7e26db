"""Lynx Loader and Lynx Apply: ByteDance's Lynx identity adapters on ComfyUI's native Wan model."""
import os
from dataclasses import dataclass

import torch

import folder_paths
from .v3 import io

from ..wanid.errors import check_finite_numbers
from ..wanid.lynx.arcface import ARCFACE_FILE, IRSE50Embedder, embed_aligned, is_arcface_file, load_arcface
from ..wanid.lynx.checkpoint import LynxWeights, load_lynx
from ..wanid.lynx import files as lynx_files
from ..wanid.face.pipeline import to_uint8
from . import paths
from .cache import LoadedCache, file_key
from .lynx_patch import apply_lynx, check_model
from .wan import encode_reference
from .types import FaceClipType, LynxModelType

_loaded = LoadedCache(2)
_arcfaces = LoadedCache(2)


@dataclass
class LynxModel:
    weights: LynxWeights
    arcface: torch.nn.Module
    name: str


def lynx_folders():
    """Folders of models/lynx holding resampler.safetensors ('lynx_full', 'lynx_lite'; '.' for models/lynx itself)."""
    if "lynx" not in folder_paths.folder_names_and_paths:
        paths.register_model_folders()
    return lynx_files.folders(folder_paths.get_filename_list("lynx"))


def arcface_files():
    if "facexlib" not in folder_paths.folder_names_and_paths:
        paths.register_model_folders()
    files = folder_paths.get_filename_list("facexlib")
    preferred = [f for f in files if os.path.basename(f) == ARCFACE_FILE]
    return preferred + [f for f in files if f not in preferred and is_arcface_file(f)]


def _arcface_path(name, input_name="arcface_name"):
    if "facexlib" not in folder_paths.folder_names_and_paths:
        paths.register_model_folders()
    path = folder_paths.get_full_path("facexlib", name) if name else None
    if path is None:
        raise FileNotFoundError(
            f"{input_name}: {name!r} is not in models/facexlib. Put facexlib's {ARCFACE_FILE} in "
            f"{paths.model_dir('facexlib')} and refresh.")
    return path


def arcface_embedder(name, input_name="arcface_name"):
    """The IR-SE50 of models/facexlib/<name> as a score embedder (Identity Score), loaded once per file version."""
    path = _arcface_path(name, input_name)
    model = _arcfaces.get(file_key(path), lambda: load_arcface(path, input_name))
    return IRSE50Embedder(model, name)


def _lynx_path(name):
    for root in folder_paths.get_folder_paths("lynx"):
        path = os.path.normpath(os.path.join(root, name))
        if os.path.commonpath([os.path.abspath(root), os.path.abspath(path)]) == os.path.abspath(root) and \
                os.path.isfile(os.path.join(path, "resampler.safetensors")):
            return path
    raise FileNotFoundError(
        f"lynx_name: {name!r} is not a folder of models/lynx with resampler.safetensors. Put the lynx_full (or "
        f"lynx_lite) folder from ByteDance/lynx in {paths.model_dir('lynx')} and refresh.")


class WanIDLynxLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDLynxLoader",
            display_name="Lynx Loader",
            category="WanIdentity",
            description="Loads ByteDance's Lynx adapters (lynx_full: ID + Ref adapter; lynx_lite: ID adapter) and "
                        "the ArcFace IR-SE50 face embedding they were trained with.",
            inputs=[
                io.Combo.Input("lynx_name", options=lynx_folders(),
                               tooltip="A folder in models/lynx (lynx_full or lynx_lite from ByteDance/lynx)"),
                io.Combo.Input("arcface_name", options=arcface_files(),
                               tooltip=f"facexlib's {ARCFACE_FILE} in models/facexlib"),
            ],
            outputs=[LynxModelType.Output("lynx")],
        )

    @classmethod
    def execute(cls, lynx_name, arcface_name):
        folder = _lynx_path(lynx_name)
        arc = _arcface_path(arcface_name)
        key = (folder, *(file_key(os.path.join(folder, f)) for f in sorted(os.listdir(folder))), file_key(arc))
        model = _loaded.get(key, lambda: LynxModel(load_lynx(folder), load_arcface(arc), lynx_name))
        return io.NodeOutput(model)


NEEDS = "Lynx needs a Wan 2.1 text-to-video model and its VAE"


class WanIDLynxApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDLynxApply",
            display_name="Lynx Apply",
            category="WanIdentity",
            description="Lynx identity on a native Wan 2.1 T2V model: 16 identity tokens in every block's "
                        "cross-attention (ID adapter) and, with lynx_full, the reference face's features in "
                        "self-attention (Ref adapter).",
            inputs=[
                io.Model.Input("model"),
                LynxModelType.Input("lynx"),
                FaceClipType.Input("face_clip", tooltip="Face Crop / Parse's face_clip; its anchor frame is used"),
                io.Float.Input("ip_scale", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Weight of the ID adapter; 1 = official"),
                io.Float.Input("ref_scale", default=1.0, min=0.0, max=3.0, step=0.05,
                               tooltip="Weight of the Ref adapter (lynx_full); 1 = official"),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling where the adapters start acting"),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the sampling where they stop"),
                io.String.Input("ref_blocks", default="all",
                                tooltip="Blocks whose self-attention takes the reference: 'all' or e.g. '0-19, 30'"),
                io.Vae.Input("vae", optional=True, tooltip="Wan VAE, to encode the reference face (lynx_full)"),
                io.Conditioning.Input("reference_text", optional=True,
                                      tooltip="CLIP Text Encode of 'image of a face' (the official reference prompt)"),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, lynx, face_clip, ip_scale, ref_scale, start, end, ref_blocks, vae=None,
                reference_text=None):
        check_finite_numbers(ip_scale=(ip_scale, "0..3"), ref_scale=(ref_scale, "0..3"), start=(start, "0..1"),
                             end=(end, "0..1"))
        check_model(model, lynx.weights)  # before anything runs: a wrong model or file fails at once
        i = face_clip.anchor_index
        if face_clip.aligned is None or face_clip.lynx_crops is None:
            raise ValueError("face_clip: this FACE_CLIP has no aligned faces; make it with this pack's Face Crop / "
                             "Parse.")
        if not bool(face_clip.valid[i]):
            raise ValueError("face_clip: its anchor frame has no face (passed whole); use a clip or photo where the "
                             "face is found.")
        embedding = embed_aligned(lynx.arcface, to_uint8(face_clip.aligned[i:i + 1]))[0]
        reference = context = None
        if lynx.weights.ref and ref_scale != 0:
            if vae is None:
                raise ValueError("vae: lynx_full's Ref adapter encodes the reference face; connect the Wan VAE (or set "
                                 "ref_scale to 0).")
            if reference_text is None or not len(reference_text):
                raise ValueError("reference_text: connect CLIP Text Encode with 'image of a face' (the text Lynx "
                                 "passes the reference with), or set ref_scale to 0.")
            crop = face_clip.lynx_crops[i:i + 1].float()
            # the official negative: the same reference zeroed in [-1, 1], i.e. mid-grey
            reference = (encode_reference(model, vae, crop, "reference face (face_clip's anchor crop)", NEEDS),
                         encode_reference(model, vae, torch.full_like(crop, 0.5), "negative reference (mid-grey)",
                                          NEEDS))
            context = reference_text[0][0][:1]
        return io.NodeOutput(apply_lynx(model, lynx.weights, embedding, reference, context, ip_scale, ref_scale,
                                        start, end, ref_blocks))


NODES = [WanIDLynxLoader, WanIDLynxApply]
