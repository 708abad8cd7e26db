"""Identity Score: how much each generated frame's face looks like the reference (ArcFace cosine, ConsisID's
FaceSim-Arc), the mean over frames with a face, and a plot; the math and the plot are in wanid/score.py."""
import os

import torch

import comfy.utils
from .v3 import io, ui

from ..wanid.errors import check_finite
from ..wanid.face.onnx_session import PROVIDER_CHOICES
from ..wanid.face.pipeline import NON_FINITE_FIX
from ..wanid.score import (REFERENCE_MODES, arcface_faces, mean_score, per_frame_json,
                           reference_from_clip, reference_from_images, render_plot, score_frames, summary_text)
from . import paths
from .face import DETECTORS, detector_and_embedder
from .types import FaceClipType

INSIGHTFACE = "insightface (onnx)"  # the recognition model of models/insightface, as before this option existed


def recognition_choices():
    """insightface's ArcFace (default), or an IR-SE50 of models/facexlib: the embedding Lynx is trained with, so
    Stand-In, Lynx and Slot-ID outputs can be compared on one number."""
    from .lynx import arcface_files
    return [INSIGHTFACE] + arcface_files()


def _embedder(det_kind, provider, recognition=INSIGHTFACE):
    det, embedder = detector_and_embedder(det_kind, provider)
    if recognition != INSIGHTFACE:
        from .lynx import arcface_embedder
        return det, arcface_embedder(recognition, "recognition")
    if embedder is None:
        where = os.path.join(paths.model_dir("insightface"), "models")
        raise FileNotFoundError(
            "Identity Score needs an ArcFace recognition model and none was found: put antelopev2's "
            f"glintr100.onnx (ConsisID's FaceSim-Arc) in {os.path.join(where, 'antelopev2')}, or buffalo_l's "
            f"w600k_r50.onnx in {os.path.join(where, 'buffalo_l')}. The bundled RetinaFace finds faces but "
            "cannot tell who they are.")
    return det, embedder


class WanIDIdentityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDIdentityScore",
            display_name="Identity Score",
            category="WanIdentity",
            description="Face similarity of every generated frame to the reference: ArcFace cosine of the largest "
                        "face (ConsisID's FaceSim-Arc), its mean over the frames with a face, and a plot. Frames "
                        "without a face are marked and left out of the mean. Needs glintr100.onnx (antelopev2) or "
                        "w600k_r50.onnx (buffalo_l) in models/insightface/models/<name>; or, with recognition set to "
                        "it, facexlib's IR-SE50 (recognition_arcface_ir_se50.pth, Lynx's embedding) in "
                        "models/facexlib.",
            inputs=[
                io.Image.Input("images", tooltip="The generated frames (decoded video)."),
                io.MultiType.Input("reference", types=[FaceClipType, io.Image],
                                   tooltip="Who the frames should look like: a FACE_CLIP from Face Crop / Parse, "
                                           "or a photo (IMAGE; the largest face, averaged over a batch)."),
                io.Combo.Input("detector", options=list(DETECTORS), default="auto",
                               tooltip="auto: antelopev2, else buffalo_l, else the bundled RetinaFace (then any "
                                       "ArcFace model in models/insightface is used for recognition)."),
                io.Combo.Input("provider", options=list(PROVIDER_CHOICES), default="auto",
                               tooltip="ONNX Runtime device for detection and ArcFace."),
                io.Combo.Input("reference_mode", options=list(REFERENCE_MODES), default="mean", optional=True,
                               tooltip="With a FACE_CLIP: mean of its frames' embeddings (steadier) or only "
                                       "the anchor frame's."),
                # no default: the first option is it, and the page generator then treats the list as the install's files
                io.Combo.Input("recognition", options=recognition_choices(), optional=True,
                               tooltip="Face embedding: insightface's ArcFace (models/insightface), or facexlib's "
                                       "IR-SE50 in models/facexlib (recognition_arcface_ir_se50.pth, the one Lynx "
                                       "uses) to compare Stand-In, Lynx and Slot-ID on one number. The detector "
                                       "still finds the faces."),
            ],
            outputs=[
                io.Float.Output("mean", tooltip="Mean cosine similarity over the frames with a face "
                                                "(NaN when no frame has one)."),
                io.String.Output("per_frame", tooltip="JSON list, one score per frame, null = no face."),
                io.Image.Output("plot", tooltip="Per-frame similarity curve; red = no face, orange = mean."),
            ],
            is_output_node=True,  # an evaluation: it runs and shows its result even with nothing connected
        )

    @classmethod
    def execute(cls, images, reference, detector, provider, reference_mode="mean",
                recognition=INSIGHTFACE) -> io.NodeOutput:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a batch of frames [T, H, W, 3], got {shape}")
        # NaN frames would read as faceless and score as "no face": say what is wrong instead
        check_finite(images[..., :3], "images", "the frames to score are broken (a NaN sampling or VAE decode); "
                                                "score a video that decoded to real colours")
        if isinstance(reference, torch.Tensor):
            check_finite(reference[..., :3], "reference", NON_FINITE_FIX)
        det, embedder = _embedder(detector, provider, recognition)
        embed_faces = arcface_faces(det, embedder)
        if isinstance(reference, torch.Tensor):
            ref, source = reference_from_images(reference, embed_faces), "reference photo"
        elif hasattr(reference, "valid") and hasattr(reference, "crops"):
            ref, source = reference_from_clip(reference, reference_mode, embedder)
        else:
            raise ValueError(f"reference: expected a FACE_CLIP or an IMAGE, got {type(reference).__name__}")

        pbar = comfy.utils.ProgressBar(images.shape[0])
        scores = score_frames(images, ref, embed_faces, on_progress=pbar.update)
        mean, _ = mean_score(scores)
        plot = torch.from_numpy(render_plot(scores)[0]).float().div(255.0)[None]
        text = summary_text(scores, f"{embedder.name} on {embedder.provider}") + f"\nreference: {source}"
        preview = ui.PreviewImage(plot, cls=cls).as_dict()
        return io.NodeOutput(mean, per_frame_json(scores), plot, ui={**preview, "text": [text]})


NODES = [WanIDIdentityScore]
