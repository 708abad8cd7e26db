"""The README's picture: the pack's richest example workflow (Slot-ID + Stand-In on Wan 2.1 T2V) loaded into the
real ComfyUI front-end served by the test server (tests/comfy_server.py), in headless Chromium.

The workflow goes in through the front-end's own loader (app.loadGraphData), exactly as when a user drops the
JSON on the canvas; every node must come back as a registered node type (no red "missing node" boxes), then
the view is framed and a 1600x900 screenshot taken. It is kept as docs/img/graph.png when WANID_SCREENSHOTS=1
or when that file is missing, otherwise written to the test's temp dir. Skips without Chromium, like
test_frontend.py (whose DevTools browser helpers it reuses).
"""
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_server import comfy_server  # noqa: F401  (fixture, used by test_frontend's `server`)
from test_frontend import APP, CHROMIUM, NO_CHROMIUM, Browser, server  # noqa: F401  (server is a fixture)

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "example_workflows" / "slotid_standin_wan21_t2v.json"
SCREENSHOT = REPO / "docs" / "img" / "graph.png"
WIDTH, HEIGHT = 1600, 900
# Below this zoom the node text is too small to read in the README; a wider graph is framed from its left
# (the loaders, the identity nodes and the sampler) instead of shrinking everything.
MIN_SCALE = 0.6
MAX_BYTES = 400_000

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def page(server):
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    import requests

    # draw node text at every zoom (the default switches to text-less boxes when the font gets small), and
    # leave the render statistics out of the picture
    for key, value in (("LiteGraph.Canvas.MinFontSizeForLOD", 1), ("Comfy.Graph.CanvasInfo", False)):
        requests.post(f"{server.url}/settings/{key}", json=value, timeout=10).raise_for_status()
    browser = Browser(CHROMIUM, width=WIDTH, height=HEIGHT)
    try:
        browser.goto(server.url)
        browser.wait_for(f"{APP}?.graph && {APP}.extensions?.length > 0 && "
                         "!!window.LiteGraph?.registered_node_types?.WanIDIdentityTokenInject", timeout=120,
                         what="the ComfyUI page with the pack's nodes")
        yield browser
    finally:
        browser.close()


def test_example_workflow_loads_in_the_frontend_and_is_pictured(page, tmp_path):
    workflow = json.loads(WORKFLOW.read_text())
    loaded = page.evaluate("""(async () => { const app = %s;
        await app.loadGraphData(%s, true, false, "%s",
                                {showMissingNodesDialog: false, showMissingModelsDialog: false});
        return app.graph._nodes.map(n => ({id: n.id, type: n.type,
            registered: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors})); })()"""
                           % (APP, json.dumps(workflow), WORKFLOW.stem))
    assert len(loaded) == len(workflow["nodes"])
    assert sorted((n["id"], n["type"]) for n in loaded) == sorted((n["id"], n["type"]) for n in workflow["nodes"])
    missing = [n for n in loaded if not n["registered"] or n["errors"]]
    assert not missing, f"nodes the front-end does not know (red 'missing node' boxes): {missing}"
    # every link of the file is wired in the page (a renamed input or output would drop its link)
    links = page.evaluate("""(() => { const g = %s.graph; const out = [];
        const all = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
        for (const l of all) if (l) out.push([l.origin_id, l.origin_slot, l.target_id, l.target_slot]);
        return out; })()""" % APP)
    assert sorted(links) == sorted([l[1], l[2], l[3], l[4]] for l in workflow["links"])

    # frame the graph: all of it when that is still readable, else its left part at the smallest readable zoom
    view = page.evaluate("""(() => { const app = %s; const ds = app.canvas.ds; const g = app.graph;
        const el = app.canvas.canvas; const cw = el.width / devicePixelRatio, ch = el.height / devicePixelRatio;
        let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
        for (const n of g._nodes) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
        const margin = 30, top = 30;
        let scale = Math.min((cw - 2 * margin) / (x1 - x0), (ch - top - margin) / (y1 - y0));
        const fits = scale >= %s;
        scale = Math.min(Math.max(scale, %s), 1);
        ds.scale = scale;
        ds.offset[0] = margin / scale - x0;
        ds.offset[1] = (top + Math.max(0, (ch - top - margin) - (y1 - y0) * scale) / 2) / scale - y0;
        g.setDirtyCanvas(true, true);
        const visible = g._nodes.filter(n => (n.pos[0] + n.size[0] + ds.offset[0]) * scale <= cw).length;
        return {scale, fits, visible, canvas: [cw, ch]}; })()""" % (APP, MIN_SCALE, MIN_SCALE))
    assert view["canvas"][0] > WIDTH * 0.8 and view["canvas"][1] > HEIGHT * 0.8, view  # the canvas fills the page
    assert view["scale"] >= MIN_SCALE
    # at least the identity part of the graph is in the picture
    assert view["visible"] >= len(workflow["nodes"]) // 2, view
    time.sleep(1.0)  # let the canvas draw (it redraws on animation frames)
    page.evaluate("%s.graph.setDirtyCanvas(true, true)" % APP)
    time.sleep(0.5)

    from PIL import Image

    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (WIDTH, HEIGHT)
    a = np.asarray(shot).astype(float)
    assert a.std() > 10, "the screenshot is blank"
    # the pack's nodes are drawn in its own colour (js/wanid.js): they are on the picture, not just loaded
    body = (np.abs(a - np.array([0x1f, 0x33, 0x2c])).sum(-1) < 6).sum()
    assert body > 20_000, "the pack's nodes are not visible in the screenshot"

    target = SCREENSHOT if os.environ.get("WANID_SCREENSHOTS") == "1" or not SCREENSHOT.exists() else \
        tmp_path / SCREENSHOT.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shot.save(target, optimize=True)
    if target.stat().st_size >= MAX_BYTES:  # keep the docs light: a palette image reads the same
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    assert target.stat().st_size < MAX_BYTES
    assert not [e for e in page.errors if "wanid" in e.lower()], page.errors
