"""Stand-In video face swap: the official preparation (VideoMaskGenerator) and the official sampling schedule.
The math is in wanid/face/swap.py and wanid/standin/sigmas.py; this is the ComfyUI glue."""
import comfy.utils
import torch
from .v3 import io, ui

from ..wanid.errors import check_finite_numbers
from ..wanid.face.names import AUTO_PARSER
from ..wanid.face.onnx_session import PROVIDER_CHOICES
from ..wanid.face.swap import FaceSwapError, prepare, preview
from ..wanid.standin.sigmas import flow_match_sigmas
from .face import DETECTORS, detector_and_embedder, face_parser, parser_files

PREVIEW_FRAMES = 8  # shown on the node; the preview output holds every frame


class WanIDFaceSwapPrepare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDFaceSwapPrepare",
            display_name="Stand-In Face Swap Prepare",
            category="WanIdentity",
            description="The official Stand-In face swap preparation (VideoMaskGenerator): crops the video to "
                        "multiples of 16 and 4k+1 frames, pastes the parsed reference face onto the largest face "
                        "of every frame by its 5 landmarks, and gives the per-frame masks and the hard mask at "
                        "latent resolution for Set Latent Noise Mask (the official force_background_consistency).",
            inputs=[
                io.Image.Input("frames", tooltip="The target video, every frame (LoadVideo + Get Video Components, "
                                                 "or Reference Clip Loader with num_frames covering the clip)."),
                io.Image.Input("face", tooltip="The reference face: Face Crop / Parse's crops_raw (the 512 crop "
                                               "before whitening, as the official FaceProcessor's RGBA holds it)."),
                io.Mask.Input("face_alpha", tooltip="Its alpha: Face Crop / Parse's masks (1 where the parser kept "
                                                    "the pixel)."),
                io.Combo.Input("detector", options=list(DETECTORS), default="auto",
                               tooltip="As in Face Crop / Parse: antelopev2 (the official), buffalo_l, or the "
                                       "bundled RetinaFace."),
                io.Float.Input("confidence_threshold", default=0.5, min=0.0, max=0.99, step=0.01,
                               tooltip="The largest face of a frame is used only above this score (official 0.5)."),
                io.Float.Input("flip_chance", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Box paste only: chance to mirror the reference per frame (the official "
                                       "script uses 0.05, unseeded); drawn from seed."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF,
                             tooltip="Seed of the flips."),
                io.Boolean.Input("match_angle_and_size", default=True, optional=True,
                                 tooltip="On (official): the face follows the frame's landmarks (rotation, scale). "
                                         "Off: the reference is pasted into the face box through a parsed mask."),
                io.Float.Input("face_crop_scale", default=1.5, min=1.0, max=4.0, step=0.05, optional=True,
                               tooltip="Box paste: the square around the face box (official 1.5)."),
                io.Int.Input("dilation_kernel_size", default=10, min=0, max=64, optional=True,
                             tooltip="Box paste: mask dilation (official 10)."),
                io.Int.Input("feather_amount", default=21, min=0, max=101, optional=True,
                             tooltip="Box paste: Gaussian feather of the mask, made odd (official 21)."),
                io.Combo.Input("parser_model", options=parser_files(), default=AUTO_PARSER, optional=True,
                               tooltip="Box paste: BiSeNet for the face mask (facexlib's parsing_bisenet.pth); "
                                       "without one the whole box is pasted."),
                io.Combo.Input("provider", options=list(PROVIDER_CHOICES), default="auto", optional=True,
                               tooltip="ONNX Runtime device for detection."),
            ],
            outputs=[
                io.Image.Output("pasted_frames", tooltip="The pasted frames (cropped to multiples of 16, 4k+1 frames): "
                                                  "VAE Encode them."),
                io.Mask.Output("masks", tooltip="The mask of every frame (the warped alpha)."),
                io.Mask.Output("latent_mask", tooltip="The official hard mask at latent resolution [T, H/8, W/8]: "
                                                      "Set Latent Noise Mask on the encoded frames."),
                io.Image.Output("preview", tooltip="The pasted frames with the masks in red."),
                io.String.Output("info", tooltip="Crop, frames kept, frames without a face, box pastes, flips."),
            ],
        )

    @classmethod
    def execute(cls, frames, face, face_alpha, detector, confidence_threshold, flip_chance, seed,
                match_angle_and_size=True, face_crop_scale=1.5, dilation_kernel_size=10, feather_amount=21,
                parser_model=AUTO_PARSER, provider="auto") -> io.NodeOutput:
        check_finite_numbers(confidence_threshold=(confidence_threshold, "0..0.99, official 0.5"),
                             flip_chance=(flip_chance, "0..1"), face_crop_scale=(face_crop_scale, "1..4, official 1.5"))
        det, _ = detector_and_embedder(detector, provider)
        parser = _LazyParser(parser_model)
        total = max(int(getattr(frames, "shape", [0])[0] or 0), 1)
        pbar = comfy.utils.ProgressBar(total)
        result = prepare(frames, face, face_alpha, det, parser, confidence_threshold=confidence_threshold,
                         face_crop_scale=face_crop_scale, dilation_kernel_size=dilation_kernel_size,
                         feather_amount=feather_amount, flip_chance=flip_chance, seed=seed,
                         match_angle_and_size=match_angle_and_size,
                         on_progress=lambda done, n: pbar.update_absolute(done, n))
        pasted = torch.from_numpy(result.frames).float() / 255.0
        masks = torch.from_numpy(result.masks).float() / 255.0
        shown_frames = preview(result.frames, result.masks)
        info = f"detector: {det.name} ({det.provider})\n" + result.text()
        pick = torch.linspace(0, shown_frames.shape[0] - 1, min(PREVIEW_FRAMES, shown_frames.shape[0])).round().long()
        shown = {**ui.PreviewImage(shown_frames[pick], cls=cls).as_dict(), "text": [info]}
        return io.NodeOutput(pasted, masks, result.latent_mask, shown_frames, info, ui=shown)


class _LazyParser:
    """The parser only the box paste reads: loaded on its first use, so a run where every frame has landmarks
    does not load BiSeNet."""

    def __init__(self, name):
        self.name, self._p = name, False

    def _get(self):
        if self._p is False:
            self._p = face_parser(self.name)
        return self._p

    def __bool__(self):
        return self._get() is not None

    def logits(self, images, normalization="official"):
        return self._get().logits(images, normalization)


class WanIDFlowMatchSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDFlowMatchSigmas",
            display_name="Stand-In Flow Match Sigmas",
            category="WanIdentity",
            description="The official Stand-In / DiffSynth FlowMatchScheduler schedule (shift, denoising_strength, "
                        "steps) as SIGMAS for SamplerCustom: shift * s / (1 + (shift - 1) s) for s = linspace("
                        "denoise, 0, steps + 1) without its last value, then 0. KSampler's denoise gives the same "
                        "list only when steps / denoise is a whole number.",
            inputs=[
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="num_inference_steps (official 20)."),
                io.Float.Input("denoise", default=0.85, min=0.01, max=1.0, step=0.01,
                               tooltip="denoising_strength (official face swap 0.85)."),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.1,
                               tooltip="sigma_shift (official 5.0)."),
            ],
            outputs=[io.Sigmas.Output("sigmas")],
        )

    @classmethod
    def execute(cls, steps, denoise, shift) -> io.NodeOutput:
        check_finite_numbers(denoise=(denoise, "0.01..1, official 0.85"), shift=(shift, "official 5.0"))
        try:
            return io.NodeOutput(flow_match_sigmas(steps, denoise, shift))
        except ValueError as e:
            raise FaceSwapError(str(e)) from None


NODES = [WanIDFaceSwapPrepare, WanIDFlowMatchSigmas]
