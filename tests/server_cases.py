"""Bad-input cases through the real server (no tests here; tests/test_bad_inputs*.py use it).

    post_raw(server, prompt) / outcome(server, prompt)   POST a prompt as a script would (NaN allowed in the JSON);
                                                         ('refused' | 'failed' | 'ok', exception type, message, entry)
    assert_worded(kind, etype, message, pattern)         a worded error under a clean exception type
    user_files(server) / still_serves(server)            what a case must leave alone, and the server serving after it
    tensor_node, save_image, load_image, face_node, face_prompt     graph pieces (test support nodes, Face Crop)
    EvilPickle, MARKER, torch_bytes                      a torch file whose pickle runs code when loaded
"""
import hashlib
import io
import json
import os
import re
import uuid
from pathlib import Path

import torch

from comfy_server import wan_t2v_prompt

RAW_TYPES = ("IndexError", "ZeroDivisionError", "KeyError", "TypeError", "AttributeError", "RuntimeError",
             "AssertionError", "UnpicklingError")
MARKER = "wanid_pickle_ran"  # /tmp/<MARKER> appears if an EvilPickle was ever unpickled


class EvilPickle:
    """A pickle that runs code when loaded (what weights_only refuses)."""

    def __reduce__(self):
        return os.system, (f"touch /tmp/{MARKER}",)


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def post_raw(server, prompt, client_id=None):
    """POST /prompt like the harness, but JSON with NaN/Infinity allowed (as a script sending float('nan') does;
    requests' json= refuses them)."""
    import requests
    body = json.dumps({"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}, allow_nan=True)
    r = requests.post(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"raw": r.text}


def outcome(server, prompt):
    """('refused' | 'failed' | 'ok', exception type, message, history entry)."""
    status, data = post_raw(server, prompt)
    if status != 200 or "prompt_id" not in data:
        errs = [f"{e.get('message')}: {e.get('details')}" for ne in (data.get("node_errors") or {}).values()
                for e in ne.get("errors", [])]
        return "refused", "", " | ".join([str((data.get("error") or {}).get("message", ""))] + errs), None
    entry = server.wait(data["prompt_id"])
    if entry["status"].get("status_str") == "success":
        return "ok", "", "", entry
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    err = errors[0] if errors else {}
    return "failed", err.get("exception_type", ""), err.get("exception_message", ""), entry


def user_files(server):
    """path -> sha1 of every file in input/, output/ and models/ (what the user made or downloaded)."""
    out = {}
    for root in (server.input_dir, server.output_dir, server.models_dir):
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                if p.is_symlink():
                    continue
                out[p] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def still_serves(server):
    """A fresh good prompt (a seed no other case of the session used) samples to a finite latent."""
    server.case_seed = getattr(server, "case_seed", 1000) + 1
    entry = server.queue(wan_t2v_prompt(seed=server.case_seed, filename_prefix="wanid_test/bad_follow_up"))
    lat = server.load_tensors(server.output_files(entry)[0])["latent_tensor"]
    assert torch.isfinite(lat).all()


def assert_worded(kind, etype, message, pattern):
    assert kind in ("refused", "failed"), "a bad input ran as if it were fine"
    assert re.search(pattern, message, re.S), f"{etype}: {message}"
    assert "/" not in etype and not etype.startswith(("av.", "cv2")), f"raw or path-like exception type {etype!r}"
    assert etype.split(".")[-1] not in RAW_TYPES, f"raw {etype}: {message}"
    assert "Traceback" not in message


def tensor_node(shape, fill="randn", dtype="float32", seed=0):
    return {"class_type": "WanIDTestTensor", "inputs": {"shape": shape, "fill": fill, "dtype": dtype, "seed": seed}}


def save_image(src):
    return {"class_type": "WanIDTestSaveTensor", "inputs": {"filename_prefix": "wanid_test/bad", "image": src}}


def load_image(name):
    return lambda s: {"class_type": "LoadImage", "inputs": {"image": s.names[name]}}


def face_node(images, detector="antelopev2", **kw):
    inputs = {"images": images, "detector": detector, "face_choice": "largest", "face_index": 0,
              "on_no_face": "error", "label_set": "official", "parser_model": "none (fallback)", "provider": "CPU"}
    inputs.update(kw)
    return {"class_type": "WanIDFaceCropParse", "inputs": inputs}


def face_prompt(image_node, **kw):
    return lambda s: {"img": image_node(s) if callable(image_node) else image_node,
                      "face": face_node(["img", 0], **kw), "save": save_image(["face", 0])}
