"""A real ComfyUI server for integration tests, with this pack installed and a tiny Wan 2.1 model.

Usage in a test module:

    import pytest
    from comfy_server import comfy_server, wan_t2v_prompt  # noqa: F401  (comfy_server is a fixture)

    @pytest.mark.integration
    def test_something(comfy_server):
        prompt = wan_t2v_prompt(seed=1)                # UNETLoader -> KSampler -> SaveLatent, see below
        entry = comfy_server.queue(prompt)             # waits until it ran; raises if execution failed
        latent = comfy_server.output_latent(entry)     # the tensor SaveLatent wrote

The `comfy_server` fixture is session-wide: every module that imports it shares ONE server (started on first
use, stopped at the end of the session) whose --base-directory is a pytest temp dir holding:
    custom_nodes/ComfyUI-WanIdentity   -> symlink to this repo (the pack as users install it)
    custom_nodes/wanid_test_support    -> symlink to tests/support_nodes (test-only nodes, see that file)
    models/diffusion_models/<TINY_WAN> -> tiny Wan 2.1 T2V, random weights (tests/tiny_wan.py)
    input/, output/, temp/, user/      -> ComfyUI's own folders
    server.log                         -> the server's stdout+stderr (kept after the run; shown on failures)
Without ComfyUI (wanid_testing.find_comfyui() is None) the fixture skips with wanid_testing.NO_COMFY_REASON.
The server runs with ComfyUI's default (classic) node cache: a prompt identical to an earlier one is not
re-executed. Call reset_cache() between two runs that must both really execute.

ComfyServer API (all blocking; `entry` is the /history/{prompt_id} entry: {"prompt", "outputs", "status"}):
    queue(prompt, timeout=300, check=True) -> entry
        POST /prompt, wait on the websocket until it finished. check=True raises PromptError when the prompt
        is refused (node_errors) or its execution failed (with the server's error message and log tail).
    post_prompt_raw(prompt) -> (http_status, json)   no waiting, no checks (for tests expecting node_errors)
    wait(prompt_id, timeout=300) -> entry            wait for a prompt posted with post_prompt_raw
    object_info(node_id=None) -> dict                all nodes, or one node's schema
    upload(path, subfolder="", name=None) -> str     POST /upload/image; the name LoadImage & co. take
    output_files(entry, kind=None) -> [Path]         files the output nodes reported ("images", "latents",
                                                     "tensors", ...), in node order; kind filters by key
    load_tensors(path) -> {name: tensor}             read a .safetensors / .latent output
    output_latent(entry) -> tensor                   the latent the prompt's one SaveLatent wrote
    output_latent_file(entry) -> Path                its file (an error unless exactly one latent was saved)
    reset_cache()                                    POST /free (unload models, drop node cache), then a
                                                     no-op prompt so the reset has happened on return
    add_model(folder, name, src) -> Path             put a file (Path, bytes or {key: tensor}) in models/<folder>
    log_text(), log_tail(lines=80), pack_problems()  the server log; lines reporting that a custom node pack
                                                     failed to import (or disabled node families)
    base, input_dir, output_dir, models_dir, log_path, url, port
Graph helpers: wan_t2v_prompt(...) builds the standard small Wan text-to-video graph as a plain dict with
readable node ids ("unet", "pos", "neg", "latent", "sampler", "save"), to extend or rewire in tests.
Outside pytest: `with start_comfy_server() as server: ...` (same ComfyServer).
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import wanid_testing
import tiny_wan

TESTS = Path(__file__).resolve().parent
PACK_NAME = "ComfyUI-WanIdentity"
SUPPORT_NAME = "wanid_test_support"
TINY_WAN = "wanid_tiny_wan21_t2v.safetensors"
START_TIMEOUT = 90.0


class PromptError(RuntimeError):
    """A prompt was refused by validation or failed while executing."""

    def __init__(self, message, response=None, entry=None):
        super().__init__(message)
        self.response = response  # the /prompt JSON answer (node_errors) when refused
        self.entry = entry  # the history entry when execution failed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link(src, dst):
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError:  # no symlinks (some Windows setups): a copy works as well
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", ".git", "*.pyc"))


class ComfyServer:
    def __init__(self, comfyui, base, port=None, extra_args=(), pack=wanid_testing.REPO):
        self.comfyui = Path(comfyui)
        self.base = Path(base)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.pack = Path(pack)
        self.input_dir = self.base / "input"
        self.output_dir = self.base / "output"
        self.models_dir = self.base / "models"
        self.log_path = self.base / "server.log"
        self.proc = None
        self._log = None

    # ---- lifecycle
    def prepare(self):
        """Lay out the base directory (idempotent)."""
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/diffusion_models"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for name, src in ((PACK_NAME, self.pack), (SUPPORT_NAME, TESTS / "support_nodes")):
            dst = self.base / "custom_nodes" / name
            if not dst.exists():
                _link(src, dst)
        wan = self.models_dir / "diffusion_models" / TINY_WAN
        if not wan.exists():
            tiny_wan.write_tiny_wan(wan)

    def start(self, timeout=START_TIMEOUT):
        import requests

        self.prepare()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base),
               # keep ComfyUI's database out of its checkout (its default path ignores --base-directory)
               "--database-url", "sqlite:///" + (self.base / "user" / "comfyui.db").as_posix(),
               *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(cmd, cwd=self.comfyui, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._fail(f"ComfyUI exited with code {self.proc.returncode} while starting")
            try:
                if requests.get(self.url + "/object_info/UNETLoader", timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                self._fail(f"ComfyUI did not answer /object_info within {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self):
        """Terminate the server process (then kill it if it lingers). Only our own pid is signalled."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---- log
    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines=80):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _fail(self, message):
        raise RuntimeError(f"{message}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def pack_problems(self, name=PACK_NAME):
        """Log lines saying custom node pack `name` failed to load, plus the pack's own '[WanIdentity]' errors
        (a node family disabled for a missing dependency)."""
        text = self.log_text()
        # Load problems are printed while the server starts; later tracebacks are prompts that failed on purpose.
        lines = text.split("Starting server", 1)[0].splitlines()
        bad = ("Cannot import", "IMPORT FAILED", "Error while calling comfy_entrypoint", "Skip ",
               "did not return")
        found = [ln for ln in lines if name in ln and any(b in ln for b in bad)]
        found += [ln for ln in lines if "[WanIdentity]" in ln and name == PACK_NAME]
        # a traceback that runs through the pack's files (import errors print them before "Cannot import")
        text = "\n".join(lines)
        for block in text.split("Traceback (most recent call last):")[1:]:
            if f"custom_nodes/{name}/" in block or f"custom_nodes\\{name}\\" in block:
                found.append("Traceback (most recent call last):" + block[:2000])
        return found

    # ---- HTTP API
    def _get(self, path, **kw):
        import requests

        r = requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)
        r.raise_for_status()
        return r.json()

    def object_info(self, node_id=None):
        if node_id is None:
            return self._get("/object_info")
        return self._get(f"/object_info/{node_id}").get(node_id)

    def history(self, prompt_id):
        return self._get(f"/history/{prompt_id}").get(prompt_id)

    def post_prompt_raw(self, prompt, client_id=None):
        import requests

        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        r = requests.post(self.url + "/prompt", json=body, timeout=30)
        try:
            data = r.json()
        except ValueError:
            data = {"raw": r.text}
        return r.status_code, data

    def queue(self, prompt, timeout=300, check=True):
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=30)
        try:
            status, data = self.post_prompt_raw(prompt, client_id)
            if status != 200 or "prompt_id" not in data:
                raise PromptError(f"prompt refused (HTTP {status}): {json.dumps(data, indent=1)[:4000]}",
                                  response=data)
            entry = self._wait_ws(ws, data["prompt_id"], timeout)
        finally:
            ws.close()
        if check and entry["status"].get("status_str") != "success":
            errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
            detail = json.dumps(errors, indent=1)[:4000] if errors else json.dumps(entry["status"])[:2000]
            raise PromptError(f"prompt failed: {detail}\n--- server log (tail) ---\n{self.log_tail(40)}",
                              entry=entry)
        return entry

    def _wait_ws(self, ws, prompt_id, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"prompt {prompt_id} did not finish within {timeout} s")
            ws.settimeout(left)
            try:
                msg = ws.recv()
            except websocket_timeout():
                continue
            except (OSError, websocket_error()) as e:
                self._fail(f"lost the websocket while prompt {prompt_id} ran ({e!r}); did ComfyUI crash?")
            if not isinstance(msg, str):
                continue  # binary previews
            msg = json.loads(msg)
            data = msg.get("data", {})
            if msg.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return self.wait(prompt_id, timeout=max(5.0, deadline - time.monotonic()))

    def wait(self, prompt_id, timeout=300):
        """Poll /history until the prompt has an entry (use after post_prompt_raw)."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                self._fail("ComfyUI exited while a prompt was running")
            if time.monotonic() > deadline:
                self._fail(f"prompt {prompt_id} did not finish within {timeout} s")
            time.sleep(0.1)

    def upload(self, path, subfolder="", name=None):
        import requests

        path = Path(path)
        with open(path, "rb") as f:
            files = {"image": (name or path.name, f)}
            r = requests.post(self.url + "/upload/image", files=files,
                              data={"subfolder": subfolder, "overwrite": "true", "type": "input"}, timeout=60)
        r.raise_for_status()
        data = r.json()
        return f"{data['subfolder']}/{data['name']}" if data.get("subfolder") else data["name"]

    def output_files(self, entry, kind=None):
        roots = {"output": self.output_dir, "temp": self.base / "temp", "input": self.input_dir}
        found = []
        for node_out in entry.get("outputs", {}).values():
            for key, items in node_out.items():
                if kind is not None and key != kind:
                    continue
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        root = roots.get(item.get("type", "output"), self.output_dir)
                        found.append(root / item.get("subfolder", "") / item["filename"])
        return found

    @staticmethod
    def load_tensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))

    def output_latent_file(self, entry):
        # by the output's key, not its position: a prompt may save other files (images, tensors) too
        files = self.output_files(entry, "latents")
        assert len(files) == 1, f"expected the prompt to save one latent (SaveLatent), got {files}: {entry['outputs']}"
        return files[0]

    def output_latent(self, entry):
        return self.load_tensors(self.output_latent_file(entry))["latent_tensor"]

    def reset_cache(self, timeout=60):
        import requests

        requests.post(self.url + "/free", json={"unload_models": True, "free_memory": True},
                      timeout=30).raise_for_status()
        # The worker applies /free flags after its current item, before taking the next: once this no-op
        # prompt has finished, the reset has happened before any later prompt runs.
        self.queue({"ping": {"class_type": "WanIDTestPing", "inputs": {}}}, timeout=timeout)

    def add_model(self, folder, name, src):
        dst = self.models_dir / folder / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, dict):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in src.items()}, str(dst))
        elif isinstance(src, (bytes, bytearray)):
            dst.write_bytes(src)
        else:
            shutil.copyfile(src, dst)
        return dst


def websocket_timeout():
    import websocket

    return websocket.WebSocketTimeoutException


def websocket_error():
    import websocket

    return websocket.WebSocketException


def wan_t2v_prompt(seed=0, steps=2, cfg=5.0, width=64, height=64, length=5, pos_seed=1, neg_seed=2,
                   tokens=16, unet_name=TINY_WAN, weight_dtype="default", sampler_name="euler",
                   scheduler="simple", filename_prefix="wanid_test/latent"):
    """The standard small Wan 2.1 text-to-video graph (API format) on the tiny model:
    unet (UNETLoader) -> sampler (KSampler) <- pos/neg (WanIDTestWanConditioning), latent
    (EmptyHunyuanLatentVideo: [1, 16, (length-1)//4+1, height/8, width/8]); save (SaveLatent) writes a .latent
    file (safetensors, key "latent_tensor"). Rewire e.g. p["sampler"]["inputs"]["model"] = ["mypatch", 0]."""
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": weight_dtype}},
        "pos": {"class_type": "WanIDTestWanConditioning", "inputs": {"seed": pos_seed, "tokens": tokens}},
        "neg": {"class_type": "WanIDTestWanConditioning", "inputs": {"seed": neg_seed, "tokens": tokens}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": width, "height": height, "length": length, "batch_size": 1}},
        "sampler": {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
            "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0],
                                                        "filename_prefix": filename_prefix}},
    }


@contextlib.contextmanager
def start_comfy_server(base=None, keep=False, **kw):
    """Start a server (outside pytest too). base=None: a fresh temp dir, deleted afterwards unless keep=True
    or something failed (so its server.log can be read)."""
    comfyui = wanid_testing.find_comfyui()
    if comfyui is None:
        raise RuntimeError(wanid_testing.NO_COMFY_REASON)
    own = base is None
    base = Path(tempfile.mkdtemp(prefix="wanid-comfy-")) if own else Path(base)
    server = ComfyServer(comfyui, base, **kw)
    ok = False
    try:
        server.start()
        yield server
        ok = True
    finally:
        server.stop()
        if own and ok and not keep:
            shutil.rmtree(base, ignore_errors=True)


_shared = {}


def shared_server(config, tmp_path_factory):
    """The one server of this pytest session (started on first call, stopped when the session ends)."""
    if "server" not in _shared:
        if "error" in _shared:
            pytest.fail(_shared["error"])  # do not retry a start that already failed in this session
        comfyui = wanid_testing.find_comfyui()
        if comfyui is None:
            pytest.skip(wanid_testing.NO_COMFY_REASON)
        server = ComfyServer(comfyui, tmp_path_factory.mktemp("comfy_server"))
        try:
            server.start()
        except RuntimeError as e:
            _shared["error"] = str(e)
            raise
        config.add_cleanup(server.stop)
        _shared["server"] = server
    return _shared["server"]


@pytest.fixture(scope="session")
def comfy_server(request, tmp_path_factory):
    """A running ComfyUI with the pack, the test nodes and the tiny Wan model (see the module docstring)."""
    return shared_server(request.config, tmp_path_factory)
