"""Identity score: cosine similarity between the face in each generated frame and a reference face (ArcFace,
as ConsisID's FaceSim-Arc does), its mean over the frames where a face was found, and a plot of the curve.

Plain numpy/cv2: the ComfyUI node (nodes/identity_score.py) only picks the models and passes tensors in.
Frames without a face have no score (NaN here, null in JSON): they are marked on the plot and left out of
the mean, so a video that loses the face does not score as "a different person".
"""
import json
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np

from .face.detect import DETECTION_LADDER, detect_with_ladder
from .face.pipeline import choose_face, frame_ranges, to_uint8

REFERENCE_MODES = ("mean", "anchor")


# ------------------------------------------------------------------------------------------------- scores
def cosine_scores(embeddings: Sequence[Optional[np.ndarray]], reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each frame's embedding with the reference, float64 [T]; NaN where the frame has
    no embedding (None, or a row that is all NaN)."""
    ref = np.asarray(reference, np.float64).reshape(-1)
    ref_norm = np.linalg.norm(ref)
    if not np.isfinite(ref_norm) or ref_norm == 0:
        raise ValueError("reference embedding is zero or not finite")
    out = np.full(len(embeddings), np.nan)
    for i, e in enumerate(embeddings):
        if e is None:
            continue
        e = np.asarray(e, np.float64).reshape(-1)
        if e.shape != ref.shape:
            raise ValueError(f"frame {i}: embedding has {e.shape[0]} values, the reference {ref.shape[0]} "
                             "(embeddings from two different recognition models?)")
        n = np.linalg.norm(e)
        if np.isfinite(n) and n > 0:
            out[i] = float(e @ ref / (n * ref_norm))
    return out


def mean_score(scores: np.ndarray):
    """(mean over frames with a face, how many there were). The mean is NaN when no frame has a face."""
    s = np.asarray(scores, np.float64)
    ok = np.isfinite(s)
    n = int(ok.sum())
    return (float(s[ok].mean()) if n else float("nan")), n


def per_frame_json(scores: np.ndarray, digits=6) -> str:
    """JSON list of the per-frame scores, null for frames without a face."""
    return json.dumps([round(float(v), digits) if math.isfinite(v) else None for v in np.asarray(scores, float)])


def summary_text(scores: np.ndarray, model_name="") -> str:
    mean, n = mean_score(scores)
    t = len(scores)
    missing = [i for i, v in enumerate(scores) if not math.isfinite(v)]
    head = f"identity similarity: mean {mean:.4f} over {n}/{t} frames with a face" if n else \
        f"identity similarity: no face in any of the {t} frames"
    lines = [head]
    if n:
        s = np.asarray(scores, float)[np.isfinite(scores)]
        lines.append(f"min {s.min():.4f}, max {s.max():.4f}")
    if missing:
        lines.append(f"no face: frames {frame_ranges(missing)}")
    if model_name:
        lines.append(f"model: {model_name}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- embeddings
def unit(v):
    v = np.asarray(v, np.float64)
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n == 0:
        raise ValueError("cannot normalise a zero embedding")
    return (v / n).astype(np.float32)


def arcface_faces(detector, embedder, ladder=DETECTION_LADDER):
    """An embed_faces function (frames uint8 [T, H, W, 3] -> list of embeddings or None) for score_frames:
    the largest face of each frame (as ConsisID scores, and as Stand-In crops), ArcFace-aligned and embedded."""

    def embed_faces(frames, on_progress=None):
        dets = detect_with_ladder(detector, frames, ladder, on_progress=on_progress)
        found = [(i, choose_face(d, "largest")) for i, d in enumerate(dets)]
        found = [(i, k) for i, k in found if k is not None]
        out: List[Optional[np.ndarray]] = [None] * len(frames)
        if found:
            emb = embedder.embed([frames[i] for i, _ in found], np.stack([dets[i].landmarks[k] for i, k in found]))
            for (i, _), e in zip(found, emb):
                out[i] = e
        return out

    return embed_faces


def score_frames(frames, reference: np.ndarray, embed_faces: Callable, on_progress=None) -> np.ndarray:
    """Per-frame similarity of IMAGE frames [T, H, W, 3] (float 0..1 or uint8) with a reference embedding.
    embed_faces: frames uint8 -> one embedding (or None: no face) per frame, e.g. arcface_faces(...)."""
    u8 = frames if getattr(frames, "dtype", None) == np.uint8 else to_uint8(frames)
    if u8.ndim != 4 or u8.shape[0] == 0:
        raise ValueError(f"images: expected a batch [T, H, W, 3], got {tuple(u8.shape)}")
    return cosine_scores(embed_faces(u8, on_progress=on_progress), reference)


def reference_from_images(images, embed_faces) -> np.ndarray:
    """Unit mean embedding of the largest face of each reference image (images without a face are ignored)."""
    u8 = to_uint8(images)
    if u8.ndim == 3:
        u8 = u8[None]
    found = [e for e in embed_faces(u8) if e is not None]
    if not found:
        raise ValueError("reference: no face found in the reference image(s); give a photo where the face "
                         "is clearly visible, or connect a FACE_CLIP from Face Crop / Parse")
    return unit(np.mean([unit(e) for e in found], axis=0))


def reference_from_clip(clip, mode="mean", embedder=None):
    """(unit reference embedding, how it was made) from a FACE_CLIP.

    The clip's stored embeddings are used when they come from the same recognition model as `embedder`;
    otherwise (other model, or a clip made without one) its valid crops are embedded again with `embedder`,
    aligned with the clip's landmarks (crop pixels). mode: mean = mean of the valid frames' embeddings
    (steadier), anchor = the anchor frame's only."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference_mode: {mode!r} is not one of {', '.join(REFERENCE_MODES)}")
    valid = np.asarray(clip.valid, bool).reshape(-1)
    if not valid.any():
        raise ValueError("reference: the FACE_CLIP has no frame with a face (all were passed whole); use a clip "
                         "where Face Crop / Parse found the face")
    name = getattr(embedder, "name", "") if embedder is not None else ""
    stored = clip.embeddings
    if stored is not None and (embedder is None or not clip.embedding_model or clip.embedding_model == name):
        emb, source = np.asarray(stored, np.float32), f"FACE_CLIP embeddings ({clip.embedding_model or 'unnamed'})"
    elif embedder is not None and getattr(embedder, "prefers_aligned", False) and getattr(clip, "aligned", None) is not None:
        idx = np.flatnonzero(valid)  # the 112 alignment from the source frame, as Lynx Apply embeds it
        fresh = embedder.embed_aligned(to_uint8(clip.aligned[idx]))
        emb = np.zeros((valid.shape[0], fresh.shape[1]), np.float32)
        emb[idx] = fresh
        source = f"FACE_CLIP aligned faces embedded with {name}"
    elif embedder is not None:
        idx = np.flatnonzero(valid)
        crops = to_uint8(clip.crops[idx])
        fresh = embedder.embed(list(crops), np.asarray(clip.landmarks[idx], np.float32))
        emb = np.zeros((valid.shape[0], fresh.shape[1]), np.float32)
        emb[idx] = fresh
        why = "made without a recognition model" if stored is None else f"embedded with {clip.embedding_model}"
        source = f"FACE_CLIP crops re-embedded with {name} (the clip was {why})"
    else:
        raise ValueError("reference: the FACE_CLIP has no embeddings and no recognition model is loaded")
    if mode == "anchor":
        a = int(clip.anchor_index)
        if not valid[a]:
            raise ValueError(f"reference: the clip's anchor frame {a} has no face; use reference_mode mean")
        return unit(emb[a]), source + ", anchor frame"
    return unit(np.mean([unit(e) for e in emb[valid]], axis=0)), source + f", mean of {int(valid.sum())} frames"


# ------------------------------------------------------------------------------------------------- plot
CURVE = (40, 110, 230)
NO_FACE = (220, 40, 40)
MEAN = (240, 150, 0)
GRID = (228, 228, 228)
INK = (60, 60, 60)
PAPER = (255, 255, 255)


@dataclass
class PlotLayout:
    """Where things are on the plot: frame i at column x(i), score v at row y(v)."""
    width: int
    height: int
    frames: int
    lo: float
    hi: float
    left: int = 58
    right: int = 18
    top: int = 34
    bottom: int = 44

    def x(self, i):
        span = self.width - self.left - self.right
        if self.frames <= 1:
            return self.left + span // 2
        return int(round(self.left + i * span / (self.frames - 1)))

    def y(self, v):
        span = self.height - self.top - self.bottom
        v = min(max(float(v), self.lo), self.hi)
        return int(round(self.top + (self.hi - v) * span / (self.hi - self.lo)))

    @property
    def floor(self):
        return self.height - self.bottom


def plot_layout(scores, width=768, height=320):
    s = np.asarray(scores, float)
    ok = s[np.isfinite(s)]
    lo = 0.0 if not ok.size else min(0.0, math.floor(ok.min() * 5) / 5)
    return PlotLayout(width, height, len(s), max(lo, -1.0), 1.0)


def _text(img, text, org, scale=0.42, colour=INK, thickness=1):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)


def render_plot(scores, width=768, height=320, title="identity similarity per frame (cosine)"):
    """The per-frame curve as an RGB uint8 image [height, width, 3] and its PlotLayout.

    Blue line and dots: frames with a face (the line breaks across frames without one). Red band and x on
    the time axis: frames without a face. Orange dashed line: the mean over frames with a face."""
    s = np.asarray(scores, float)
    lay = plot_layout(s, width, height)
    img = np.full((height, width, 3), PAPER, np.uint8)
    x0, x1 = lay.left, width - lay.right
    # horizontal grid every 0.2, labelled
    v = lay.lo
    while v <= lay.hi + 1e-9:
        y = lay.y(v)
        cv2.line(img, (x0, y), (x1, y), GRID if abs(v) > 1e-9 else (190, 190, 190), 1)
        _text(img, f"{v:.1f}", (8, y + 4), 0.4)
        v = round(v + 0.2, 6)
    # no-face frames: a pale red band over the plot height (tinted once, so neighbours join without seams)
    # and a red x on the time axis
    missing = np.flatnonzero(~np.isfinite(s))
    half = (x1 - x0) / (2 * max(len(s) - 1, 1))
    band = np.zeros(width, bool)
    for i in missing:
        band[max(int(round(lay.x(i) - half)), x0):min(int(round(lay.x(i) + half)), x1) + 1] = True
    area = img[lay.top:lay.floor, band]
    img[lay.top:lay.floor, band] = (area.astype(np.int16) * 3 // 4 + np.array(NO_FACE, np.int16) // 4).astype(np.uint8)
    for i in missing:
        x = lay.x(i)
        cv2.line(img, (x - 4, lay.floor + 4), (x + 4, lay.floor + 12), NO_FACE, 2)
        cv2.line(img, (x - 4, lay.floor + 12), (x + 4, lay.floor + 4), NO_FACE, 2)
    cv2.line(img, (x0, lay.floor), (x1, lay.floor), INK, 1)
    cv2.line(img, (x0, lay.top), (x0, lay.floor), INK, 1)
    # the curve, broken where a frame has no face
    for i in range(len(s) - 1):
        if np.isfinite(s[i]) and np.isfinite(s[i + 1]):
            cv2.line(img, (lay.x(i), lay.y(s[i])), (lay.x(i + 1), lay.y(s[i + 1])), CURVE, 2, cv2.LINE_AA)
    radius = 3 if len(s) <= 160 else 1
    for i in np.flatnonzero(np.isfinite(s)):
        cv2.circle(img, (lay.x(i), lay.y(s[i])), radius, CURVE, -1, cv2.LINE_AA)
    mean, n = mean_score(s)
    if n:
        y = lay.y(mean)
        for xa in range(x0, x1, 12):
            cv2.line(img, (xa, y), (min(xa + 6, x1), y), MEAN, 2)
    # frame numbers on the time axis (about 8 ticks)
    step = max(1, int(math.ceil(len(s) / 8)))
    for i in range(0, len(s), step):
        _text(img, str(i), (lay.x(i) - 4, height - 10), 0.38)
    _text(img, title, (x0, 20), 0.5)
    if n < len(s):
        (tw, _), _ = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        _text(img, "red x: no face", (x0 + tw + 16, 20), 0.45, NO_FACE)
    label = f"mean {mean:.3f} ({n}/{len(s)} frames with a face)" if n else "no face in any frame"
    (tw, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    _text(img, label, (x1 - tw, 20), 0.5, MEAN if n else NO_FACE)
    return img, lay
