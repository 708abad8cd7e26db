"""The front-end extension (js/) in headless Chromium against the real ComfyUI server (tests/comfy_server.py):
the page loads, the extension registers and colours the pack's nodes, every node has its help page, and
queueing an Identity Score graph puts the plot preview and the mean on that node. A screenshot of the result
is kept in the docs (docs/img/frontend_identity_score.png): the test rewrites it when WANID_SCREENSHOTS=1 or
when it is missing, otherwise it writes to its temp dir.

Chromium is driven over the DevTools protocol (tests/frontend_browser.py). Without Chromium (apt-get install
chromium, or CHROMIUM=/path/to/chrome) these tests skip with that reason.
"""
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_server import comfy_server  # noqa: F401  (fixture, used by `server`)
from frontend_browser import APP, keep, open_page, server  # noqa: F401  (server is a fixture)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "img" / "frontend_identity_score.png"
EXTENSION = "WanIdentity.NodeUI"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def page(server):
    browser = open_page(server)
    try:
        yield browser
    finally:
        browser.close()


# ------------------------------------------------------------------------------------------------- tests
def test_extension_registers_and_colours_the_pack_nodes(server, page):
    names = page.evaluate(f"{APP}.extensions.map(e => e.name)")
    assert EXTENSION in names
    listed = server._get("/extensions")
    assert any(p.endswith("/wanid.js") and "/ComfyUI-WanIdentity/" in p for p in listed), listed
    ours = sorted(k for k in server.object_info() if k.startswith("WanID") and not k.startswith("WanIDTest"))
    assert "WanIDIdentityScore" in ours
    colours = page.evaluate("""(() => {
        const out = {};
        for (const t of %s) { const n = LiteGraph.createNode(t); out[t] = [n.color, n.bgcolor]; }
        const other = LiteGraph.createNode("KSampler");
        out.KSampler = [other.color ?? null, other.bgcolor ?? null];
        return out; })()""" % json.dumps(ours))
    for t in ours:
        assert colours[t] == ["#2b4a3f", "#1f332c"], t
    assert colours["KSampler"] != ["#2b4a3f", "#1f332c"]  # other packs' nodes are left alone
    assert not [e for e in page.errors if "wanid" in e.lower()], page.errors


def test_every_pack_node_has_a_help_page_where_the_frontend_looks(server, page):
    ours = sorted(k for k in server.object_info() if k.startswith("WanID") and not k.startswith("WanIDTest"))
    # ComfyUI's node help fetches /extensions/<pack folder>/docs/<node id>.md for custom nodes
    status = page.evaluate("""Promise.all(%s.map(async t => {
        const r = await fetch(`/extensions/ComfyUI-WanIdentity/docs/${t}.md`);
        return [t, r.status, (await r.text()).slice(0, 200)]; }))""" % json.dumps(ours))
    for t, code, text in status:
        assert code == 200, f"{t}: no js/docs/{t}.md"
        assert text.startswith("# "), t
    menu = page.evaluate("""(() => { const n = LiteGraph.createNode("WanIDIdentityScore"); const opts = [];
        n.getExtraMenuOptions(%s.canvas, opts); return opts.filter(Boolean).map(o => o.content); })()""" % APP)
    assert "WanIdentity: help" in menu and "WanIdentity: preview outputs" in menu


def test_preview_outputs_wires_a_preview_to_each_image_and_mask_output_once(page):
    result = page.evaluate("""(() => { const app = %s; const g = app.graph;
        const n = LiteGraph.createNode("WanIDFaceCropParse"); n.pos = [2000, 2000]; g.add(n);
        const before = g._nodes.length;
        window.WanIdentityUI.previewOutputs(n);
        const added = g._nodes.length - before;
        window.WanIdentityUI.previewOutputs(n);  // again: nothing new
        const again = g._nodes.length - before - added;
        const wired = n.outputs.map(o => [o.name, o.type, (o.links ?? []).map(id => {
            const l = g.links.get ? g.links.get(id) : g.links[id]; return g.getNodeById(l.target_id).type; })]);
        for (const o of n.outputs) for (const id of [...(o.links ?? [])]) {
            const l = g.links.get ? g.links.get(id) : g.links[id]; g.remove(g.getNodeById(l.target_id)); }
        g.remove(n);
        return {added, again, wired}; })()""" % APP)
    image_outputs = [w for w in result["wired"] if w[1] in ("IMAGE", "MASK")]
    assert result["added"] == len(image_outputs) >= 1 and result["again"] == 0
    for name, kind, targets in result["wired"]:
        expected = {"IMAGE": ["PreviewImage"], "MASK": ["MaskPreview"]}.get(kind, [])
        assert targets == expected, (name, kind, targets)


def test_help_pages_are_up_to_date_with_the_node_schemas(comfy_pack):
    """js/docs/<node id>.md exists for every node and its inputs/outputs match the schema (no browser needed)."""
    sys.path.insert(0, str(Path(__file__).parent / "frontend"))
    import node_docs

    stale = [p.name for p, text in node_docs.expected_pages().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"help pages out of date: {stale}; run tests/frontend/node_docs.py with the test venv's python"


def _upload_inputs(server, tmp):
    """An animated lossless WebP of carphone frames (three of them plain grey: no face; LoadImage reads every
    frame, the browser shows it) and one reference frame."""
    from PIL import Image

    from face_files import carphone

    frames = carphone()
    picked = [frames[i].copy() for i in range(0, 120, 5)]
    for level, i in enumerate((9, 10, 11)):
        picked[i][:] = 40 * level  # plain grey, each different (WebP merges identical frames)
    clip = Path(tmp) / "wanid_frontend_frames.webp"
    imgs = [Image.fromarray(f) for f in picked]
    imgs[0].save(clip, save_all=True, append_images=imgs[1:], lossless=True, duration=200, loop=0)
    ref = Path(tmp) / "wanid_frontend_reference.png"
    Image.fromarray(frames[57]).save(ref)
    return server.upload(clip), server.upload(ref), len(picked)


def test_identity_score_preview_and_mean_appear_on_the_node(server, page, tmp_path):
    from wanid.face.model_files import find_recognition_model
    from face_files import write_arcface

    if find_recognition_model(str(server.models_dir / "insightface")) is None:
        # no real ArcFace can be downloaded here: a random-weight one with the real signature
        write_arcface(server.models_dir / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx")
    frames_name, ref_name, count = _upload_inputs(server, tmp_path)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": frames_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": ref_name}},
        "3": {"class_type": "WanIDIdentityScore", "inputs": {
            "images": ["1", 0], "reference": ["2", 0], "detector": "retinaface_mobilenet", "provider": "CPU",
            "reference_mode": "mean"}},
    }
    page.evaluate("""(async () => { const app = %s;
        await app.loadApiJson(%s, "wanid_frontend_test");
        const g = app.graph;
        g.getNodeById(1).pos = [40, 40];   g.getNodeById(1).size = [300, 330];
        g.getNodeById(2).pos = [40, 420];  g.getNodeById(2).size = [300, 330];
        const s = g.getNodeById(3); s.pos = [400, 40]; s.size = [800, 650];
        app.canvas.ds.scale = 1; app.canvas.ds.offset = [80, 60];
        g.setDirtyCanvas(true, true);
        await app.queuePrompt(0, 1); return true; })()""" % (APP, json.dumps(prompt)))
    # the plot preview is loaded into the node (ComfyUI draws node.imgs on the canvas)
    src = page.wait_for("""(() => { const n = %s.graph.getNodeById(3);
        const img = n?.imgs?.[0]; return img && img.complete && img.naturalWidth > 0 ?
        [img.src, img.naturalWidth, img.naturalHeight] : null; })()""" % APP, timeout=240,
                        what="the Identity Score plot preview on the node")
    assert "/view?" in src[0] and "type=temp" in src[0]
    assert (src[1], src[2]) == (768, 320)
    text = page.wait_for("""(() => { const n = %s.graph.getNodeById(3);
        const w = n?.widgets?.find(w => w.name === "wanid_info"); return w?.value || null; })()""" % APP,
                         timeout=30, what="the mean shown on the node")
    assert "identity similarity: mean" in text and f"/{count} frames with a face" in text
    assert "no face: frames 9-11" in text
    # the history agrees with what the page shows
    entry = page.evaluate("""fetch('/history?max_items=1').then(r => r.json())""")
    ui = next(iter(entry.values()))["outputs"]["3"]
    assert ui["text"][0] == text and ui["images"][0]["type"] == "temp"
    # the text box is a result: neither saved in the workflow nor sent to the server as an input
    saved = page.evaluate("""(async () => { const app = %s; const n = app.graph.getNodeById(3);
        const p = await app.graphToPrompt(); return [n.serialize().widgets_values, p.output["3"].inputs]; })()"""
                          % APP)
    assert all(not (isinstance(v, str) and "identity similarity" in v) for v in saved[0] if v is not None)
    assert "wanid_info" not in saved[1] and saved[1]["detector"] == "retinaface_mobilenet"

    time.sleep(1.0)  # let the canvas draw the loaded image
    page.evaluate("%s.graph.setDirtyCanvas(true, true)" % APP)
    time.sleep(0.5)
    box = page.evaluate("""(() => { const app = %s; const r = app.canvas.canvas.getBoundingClientRect();
        const ds = app.canvas.ds; let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
        for (const n of app.graph._nodes) {
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
            x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
        const m = 20;
        return {x: r.left + (x0 + ds.offset[0]) * ds.scale - m, y: r.top + (y0 + ds.offset[1]) * ds.scale - m,
                width: (x1 - x0) * ds.scale + 2 * m, height: (y1 - y0) * ds.scale + 2 * m}; })()""" % APP)
    png = page.screenshot(clip=box)
    from PIL import Image
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    # the plot's blue curve is visible in the screenshot (it was drawn on the canvas, not just loaded)
    a = np.asarray(shot).astype(int)
    blue = (np.abs(a - np.array([40, 110, 230])).sum(-1) < 40).sum()
    assert blue > 200, "the plot is not visible on the node in the screenshot"
    target = keep(SCREENSHOT, tmp_path)
    shot.save(target, optimize=True)
    if target.stat().st_size >= 300_000:  # keep the docs light: a palette image reads the same
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    assert target.stat().st_size < 300_000
