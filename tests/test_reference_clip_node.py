"""WanIDReferenceClipLoader inside a real ComfyUI (in-process, CPU): schema, the three sources, path confinement,
re-queue fingerprint, and ComfyUI's own prompt validation of the node's inputs."""
import asyncio
import importlib
import io
import os
import shutil

import pytest
import torch

import face_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def carphone():
    return face_files.carphone_path()


@pytest.fixture
def node_module(comfy_pack):
    return importlib.import_module(f"{comfy_pack.__name__}.nodes.reference_clip")


@pytest.fixture
def input_dir(tmp_path, monkeypatch, carphone, comfy_pack):
    import folder_paths

    inputs = tmp_path / "input"
    inputs.mkdir()
    shutil.copy(carphone, inputs / "carphone.mp4")
    (tmp_path / "outside.mp4").write_bytes((inputs / "carphone.mp4").read_bytes())
    monkeypatch.setattr(folder_paths, "input_directory", str(inputs))
    return inputs


def _run(node_cls, **kwargs):
    out = node_cls.execute(**kwargs)
    return out.result if hasattr(out, "result") else out


def test_schema_is_the_public_contract(node_module, input_dir, comfy_pack):
    node = node_module.WanIDReferenceClipLoader
    schema = node.GET_SCHEMA()
    assert schema.node_id == "WanIDReferenceClipLoader"
    assert schema.display_name == "Reference Clip Loader" and schema.category == "WanIdentity"
    inputs = {i.id: i for i in schema.inputs}
    assert list(inputs) == ["video", "num_frames", "start_time", "duration", "stride", "max_side", "video_in",
                            "images", "fps"]
    assert inputs["video"].options == ["carphone.mp4"]
    assert inputs["video"].upload.value == "video_upload"
    assert (inputs["num_frames"].default, inputs["num_frames"].min, inputs["num_frames"].max) == (16, 1, 256)
    assert (inputs["start_time"].default, inputs["duration"].default) == (0.0, 0.0)
    assert (inputs["stride"].default, inputs["max_side"].default, inputs["fps"].default) == (0, 1024, 25.0)
    assert all(inputs[k].optional for k in ("video_in", "images", "fps"))
    assert [o.io_type for o in schema.outputs] == ["IMAGE", "FRAME_TIMES", "FLOAT"]
    assert [o.display_name or o.id for o in schema.outputs] == ["frames", "times", "fps"]
    assert node in comfy_pack.nodes.all_nodes()


def test_file_source(node_module, input_dir):
    from wanid.video import sample_frames

    frames, times, fps = _run(node_module.WanIDReferenceClipLoader, video="carphone.mp4", num_frames=16,
                              start_time=0.0, duration=0.0, stride=0, max_side=1024)
    ref = sample_frames(str(input_dir / "carphone.mp4"), num_frames=16)
    assert frames.dtype == torch.float32 and frames.shape == (16, 144, 176, 3)
    assert torch.equal(frames, ref.frames.float() / 255)
    assert times.dtype == torch.float32 and times.ndim == 1
    assert torch.equal(times, ref.times.float()) and torch.all(times[1:] > times[:-1])
    assert fps == pytest.approx(29.97, abs=1e-3)

    frames, times, _ = _run(node_module.WanIDReferenceClipLoader, video="carphone.mp4", num_frames=4,
                            start_time=1.0, duration=1.0, stride=0, max_side=88)
    assert frames.shape == (4, 72, 88, 3)
    assert float(times[0]) >= 1.0 and float(times[-1]) < 2.0


def test_image_batch_wins_over_everything(node_module, input_dir):
    images = torch.arange(40, dtype=torch.float32).view(40, 1, 1, 1).expand(40, 6, 10, 3) / 100
    frames, times, fps = _run(node_module.WanIDReferenceClipLoader, video="carphone.mp4", num_frames=5,
                              start_time=0.0, duration=0.0, stride=0, max_side=1024, images=images, fps=8.0)
    assert frames.shape == (5, 6, 10, 3)
    picked = frames[:, 0, 0, 0].mul(100).round().long().tolist()
    assert picked == [0, 10, 20, 29, 39]  # rint(linspace(0, 39, 5)) = 0, 9.75, 19.5, 29.25, 39
    assert torch.allclose(times, torch.tensor(picked, dtype=torch.float32) / 8)
    assert fps == 8.0


def _has_trim():
    """ComfyUI 0.33's VideoFromFile carries a trim window (LoadVideo, Video Slice); 0.3.64's is just a file."""
    import inspect
    from comfy_api.latest import InputImpl
    return "start_time" in inspect.signature(InputImpl.VideoFromFile).parameters


def _no_whole_decode(monkeypatch):
    """Make ComfyUI's whole-clip decode of a VideoFromFile fail, so a test sees that the node streams."""
    from comfy_api.latest import InputImpl

    def refuse(self):
        raise AssertionError("VideoFromFile.get_components() decodes the whole clip")
    monkeypatch.setattr(InputImpl.VideoFromFile, "get_components", refuse)


def _same_frames(picked, all_frames, expected):
    """Which of all_frames each picked frame is (nearest by mean abs difference) equals expected."""
    d = (picked[:, None] - all_frames[None]).abs().mean(dim=(2, 3, 4))
    assert d.argmin(dim=1).tolist() == list(expected)


def test_video_input_file_and_components(node_module, input_dir, monkeypatch):
    from comfy_api.latest import InputImpl, Types
    from fractions import Fraction

    loader = node_module.WanIDReferenceClipLoader
    from_file = InputImpl.VideoFromFile(str(input_dir / "carphone.mp4"))  # what LoadVideo gives
    comps = from_file.get_components()  # decoded by ComfyUI itself: an independent decode path
    direct, dtimes, dfps = _run(loader, video="carphone.mp4", num_frames=6, start_time=0.0, duration=0.0,
                                stride=0, max_side=0)
    with monkeypatch.context() as m:
        _no_whole_decode(m)
        frames, times, fps = _run(loader, video="", num_frames=6, start_time=0.0, duration=0.0, stride=0,
                                  max_side=0, video_in=from_file)
        data = io.BytesIO((input_dir / "carphone.mp4").read_bytes())
        frames_b, times_b, _ = _run(loader, video="", num_frames=6, start_time=0.0, duration=0.0, stride=0,
                                    max_side=0, video_in=InputImpl.VideoFromFile(data))
    assert torch.equal(frames, direct) and torch.equal(times, dtimes) and fps == dfps  # exactly the file path
    assert torch.equal(frames_b, direct) and torch.equal(times_b, dtimes)

    parts = Types.VideoComponents(images=comps.images, audio=None, frame_rate=Fraction(30000, 1001))
    frames2, times2, fps2 = _run(loader, video="", num_frames=6, start_time=0.0, duration=0.0, stride=0,
                                 max_side=0, video_in=InputImpl.VideoFromComponents(parts))
    assert frames2.shape == frames.shape
    torch.testing.assert_close(times2, times, atol=1e-5, rtol=0)
    assert fps2 == pytest.approx(fps)
    _same_frames(frames, comps.images, [0, 24, 48, 71, 95, 119])
    # 0.3.64 decodes rgb24 like the pack: the same values. 0.33 converts to float RGB (gbrpf32le, its own chroma
    # upsampling): about 1 level apart on average, up to ~0.16 at sharp colour edges; the frames are the same.
    diff = (frames2 - frames).abs()
    assert diff.mean() < 0.01
    if not _has_trim():
        assert diff.max() < 1e-6


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytesio"])
def test_trimmed_video_streams_its_trim(node_module, input_dir, monkeypatch, as_bytes):
    """A trimmed VIDEO (0.33 Video Slice): the trim's frames, timed from its first frame, without decoding it all."""
    if not _has_trim():
        pytest.skip("this ComfyUI's VideoFromFile has no trim window (added after 0.3.64)")
    from comfy_api.latest import InputImpl

    loader = node_module.WanIDReferenceClipLoader
    path = input_dir / "carphone.mp4"
    source = io.BytesIO(path.read_bytes()) if as_bytes else str(path)
    trimmed = InputImpl.VideoFromFile(source).as_trimmed(1.0, 2.0)  # what the Video Slice node does
    assert trimmed.get_active_trim_window() == (1.0, 2.0)
    comps = trimmed.get_components()
    n = comps.images.shape[0]
    assert n == 60

    for window, expected in (((0.0, 0.0), [0, 12, 24, 35, 47, 59]), ((0.5, 1.0), [15, 21, 27, 32, 38, 44])):
        ref = _run(loader, video="", num_frames=6, start_time=window[0], duration=window[1], stride=0,
                   max_side=0, images=comps.images, fps=float(comps.frame_rate))
        with monkeypatch.context() as m:
            _no_whole_decode(m)
            frames, times, fps = _run(loader, video="", num_frames=6, start_time=window[0], duration=window[1],
                                      stride=0, max_side=0, video_in=trimmed)
        _same_frames(frames, comps.images, expected)
        torch.testing.assert_close(times, ref[1], atol=1e-5, rtol=0)  # from the trim's first frame
        assert (frames - ref[0]).abs().mean() < 0.01  # rgb24 vs ComfyUI's float RGB, see above
        assert fps == pytest.approx(ref[2])
        # the file path with the trim as its window: bit-equal frames, times shifted by the trim's first frame
        direct, dtimes, _ = _run(loader, video="carphone.mp4", num_frames=6, start_time=1.0 + window[0],
                                 duration=window[1] or 2.0 - window[0], stride=0, max_side=0)
        first = _run(loader, video="carphone.mp4", num_frames=1, start_time=1.0, duration=0.0, stride=0,
                     max_side=0)[1][0]
        assert torch.equal(frames, direct)
        torch.testing.assert_close(times, dtimes - first, atol=1e-6, rtol=0)


def _long_clip(path, seconds=60, fps=30, gop=30):
    import av
    import numpy as np
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = gop
        for i in range(seconds * fps):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 251, np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return seconds * fps


def test_long_video_input_is_not_decoded_whole(node_module, input_dir, monkeypatch):
    import av
    from comfy_api.latest import InputImpl

    total = _long_clip(input_dir / "long.mp4")
    decoded = [0]
    real_open = av.open

    class Counting:  # counts the frames the node decodes
        def __init__(self, container):
            self._c = container

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._c.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._c, name)

        def decode(self, *args, **kwargs):
            for frame in self._c.decode(*args, **kwargs):
                decoded[0] += 1
                yield frame

    monkeypatch.setattr(av, "open", lambda *a, **k: Counting(real_open(*a, **k)))
    _no_whole_decode(monkeypatch)
    videos = [InputImpl.VideoFromFile(str(input_dir / "long.mp4"))]
    if _has_trim():
        videos.append(videos[0].as_trimmed(10.0, 40.0))
    for video in videos:
        decoded[0] = 0
        frames, times, _ = _run(node_module.WanIDReferenceClipLoader, video="", num_frames=8, start_time=0.0,
                                duration=0.0, stride=0, max_side=0, video_in=video)
        assert frames.shape[0] == 8 and float(times[0]) == 0.0
        assert 0 < decoded[0] < total / 4, decoded[0]  # about num_frames GOPs (8 x 30), not the 1800 frames


def test_paths_outside_the_input_folder_are_refused(node_module, input_dir, tmp_path):
    VideoError = node_module.VideoError  # the pack's copy of wanid.video (imported as wanid_pack.wanid.video)
    loader = node_module.WanIDReferenceClipLoader
    os.symlink(tmp_path / "outside.mp4", input_dir / "link.mp4")
    for name in ("../outside.mp4", str(tmp_path / "outside.mp4"), "link.mp4", "sub/../../outside.mp4"):
        msg = loader.validate_inputs(video=name)
        assert isinstance(msg, str) and "outside ComfyUI's input folder" in msg, name
        with pytest.raises(VideoError, match="outside ComfyUI's input folder"):
            _run(loader, video=name, num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)
    assert loader.validate_inputs(video="carphone.mp4") is True
    assert loader.validate_inputs(video="carphone.mp4 [input]") is True
    with pytest.raises(VideoError, match="not in ComfyUI's input folder"):
        _run(loader, video="gone.mp4", num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)
    with pytest.raises(VideoError, match="no file chosen"):
        _run(loader, video="", num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)


def test_refusal_when_folder_paths_itself_raises(node_module, input_dir, monkeypatch):
    """ComfyUI 0.33's get_annotated_filepath raises ValueError('Invalid file path') for '..': the pack's own
    message comes back instead, and the fingerprint still does not raise (simulated here on any version)."""
    import folder_paths

    def refuse(name, default_dir=None):
        raise ValueError(f"Invalid file path: {name!r}")
    monkeypatch.setattr(folder_paths, "get_annotated_filepath", refuse)
    loader = node_module.WanIDReferenceClipLoader
    msg = loader.validate_inputs(video="../outside.mp4")
    assert isinstance(msg, str) and msg.startswith("video: '../outside.mp4' is outside ComfyUI's input folder")
    assert f"put the file in {os.path.realpath(input_dir)}" in msg and "Invalid file path" not in msg
    with pytest.raises(node_module.VideoError, match="outside ComfyUI's input folder"):
        _run(loader, video="../outside.mp4", num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)
    assert loader.fingerprint_inputs(video="../outside.mp4") == "../outside.mp4:missing"

    def broken(name, default_dir=None):
        raise RuntimeError("something else")
    monkeypatch.setattr(folder_paths, "get_annotated_filepath", broken)
    assert loader.fingerprint_inputs(video="carphone.mp4") == "carphone.mp4:missing"


def test_fingerprint_follows_the_file(node_module, input_dir):
    loader = node_module.WanIDReferenceClipLoader
    first = loader.fingerprint_inputs(video="carphone.mp4", num_frames=16)
    assert first == loader.fingerprint_inputs(video="carphone.mp4", num_frames=16)
    st = os.stat(input_dir / "carphone.mp4")
    os.utime(input_dir / "carphone.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert loader.fingerprint_inputs(video="carphone.mp4", num_frames=16) != first
    assert loader.fingerprint_inputs(video="../outside.mp4") == "../outside.mp4:missing"


def test_comfyui_prompt_validation(node_module, input_dir, monkeypatch):
    """ComfyUI's own validator: an uploaded file not yet in the combo list passes, '../' is refused by name."""
    import execution
    import nodes

    monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, "WanIDReferenceClipLoader",
                        node_module.WanIDReferenceClipLoader)
    shutil.copy(input_dir / "carphone.mp4", input_dir / "uploaded_later.mp4")

    def validate(name, num_frames=16):
        prompt = {"1": {"class_type": "WanIDReferenceClipLoader",
                        "inputs": {"video": name, "num_frames": num_frames, "start_time": 0.0, "duration": 0.0,
                                   "stride": 0, "max_side": 1024}}}
        return asyncio.run(execution.validate_inputs("p", prompt, "1", {}))

    ok, errors, _ = validate("uploaded_later.mp4")
    assert ok is True and errors == []
    ok, errors, _ = validate("../outside.mp4")
    assert ok is False and "outside ComfyUI's input folder" in errors[0]["details"]
    ok, errors, _ = validate("carphone.mp4", num_frames=0)  # min/max still checked by ComfyUI
    assert ok is False and errors[0]["type"] == "value_smaller_than_min"
