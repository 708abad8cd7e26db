"""Pick a few frames of a reference clip, in temporal order, with their times. Plain PyAV/torch, no ComfyUI.

Selection rule (shared by files and IMAGE batches): the window is [start_time, start_time + duration) in seconds
from the first frame (duration 0 = to the end). Within the window's N frames:
  stride == 0: indices round(linspace(0, N - 1, num_frames)), duplicates dropped (first and last frame included;
               a window shorter than num_frames gives all its frames, never repeats);
  stride > 0:  indices 0, stride, 2 * stride, ... (at most num_frames of them).
Frame times come from the stream's presentation timestamps (pts), so variable frame rate clips are timed right;
a stream without timestamps (a raw .h264 file) falls back to index / frame rate.

Files are read in two passes: a demux-only scan that lists the window's frame timestamps without decoding
(cheap), then a decode that seeks near each chosen frame, so a long clip costs about num_frames GOPs of decoding
rather than the whole file. A trim window (ComfyUI's trimmed VIDEO) makes the clip that part of the file.
"""
import contextlib
import logging
import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import WanIDError, describe

log = logging.getLogger(__name__)

MAX_SCAN_FRAMES = 200_000        # frames listed/decoded in one call (about 1 h 50 min at 30 fps)
MAX_FRAME_PIXELS = 8192 * 8192   # one decoded frame, before max_side
MAX_OUTPUT_PIXELS = 1 << 29      # all returned frames together (about 6 GiB once ComfyUI makes them float32)
SEEK_GAP_FRAMES = 48             # decode forward up to this many frames; seek when the next pick is further


class Clip(NamedTuple):
    frames: torch.Tensor   # [T, H, W, 3] RGB; uint8 from files, the input's dtype from image batches
    times: torch.Tensor    # [T] float64 seconds from the first frame of the source
    fps: float             # the source's frame rate (average rate for variable frame rate files)


class VideoError(WanIDError):
    """A video could not be used; the message names the input and what to do."""


def _is_av_error(e):
    """PyAV's own errors (av.error.FFmpegError and its kinds, av.error.EOFError included), by their module so
    that PyAV is not imported here."""
    return any(c.__module__.split(".")[0] == "av" for c in type(e).__mro__)


@contextlib.contextmanager
def decode_errors(label):
    """Word PyAV's errors while a video is demuxed or decoded: the input, what went wrong, what to do.
    Wraps every place frames are read (the file loader here, ComfyUI's own VIDEO decoding in the node)."""
    try:
        yield
    except VideoError:
        raise
    except Exception as e:
        if not _is_av_error(e) and not isinstance(e, EOFError):
            raise
        if isinstance(e, EOFError):
            what = "the video ended before its frames could be read (it may hold no frames at all, or be cut short)"
        else:
            what = "the video data is damaged, so its frames cannot be decoded"
        raise VideoError(
            f"{label}: {what} ({describe(e, 160)}). The file is damaged or incomplete (a copy, upload or "
            "recording cut short?): re-encode it (for example ffmpeg -i in.mp4 -c:v libx264 out.mp4), or choose "
            "another file, or set start_time/duration to a part that plays.") from e


def select_indices(n, num_frames, stride=0):
    """Indices (sorted, unique) of the frames to keep out of n, by the rule in the module docstring."""
    if num_frames < 1:
        raise VideoError(f"num_frames must be at least 1 (got {num_frames})")
    if stride < 0:
        raise VideoError(f"stride must be 0 (spread evenly) or positive (got {stride})")
    if n <= 0:
        return []
    if stride > 0:
        return list(range(0, n, stride))[:num_frames]
    if num_frames == 1:
        return [0]
    picks = np.rint(np.linspace(0, n - 1, num_frames)).astype(np.int64)
    return sorted(set(int(i) for i in picks))


def fit_max_side(width, height, max_side):
    """(width, height) scaled so the longest side is at most max_side (aspect kept; 0 = keep)."""
    if max_side <= 0 or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _window(start_time, duration):
    if not math.isfinite(start_time) or start_time < 0:
        raise VideoError(f"start_time must be a number of seconds >= 0 (got {start_time})")
    if not math.isfinite(duration) or duration < 0:
        raise VideoError(f"duration must be >= 0 seconds, 0 meaning to the end (got {duration})")
    return start_time, (start_time + duration if duration > 0 else math.inf)


def _check_output_size(label, count, width, height, max_side, max_output_pixels):
    if count * width * height > max_output_pixels:
        raise VideoError(
            f"{label}: {count} frames of {width}x{height} are too large to return "
            f"({count * width * height / 1e6:.0f} Mpixels, limit {max_output_pixels / 1e6:.0f}); "
            f"set max_side lower (now {max_side}) or ask for fewer frames")


# ---------------------------------------------------------------------------------------------------------------
# IMAGE batches (ComfyUI IMAGE, or the components of a ComfyUI VIDEO)


def resize_frames(frames, width, height):
    """[T, H, W, 3] -> [T, height, width, 3], antialiased; uint8 stays uint8."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    x = frames.permute(0, 3, 1, 2)
    is_uint8 = x.dtype == torch.uint8
    x = x.float() if is_uint8 or not x.is_floating_point() else x
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    x = x.permute(0, 2, 3, 1)
    if is_uint8:
        return x.round().clamp(0, 255).to(torch.uint8)
    return x.clamp(0, 1).to(frames.dtype)


def sample_from_images(images, num_frames=16, stride=0, fps=25.0, start_time=0.0, duration=0.0, max_side=0,
                       max_output_pixels=MAX_OUTPUT_PIXELS, label="images"):
    """Select frames of an image batch [N, H, W, 3] by the module's rule; frame i is at time i / fps."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise VideoError(f"{label}: expected an image batch [N, H, W, 3], got shape {tuple(images.shape)}")
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoError(f"{label}: fps must be a positive number (got {fps})")
    t0, t1 = _window(start_time, duration)
    n = images.shape[0]
    times = torch.arange(n, dtype=torch.float64) / fps
    inside = torch.nonzero((times >= t0 - 1e-9) & (times < t1 - 1e-9)).flatten().tolist()
    if not inside:
        raise VideoError(f"{label}: no frame in the window {t0:g}..{t1:g} s (the batch has {n} frames, "
                         f"{n / fps:g} s at {fps:g} fps); lower start_time")
    picks = [inside[i] for i in select_indices(len(inside), num_frames, stride)]
    width, height = fit_max_side(images.shape[2], images.shape[1], max_side)
    _check_output_size(label, len(picks), width, height, max_side, max_output_pixels)
    frames = resize_frames(images[picks], width, height)
    return Clip(frames, times[picks], float(fps))


# ---------------------------------------------------------------------------------------------------------------
# Files


def _open(path, label):
    import av  # imported here so that the pack still registers its other nodes without PyAV

    if not isinstance(path, (str, os.PathLike)):
        path.seek(0)  # a file object (a ComfyUI VIDEO held in memory), read once per pass
        try:
            return av.open(path, "r")
        except av.error.FFmpegError as e:
            raise VideoError(f"{label}: could not open it as a video ({describe(e, 160)}); the file may be empty, "
                             "cut short or not a video: record or export it again") from e
    if not os.path.isfile(path):
        raise VideoError(f"{label}: file not found: {path}")
    try:
        return av.open(os.fspath(path), "r")
    except av.error.FFmpegError as e:
        raise VideoError(f"{label}: could not open it as a video ({describe(e, 160)}); the file may be empty, "
                         "cut short or not a video: choose a video file (mp4, webm, mov, mkv, avi, ...)") from e


def _video_stream(container, label):
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise VideoError(f"{label}: the file has no video stream (streams: {kinds}); choose a video file")
    stream = container.streams.video[0]
    return stream


def _frame_rgb(frame, size):
    width, height = size
    if frame.width != width or frame.height != height:
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA")
    array = frame.to_ndarray(format="rgb24")
    # frame.rotation: counter-clockwise degrees the player applies (phone portrait clips say -90 or 90)
    quarter_turns = round(getattr(frame, "rotation", 0) / 90) % 4
    if quarter_turns:
        array = np.ascontiguousarray(np.rot90(array, k=quarter_turns))
    return array


def _first_pts(container, stream, lo, hi, max_frames, label):
    """The smallest frame pts in [lo, hi) (a trim window's first frame), from packets alone; None if none."""
    container.seek(int(lo), stream=stream, backward=True, any_frame=False)
    best, seen = None, 0
    slack = 2.0 / stream.time_base  # B-frame reordering: an earlier pts can follow a later one
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            raise VideoError(f"{label}: the video has no timestamps, so its trim window cannot be applied; "
                             "re-encode it (mp4) or leave it untrimmed and use start_time/duration")
        if packet.pts > (hi if best is None else best) + slack:
            break
        if lo <= packet.pts < hi and (best is None or packet.pts < best):
            best = packet.pts
        seen += 1
        if seen > max_frames:
            break
    return best


def _scan_pts(container, stream, start_pts, end_pts, origin, max_frames, label, must_seek=False):
    """pts of the frames in [start_pts, end_pts) from packets alone (no decoding); None if packets lack pts."""
    if start_pts > origin or must_seek:
        container.seek(int(start_pts), stream=stream, backward=True, any_frame=False)
    found = []
    listed = 0
    margin = None if end_pts == math.inf else end_pts + 2.0 / stream.time_base  # B-frame reordering slack
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # flush packet
        if packet.pts is None:
            return None
        if margin is not None and packet.pts > margin:
            break
        if start_pts <= packet.pts < end_pts:
            found.append(packet.pts)
            listed += 1
            if listed > max_frames:
                raise VideoError(
                    f"{label}: more than {max_frames} frames in the selected window; set duration (seconds) "
                    "to a shorter window, or trim the file")
    return sorted(set(found))


def _decode_picks(container, stream, picks, size, max_frames, label):
    """Decode the frames whose pts are in picks (sorted); seek when the next pick is far ahead."""
    out = []
    decoded = 0
    frames = None
    last_pts = None
    gap = SEEK_GAP_FRAMES * _frame_step(picks, stream)
    for target in picks:
        if frames is None or last_pts is None or target - last_pts > gap:
            container.seek(int(target), stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
        taken = None
        for frame in frames:
            decoded += 1
            if decoded > max_frames:
                raise VideoError(f"{label}: decoded more than {max_frames} frames without reaching the "
                                 "selected ones; the file may be damaged, or re-encode it")
            if frame.pts is None:
                continue
            last_pts = frame.pts
            if frame.pts >= target:
                taken = frame
                break
        if taken is None:
            break  # stream ended early (damaged tail)
        out.append((taken.pts, _frame_rgb(taken, size)))
    return out


def _frame_step(picks, stream):
    rate = stream.average_rate or stream.guessed_rate
    if rate:
        return max(1, round(1 / (float(rate) * float(stream.time_base))))
    return max(1, (picks[-1] - picks[0]) // max(len(picks) - 1, 1)) if len(picks) > 1 else 1


def _sample_without_pts(path, label, num_frames, stride, t0, t1, max_side, max_frames, max_output_pixels):
    """Streams whose packets carry no timestamps (raw .h264): frame i is at i / rate, decoded from the start."""
    with _open(path, label) as container:
        stream = _video_stream(container, label)
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        count = 0
        for _ in container.decode(stream):
            count += 1
            if count > max_frames:
                raise VideoError(f"{label}: more than {max_frames} frames; trim the file")
    first = math.ceil(t0 * fps - 1e-6)
    last = count if t1 == math.inf else min(count, math.ceil(t1 * fps - 1e-6))
    inside = list(range(first, last))
    if not inside:
        raise VideoError(f"{label}: start_time {t0:g} s is past the end of the video ({count / fps:g} s)")
    picks = [inside[i] for i in select_indices(len(inside), num_frames, stride)]
    with _open(path, label) as container:
        stream = _video_stream(container, label)
        stream.thread_type = "AUTO"
        size = fit_max_side(stream.codec_context.width, stream.codec_context.height, max_side)
        _check_output_size(label, len(picks), *size, max_side, max_output_pixels)
        wanted = set(picks)
        arrays = []
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                arrays.append(_frame_rgb(frame, size))
            if i >= picks[-1]:
                break
    times = torch.tensor(picks[:len(arrays)], dtype=torch.float64) / fps
    return Clip(torch.from_numpy(np.stack(arrays)), times, fps)


def sample_frames(path, num_frames=16, start_time=0.0, duration=0.0, stride=0, max_side=0,
                  max_scan_frames=MAX_SCAN_FRAMES, max_frame_pixels=MAX_FRAME_PIXELS,
                  max_output_pixels=MAX_OUTPUT_PIXELS, trim=None, label=None):
    """Decode the selected frames of a video file (or file object) in temporal order.

    Returns Clip(frames uint8 [T, H, W, 3] RGB, times float64 [T] seconds from the first frame, fps).
    Rotation metadata is applied (frames come out as a player shows them). T <= num_frames.
    trim: (start, duration) in seconds of the stream's own timestamps, duration 0 = to the end, as ComfyUI's
    VideoFromFile trims (frames with int(start / time_base) <= pts < int((start + duration) / time_base)). The
    clip is then that part of the file: start_time/duration and the times count from its first frame.
    """
    label = label or (os.path.basename(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else "video")
    with decode_errors(label):
        return _sample_frames(path, num_frames, start_time, duration, stride, max_side, max_scan_frames,
                              max_frame_pixels, max_output_pixels, trim, label)


def _sample_frames(path, num_frames, start_time, duration, stride, max_side, max_scan_frames, max_frame_pixels,
                   max_output_pixels, trim, label):
    t0, t1 = _window(float(start_time), float(duration))
    select_indices(1, num_frames, stride)  # argument checks
    with _open(path, label) as container:
        stream = _video_stream(container, label)
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_frame_pixels:
            raise VideoError(f"{label}: frames are {width}x{height}, more than the {max_frame_pixels} pixels "
                             "this loader decodes; downscale the file first")
        if width <= 0 or height <= 0:
            raise VideoError(f"{label}: the video stream has no frame size; the file may be damaged")
        tb = stream.time_base
        origin = stream.start_time if stream.start_time is not None else 0
        trimmed = trim is not None and (trim[0] or trim[1])
        hi = math.inf
        if trimmed:
            trim_start, trim_duration = float(trim[0]), float(trim[1])
            lo = int(trim_start / tb)  # ComfyUI's own rounding, so that the same frames are in the trim
            hi = int((trim_start + trim_duration) / tb) if trim_duration else math.inf
            first = _first_pts(container, stream, lo, hi, max_scan_frames, label)
            if first is None:
                raise VideoError(f"{label}: no frame in the video's trim window ({trim_start:g} s + "
                                 f"{trim_duration:g} s); trim it to a part the video has")
        else:
            first = origin
        start_pts = first + math.floor(t0 / tb + 1e-6) if t0 > 0 else first
        end_pts = min(hi, math.inf if t1 == math.inf else first + math.ceil(t1 / tb - 1e-6))
        listed = _scan_pts(container, stream, start_pts, end_pts, origin, max_scan_frames, label,
                           must_seek=bool(trimmed))
        origin = first
    if listed is None:
        return _sample_without_pts(path, label, num_frames, stride, t0, t1, max_side, max_scan_frames,
                                   max_output_pixels)
    if not listed:
        raise VideoError(f"{label}: no frame in the window {t0:g}..{t1:g} s; lower start_time (the video "
                         "may be shorter than that)")
    picks = [listed[i] for i in select_indices(len(listed), num_frames, stride)]
    size = fit_max_side(width, height, max_side)
    _check_output_size(label, len(picks), *size, max_side, max_output_pixels)

    with _open(path, label) as container:
        stream = _video_stream(container, label)
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        decoded = _decode_picks(container, stream, picks, size, max_scan_frames, label)
    if not decoded:
        raise VideoError(f"{label}: no frame could be decoded in the window; the file may be damaged")
    if len(decoded) < len(picks):
        log.warning("%s: %d of %d selected frames could be decoded (damaged tail?)", label, len(decoded),
                    len(picks))
    shape = decoded[0][1].shape
    arrays = [a if a.shape == shape else _resize_array(a, shape) for _, a in decoded]  # resolution changes
    times = torch.tensor([float((p - origin) * tb) for p, _ in decoded], dtype=torch.float64)
    if rate:
        fps = float(rate)
    elif len(listed) > 1:
        fps = float((len(listed) - 1) / ((listed[-1] - listed[0]) * tb))
    else:
        fps = 0.0
    return Clip(torch.from_numpy(np.stack(arrays)), times, fps)


def _resize_array(array, shape):
    t = resize_frames(torch.from_numpy(array)[None], shape[1], shape[0])
    return t[0].numpy()
