"""ComfyUI workflows as plain JSON: API <-> UI conversion and the edits the queue command makes.

Two formats (both plain dicts):
  API  {"<id>": {"class_type": ..., "inputs": {name: value or [source_id, output_index]}, "_meta": {"title"}}}
       what POST /prompt takes ("Export (API)" in the UI).
  UI   {"nodes": [...], "links": [[id, from_node, from_slot, to_node, to_slot, type]], "version": 0.4, ...}
       what the editor saves and the template browser loads. A node's widget values are a list in the order of
       its widget inputs (required, then optional), with one extra value after each seed-like input (the
       "control after generate" combo); sockets and links carry the rest.
Converting needs the node schemas, i.e. a server's GET /object_info. Standard library only: no ComfyUI import.
"""
import copy
import json

# A V3 dynamic combo (SaveVideo's `codec` from ComfyUI ~0.2x on): a combo whose chosen option brings its own
# inputs, sent in the API prompt as "<combo>.<input>" keys ("codec": "h264", "codec.encoding": "re-encode", ...).
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC_COMBO}
# Inputs that ComfyUI versions newer than the oldest supported one (0.3.64) added to core nodes. The shipped
# files are written for the newest supported ComfyUI and carry them; an older server ignores inputs a node does
# not declare (execution drops them), and for_server() leaves them out as that server's editor would.
ADDED_INPUTS = {"CreateVideo": {"bit_depth"}}
# Editor-only nodes: never part of an API prompt.
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_MUTED, MODE_BYPASS = 2, 4


class WorkflowError(ValueError):
    """A workflow that cannot be used as asked (the message says what to change)."""


# ---- schemas (one node's entry of /object_info)

def input_specs(schema, inputs=None):
    """[(name, spec, required)] in the order the editor shows them: required inputs, then optional ones. A dynamic
    combo is followed by the inputs of its chosen option (the value in `inputs`, else its default), named
    "<combo>.<input>" as the API prompt names them."""
    found = []
    order = schema.get("input_order") or {}
    for section, required in (("required", True), ("optional", False)):
        specs = schema.get("input", {}).get(section) or {}
        names = order.get(section) or list(specs)
        for name in names:
            if name in specs:
                found += _with_dynamic(name, specs[name], required, inputs or {})
    return found


def _with_dynamic(name, spec, required, inputs):
    found = [(name, spec, required)]
    if spec_type(spec) != DYNAMIC_COMBO or not (name in inputs or required):
        return found
    value = inputs.get(name, default_value(spec))
    for option in spec_options(spec).get("options", []):
        if option.get("key") == value:  # as the server expands it: each input required as its own section says
            for section, sub_required in (("required", True), ("optional", False)):
                for sub, sub_spec in ((option.get("inputs") or {}).get(section) or {}).items():
                    found += _with_dynamic(f"{name}.{sub}", sub_spec, sub_required, inputs)
    return found


def spec_type(spec):
    """'COMBO' for a list of options (old style) or 'COMBO' type, else the type name ('INT', 'MODEL', ...)."""
    t = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(t, list) else t


def spec_options(spec):
    return spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_values(spec):
    t = spec[0]
    if t == DYNAMIC_COMBO:
        return [o["key"] for o in spec_options(spec).get("options", [])]
    return list(t) if isinstance(t, list) else list(spec_options(spec).get("options", []))


def is_widget(spec):
    return spec_type(spec) in WIDGET_TYPES and not spec_options(spec).get("forceInput")


def has_control(name, spec):
    """The editor adds a 'control after generate' widget (with its own saved value) after these inputs."""
    return bool(spec_options(spec).get("control_after_generate")) or name in ("seed", "noise_seed")


def default_value(spec):
    opts = spec_options(spec)
    if "default" in opts:
        return opts["default"]
    if spec_type(spec) in ("COMBO", DYNAMIC_COMBO):
        values = combo_values(spec)
        return values[0] if values else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec_type(spec))


def _schema(object_info, class_type, where):
    schema = object_info.get(class_type)
    if schema is None:
        raise WorkflowError(f"{where}: node type {class_type!r} is not installed on this server "
                            "(install the custom node pack that provides it, then restart ComfyUI)")
    return schema


def is_link(value):
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def is_ui_workflow(data):
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def load_workflow(path):
    """The JSON in `path`. Not JSON: WorkflowError; a file that cannot be read: OSError (the caller words it)."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WorkflowError(f"{path}: not valid JSON ({e}); give a workflow saved by ComfyUI (Save, or "
                                "Export (API))") from None


def complete_api(api, object_info):
    """`api` as the editor's "Export (API)" writes it: every widget input present (omitted ones get their
    default) and every node titled (its display name unless it has a title)."""
    api = copy.deepcopy(api)
    for nid, node in api.items():
        schema = _schema(object_info, node["class_type"], f"node {nid}")
        index = 0
        while index < len(specs := input_specs(schema, node["inputs"])):  # a combo's value may add inputs
            name, spec, _ = specs[index]
            index += 1
            if is_widget(spec) and name not in node["inputs"]:
                node["inputs"][name] = default_value(spec)
        node.setdefault("_meta", {}).setdefault("title", schema.get("display_name") or node["class_type"])
    return api


def for_server(api, object_info):
    """`api` as this server takes it (and its editor would queue it): the ADDED_INPUTS its node schemas lack,
    which it would ignore, left out. Any other input stays, known or not."""
    api = copy.deepcopy(api)
    for node in api.values():
        known = {n for n, _, _ in input_specs(object_info.get(node["class_type"]) or {}, node["inputs"])}
        for name in ADDED_INPUTS.get(node["class_type"], ()):
            if name not in known:
                node["inputs"].pop(name, None)
    return api


def missing_added_inputs(api, object_info):
    """["CreateVideo.bit_depth", ...]: the ADDED_INPUTS of `api`'s node types that this server does not have
    (it is older than the ComfyUI the files are written for)."""
    return sorted(f"{ct}.{name}" for ct in {n["class_type"] for n in api.values()} & set(ADDED_INPUTS)
                  for name in ADDED_INPUTS[ct]
                  if ct in object_info and name not in {n for n, _, _ in input_specs(object_info[ct])})


# ---- UI -> API

def ui_to_api(ui, object_info):
    """The API prompt of a UI workflow: editor-only nodes dropped, muted nodes dropped, bypassed nodes refused."""
    links = {}
    for link in ui.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"]]
        links[link[0]] = (str(link[1]), int(link[2]))
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: n.get("order", 0)):
        ntype, nid = node["type"], str(node["id"])
        if ntype in UI_ONLY_TYPES or node.get("mode", 0) == MODE_MUTED:
            continue
        if node.get("mode", 0) == MODE_BYPASS:
            raise WorkflowError(f"node {nid} ({ntype}) is bypassed; remove it or un-bypass it, then export again")
        schema = _schema(object_info, ntype, f"node {nid}")
        values = node.get("widgets_values") or []
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") in links}
        inputs, pos, index = {}, 0, 0
        while index < len(specs := input_specs(schema, inputs)):  # re-read: a dynamic combo's value adds inputs
            name, spec, _ = specs[index]
            index += 1
            if is_widget(spec):
                if isinstance(values, dict):
                    value = values.get(name, default_value(spec))
                else:
                    value = values[pos] if pos < len(values) else default_value(spec)
                    pos += 2 if has_control(name, spec) else 1
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = list(linked[name])
        entry = {"class_type": ntype, "inputs": inputs}
        entry["_meta"] = {"title": node.get("title") or schema.get("display_name") or ntype}
        api[nid] = entry
    # a link from a dropped (muted / editor-only) node cannot be sent
    for nid, node in api.items():
        for name, value in node["inputs"].items():
            if is_link(value) and str(value[0]) not in api:
                raise WorkflowError(f"node {nid} ({node['class_type']}) input {name!r} comes from node {value[0]}, "
                                    "which is muted or not a real node")
    return api


# ---- API -> UI

def _depths(api):
    """Longest path from a source node: the column a node goes in."""
    depth = {}

    def visit(nid, stack=()):
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise WorkflowError(f"the workflow has a cycle through node {nid}")
        ups = [str(v[0]) for v in api[nid]["inputs"].values() if is_link(v) and str(v[0]) in api]
        depth[nid] = 1 + max((visit(u, stack + (nid,)) for u in ups), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


# Nodes that show images, video or text once they ran: room for it, so they do not grow over their neighbours.
PREVIEW_TYPES = {"PreviewImage", "SaveImage", "SaveVideo", "SaveWEBM", "PreviewAny", "MaskPreview"}


def _node_size(class_type, n_widgets, n_sockets, n_outputs, multiline):
    width = 420 if multiline else 340
    height = 36 + 22 * max(n_sockets, n_outputs) + 26 * n_widgets + (150 if multiline else 0)
    if class_type in PREVIEW_TYPES:
        height += 260
    return [width, height]


def api_to_ui(api, object_info, notes=(), column_width=420, gap=40):
    """A UI workflow (schema 0.4) with the same nodes, ids, links and widget values as `api`, laid out in
    columns by depth. `notes`: [(title, markdown)] shown as MarkdownNote nodes left of the graph."""
    depth = _depths(api)
    order = sorted(api, key=lambda nid: (depth[nid], int(nid) if nid.isdigit() else nid))
    ids = {nid: int(nid) for nid in api if nid.isdigit()}
    if len(ids) != len(api):
        raise WorkflowError("API node ids must be integers to become a UI workflow (the editor numbers nodes)")
    links, outputs_links, ui_nodes = [], {}, []
    for nid in order:  # link ids in a stable order: by target node, then input order
        schema = _schema(object_info, api[nid]["class_type"], f"node {nid}")
        for name, spec, _ in input_specs(schema, api[nid]["inputs"]):
            value = api[nid]["inputs"].get(name)
            if is_link(value):
                src = str(value[0])
                src_schema = _schema(object_info, api[src]["class_type"], f"node {src}")
                src_type = src_schema["output"][value[1]]
                link_id = len(links) + 1
                links.append([link_id, ids[src], value[1], ids[nid], None, src_type])
                outputs_links.setdefault((src, value[1]), []).append(link_id)
    by_target = {}
    for link in links:
        by_target.setdefault(str(link[3]), []).append(link)
    column_y = {}
    for index, nid in enumerate(order):
        node = api[nid]
        schema = object_info[node["class_type"]]
        inputs, linked_widgets, widgets, multiline, n_extra = [], [], [], False, 0
        target_links = iter(by_target.get(nid, []))
        for name, spec, required in input_specs(schema, node["inputs"]):
            value = node["inputs"].get(name)
            if is_widget(spec):
                multiline |= bool(spec_options(spec).get("multiline"))
                if any(spec_options(spec).get(k) for k in ("image_upload", "video_upload", "animated_image_upload")):
                    n_extra += 1  # the editor's upload button
                widgets.append(default_value(spec) if value is None or is_link(value) else value)
                if has_control(name, spec):
                    widgets.append("fixed")
            entry = None
            if not is_widget(spec):
                entry = {"name": name, "type": spec_type(spec), "link": None}
            elif is_link(value):
                entry = {"name": name, "type": spec_type(spec), "widget": {"name": name}, "link": None}
            if entry is None:
                continue
            if is_link(value):
                entry["link"] = next(target_links)
            (linked_widgets if "widget" in entry else inputs).append(entry)
        # the editor puts a linked widget's socket after every plain socket (optional ones included)
        inputs += linked_widgets
        for slot, entry in enumerate(inputs):
            if entry["link"] is not None:
                entry["link"][4] = slot
                entry["link"] = entry["link"][0]
        outputs = []
        for slot, (otype, oname) in enumerate(zip(schema.get("output", []), schema.get("output_name", []))):
            outputs.append({"name": oname, "type": otype, "links": outputs_links.get((nid, slot), []),
                            "slot_index": slot})
        n_sockets = len(inputs)
        x = 60 + depth[nid] * column_width + (column_width if notes else 0)
        y = column_y.get(depth[nid], 60)
        size = _node_size(node["class_type"], len(widgets) + n_extra, n_sockets, len(outputs), multiline)
        column_y[depth[nid]] = y + size[1] + gap
        ui_node = {"id": ids[nid], "type": node["class_type"], "pos": [x, y], "size": size, "flags": {},
                   "order": index, "mode": 0, "inputs": inputs, "outputs": outputs,
                   "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets}
        title = node.get("_meta", {}).get("title")
        if title and title != (schema.get("display_name") or node["class_type"]):
            ui_node["title"] = title
        ui_nodes.append(ui_node)
    next_id = max(ids.values(), default=0)
    y = 60
    for title, text in notes:
        next_id += 1
        height = 60 + 20 * (text.count("\n") + 1)
        ui_nodes.append({"id": next_id, "type": "MarkdownNote", "pos": [40, y], "size": [column_width - 40, height],
                         "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "title": title, "properties": {}, "widgets_values": [text],
                         "color": "#432", "bgcolor": "#653"})
        y += height + gap
    return {"last_node_id": next_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


# ---- edits (the queue command)

def title_of(node):
    return (node.get("_meta") or {}).get("title") or ""


def resolve_node(api, ref):
    """A node id, or a node title (exact, case-insensitive) when no id matches."""
    ref = str(ref)
    if ref in api:
        return ref
    hits = [nid for nid, node in api.items() if title_of(node).lower() == ref.lower()]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise WorkflowError(f"--set: {len(hits)} nodes are titled {ref!r} (ids {', '.join(hits)}); use the id")
    known = ", ".join(f"{nid} ({node['class_type']}{': ' + title_of(node) if title_of(node) else ''})"
                      for nid, node in sorted(api.items(), key=lambda kv: _id_key(kv[0])))
    raise WorkflowError(f"--set: no node has id or title {ref!r}; nodes: {known}")


def _id_key(nid):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


def parse_value(text):
    """JSON when it parses (30, 5.0, true, "x", ["4", 0]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_set(api, assignment):
    """'node.input=value' (node = id or title; value JSON-parsed). Returns (node_id, input, value).

    A title may hold dots ("Load Wan 2.1 T2V 14B.unet_name") and so may a dynamic combo's input
    ("9.codec.encoding"): the node is the longest prefix before a dot that names one."""
    target, sep, raw = assignment.partition("=")
    ref, dot, name = target.rpartition(".")
    if not sep or not dot or not ref or not name:
        raise WorkflowError(f"--set {assignment!r}: expected NODE.INPUT=VALUE, e.g. --set 12.steps=30 "
                            "or --set 'KSampler.cfg=4.5'")
    cuts = [i for i, c in enumerate(target) if c == "."]
    first_error = None
    for cut in reversed(cuts):
        try:
            nid, name = resolve_node(api, target[:cut]), target[cut + 1:]
            break
        except WorkflowError as e:
            first_error = first_error or e
    else:
        raise first_error
    value = parse_value(raw)
    api[nid]["inputs"][name] = value
    return nid, name, value


def nodes_of(api, *class_types):
    return sorted((nid for nid, node in api.items() if node["class_type"] in class_types), key=_id_key)


TEXT_ENCODERS = ("CLIPTextEncode",)
SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced", "CFGGuider",
            "BasicGuider", "DualCFGGuider")


def prompt_nodes(api, which="positive"):
    """The text encoder nodes that make the `which` ('positive' / 'negative') conditioning.

    Rule: encoders titled '<which>...' win (the shipped workflows title theirs "Positive Prompt" / "Negative
    Prompt"); otherwise walk upstream from every sampler's `which` input, following an input of that name when
    a node has one (so IdentityTokenInject's positive leads to the positive encoder, not to the negative it also
    takes), else 'conditioning', else every linked input, and stop at text encoders."""
    titled = [nid for nid in nodes_of(api, *TEXT_ENCODERS) if title_of(api[nid]).lower().startswith(which)]
    if titled:
        return titled
    found, seen = [], set()
    stack = [api[s]["inputs"][which] for s in nodes_of(api, *SAMPLERS) if is_link(api[s]["inputs"].get(which))]
    while stack:
        nid = str(stack.pop()[0])
        if nid in seen or nid not in api:
            continue
        seen.add(nid)
        node = api[nid]
        if node["class_type"] in TEXT_ENCODERS:
            found.append(nid)
            continue
        ins = node["inputs"]
        for key in (which, "conditioning"):
            if is_link(ins.get(key)):
                stack.append(ins[key])
                break
        else:
            stack += [v for v in ins.values() if is_link(v)]
    return sorted(found, key=_id_key)


def set_prompt(api, text, which="positive"):
    targets = prompt_nodes(api, which)
    if not targets:
        raise WorkflowError(f"--{'prompt' if which == 'positive' else 'negative'}: found no CLIPTextEncode feeding "
                            f"a sampler's {which} input; set the text with --set NODE.text=...")
    for nid in targets:
        api[nid]["inputs"]["text"] = text
    return targets


SEED_INPUTS = ("seed", "noise_seed")


def set_seed(api, seed):
    done = []
    for nid in sorted(api, key=_id_key):
        for name in SEED_INPUTS:
            if name in api[nid]["inputs"] and not is_link(api[nid]["inputs"][name]):
                api[nid]["inputs"][name] = seed
                done.append((nid, name))
    if not done:
        raise WorkflowError("--seed: the workflow has no seed or noise_seed input")
    return done


VIDEO_EXTS = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v", ".gif"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# The loader of the video a workflow works ON (face swap's target, VACE's pose / depth video), as opposed to the
# identity reference: a LoadVideo or Reference Clip Loader whose title starts with this. `--video` fills it;
# `--reference` leaves it alone.
TARGET_VIDEO = "Target video"
VIDEO_INPUT = {"LoadVideo": "file", "WanIDReferenceClipLoader": "video"}


def is_target_video(node):
    return node["class_type"] in VIDEO_INPUT and title_of(node).lower().startswith(TARGET_VIDEO.lower())


def set_video(api, uploaded_name):
    """Point the workflow's target video loader(s) (titled "Target video...") at an uploaded video."""
    targets = [nid for nid in nodes_of(api, *VIDEO_INPUT) if is_target_video(api[nid])]
    if not targets:
        raise WorkflowError(f"--video: the workflow has no target video loader (a LoadVideo or Reference Clip "
                            f"Loader titled '{TARGET_VIDEO} ...'); use --reference for the identity reference, or "
                            f"--set NODE.{VIDEO_INPUT['LoadVideo']}=NAME for another video input")
    for nid in targets:
        api[nid]["inputs"][VIDEO_INPUT[api[nid]["class_type"]]] = uploaded_name
    return targets


def set_reference(api, uploaded_name, kind):
    """Point the workflow at an uploaded reference. kind 'video': every Reference Clip Loader's `video` (else
    LoadVideo's `file`). kind 'image': every LoadImage's `image`; without one, a LoadImage is added and wired to
    each Reference Clip Loader's `images` input (which takes priority over its video file). Target video loaders
    (set_video's) are never the reference."""
    clips = [nid for nid in nodes_of(api, "WanIDReferenceClipLoader") if not is_target_video(api[nid])]
    if kind == "video":
        if clips:
            for nid in clips:
                api[nid]["inputs"]["video"] = uploaded_name
            return clips
        loaders = [nid for nid in nodes_of(api, "LoadVideo") if not is_target_video(api[nid])]
        for nid in loaders:
            api[nid]["inputs"]["file"] = uploaded_name
        if not loaders:
            raise WorkflowError("--reference: the workflow has no Reference Clip Loader (or LoadVideo) node to "
                                "take a video")
        return loaders
    images = nodes_of(api, "LoadImage")
    if images:
        for nid in images:
            api[nid]["inputs"]["image"] = uploaded_name
        return images
    if not clips:
        raise WorkflowError("--reference: the workflow has no LoadImage or Reference Clip Loader node to take "
                            "an image")
    new_id = str(max((int(n) for n in api if n.isdigit()), default=0) + 1)
    api[new_id] = {"class_type": "LoadImage", "inputs": {"image": uploaded_name},
                   "_meta": {"title": "Reference image (wanid queue)"}}
    for nid in clips:
        api[nid]["inputs"]["images"] = [new_id, 0]
    return [new_id]
