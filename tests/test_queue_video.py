"""`python -m wanid queue --video FILE`: the video a workflow works on (VACE's pose video, face swap's target)
uploaded and set on the workflow's "Target video..." loader, never on the identity reference's; --reference never
lands on the target loader. Filling without a server, bad input (exit 2 with the reason), then the real command on
the tiny Stand-In + VACE variant against the real server."""
import json
import os

import pytest

from comfy_server import comfy_server  # noqa: F401  (fixture used by `server`)
from cli_runner import run_cli, write
from workflow_files import FOLDER, check_video, load, server, tiny_for, write_pose_video  # noqa: F401  (fixture)
from wanid.cli import workflow as wf

VACE = "standin_vace_pose_wan21_14b"


def target_of(api):
    (nid,) = [n for n in api if wf.is_target_video(api[n])]
    return nid


@pytest.fixture
def files(tmp_path):
    """A pose video and a photo; a dry run checks their type and presence and never reads them."""
    video, photo = tmp_path / "my_pose.mp4", tmp_path / "me.jpg"
    video.write_bytes(b"not really a video")
    photo.write_bytes(b"not really a photo")
    return video, photo


def test_video_goes_to_the_target_loader_and_the_photo_to_the_reference(files):
    video, photo = files
    r = run_cli(FOLDER / "api" / f"{VACE}.json", "--dry-run", "--video", video, "--reference", photo)
    assert r.returncode == 0, r.stderr
    api, original = json.loads(r.stdout), load(VACE)
    target = target_of(original)
    assert api[target]["class_type"] == "LoadVideo" and api[target]["inputs"]["file"] == "my_pose.mp4"
    assert f"video 'my_pose.mp4' -> node(s) {target}" in r.stderr
    clip = wf.nodes_of(api, "WanIDReferenceClipLoader")[0]
    (loader,) = set(api) - set(original)  # the photo's LoadImage, wired into the reference clip loader
    assert api[loader]["inputs"]["image"] == "me.jpg" and api[clip]["inputs"]["images"] == [loader, 0]
    changed = {nid for nid in original if api[nid] != original[nid]}
    assert changed == {target, clip}


def test_a_video_reference_never_lands_on_the_target_loader():
    api = load(VACE)
    target = target_of(api)
    assert wf.set_reference(api, "face.mp4", "video") == wf.nodes_of(api, "WanIDReferenceClipLoader")
    assert api[target]["inputs"]["file"] == load(VACE)[target]["inputs"]["file"]
    # a workflow whose only video loader is its target: the reference clip has nowhere to go
    only_target = {"1": {"class_type": "LoadVideo", "inputs": {"file": "x.mp4"}, "_meta": {"title": "Target video"}}}
    with pytest.raises(wf.WorkflowError, match="--reference: the workflow has no Reference Clip Loader"):
        wf.set_reference(only_target, "face.mp4", "video")
    assert wf.set_video(only_target, "t.mp4") == ["1"] and only_target["1"]["inputs"]["file"] == "t.mp4"


def test_a_target_reference_clip_loader_takes_the_video_too():
    api = {"1": {"class_type": "WanIDReferenceClipLoader", "inputs": {"video": "a.mp4"},
                 "_meta": {"title": "Target video (every frame)"}},
           "2": {"class_type": "WanIDReferenceClipLoader", "inputs": {"video": "b.mp4"}}}
    assert wf.set_video(api, "t.mp4") == ["1"] and wf.set_reference(api, "r.mp4", "video") == ["2"]
    assert api["1"]["inputs"]["video"] == "t.mp4" and api["2"]["inputs"]["video"] == "r.mp4"


@pytest.mark.parametrize("workflow, args, message", [
    (VACE, ["--video", "pose.png"], "--video pose.png: an image; give the target video"),
    (VACE, ["--video", "missing.mp4"], "--video missing.mp4: no such file"),
    (VACE, ["--video", "pose.xyz"], "--video pose.xyz: unknown file type"),
    ("standin_wan21_t2v_14b", ["--video", "pose.mp4"], "--video: the workflow has no target video loader"),
])
def test_bad_video_arguments_exit_2_with_a_reason(tmp_path, workflow, args, message):
    for name in ("pose.png", "pose.mp4", "pose.xyz"):
        (tmp_path / name).write_bytes(b"x")
    r = run_cli(FOLDER / "api" / f"{workflow}.json", "--dry-run", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


@pytest.mark.integration
def test_queue_uploads_the_pose_video_and_runs_the_vace_workflow(server, tmp_path):
    api = tiny_for(server, VACE)
    target = target_of(api)
    api[target]["inputs"]["file"] = "pose.mp4"  # the shipped placeholder: the CLI must replace it with the upload
    pose = write_pose_video(tmp_path / "wanid_cli_pose.mp4")
    out = tmp_path / "out"
    r = run_cli(write(tmp_path, "tiny_vace", api), "--server", server.url, "--video", pose, "--out", out)
    assert r.returncode == 0, r.stderr
    assert (server.input_dir / os.path.basename(pose)).exists()
    videos = [p for p in out.rglob("*") if p.suffix == ".mp4"]
    assert len(videos) == 1
    check_video(videos[0], frames=5, size=(32, 32))  # 6 frames of 38x36: cropped to 32x32, trimmed to 5


@pytest.mark.integration
def test_a_missing_pose_video_is_named_with_the_video_flag(server, tmp_path):
    api = tiny_for(server, VACE)
    api[target_of(api)]["inputs"]["file"] = "nowhere_pose.mp4"
    r = run_cli(write(tmp_path, "tiny_vace", api), "--server", server.url)
    assert r.returncode == 2 and "'nowhere_pose.mp4' is not on the server" in r.stderr, r.stderr
    assert "--video FILE" in r.stderr
