// ComfyUI-WanIdentity front-end: what users would rather see than read, on the pack's own nodes.
//  - a colour for every WanIdentity node, so the identity part of a graph stands out;
//  - the text a node returns in its UI output (ui "text": Identity Score's mean, Face Crop / Parse's info)
//    in a read-only box on the node; images a node returns (ui "images") are drawn by ComfyUI itself;
//  - right-click menu: "WanIdentity: preview outputs" wires a Preview Image (Preview Mask for MASK) to every
//    image output that has none yet (crops, masks, anchor, contact sheet, routing heatmap), and
//    "WanIdentity: help" opens the node's page (js/docs/<node id>.md, also shown in ComfyUI's node help).
// Only stable, long-lived front-end APIs are used (registerExtension, beforeRegisterNodeDef, onNodeCreated,
// onExecuted, getExtraMenuOptions, LiteGraph.createNode); anything else is feature-tested.
import { app } from "../../scripts/app.js";

const EXTENSION = "WanIdentity.NodeUI";
const CATEGORY = "WanIdentity";
const COLOR = "#2b4a3f";
const BGCOLOR = "#1f332c";
const INFO_WIDGET = "wanid_info";
const DOCS = new URL("./docs/", import.meta.url);

export function isWanIDNode(nodeData) {
  const category = nodeData?.category ?? "";
  return category === CATEGORY || category.startsWith(CATEGORY + "/") || (nodeData?.name ?? "").startsWith("WanID");
}

function textOf(output) {
  const t = output?.text;
  if (t == null) return null;
  return (Array.isArray(t) ? t : [t]).map(String).join("\n");
}

function infoWidget(node) {
  let w = node.widgets?.find((x) => x.name === INFO_WIDGET);
  if (w) return w;
  const make = window.comfyAPI?.widgets?.ComfyWidgets?.STRING;
  if (make) {
    w = make(node, INFO_WIDGET, ["STRING", { multiline: true }], app).widget;
    if (w.inputEl) {
      w.inputEl.readOnly = true;
      w.inputEl.style.opacity = "0.85";
      w.inputEl.style.fontSize = "11px";
    }
  } else {
    w = node.addWidget("text", INFO_WIDGET, "", () => {}, {});
  }
  w.serialize = false;                 // not saved in the workflow: it is a result, not a setting
  if (w.options) w.options.serialize = false;  // and never sent to the server as an input
  return w;
}

function showText(node, text) {
  const w = infoWidget(node);
  w.value = text;
  if (w.inputEl) w.inputEl.value = text;
  const size = node.computeSize?.();
  if (size && node.size) node.setSize?.([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1])]);
  node.setDirtyCanvas?.(true, true);
}

function previewOutputs(node) {
  const graph = node.graph ?? app.graph;
  let row = 0;
  (node.outputs ?? []).forEach((output, slot) => {
    const kind = output.type === "IMAGE" ? "PreviewImage" : output.type === "MASK" ? "MaskPreview" : null;
    if (!kind) return;
    const linked = (output.links ?? []).some((id) => {
      const link = graph.links?.get ? graph.links.get(id) : graph.links?.[id];
      const target = link && graph.getNodeById(link.target_id);
      return target && (target.type === "PreviewImage" || target.type === "MaskPreview");
    });
    if (linked) return;
    const preview = LiteGraph.createNode(kind);
    if (!preview) return;
    preview.pos = [node.pos[0] + node.size[0] + 60, node.pos[1] + row * 290];
    row += 1;
    graph.add(preview);
    node.connect(slot, preview, 0);
  });
  graph.setDirtyCanvas?.(true, true);
}

function openHelp(nodeData) {
  window.open(new URL(`${nodeData.name}.md`, DOCS).href, "_blank", "noopener");
}

app.registerExtension({
  name: EXTENSION,

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isWanIDNode(nodeData)) return;
    const proto = nodeType.prototype;

    const onNodeCreated = proto.onNodeCreated;
    proto.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color ??= COLOR;      // a colour the user picked (or a loaded workflow has) wins
      this.bgcolor ??= BGCOLOR;
      return r;
    };

    const onExecuted = proto.onExecuted;
    proto.onExecuted = function (output) {
      const r = onExecuted?.apply(this, arguments);
      const text = textOf(output);
      if (text != null) showText(this, text);
      return r;
    };

    const getExtraMenuOptions = proto.getExtraMenuOptions;
    proto.getExtraMenuOptions = function (canvas, options) {
      const r = getExtraMenuOptions?.apply(this, arguments);
      const ours = [{ content: "WanIdentity: help", callback: () => openHelp(nodeData) }];
      if ((this.outputs ?? []).some((o) => o.type === "IMAGE" || o.type === "MASK")) {
        ours.unshift({ content: "WanIdentity: preview outputs", callback: () => previewOutputs(this) });
      }
      options.push(null, ...ours);
      return r;
    };
  },
});

// For tests and other scripts: window.WanIdentityUI.previewOutputs(node) etc.
window.WanIdentityUI = { EXTENSION, isWanIDNode, previewOutputs, showText, infoWidget };
