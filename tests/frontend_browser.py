"""Headless Chromium driven over the DevTools protocol (websocket-client, already a test requirement: no npm), and
the real ComfyUI front-end opened in it: what the front-end tests share (no tests here).

    CHROMIUM, NO_CHROMIUM        the browser found (CHROMIUM=/path/to/chrome, else on PATH), the skip reason
    Browser(executable)          one page: evaluate(js), wait_for(js), goto(url), screenshot(), close()
    APP                          the JS expression of the front-end's app object (old and new front-ends)
    server                       fixture: the shared server, set up for a page (no tutorial, no minimap)
    open_page(server), wait_for_startup_graph(browser), keep(path, tmp_path)
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)

NO_CHROMIUM = ("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome): "
               "headless front-end tests skipped")


class JSError(RuntimeError):
    pass


class Browser:
    """Headless Chromium with one page, driven through the DevTools protocol."""

    def __init__(self, executable, width=1600, height=1100):
        self.profile = tempfile.mkdtemp(prefix="wanid-chromium-")
        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.ws = None
        self.errors = []   # uncaught page exceptions
        self.console = []  # console messages (type, text)
        self._id = 0
        try:
            self._connect(width, height)
        except Exception:
            self.close()
            raise

    def _connect(self, width, height):
        import requests
        import websocket

        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with code {self.proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError("Chromium did not open its DevTools port within 30 s")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                 if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method, params=None, timeout=60):
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(deadline - time.monotonic(), 0.1))
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no answer within {timeout} s")

    def _event(self, msg):
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append((params.get("type"), text))

    def evaluate(self, expression, timeout=60):
        """Value of a JS expression (awaited when it is a promise); raises JSError on a JS exception."""
        r = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                           "timeout": timeout * 1000}, timeout=timeout + 5)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise JSError(d.get("exception", {}).get("description") or d.get("text"))
        return r.get("result", {}).get("value")

    def wait_for(self, expression, timeout=60, what=None):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
                if value:
                    return value
            except JSError as e:
                last = e
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout} s for {what or expression} (last JS error: {last}); "
                           f"page errors: {self.errors[-5:]}; console: {self.console[-10:]}")

    def goto(self, url):
        self.send("Page.navigate", {"url": url})

    def screenshot(self, clip=None, fmt="png"):
        import base64
        params = {"format": fmt, "captureBeyondViewport": False}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()  # our own Chromium only
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


APP = "(window.app ?? window.comfyAPI?.app?.app)"


@pytest.fixture(scope="module")
def server(comfy_server):
    import requests

    # a fresh user would get the template browser over the canvas, and the minimap over the screenshot
    for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False)):
        requests.post(f"{comfy_server.url}/settings/{key}", json=value, timeout=10).raise_for_status()
    return comfy_server


def open_page(server, **size):
    """Chromium on the server's front-end, once the page has the pack's nodes (skips without Chromium)."""
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    browser = Browser(CHROMIUM, **size)
    try:
        browser.goto(server.url)
        browser.wait_for(f"{APP}?.graph && {APP}.extensions?.length > 0 && "
                         "!!window.LiteGraph?.registered_node_types?.WanIDIdentityScore", timeout=120,
                         what="the ComfyUI page with the pack's nodes")
        wait_for_startup_graph(browser)
    except BaseException:
        browser.close()
        raise
    return browser


def wait_for_startup_graph(browser, timeout=60):
    """Wait until the editor has loaded its startup workflow (a fresh user's default graph) and stopped changing:
    newer front-ends (1.49) load it after the app object exists, and a graph loaded before that is replaced."""
    deadline = time.monotonic() + timeout
    count = browser.wait_for(f"{APP}.graph?._nodes?.length", timeout=timeout, what="the startup workflow")
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = browser.evaluate(f"{APP}.graph?._nodes?.length ?? 0")
        if now == count:
            return
        count = now


def keep(path, tmp_path):
    """Where a picture goes: the repo file when asked to refresh it (or when it is missing), else the temp dir."""
    target = path if os.environ.get("WANID_SCREENSHOTS") == "1" or not path.exists() else tmp_path / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
