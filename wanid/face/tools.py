"""Which face models go together: the one rule, used by Face Crop / Parse and Identity Score (nodes/face.py), the
dataset builder (wanid/train/builder.py) and the trainer (wanid/train/__main__.py).

    detector   load_detector(kind): auto = antelopev2, else buffalo_l, else the bundled RetinaFace
    ArcFace    the detector's own pack's recognition model; without one (the bundled RetinaFace, or a pack holding
               only a detector) any ArcFace model in the insightface folder (find_recognition_model)
    parser     BiSeNet from a path, or None (the landmark-ellipse / keep-all fallback)
"""
import os
from dataclasses import dataclass
from typing import Optional


@dataclass
class FaceTools:
    detector: object                 # wanid.face.detect.Detector
    embedder: Optional[object]       # wanid.face.embed.ArcFaceEmbedder, or None (no ArcFace model found)
    parser: Optional[object] = None  # wanid.face.parsing.FaceParser, or None for the fallback
    name: str = ""


def recognition_model(pack, insightface_root):
    """(model: path or bytes, display name, where: a path that changes when the model does) of the ArcFace model
    that goes with a detector loaded from `pack` (None for the bundled RetinaFace); None when there is none."""
    if pack is not None and pack.recognition is not None:
        where = pack.recognition if isinstance(pack.recognition, str) else pack.where  # bytes: from a zip
        return pack.recognition, f"{pack.name}/{pack.recognition_file}", where
    from .model_files import find_recognition_model

    found = find_recognition_model(insightface_root) if insightface_root else None
    if found is None:
        return None
    name, path = found
    return path, f"{name}/{os.path.basename(path)}", path


def _build(key, make):
    return make()


def load_face_tools(kind, insightface_root, provider="auto", parser_path=None, name="", cache=_build):
    """FaceTools for detector `kind` (auto | antelopev2 | buffalo_l | retinaface_mobilenet). `cache(key, make)`
    lets a caller keep loaded models (the nodes do): key is ("detector", kind, root, provider) or
    ("arcface", where, provider); make() builds it."""
    from .detect import load_detector
    from .embed import ArcFaceEmbedder

    detector, pack = cache(("detector", kind, insightface_root, provider),
                           lambda: load_detector(kind, insightface_root, provider))
    embedder = None
    found = recognition_model(pack, insightface_root)
    if found is not None:
        model, label, where = found
        embedder = cache(("arcface", where, provider), lambda: ArcFaceEmbedder(model, provider, name=label))
    parser = None
    if parser_path:
        from .parsing import load_face_parser
        parser = load_face_parser(parser_path)
    return FaceTools(detector, embedder, parser, name)
