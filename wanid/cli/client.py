"""The queue command's side of ComfyUI's HTTP API: the server address, requests (object_info, upload, /prompt,
/queue, /history, /view, cancel), and following a prompt on the websocket (or by polling /history without
websocket-client). Standard library only, plus websocket-client when installed."""
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

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    try:
        parts = urllib.parse.urlsplit(url)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and (parts.port is None or 0 < parts.port < 65536) and not parts.query and not parts.fragment)
    except ValueError:  # an unclosed or invalid [IPv6] host ('http://[::1'), a port that is not a number
        ok = False
    if not ok or any(c.isspace() or ord(c) < 32 for c in url):
        raise QueueError(f"--server {server!r}: not a ComfyUI address; give the URL ComfyUI prints when it starts, "
                         "e.g. --server http://127.0.0.1:8188", code=EXIT_REFUSED)
    return url


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


# ---- following a prompt

def open_ws(client, client_id):
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


def wait_ws(ws, prompt_id, progress, deadline):
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


def wait_history(client, prompt_id, deadline):
    while True:
        entry = client.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None and entry.get("status", {}).get("completed") is not None:
            return entry
        if deadline is not None and time.monotonic() > deadline:
            raise TimedOut(f"prompt {prompt_id} did not finish within --timeout")
        time.sleep(0.5)
