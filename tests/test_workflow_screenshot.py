"""Every UI example workflow loaded into the real ComfyUI front-end served by the test server
(tests/comfy_server.py), in headless Chromium: its template-browser thumbnail, and the README's picture.

Each workflow goes in through the front-end's own loader (app.loadGraphData), exactly as when a user drops the
JSON on the canvas; every node must come back as a registered node type (no red "missing node" boxes), every
link wired, and no node (title bar and "WanIdentity" badge included, as the editor draws them) may overlap
another. Then:
- a thumbnail: the graph without its note, fitted to the page, downscaled to 512x288 JPEG, kept as
  example_workflows/<name>.jpg (the template browser shows `/api/workflow_templates/<pack>/<name>.jpg` next to
  each custom-node template);
- for the pack's richest workflow (Slot-ID + Stand-In on Wan 2.1 T2V), the README's 1600x900 picture
  docs/img/graph.png.
Pictures are rewritten when WANID_SCREENSHOTS=1 or when the file is missing, otherwise written to the test's
temp dir. Skips without Chromium, like test_frontend.py (the DevTools browser: tests/frontend_browser.py).
"""
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_server import comfy_server  # noqa: F401  (fixture, used by `server`)
from frontend_browser import APP, CHROMIUM, NO_CHROMIUM, keep, open_page, server  # noqa: F401  (server is a fixture)

from wanid.model_inputs import FILE_INPUTS

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
README_WORKFLOW = "slotid_standin_wan21_t2v"
SCREENSHOT = REPO / "docs" / "img" / "graph.png"
WIDTH, HEIGHT = 1600, 900
# Below this zoom the node text is too small to read in the README; a wider graph is framed from its left
# (the loaders, the identity nodes and the sampler) instead of shrinking everything.
MIN_SCALE = 0.6
MAX_BYTES = 400_000
THUMB_SIZE, THUMB_MAX_BYTES = (512, 288), 80_000

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
    browser = open_page(server, width=WIDTH, height=HEIGHT)
    try:
        yield browser
        focus_mode(browser, False)  # the setting is stored on the (shared) server: leave it as it was
    finally:
        browser.close()


def load(page, path):
    workflow = json.loads(path.read_text())
    loaded = page.evaluate("""(async () => { const app = %s;
        await app.loadGraphData(%s, true, false, "%s",
                                {showMissingNodesDialog: false, showMissingModelsDialog: false});
        const values = w => { const v = w.options?.values; return typeof v === "function" ? v() : v; };
        return app.graph._nodes.map(n => ({id: n.id, type: n.type,
            registered: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors,
            absent: (n.widgets ?? []).filter(w => Array.isArray(values(w)) && !values(w).includes(w.value))
                                     .map(w => w.name)})); })()"""
                           % (APP, json.dumps(workflow), path.stem))
    return workflow, loaded


# each node's box as the editor draws it: the body, the title bar above it, and the badges above the title
BOXES = """(() => { const out = {};
    for (const n of %s.graph._nodes) {
        const b = n.getBounding();  // [x, y - title, w, h + title]
        const badges = (n.badges ?? []).map(x => typeof x === "function" ? x() : x);
        const above = badges.length ? 2 + Math.max(...badges.map(x => x.height ?? 0)) : 0;
        out[n.id] = {type: n.type, box: [b[0], b[1] - above, b[0] + b[2], b[1] + b[3]], badges: badges.length};
    } return out; })()""" % APP


def frame(page, skip_types=(), min_scale=0.0, margin=30, top=30):
    """Zoom and pan so the nodes (except skip_types) fill the page; not below min_scale (then the left part)."""
    return page.evaluate("""(() => { const app = %s; const ds = app.canvas.ds; const g = app.graph;
        const boxes = %s; const skip = %s;
        const el = app.canvas.canvas; const cw = el.width / devicePixelRatio, ch = el.height / devicePixelRatio;
        let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
        for (const n of g._nodes) { if (skip.includes(n.type)) continue; const b = boxes[n.id].box;
            x0 = Math.min(x0, b[0]); y0 = Math.min(y0, b[1]); x1 = Math.max(x1, b[2]); y1 = Math.max(y1, b[3]); }
        const margin = %s, top = %s;
        let scale = Math.min((cw - 2 * margin) / (x1 - x0), (ch - top - margin) / (y1 - y0));
        const fits = scale >= %s;
        scale = Math.min(Math.max(scale, %s), 1);
        ds.scale = scale;
        ds.offset[0] = (margin + Math.max(0, (cw - 2 * margin) - (x1 - x0) * scale) / 2) / scale - x0;
        ds.offset[1] = (top + Math.max(0, (ch - top - margin) - (y1 - y0) * scale) / 2) / scale - y0;
        g.setDirtyCanvas(true, true);
        const visible = g._nodes.filter(n => (n.pos[0] + n.size[0] + ds.offset[0]) * scale <= cw).length;
        return {scale, fits, visible, canvas: [cw, ch]}; })()"""
                         % (APP, BOXES, json.dumps(list(skip_types)), margin, top, min_scale, min_scale))


def focus_mode(page, on):
    """The editor's focus mode: only the canvas (and a menu button in its top-right corner) on the page."""
    page.evaluate("""(async () => { const em = %s.extensionManager;
        if (!!em.focusMode !== %s) await em.command.execute("Workspace.ToggleFocusMode");
        await em.setting.set("Comfy.Graph.CanvasMenu", %s); })()"""  # the zoom toolbar, bottom right
                  % (APP, "true" if on else "false", "false" if on else "true"))
    time.sleep(0.3)


def shoot(page):
    from PIL import Image

    time.sleep(1.0)  # let the canvas draw (it redraws on animation frames)
    page.evaluate("%s.graph.setDirtyCanvas(true, true)" % APP)
    time.sleep(0.5)
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (WIDTH, HEIGHT)
    a = np.asarray(shot).astype(float)
    assert a.std() > 10, "the screenshot is blank"
    return shot, a


def pack_pixels(a):
    """Pixels in the pack's node colour (js/wanid.js): its nodes are on the picture, not just loaded."""
    return int((np.abs(a - np.array([0x1f, 0x33, 0x2c])).sum(-1) < 6).sum())


def overlaps(boxes):
    items = sorted(boxes.items(), key=lambda kv: int(kv[0]))
    found = []
    for i, (a, ba) in enumerate(items):
        for b, bb in items[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = ba["box"], bb["box"]
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                found.append((f"#{a} {ba['type']}", f"#{b} {bb['type']}"))
    return found


def test_overlap_check_catches_overlaps():
    boxes = {"1": {"type": "A", "box": [0, 0, 100, 100]}, "2": {"type": "B", "box": [0, 100, 100, 200]},
             "3": {"type": "C", "box": [99, 199, 300, 300]}}
    assert overlaps(boxes) == [("#2 B", "#3 C")]  # touching edges are fine, one pixel over is not


def test_readme_picture(page, tmp_path):
    """Runs before the thumbnails, with the editor's menus as a user sees them."""
    focus_mode(page, False)
    workflow, loaded = load(page, FOLDER / f"{README_WORKFLOW}.json")
    # all of the graph when that is still readable, else its left part at the smallest readable zoom
    view = frame(page, min_scale=MIN_SCALE)
    assert view["scale"] >= MIN_SCALE
    assert view["visible"] >= len(workflow["nodes"]) // 2, view  # at least the identity part is in the picture
    shot, a = shoot(page)
    assert pack_pixels(a) > 20_000, "the pack's nodes are not visible in the screenshot"
    from PIL import Image

    target = keep(SCREENSHOT, tmp_path)
    shot.save(target, optimize=True)
    if target.stat().st_size >= MAX_BYTES:  # keep the docs light: a palette image reads the same
        shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
    assert target.stat().st_size < MAX_BYTES
    assert not [e for e in page.errors if "wanid" in e.lower()], page.errors


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_loads_in_the_frontend_and_has_a_thumbnail(page, path, tmp_path):
    workflow, loaded = load(page, path)
    assert len(loaded) == len(workflow["nodes"])
    # node ids compared as text: front-end 1.49 keeps them as strings ("12"), older ones as the file's numbers
    assert sorted((str(n["id"]), n["type"]) for n in loaded) == sorted(
        (str(n["id"]), n["type"]) for n in workflow["nodes"])
    # front-end 1.49 also marks a node whose model or input file is not installed (none are, on the test server):
    # an error is allowed only on a node with such a file input
    missing = [n for n in loaded if not n["registered"] or n["errors"] and not set(n["absent"]) & FILE_INPUTS]
    assert not missing, f"nodes the front-end does not know (red 'missing node' boxes): {missing}"
    # every link of the file is wired in the page (a renamed input or output would drop its link)
    links = page.evaluate("""(() => { const g = %s.graph; const out = [];
        const all = g.links instanceof Map ? [...g.links.values()] : Object.values(g.links ?? {});
        for (const l of all) if (l) out.push([l.origin_id, l.origin_slot, l.target_id, l.target_slot]);
        return out; })()""" % APP)
    assert sorted([str(a), i, str(b), j] for a, i, b, j in links) == sorted(
        [str(l[1]), l[2], str(l[3]), l[4]] for l in workflow["links"])
    # the layout of wanid/cli/templates.py (tidy): no node, title or badge drawn over another
    boxes = page.evaluate(BOXES)
    assert any(b["badges"] for b in boxes.values()), "the pack's source badges are not drawn: check the box"
    assert not overlaps(boxes), f"{path.name}: nodes overlap in the editor: {overlaps(boxes)}"

    # the thumbnail: the graph alone (focus mode hides the menus; the note's text is too small to read at that
    # size), as big as it fits
    focus_mode(page, True)
    view = frame(page, skip_types=("MarkdownNote",), top=60)
    assert view["canvas"][0] > WIDTH * 0.8 and view["canvas"][1] > HEIGHT * 0.8, view  # the canvas fills the page
    shot, a = shoot(page)
    assert pack_pixels(a) > 2_000, "the pack's nodes are not visible in the thumbnail"
    from PIL import Image

    thumb = shot.resize(THUMB_SIZE, Image.Resampling.LANCZOS)
    target = keep(path.with_suffix(".jpg"), tmp_path)
    thumb.save(target, "JPEG", quality=85, optimize=True)
    for where in {target, path.with_suffix(".jpg")}:
        assert where.stat().st_size < THUMB_MAX_BYTES, where
        with Image.open(where) as im:
            assert im.format == "JPEG" and im.size == THUMB_SIZE, where
    assert not [e for e in page.errors if "wanid" in e.lower()], page.errors


def test_every_ui_workflow_has_a_thumbnail_and_nothing_else_does():
    """The template browser asks for <name>.jpg next to <name>.json: one per UI workflow, no strays."""
    assert WORKFLOWS
    assert sorted(p.stem for p in FOLDER.glob("*.jpg")) == sorted(p.stem for p in WORKFLOWS)
