"""Run a workflow on a ComfyUI server without the browser.

    python -m wanid queue workflows/api/standin_wan21_t2v_14b.json --server http://127.0.0.1:8188 \\
        --reference clip.mp4 --prompt "a man rides a bicycle through a park" --set 12.steps=30 --seed 7

Steps: load the workflow (API format; a UI workflow is converted with the server's node schemas), upload the
reference (a video goes to every Reference Clip Loader, an image to LoadImage or, without one, into the clip
loaders' `images` input), write the prompt into the positive text encoder (the node titled "Positive...", else
the one feeding the samplers' positive input), apply --set and --seed, check the workflow against the server
(every --set input exists on its node; every input file and model file the workflow names is on the server or
being uploaded), queue it, show the server's progress, download what the output nodes saved into --out (the
current folder by default; a file already there is kept and the new one gets a free name, "-2", "-3"... added,
unless --force). On --timeout or Ctrl-C the prompt is cancelled on the server: removed from the queue while it
waits, interrupted while it runs (only this prompt: another one running is left alone).

Exit status: 0 done; 1 the run failed on the server (its error message is printed), the server could not be
reached, or --timeout passed (the prompt is cancelled); 2 bad arguments (a bad --server URL, a missing or
unreadable workflow, an unknown --set input, a file the server does not have), or the server refused the
workflow (its node_errors are printed; when only some outputs fail validation ComfyUI would run the rest: the
command cancels it unless --allow-partial); 130 interrupted with Ctrl-C (the prompt is cancelled).
Standard library only, plus websocket-client for live progress (without it the command polls and shows none).
"""
import argparse
import difflib
import http.client
import json
import mimetypes
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from . import workflow as wf

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2
MODEL_INPUTS = {"unet_name", "clip_name", "vae_name", "ckpt_name", "lora_name", "standin_name", "slot_id_name",
                "parser_model"}


EXIT_INTERRUPTED = 130
# Model inputs -> the folder under ComfyUI/models their files go in (for the message when one is missing).
MODEL_FOLDERS = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "vae_name": "vae",
                 "ckpt_name": "checkpoints", "lora_name": "loras", "standin_name": "stand_in",
                 "slot_id_name": "slot_id", "parser_model": "face_parsing"}
UPLOAD_KEYS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
# (node type, file input) -> inputs that, when connected, are used instead of the file (it is then not read)
SUPERSEDED_BY = {("WanIDReferenceClipLoader", "video"): ("images", "video_in")}


class QueueError(RuntimeError):
    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


class TimedOut(QueueError):
    """--timeout passed while waiting for the prompt."""


def server_url(server):
    """The base URL of `server` ('127.0.0.1:8188' gets http://); a QueueError (exit 2) when it is not one."""
    text = (server or "").strip()
    url = text if "://" in text or not text else "http://" + text
    url = url.rstrip("/")
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if (parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query
            or parts.fragment or any(c.isspace() or ord(c) < 32 for c in url)):
        raise QueueError(f"--server {server!r}: not a ComfyUI address; give the URL ComfyUI prints when it starts, "
                         "e.g. --server http://127.0.0.1:8188", code=EXIT_REFUSED)
    return url


# ---- HTTP

class Client:
    def __init__(self, server, timeout=60.0):
        self.url = server_url(server)
        self.timeout = timeout
        self._object_info = None

    def _open(self, req, timeout=None):
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError:
            raise
        except http.client.InvalidURL as e:
            raise QueueError(f"--server {self.url!r}: not a usable URL ({e}); e.g. --server http://127.0.0.1:8188",
                             code=EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise QueueError(f"cannot reach ComfyUI at {self.url} ({reason}); is it running? (--server URL)") from None

    def get_json(self, path, timeout=None):
        try:
            with self._open(urllib.request.Request(self.url + path), timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            raise QueueError(f"{self.url}{path} answered HTTP {e.code} {e.reason}; is {self.url} a ComfyUI server? "
                             "(--server URL)") from None
        except ValueError:
            raise QueueError(f"{self.url}{path} did not answer JSON; is {self.url} a ComfyUI server? "
                             "(--server URL)") from None

    def object_info(self):
        if self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def has_input_file(self, value):
        """Whether the server's input folder has `value` ('x.mp4', 'sub/x.mp4', 'x.png [output]'), by a HEAD
        /view (nothing is downloaded)."""
        name, kind = value, "input"
        for k in ("input", "output", "temp"):
            if value.endswith(f" [{k}]"):
                name, kind = value[: -len(k) - 3], k
        subfolder, _, filename = name.rpartition("/")
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": kind})
        try:
            with self._open(urllib.request.Request(f"{self.url}/view?{query}", method="HEAD")) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return False

    def post_json(self, path, body):
        """(HTTP status, parsed JSON or {'raw': text}); a 4xx answer is returned, not raised."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with self._open(req) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def upload(self, path):
        """POST /upload/image (ComfyUI stores any file type there, videos included). Returns the name to use."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        safe_name = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")

        def field(name, value):
            return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

        body = b"".join([
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{safe_name}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode(), path.read_bytes(), b"\r\n",
            field("type", "input"), field("subfolder", ""), f"--{boundary}--\r\n".encode()])
        req = urllib.request.Request(self.url + "/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with self._open(req) as r:
                data = json.load(r)
        except urllib.error.HTTPError as e:
            raise QueueError(f"uploading {path} failed: HTTP {e.code} {e.read()[:300]!r}") from None
        return f"{data['subfolder']}/{data['name']}" if data.get("subfolder") else data["name"]

    def queue_state(self, prompt_id):
        """'running', 'pending' or None (neither: finished, cancelled or never queued)."""
        queue = self.get_json("/queue", timeout=10)
        for state in ("running", "pending"):
            if any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id
                   for item in queue.get(f"queue_{state}") or []):
                return state
        return None

    def cancel(self, prompt_id, wait=15.0):
        """Cancel this prompt on the server: removed from the queue while it waits, interrupted while it runs
        (POST /interrupt with its id: the server interrupts only when that prompt is the one running, never
        another). Returns what was done, in words."""
        done, deadline = [], time.monotonic() + wait
        try:
            while True:
                state = self.queue_state(prompt_id)
                if state is None:
                    break
                if state == "pending" and "removed from the queue" not in done:
                    self.post_json("/queue", {"delete": [prompt_id]})
                    done.append("removed from the queue")
                elif state == "running" and "interrupted" not in done:
                    self.post_json("/interrupt", {"prompt_id": prompt_id})
                    done.append("interrupted")
                if time.monotonic() > deadline:
                    return f"{' and '.join(done) or 'cancel sent'}, but still {state} on the server after {wait:.0f} s"
                time.sleep(0.2)
        except QueueError as e:
            return f"could not cancel it ({e})"
        return " and ".join(done) or "it was no longer queued"

    def download(self, item, dest, force=False):
        """Save one output as `dest`; when that file exists (an earlier run's), as `<stem>-2<suffix>`, -3, ...
        (force=True: replace it). The file appears whole (written beside it first, then linked into place).
        Returns the path written."""
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                        "type": item.get("type", "output")})
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            try:
                with self._open(urllib.request.Request(f"{self.url}/view?{query}")) as r, open(part, "wb") as f:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
            except urllib.error.HTTPError as e:
                raise QueueError(f"downloading output {item['filename']!r} failed: HTTP {e.code} {e.reason}") from None
            if force:
                os.replace(part, dest)
                return dest
            for n in range(1, 10000):
                target = dest if n == 1 else dest.with_name(f"{dest.stem}-{n}{dest.suffix}")
                try:
                    os.link(part, target)  # atomic: fails when the name is taken, even by a concurrent run
                except FileExistsError:
                    continue
                except OSError:  # no hard links on this file system
                    if target.exists():
                        continue
                    os.replace(part, target)
                return target
            raise QueueError(f"{dest}: 9999 files of that name already exist; use another --out")
        finally:
            part.unlink(missing_ok=True)

    def ws_url(self, client_id):
        parts = urllib.parse.urlsplit(self.url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", f"clientId={client_id}", ""))


# ---- progress

class Progress:
    """One line per node that reports steps: a bar on a terminal (tqdm when installed), plain lines in logs."""

    def __init__(self, api, stream=sys.stderr, enabled=True):
        self.api, self.stream, self.enabled = api, stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.total = len(api)
        self.done = set()
        self.node = None
        self.bucket = -1
        self.bar = None

    def _label(self, nid):
        node = self.api.get(str(nid), {})
        title = wf.title_of(node) or node.get("class_type", "?")
        return f"#{nid} {title}"

    def _close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.tty and self.node is not None:
            self.stream.write("\n")

    def cached(self, nodes):
        self.done.update(str(n) for n in nodes)
        if self.enabled and nodes:
            self.stream.write(f"cached: {len(nodes)} node(s)\n")

    def executing(self, nid):
        if self.node is not None:
            self.done.add(self.node)
        if not self.enabled:
            self.node = nid
            return
        self._close_bar()
        self.node, self.bucket = nid, -1
        if nid is not None:
            self.stream.write(f"[{len(self.done) + 1}/{self.total}] {self._label(nid)}\n")
            self.stream.flush()

    def step(self, nid, value, maximum):
        if not self.enabled or not maximum:
            return
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                if self.bar is None or self.bar.total != maximum:
                    self._close_bar()
                    self.bar = tqdm(total=maximum, desc=self._label(nid), file=self.stream, leave=True)
                self.bar.n = value
                self.bar.refresh()
                return
            width = 30
            filled = int(width * value / maximum)
            self.stream.write(f"\r  [{'#' * filled}{'-' * (width - filled)}] {value}/{maximum}")
            self.stream.flush()
            return
        bucket = int(4 * value / maximum)  # logs: a line at 25 %, 50 %, 75 %, 100 %
        if bucket != self.bucket:
            self.bucket = bucket
            self.stream.write(f"  {self._label(nid)}: {value}/{maximum}\n")
            self.stream.flush()

    def close(self):
        if self.enabled:
            self._close_bar()
            self.node = None


# ---- running

def _open_ws(client, client_id):
    try:
        import websocket
    except ImportError:
        return None
    try:
        ws = websocket.WebSocket()
        ws.connect(client.ws_url(client_id), timeout=30)
        return ws
    except Exception as e:  # noqa: BLE001  (no websocket: fall back to polling)
        print(f"note: no websocket ({e}); waiting without progress", file=sys.stderr)
        return None


def _wait_ws(ws, prompt_id, progress, deadline):
    """Follow the run. Returns 'success', 'error' (with the message dict) or None when the socket was lost."""
    import websocket

    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimedOut(f"prompt {prompt_id} did not finish within --timeout")
        ws.settimeout(min(left, 5.0) if left is not None else 5.0)
        try:
            msg = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (OSError, websocket.WebSocketException):
            return None, None
        if not isinstance(msg, str):
            continue  # binary frames are previews
        msg = json.loads(msg)
        kind, data = msg.get("type"), msg.get("data") or {}
        if data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_cached":
            progress.cached(data.get("nodes") or [])
        elif kind == "executing":
            if data.get("node") is None and data.get("prompt_id") == prompt_id:
                progress.close()
                return "success", None
            progress.executing(str(data.get("node")))
        elif kind == "progress":
            progress.step(str(data.get("node")), data.get("value", 0), data.get("max", 0))
        elif kind == "execution_error":
            progress.close()
            return "error", data
        elif kind == "execution_interrupted":
            progress.close()
            return "error", {"exception_message": "interrupted", "node_id": data.get("node_id"),
                             "node_type": data.get("node_type")}


def _wait_history(client, prompt_id, deadline):
    while True:
        entry = client.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry
        if deadline is not None and time.monotonic() > deadline:
            raise TimedOut(f"prompt {prompt_id} did not finish within --timeout")
        time.sleep(0.5)


def format_node_errors(response, api):
    """The /prompt refusal as readable lines: the error, then per node its input and what was wrong."""
    lines = []
    err = response.get("error")
    if isinstance(err, dict):
        head = err.get("message") or err.get("type") or "refused"
        lines.append(f"The server refused the workflow: {head}")
        if err.get("details"):
            lines.append(f"  {err['details']}")
    elif err:
        lines.append(f"The server refused the workflow: {err}")
    else:
        lines.append("The server refused the workflow: " + json.dumps(response)[:2000])
    for nid, info in sorted((response.get("node_errors") or {}).items(), key=lambda kv: wf._id_key(str(kv[0]))):
        node = api.get(str(nid), {})
        ctype = info.get("class_type") or node.get("class_type", "?")
        title = wf.title_of(node)
        lines.append(f"  node {nid} ({ctype}{': ' + title if title and title != ctype else ''}):")
        for e in info.get("errors", []):
            extra = e.get("extra_info") or {}
            name = extra.get("input_name")
            text = e.get("message") or e.get("type", "error")
            details = e.get("details")
            if details and details != name and details not in text:
                text += f" ({details})"
            lines.append(f"    {name + ': ' if name else ''}{text} [{e.get('type', '?')}]")
            if "received_value" in extra and str(extra["received_value"]) not in lines[-1]:
                lines.append(f"      received: {extra['received_value']!r}")
            if e.get("type") == "value_not_in_list" and name in MODEL_INPUTS:
                lines.append("      (that file is not installed on the server: see the workflow's note or the README "
                             "for the folder it goes in, then refresh)")
    return "\n".join(lines)


def format_execution_error(data, api):
    nid = data.get("node_id")
    node = api.get(str(nid), {})
    ctype = data.get("node_type") or node.get("class_type", "?")
    title = wf.title_of(node)
    where = f"node {nid} ({ctype}{': ' + title if title and title != ctype else ''})" if nid else "the server"
    kind = data.get("exception_type", "")
    message = data.get("exception_message", "").strip() or "unknown error"
    return f"Execution failed in {where}: {kind + ': ' if kind else ''}{message}"


def output_items(entry, previews=False):
    """(node_id, item) for every file the output nodes reported; temp previews only with previews=True."""
    found = []
    for nid, outputs in (entry.get("outputs") or {}).items():
        for key, items in outputs.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and "filename" in item:
                    if item.get("type", "output") == "temp" and not previews:
                        continue
                    found.append((nid, item))
    return found


def output_texts(entry):
    return [(nid, t) for nid, outputs in (entry.get("outputs") or {}).items()
            for t in outputs.get("text", []) if isinstance(t, str)]


def _node_label(api, nid):
    node = api.get(str(nid), {})
    ctype, title = node.get("class_type", "?"), wf.title_of(node)
    return f"node {nid} ({ctype}{': ' + title if title and title != ctype else ''})"


def check_set_names(api, assignments, object_info=None, workflow_inputs=None):
    """Refuse a --set input name its node does not have (ComfyUI would silently ignore it): checked against the
    server's node schema when there is one (a dynamic combo's "<combo>.<input>" keys included), else against
    the inputs the workflow's node had before the --set edits (`workflow_inputs`: {node id: [names]})."""
    for assignment, nid, name in assignments:
        node = api[nid]
        schema = (object_info or {}).get(node["class_type"])
        if schema is not None:
            known = [n for n, _, _ in wf.input_specs(schema, node["inputs"])]
            where = f"the server's {node['class_type']}"
        else:
            known = list((workflow_inputs or {}).get(nid, node["inputs"]))
            where = "the workflow's node"
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        added = wf.ADDED_INPUTS.get(node["class_type"], ())
        if schema is not None and name in added:
            hint = f" It was added in a newer ComfyUI; this server would ignore it.{hint}"
        elif schema is None and object_info is None:
            hint += " (Checked against the workflow only: the server could not be asked.)"
        raise wf.WorkflowError(f"--set {assignment!r}: {_node_label(api, nid)} has no input {name!r} "
                               f"({where} has: {', '.join(known) or 'none'}).{hint}")


def missing_files(api, object_info, client, uploaded=()):
    """Lines for every input file and model file the workflow names that the server does not have: an input
    file (LoadImage's image, Reference Clip Loader's video ...) neither in the server's list nor in its input
    folder nor being uploaded, a model file not in the server's list. A file input that a connected input
    supersedes (the clip loader's video when images / video_in are connected) is not read and not checked."""
    problems = []
    for nid in sorted(api, key=wf._id_key):
        node = api[nid]
        schema = object_info.get(node["class_type"])
        if schema is None:
            continue  # the server refuses an unknown node type itself, naming it
        for name, spec, _ in wf.input_specs(schema, node["inputs"]):
            value = node["inputs"].get(name)
            if not isinstance(value, str) or wf.spec_type(spec) != "COMBO":
                continue
            if any(wf.is_link(node["inputs"].get(o)) for o in SUPERSEDED_BY.get((node["class_type"], name), ())):
                continue
            options = wf.combo_values(spec)
            if value in options or value in uploaded:
                continue
            where = f"{_node_label(api, nid)} {name}"
            if any(wf.spec_options(spec).get(k) for k in UPLOAD_KEYS):
                if value and client.has_input_file(value):
                    continue
                problems.append(
                    f"  {where}: {value!r} is not on the server (never uploaded to its input folder, or removed); "
                    f"give the file with --reference FILE (uploaded for you), upload it in ComfyUI, or "
                    f"--set {nid}.{name}=NAME with a file that is there")
            elif name in MODEL_FOLDERS:
                shown = ", ".join(repr(o) for o in options[:8]) + (" ..." if len(options) > 8 else "")
                problems.append(
                    f"  {where}: model file {value!r} is not installed on the server; put it in "
                    f"ComfyUI/models/{MODEL_FOLDERS[name]}/ and restart ComfyUI (or refresh), or "
                    f"--set {nid}.{name}=NAME with one it has: {shown or 'none'}")
    return problems


def build_prompt(args, client, log):
    try:
        data = wf.load_workflow(args.workflow)
    except OSError as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
        raise wf.WorkflowError(f"workflow {args.workflow!r}: {why}; give the path of a workflow JSON file, "
                               "e.g. workflows/api/standin_wan21_t2v_14b.json") from None
    object_info = None
    if wf.is_ui_workflow(data):
        log(f"{args.workflow}: a UI workflow; converting it with the server's node schemas")
        object_info = client.object_info()
        api = wf.ui_to_api(data, object_info)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        api = data
    else:
        raise wf.WorkflowError(f"{args.workflow}: neither an API workflow (Export (API)) nor a UI workflow")
    uploaded = set()
    if args.reference:
        ref = Path(args.reference)
        ext = ref.suffix.lower()
        kind = "video" if ext in wf.VIDEO_EXTS else "image" if ext in wf.IMAGE_EXTS else None
        if kind is None:
            raise wf.WorkflowError(f"--reference {ref}: unknown file type {ext!r}; give a video "
                                   f"({', '.join(sorted(wf.VIDEO_EXTS))}) or an image ({', '.join(sorted(wf.IMAGE_EXTS))})")
        if not ref.is_file():
            raise wf.WorkflowError(f"--reference {ref}: no such file")
        name = ref.name if args.dry_run else client.upload(ref)
        uploaded.add(name)
        nodes = wf.set_reference(api, name, kind)
        log(f"reference {name!r} -> node(s) {', '.join(nodes)}")
    if args.prompt is not None:
        log(f"prompt -> node(s) {', '.join(wf.set_prompt(api, args.prompt, 'positive'))}")
    if args.negative is not None:
        log(f"negative prompt -> node(s) {', '.join(wf.set_prompt(api, args.negative, 'negative'))}")
    if args.seed is not None:
        wf.set_seed(api, args.seed)
    assignments, workflow_inputs = [], {nid: list(node["inputs"]) for nid, node in api.items()}
    for assignment in args.set or []:
        nid, name, value = wf.apply_set(api, assignment)
        assignments.append((assignment, nid, name, value))
    if object_info is None and assignments and args.dry_run:
        try:  # a dry run checks against the server when it answers, and against the workflow when not
            object_info = Client(client.url, timeout=5).object_info()
        except QueueError:
            pass
    elif object_info is None and not args.dry_run:
        object_info = client.object_info()
    check_set_names(api, [a[:3] for a in assignments], object_info, workflow_inputs)
    for _, nid, name, value in assignments:
        log(f"set node {nid} {name} = {value!r}")
    if not args.dry_run:
        problems = missing_files(api, object_info, client, uploaded)
        if problems:
            raise wf.WorkflowError("the workflow names files the server does not have (nothing was queued):\n"
                                   + "\n".join(problems))
    return api


def check_out_dir(out):
    """Refuse an --out that cannot become a folder before anything is queued (it is created only for files)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise wf.WorkflowError(f"--out {out}: a file, not a folder; give a folder for the downloads")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise wf.WorkflowError(f"--out {out}: cannot write in {parent}; give a folder you can write to")


def _cancelled(client, prompt_id, why):
    what = client.cancel(prompt_id)
    return f"{why}; prompt {prompt_id} cancelled on the server: {what}"


def run(args):
    client = Client(args.server)
    quiet = args.quiet
    if args.timeout < 0:
        raise QueueError(f"--timeout {args.timeout:g}: give a number of seconds (0 = wait as long as it takes)",
                         code=EXIT_REFUSED)

    def log(text):
        if not quiet:
            print(text, file=sys.stderr)

    check_out_dir(args.out)
    api = build_prompt(args, client, log)
    if args.dry_run:
        print(json.dumps(api, indent=2, ensure_ascii=False))
        return EXIT_OK
    client_id = uuid.uuid4().hex
    ws = _open_ws(client, client_id)
    prompt_id = None
    try:
        status, response = client.post_json("/prompt", {"prompt": api, "client_id": client_id})
        if status != 200 or "prompt_id" not in response:
            print(format_node_errors(response, api), file=sys.stderr)
            return EXIT_REFUSED
        prompt_id = response["prompt_id"]
        if response.get("node_errors") and not args.allow_partial:
            # ComfyUI still runs the outputs that validated; a headless run wants all of them or none
            client.cancel(prompt_id)
            print(format_node_errors(dict(response, error={"message": "some outputs failed validation"}), api),
                  file=sys.stderr)
            print("(cancelled; --allow-partial runs the outputs that did validate)", file=sys.stderr)
            return EXIT_REFUSED
        if response.get("node_errors"):
            print(format_node_errors(dict(response, error={"message": "running only the outputs that validated"}),
                                     api), file=sys.stderr)
        log(f"queued prompt {prompt_id}")
        deadline = time.monotonic() + args.timeout if args.timeout else None
        outcome, error = (None, None)
        if ws is not None:
            outcome, error = _wait_ws(ws, prompt_id, Progress(api, enabled=not quiet and not args.no_progress),
                                      deadline)
        entry = _wait_history(client, prompt_id, deadline)
    except TimedOut:
        print(f"error: {_cancelled(client, prompt_id, f'--timeout {args.timeout:g} s passed')}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        if prompt_id is None:
            print("interrupted (nothing was queued)", file=sys.stderr)
        else:
            print(f"interrupted: {_cancelled(client, prompt_id, 'Ctrl-C')}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if ws is not None:
            ws.close()
    if outcome != "error" and entry.get("status", {}).get("status_str") == "error":
        errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
        outcome, error = "error", (errors[0] if errors else {"exception_message": json.dumps(entry["status"])})
    if outcome == "error":
        print(format_execution_error(error, api), file=sys.stderr)
        return EXIT_FAILED
    for nid, text in output_texts(entry):
        log(f"node {nid}: {text}")
    out_dir = Path(args.out)
    saved = []
    for nid, item in output_items(entry, previews=args.previews):
        dest = out_dir / item.get("subfolder", "") / item["filename"]
        try:
            path = client.download(item, dest, force=args.force)
        except OSError as e:
            raise QueueError(f"saving {dest} failed ({e.strerror or e}); the run finished: its files are in "
                             f"ComfyUI's output folder (prompt {prompt_id}); free some space or give another --out"
                             ) from None
        if path != dest:
            log(f"{dest} exists (an earlier run's); kept it and saved this run's as {path} (--force replaces)")
        saved.append(path)
    for path in saved:
        print(path)
    if not saved:
        log("the run finished but its output nodes saved no files")
    return EXIT_OK


def parser():
    ap = argparse.ArgumentParser(prog="python -m wanid queue", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workflow", help="workflow JSON (API format, e.g. workflows/api/*.json; "
                                     "UI workflows are converted)")
    ap.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI URL (default %(default)s)")
    ap.add_argument("--reference", help="reference clip (video) or photo to upload and use")
    ap.add_argument("--prompt", help="positive prompt text")
    ap.add_argument("--negative", help="negative prompt text (default: the workflow's)")
    ap.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE",
                    help="set an input; NODE is an id or a title, VALUE is JSON when it parses (30, 4.5, true, "
                         "\"text\", [\"4\", 0] for a link), else text. Repeatable; applied last")
    ap.add_argument("--seed", type=int, help="seed for every seed / noise_seed input (default: the workflow's)")
    ap.add_argument("--out", default=".", help="folder for the downloaded outputs, keeping ComfyUI's subfolders "
                                               "(default: the current folder)")
    ap.add_argument("--force", action="store_true",
                    help="replace files of the same name in --out (default: keep them, save under a free name)")
    ap.add_argument("--previews", action="store_true", help="also download temporary previews")
    ap.add_argument("--timeout", type=float, default=0, help="give up after this many seconds (default: wait)")
    ap.add_argument("--no-progress", action="store_true", help="no progress display")
    ap.add_argument("--quiet", action="store_true", help="print only the downloaded files and errors")
    ap.add_argument("--allow-partial", action="store_true",
                    help="when some outputs fail validation, run the others (default: cancel, exit 2)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the filled API workflow instead of queueing it (nothing is uploaded)")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return run(args)
    except wf.WorkflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except QueueError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
