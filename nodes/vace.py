"""VACE inputs prepared as the official Stand-In code does (wanid/standin/vace_inputs.py); this is the ComfyUI glue."""
from .v3 import io

from ..wanid.standin.vace_inputs import crop_control_video, letterbox_reference


class WanIDVaceReferencePrep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDVaceReferencePrep",
            display_name="VACE Inputs (official Stand-In prep)",
            category="WanIdentity",
            description="Prepares WanVaceToVideo's inputs as the official Stand-In infer_with_vace.py does: the "
                        "control video centre-cropped to multiples of 16 and trimmed to 4k+1 frames, the reference "
                        "image scaled to fit and letterboxed on white (WanVaceToVideo alone resizes the video and "
                        "centre-crops the reference). Connect width, height and length to WanVaceToVideo.",
            inputs=[
                io.Image.Input("control_video", tooltip="The pose / depth video, every frame (LoadVideo + Get Video "
                                                        "Components)."),
                io.Image.Input("reference_image", optional=True,
                               tooltip="The photo VACE keeps the subject from (the first image is used); the "
                                       "official script passes the same photo Stand-In gets."),
            ],
            outputs=[
                # output ids differ from the input ids (older ComfyUI refuses a shared id); names as shown
                io.Image.Output("prepared_video", display_name="control_video",
                                tooltip="The cropped frames, 4k+1 of them."),
                io.Image.Output("prepared_reference", display_name="reference_image",
                                tooltip="The photo fitted on white at the video's size."),
                io.Int.Output("width", tooltip="The cropped video's width (a multiple of 16)."),
                io.Int.Output("height", tooltip="The cropped video's height (a multiple of 16)."),
                io.Int.Output("length", tooltip="Frames kept (4k+1)."),
            ],
        )

    @classmethod
    def execute(cls, control_video, reference_image=None):
        frames, (top, left, h, w, kept) = crop_control_video(control_video)
        ref = letterbox_reference(reference_image, w, h) if reference_image is not None else None
        return io.NodeOutput(frames, ref, w, h, kept)


NODES = [WanIDVaceReferencePrep]
