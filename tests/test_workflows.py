"""The shipped workflows (example_workflows/): where ComfyUI finds them, that the UI and API twins agree, that every
API workflow fits a real server's /object_info, and that a tiny-model variant of each runs end to end (the
variants and the server they run on: tests/workflow_files.py).
"""
import copy

import pytest

import wanid_testing
from comfy_server import comfy_server  # noqa: F401  (comfy_server is a fixture)
from wanid.cli import templates
from wanid.cli import workflow as wf
from wanid.model_inputs import FILE_INPUTS
from workflow_files import FOLDER, SLOT, check_video, load, server, slot_server, tiny_for  # noqa: F401  (fixtures)

NAMES = sorted(templates.WORKFLOWS)
GENERATION = [n for n in NAMES if n != "face_crop_parse"]
DOCUMENTED = {  # input -> the model file names the README documents
    "unet_name": {templates.WAN21_T2V, templates.WAN22_HIGH, templates.WAN22_LOW, templates.WAN21_VACE},
    "clip_name": {templates.UMT5},
    "vae_name": {templates.WAN_VAE},
    "standin_name": {templates.STANDIN_21, templates.STANDIN_22_HIGH, templates.STANDIN_22_LOW},
    "slot_id_name": {templates.SLOT_ID},
    "parser_model": {templates.AUTO_PARSER},  # BiSeNet when installed, else none: the files run either way
    "lynx_name": {templates.LYNX_FULL},
    "arcface_name": {templates.LYNX_ARCFACE},
}


# ---- files (no server)

def test_one_folder_with_a_ui_and_an_api_file_per_workflow():
    others = ("example", "examples", "workflow", "workflows")  # the other names ComfyUI scans
    assert not any((wanid_testing.REPO / o).exists() for o in others), "keep ONE workflow folder: example_workflows/"
    ui = sorted(p.stem for p in FOLDER.glob("*.json"))
    api = sorted(p.stem for p in (FOLDER / "api").glob("*.json"))
    assert ui == api == NAMES
    for name in NAMES:
        assert wf.is_ui_workflow(load(name, api=False)) and not wf.is_ui_workflow(load(name))


def test_api_files_are_the_graphs_of_templates_py():
    """templates.py is the source: the files are its graphs, as "Export (API)" writes them (defaults filled)."""
    for name in NAMES:
        built, shipped = templates.api_workflow(name), load(name)
        assert set(built) == set(shipped), name
        for nid, node in built.items():
            assert shipped[nid]["class_type"] == node["class_type"]
            assert {k: shipped[nid]["inputs"][k] for k in node["inputs"]} == node["inputs"], (name, nid)
            if "_meta" in node:
                assert shipped[nid]["_meta"] == node["_meta"]


def test_model_file_names_are_the_documented_ones():
    seen = set()
    for name in NAMES:
        for nid, node in load(name).items():
            for key, allowed in DOCUMENTED.items():
                if key in node["inputs"]:
                    assert node["inputs"][key] in allowed, (name, nid, key)
                    seen.add(node["inputs"][key])
    assert seen == set().union(*DOCUMENTED.values())


def test_optional_models_are_optional_in_the_workflows():
    """The README calls BiSeNet optional: no shipped workflow names it (parser_model auto: BiSeNet when installed,
    else none); every note says where it goes and that it is optional. Face detection is 'auto' (the bundled
    RetinaFace without antelopev2)."""
    for name in NAMES:
        api = load(name)
        for node in api.values():
            if node["class_type"] == "WanIDFaceCropParse":
                assert node["inputs"]["parser_model"] == templates.AUTO_PARSER, name
                assert node["inputs"]["detector"] == "auto", name
        note = next(n for n in load(name, api=False)["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
        assert templates.BISENET in note and "optional" in note and "auto" in note, name


def test_prompts_and_reference_reach_the_right_nodes():
    """What `wanid queue` fills, on every shipped workflow: the positive text lands in the encoder titled
    "Positive Prompt" and nowhere else, also when titles are gone (the upstream walk from the samplers, through
    IdentityTokenInject, which takes the negative too); the clip lands in the Reference Clip Loader."""
    for name in GENERATION:
        api = load(name)
        pos = [nid for nid, n in api.items() if wf.title_of(n) == "Positive Prompt"]
        neg = [nid for nid, n in api.items() if wf.title_of(n) == "Negative Prompt"]
        assert len(pos) == len(neg) == 1, name
        assert wf.prompt_nodes(api, "positive") == pos and wf.prompt_nodes(api, "negative") == neg
        untitled = copy.deepcopy(api)
        for node in untitled.values():
            node.pop("_meta", None)
        assert wf.prompt_nodes(untitled, "positive") == pos, name
        assert wf.prompt_nodes(untitled, "negative") == neg, name
        wf.set_prompt(untitled, "a cat", "positive")
        assert untitled[pos[0]]["inputs"]["text"] == "a cat" and untitled[neg[0]]["inputs"]["text"] != "a cat"
    for name in NAMES:
        api = load(name)
        clips = wf.set_reference(api, "mine.mp4", "video")
        assert len(clips) == 1 and api[clips[0]]["class_type"] == "WanIDReferenceClipLoader"
        assert api[clips[0]]["inputs"]["video"] == "mine.mp4"


# A made-up node with a dynamic combo (as newer ComfyUI sends SaveVideo's codec) and one of wf.ADDED_INPUTS.
DYN = {"Enc": {"input": {"required": {
    "mode": ["COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": "plain", "inputs": {"required": {}}},
        {"key": "tuned", "inputs": {"required": {"q": ["INT", {"default": 5, "min": 0, "max": 9}]},
                                    "optional": {"extra": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                                        {"key": "off", "inputs": {"required": {}}},
                                        {"key": "on", "inputs": {"required": {"k": ["FLOAT", {"default": 1.5}]}}},
                                    ]}]}}}]}],
    "name": ["STRING", {"default": "x"}]}}, "input_order": {"required": ["mode", "name"]}, "output": []},
    "CreateVideo": {"input": {"required": {"fps": ["FLOAT", {"default": 30.0}]}}, "output": ["VIDEO"]}}


def test_dynamic_combo_inputs_are_named_and_ordered_as_the_server_expands_them():
    names = lambda inputs: [(n, r) for n, _, r in wf.input_specs(DYN["Enc"], inputs)]  # noqa: E731
    assert names({}) == [("mode", True), ("name", True)]  # the default option, "plain", has no inputs
    assert names({"mode": "tuned"}) == [("mode", True), ("mode.q", True), ("mode.extra", False), ("name", True)]
    assert names({"mode": "tuned", "mode.extra": "on"})[3] == ("mode.extra.k", True)
    api = {"1": {"class_type": "Enc", "inputs": {"mode": "tuned"}}}
    full = {"mode": "tuned", "mode.q": 5, "mode.extra": "off", "name": "x"}  # optional widgets too, as Export does
    assert wf.complete_api(api, DYN)["1"]["inputs"] == full
    ui = wf.api_to_ui(wf.complete_api(api, DYN), DYN)
    assert ui["nodes"][0]["widgets_values"] == ["tuned", 5, "off", "x"]
    assert wf.ui_to_api(ui, DYN)["1"]["inputs"] == full


def test_for_server_leaves_out_only_the_added_inputs_an_older_server_lacks():
    api = {"1": {"class_type": "CreateVideo", "inputs": {"fps": 16.0, "bit_depth": 8, "typo": 1}},
           "2": {"class_type": "Enc", "inputs": {"mode": "plain", "name": "y", "bit_depth": 8}}}
    served = wf.for_server(api, DYN)
    assert served["1"]["inputs"] == {"fps": 16.0, "typo": 1} and served["2"] == api["2"]
    assert wf.missing_added_inputs(api, DYN) == ["CreateVideo.bit_depth"]
    newer = copy.deepcopy(DYN)
    newer["CreateVideo"]["input"]["optional"] = {"bit_depth": ["INT", {"default": 8}]}
    assert wf.for_server(api, newer) == api and wf.missing_added_inputs(api, newer) == []


# ---- against a real server

@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def check_against_object_info(api, info):
    """Problems of an API workflow against /object_info: node types, input names, required inputs, link
    sources and types, value types, ranges and step grids, combo values (file names may be absent)."""
    problems = []
    for nid, node in api.items():
        where = f"node {nid} ({node['class_type']})"
        schema = info.get(node["class_type"])
        if schema is None:
            problems.append(f"{where}: not on the server")
            continue
        specs = {name: (spec, req) for name, spec, req in wf.input_specs(schema, node["inputs"])}
        for name in node["inputs"]:
            if name not in specs:
                problems.append(f"{where}: unknown input {name!r}")
        for name, (spec, required) in specs.items():
            if required and name not in node["inputs"]:
                problems.append(f"{where}: required input {name!r} missing")
        for name, value in node["inputs"].items():
            if name not in specs:
                continue
            spec, _ = specs[name]
            t, opts = wf.spec_type(spec), wf.spec_options(spec)
            if wf.is_link(value):
                src = api.get(str(value[0]))
                if src is None or src["class_type"] not in info:
                    problems.append(f"{where}.{name}: link from missing node {value[0]}")
                    continue
                outs = info[src["class_type"]]["output"]
                if not 0 <= value[1] < len(outs):
                    problems.append(f"{where}.{name}: output {value[1]} of {src['class_type']} does not exist")
                elif outs[value[1]] != t and "*" not in (t, outs[value[1]]) and outs[value[1]] not in t.split(","):
                    problems.append(f"{where}.{name}: takes {t}, gets {outs[value[1]]}")
                continue
            if not wf.is_widget(spec):
                problems.append(f"{where}.{name}: a {t} input needs a link, got {value!r}")
            elif t == "INT" or t == "FLOAT":
                ok = isinstance(value, int) if t == "INT" else isinstance(value, (int, float))
                if isinstance(value, bool) or not ok:
                    problems.append(f"{where}.{name}: {value!r} is not {t}")
                    continue
                if "min" in opts and value < opts["min"] or "max" in opts and value > opts["max"]:
                    problems.append(f"{where}.{name}: {value} outside [{opts.get('min')}, {opts.get('max')}]")
                if t == "INT" and opts.get("step", 1) > 1 and (value - opts.get("min", 0)) % opts["step"]:
                    problems.append(f"{where}.{name}: {value} is off the step-{opts['step']} grid")
            elif t == "STRING" and not isinstance(value, str) or t == "BOOLEAN" and not isinstance(value, bool):
                problems.append(f"{where}.{name}: {value!r} is not {t}")
            elif t in ("COMBO", wf.DYNAMIC_COMBO):
                if not isinstance(value, str):
                    problems.append(f"{where}.{name}: {value!r} is not a string")
                elif value not in wf.combo_values(spec) and name not in FILE_INPUTS:
                    problems.append(f"{where}.{name}: {value!r} not in {wf.combo_values(spec)[:12]}")
    if not any(info.get(n["class_type"], {}).get("output_node") for n in api.values()):
        problems.append("no output node")
    return problems


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_fits_the_servers_object_info(object_info, name):
    """On the newest supported ComfyUI the file fits as it is; an older one lacks only wf.ADDED_INPUTS (which it
    ignores: the tiny variants below run there with them), and the rest fits it exactly."""
    api = load(name)
    served = wf.for_server(api, object_info)
    dropped = {(n["class_type"], k) for nid, n in api.items() for k in n["inputs"] if k not in served[nid]["inputs"]}
    assert all(k in wf.ADDED_INPUTS[ct] for ct, k in dropped)
    if dropped:
        assert wf.missing_added_inputs(api, object_info)  # only a server older than the files' target drops any
        assert {p.split(": ", 1)[1] for p in check_against_object_info(api, object_info)} == {
            f"unknown input {k!r}" for _, k in dropped}  # the checker does see them
    assert check_against_object_info(served, object_info) == []
    assert wf.complete_api(served, object_info) == served, "every widget input is written (as Export (API) does)"


@pytest.mark.integration
def test_the_checker_catches_what_it_should(object_info):
    api = load("standin_wan21_t2v_14b")
    ks = wf.nodes_of(api, "KSampler")[0]
    bad = copy.deepcopy(api)
    bad[ks]["inputs"].update(steps=0, cfg="5", sampler_name="nope", bogus=1)
    bad[ks]["inputs"]["model"] = [wf.nodes_of(api, "VAELoader")[0], 0]
    del bad[ks]["inputs"]["seed"]
    latent = wf.nodes_of(api, "EmptyHunyuanLatentVideo")[0]
    bad[latent]["inputs"]["length"] = 80
    text = "\n".join(check_against_object_info(bad, object_info))
    for expected in ("steps: 0 outside", "cfg: '5' is not FLOAT", "'nope' not in", "unknown input 'bogus'",
                     "takes MODEL, gets VAE", "'seed' missing", "length: 80 is off the step-4 grid"):
        assert expected in text
    save = wf.nodes_of(api, "SaveVideo")[0]
    codec = {n: spec for n, spec, _ in wf.input_specs(object_info["SaveVideo"])}["codec"]
    bad = copy.deepcopy(api)
    bad[save]["inputs"]["codec"] = "h265"
    assert f"node {save} (SaveVideo).codec: 'h265' not in" in "\n".join(check_against_object_info(bad, object_info))
    if wf.spec_type(codec) == wf.DYNAMIC_COMBO:  # newer ComfyUI: the chosen codec's own inputs, "codec.<input>"
        bad[save]["inputs"].update({"codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": 99.0})
        text = "\n".join(check_against_object_info(bad, object_info))
        assert "codec.encoding.crf: 99.0 outside [0.0, 51.0]" in text
        del bad[save]["inputs"]["codec.encoding.crf"]
        text = "\n".join(check_against_object_info(bad, object_info))
        assert "required input 'codec.encoding.crf' missing" in text
        bad[save]["inputs"]["codec"] = "auto"  # auto has no inputs: the ones of h264 are now unknown
        assert "unknown input 'codec.encoding'" in "\n".join(check_against_object_info(bad, object_info))


@pytest.mark.integration
def test_ui_twins_agree_with_the_api_files(object_info, tmp_path):
    """Same nodes (ids, types, titles), same links, same widget values: the UI file read back as the editor would
    queue it is the API file; and the UI files are exactly what templates.py generates from the API graphs."""
    for name in NAMES:
        ui, api = load(name, api=False), load(name)
        assert wf.ui_to_api(ui, object_info) == wf.for_server(api, object_info), name
        notes = [n for n in ui["nodes"] if n["type"] in wf.UI_ONLY_TYPES]
        assert [n["type"] for n in notes] == ["MarkdownNote"] and "models" in notes[0]["widgets_values"][0].lower()
        ids = [n["id"] for n in ui["nodes"]]
        assert len(set(ids)) == len(ids) and ui["last_node_id"] == max(ids)
        assert ui["last_link_id"] == len(ui["links"]) and ui["version"] == 0.4
        for link in ui["links"]:  # both ends of every link name it, with matching slots and types
            lid, src, src_slot, dst, dst_slot, ltype = link
            out = next(n for n in ui["nodes"] if n["id"] == src)["outputs"][src_slot]
            inp = next(n for n in ui["nodes"] if n["id"] == dst)["inputs"][dst_slot]
            assert lid in out["links"] and inp["link"] == lid and out["type"] == ltype
    missing = wf.missing_added_inputs(load("standin_wan21_t2v_14b"), object_info)
    if missing:  # an older ComfyUI than the files are written for: the generator refuses it
        with pytest.raises(wf.WorkflowError, match=f"lacks {missing[0]}.*ComfyUI {templates.NEWEST_COMFYUI}"):
            templates.write_all(object_info, folder=tmp_path)
        assert not list(tmp_path.iterdir())
        return
    regenerated = templates.write_all(object_info, folder=tmp_path)
    for path in regenerated:
        shipped = FOLDER / path.relative_to(tmp_path)
        assert path.read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8"), (
            f"{shipped} is stale: run python -m wanid workflows --server URL")


@pytest.mark.integration
def test_template_browser_lists_the_ui_workflows(comfy_server):
    import requests

    listed = requests.get(comfy_server.url + "/workflow_templates", timeout=30).json()
    assert sorted(listed.get("ComfyUI-WanIdentity", [])) == NAMES  # UI files only: api/ is not listed
    for name in NAMES:  # the browser then fetches each one from here
        r = requests.get(f"{comfy_server.url}/api/workflow_templates/ComfyUI-WanIdentity/{name}.json", timeout=30)
        assert r.ok and r.json() == load(name, api=False)


# ---- tiny end-to-end variants

@pytest.mark.integration
@pytest.mark.parametrize("name", [n for n in NAMES if n not in SLOT])
def test_tiny_variant_runs_end_to_end(server, name):
    entry = server.queue(tiny_for(server, name))
    files = server.output_files(entry)
    if name == "face_crop_parse":
        from PIL import Image

        api = load(name)
        anchor = next(n for n, v in api.items() if wf.title_of(v).startswith("Save anchor"))
        crops = next(n for n, v in api.items() if wf.title_of(v) == "Save crops")
        anchor_files = [f for f in files if f.name.startswith(f"{anchor}_")]
        crop_files = [f for f in files if f.name.startswith(f"{crops}_")]
        assert len(anchor_files) == 1 and 1 <= len(crop_files) <= 4
        assert all(Image.open(f).size == (512, 512) for f in anchor_files + crop_files)
        texts = [t for out in entry["outputs"].values() for t in out.get("text", [])]
        assert any("retinaface" in t.lower() for t in texts), texts  # the info string reached PreviewAny
    else:
        videos = [f for f in files if f.suffix == ".mp4"]
        assert len(videos) == 1
        # the face swap keeps its target video's size (carphone cut to 80x96); the others sample 32x32
        check_video(videos[0], frames=5, size=(96, 80) if "faceswap" in name else (32, 32))


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SLOT))
def test_tiny_slot_variant_runs_end_to_end(slot_server, name):
    entry = slot_server.queue(tiny_for(slot_server, name))
    videos = [f for f in slot_server.output_files(entry) if f.suffix == ".mp4"]
    assert len(videos) == 1
    check_video(videos[0], frames=5, size=(32, 32))


# ---- in the real editor (headless Chromium: tests/frontend_browser.py)

@pytest.fixture(scope="module")
def editor(comfy_server):
    import requests

    from frontend_browser import APP, CHROMIUM, NO_CHROMIUM, Browser, wait_for_startup_graph

    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    requests.post(f"{comfy_server.url}/settings/Comfy.TutorialCompleted", json=True, timeout=10).raise_for_status()
    browser = Browser(CHROMIUM)
    try:
        browser.goto(comfy_server.url)
        browser.wait_for(f"{APP}?.graph && !!window.LiteGraph?.registered_node_types?.WanIDFaceCropParse",
                         timeout=120, what="the ComfyUI page with the pack's nodes")
        wait_for_startup_graph(browser)
        browser.app = APP
        yield browser
    finally:
        browser.close()


@pytest.mark.integration
@pytest.mark.parametrize("name", NAMES)
def test_editor_opens_the_template_and_queues_its_api_twin(editor, object_info, name):
    """What a user gets: the editor loads the file the template browser serves, and the prompt it would queue
    (graphToPrompt) is the API file, node for node, value for value (less the display-only widgets front-end
    extensions add, such as Preview Any's 'preview', which the server ignores)."""
    output = editor.evaluate("""(async () => {
        const app = %s;
        const r = await fetch('/api/workflow_templates/ComfyUI-WanIdentity/%s.json');
        await app.loadGraphData(await r.json(), true, true, '%s');
        return (await app.graphToPrompt()).output; })()""" % (editor.app, name, name))
    for node in output.values():
        known = {n for n, _, _ in wf.input_specs(object_info[node["class_type"]])}
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in known}
    assert output == wf.for_server(load(name), object_info)
