"""Reference Clip Loader: a few frames of a reference video (file, VIDEO or IMAGE batch) with their times."""
import os

import torch

import folder_paths
from .v3 import io

from ..wanid.video import VideoError, decode_errors, sample_frames, sample_from_images
from .types import FrameTimes


def _video_files():
    input_dir = folder_paths.get_input_directory()
    files = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["video"]))


def resolve_video_path(name):
    """The file `name` (a combo value, maybe 'x.mp4 [output]') names, confined to the folder it belongs to.

    Plain names resolve inside ComfyUI's input folder; ComfyUI's own '[output]'/'[temp]' annotations resolve
    inside those folders. '../', absolute paths and links leading elsewhere are refused.
    """
    if not name or not isinstance(name, str):
        raise VideoError("video: no file chosen; upload a video, or connect video_in or images")
    _, base_dir = folder_paths.annotated_filepath(name)
    base_dir = os.path.realpath(base_dir or folder_paths.get_input_directory())
    outside = VideoError(f"video: '{name}' is outside ComfyUI's input folder; put the file in {base_dir} "
                         "(or upload it with the node's upload button)")
    try:
        path = os.path.realpath(folder_paths.get_annotated_filepath(name))
    except ValueError:
        raise outside from None  # newer ComfyUI refuses '..' itself ("Invalid file path")
    if os.path.commonpath([base_dir, path]) != base_dir or path == base_dir:
        raise outside
    return path


# VideoFromFile's whole state: the file (0.3.6x), plus a trim window (0.33: LoadVideo/Video Slice)
_FILE_STATE = {"_VideoFromFile__file", "_VideoFromFile__start_time", "_VideoFromFile__duration"}


def _file_source(video):
    """(file or BytesIO, trim window) of a ComfyUI VIDEO that is a file, to stream instead of decoding it all.

    None for other kinds (frames held in memory) and for a VideoFromFile carrying state this does not know
    (get_components() honours it, the raw file would not): those are decoded by ComfyUI, whole.
    """
    if type(video).__name__ != "VideoFromFile" or not hasattr(video, "get_stream_source"):
        return None
    state = set(vars(video))
    if not state <= _FILE_STATE:
        return None
    if state != {"_VideoFromFile__file"}:
        if not hasattr(video, "get_active_trim_window"):
            return None
        trim = video.get_active_trim_window()  # a negative start (from the end) resolved
    else:
        trim = (0.0, 0.0)
    return video.get_stream_source(), trim


class WanIDReferenceClipLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDReferenceClipLoader",
            display_name="Reference Clip Loader",
            category="WanIdentity",
            description="Picks num_frames frames of a reference clip in temporal order, with their times in "
                        "seconds. Source priority: images > video_in > the video file.",
            inputs=[
                io.Combo.Input("video", options=_video_files(), upload=io.UploadType.video,
                               tooltip="A video in ComfyUI's input folder."),
                io.Int.Input("num_frames", default=16, min=1, max=256,
                             tooltip="How many frames to pick (fewer if the window has fewer)."),
                io.Float.Input("start_time", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Window start, seconds from the first frame."),
                io.Float.Input("duration", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Window length in seconds; 0 = until the end."),
                io.Int.Input("stride", default=0, min=0, max=10000,
                             tooltip="0 = spread the frames evenly over the window; N = every N-th frame."),
                io.Int.Input("max_side", default=1024, min=0, max=8192, step=8,
                             tooltip="Downscale so the longest side is at most this (aspect kept); 0 = keep."),
                io.Video.Input("video_in", optional=True,
                               tooltip="A ComfyUI VIDEO; used instead of the file when connected."),
                io.Image.Input("images", optional=True,
                               tooltip="An IMAGE batch (video frames); used instead of anything else."),
                io.Float.Input("fps", default=25.0, min=0.01, max=1000.0, step=0.01, optional=True,
                               tooltip="Frame rate of the images batch (for the times output)."),
            ],
            outputs=[
                io.Image.Output("frames", tooltip="The picked frames [T, H, W, 3]."),
                FrameTimes.Output("times", tooltip="Time of each picked frame in seconds."),
                io.Float.Output("source_fps", display_name="fps", tooltip="Frame rate of the source."),
            ],
        )

    @classmethod
    def validate_inputs(cls, video):
        # Only the path's confinement is checked here: a missing file is reported when it is actually used,
        # since a connected images/video_in input takes priority over it.
        if not video:
            return True
        try:
            resolve_video_path(video)
        except VideoError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        # mtime + size: re-queueing re-reads a file that changed under the same name
        try:
            st = os.stat(resolve_video_path(video))
            return f"{video}:{st.st_mtime_ns}:{st.st_size}"
        except Exception:  # noqa: BLE001 - never raise here: validate_inputs/execute report the problem
            return f"{video}:missing"

    @classmethod
    def execute(cls, video, num_frames=16, start_time=0.0, duration=0.0, stride=0, max_side=1024,
                video_in=None, images=None, fps=25.0) -> io.NodeOutput:
        window = dict(num_frames=num_frames, stride=stride, start_time=start_time, duration=duration,
                      max_side=max_side)
        if images is not None:
            clip = sample_from_images(images, fps=fps, label="images", **window)
        elif video_in is not None:
            source = _file_source(video_in)
            if source is not None:
                clip = sample_frames(source[0], trim=source[1], label="video_in", **window)
            else:
                with decode_errors("video_in"):  # ComfyUI decodes this kind of VIDEO itself, with PyAV
                    parts = video_in.get_components()
                clip = sample_from_images(parts.images, fps=float(parts.frame_rate), label="video_in", **window)
        else:
            path = resolve_video_path(video)
            if not os.path.isfile(path):
                raise VideoError(f"video: '{video}' is not in ComfyUI's input folder ({os.path.dirname(path)}); "
                                 "upload it (the node's upload button, or --reference with python -m wanid queue) "
                                 "or pick another file")
            clip = sample_frames(path, label=f"video '{video}'", **window)
        frames = clip.frames
        frames = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        return io.NodeOutput(frames.contiguous(), clip.times.to(torch.float32), float(clip.fps))


NODES = [WanIDReferenceClipLoader]
