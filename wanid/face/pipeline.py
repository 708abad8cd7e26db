"""A reference clip -> FaceClip: detect, choose one face per frame, Stand-In crop, parse + whiten, ArcFace
embed, pick the anchor. Plain numpy/torch; the ComfyUI node is a thin wrapper around process_clip."""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import cv2
import numpy as np
import torch

from ..errors import WanIDError
from ..face_clip import FaceClip
from .anchor import anchor_scores
from .crop import CROP_SIZE, apply_crop, crop_window
from .align import norm_crop
from .detect import DETECTION_LADDER, Detections, detect_with_ladder
from .lynx_crop import LYNX_REF_SIZE, lynx_reference_crop

FACE_CHOICES = ("largest", "index", "most_similar")
SMALL_FACE_PX = 64  # a face box side below this is upscaled more than 5x into the 512 crop: warn
NO_FACE_POLICIES = ("error", "skip", "whole_frame")


class NoFaceError(WanIDError, RuntimeError):
    """Frames without a usable face under on_no_face='error'; .frames lists their indices."""

    def __init__(self, message, frames):
        super().__init__(message)
        self.frames = frames


@dataclass
class ClipReport:
    detector: str = ""
    provider: str = ""
    frames_in: int = 0
    kept: List[int] = field(default_factory=list)          # source frame indices in the output, in order
    skipped: List[int] = field(default_factory=list)       # dropped (on_no_face=skip)
    whole_frame: List[int] = field(default_factory=list)   # source indices passed whole (on_no_face=whole_frame)
    faces_per_frame: List[int] = field(default_factory=list)
    sizes_used: List[int] = field(default_factory=list)    # ladder rung per frame, 0 = none found
    parser: str = ""
    embedder: str = ""
    anchor_total: Optional[np.ndarray] = None               # per output frame
    anchor_frontality: Optional[np.ndarray] = None
    anchor_sharpness: Optional[np.ndarray] = None
    small_faces: List[int] = field(default_factory=list)   # source frame indices whose face is < SMALL_FACE_PX
    smallest_face: int = 0                                 # its side in frame pixels
    smallest_upscale: float = 0.0                          # how much the crop enlarges that face

    def warnings(self):
        if not self.small_faces:
            return []
        return [f"WARNING: small face in frames {frame_ranges(self.small_faces)} (down to {self.smallest_face} px, "
                f"under {SMALL_FACE_PX} px): the 512x512 crop enlarges it up to {self.smallest_upscale:.0f}x and "
                "will look blurred or pixelated, which Stand-In and Slot-ID then copy. Use a closer or "
                "higher-resolution reference (max_side 0 on the loader keeps the full resolution)."]

    def text(self):
        lines = [f"detector: {self.detector} on {self.provider}",
                 f"frames: {self.frames_in} in, {len(self.kept)} out "
                 f"({len(self.kept) - len(self.whole_frame)} with a face)"]
        if self.skipped:
            lines.append(f"skipped (no face): {frame_ranges(self.skipped)}")
        if self.whole_frame:
            lines.append(f"whole frame, padded white (no face): {frame_ranges(self.whole_frame)}")
        rungs = sorted({s for s in self.sizes_used if s})
        if len(rungs) > 1 or (rungs and rungs[0] != DETECTION_LADDER[0]):
            lines.append(f"detection sizes used: {rungs}")
        lines.append(f"parser: {self.parser}")
        lines.append(f"embeddings: {self.embedder or 'none (no recognition model)'}")
        return "\n".join(lines + self.warnings())


def frame_ranges(idx):
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ", ".join(out)


def to_uint8(images):
    """ComfyUI IMAGE (float 0..1, torch or numpy) -> uint8 numpy [..., 3]."""
    a = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    return np.clip(np.rint(a[..., :3] * 255.0), 0, 255).astype(np.uint8)


def choose_face(det: Detections, choice="largest", index=0, similarity=None):
    """Index into det of the face to keep, or None. largest: biggest box area (Stand-In's rule); index: the
    index-th face counting left to right by box centre; most_similar: highest `similarity` [n]."""
    n = len(det)
    if n == 0:
        return None
    if choice == "largest":
        area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
        return int(np.argmax(area))
    if choice == "index":
        order = np.argsort((det.boxes[:, 0] + det.boxes[:, 2]) / 2, kind="stable")
        return int(order[index]) if 0 <= index < n else None
    if choice == "most_similar":
        if similarity is None:
            raise ValueError("face_choice most_similar needs the similarity of each face")
        return int(np.argmax(similarity))
    raise ValueError(f"face_choice: {choice!r} is not one of {', '.join(FACE_CHOICES)}")


def reference_embedding(image, detector, embedder):
    """ArcFace embedding of the largest face in one image (the `similar_to` input)."""
    frame = to_uint8(image)
    if frame.ndim == 4:
        frame = frame[0]
    det = detect_with_ladder(detector, [frame])[0]
    k = choose_face(det, "largest")
    if k is None:
        raise ValueError("similar_to: no face found in this image; give a photo where the face is visible")
    return embedder.embed([frame], det.landmarks[k:k + 1])[0]


def process_clip(frames, detector, *, embedder=None, parser=None, label_set="official",
                 normalization="official", fallback="keep_all", face_choice="largest", face_index=0,
                 similar_to=None, on_no_face="error", times=None, ladder=DETECTION_LADDER,
                 on_progress: Optional[Callable[[int, int], None]] = None):
    """frames: IMAGE [T, H, W, 3] float 0..1. Returns (FaceClip, ClipReport).

    similar_to: a reference embedding [D] (see reference_embedding) for face_choice='most_similar'.
    parser: a FaceParser, or None for the documented fallback (parsing.fallback_mask with `fallback`).
    """
    from . import parsing  # the parser module is only needed from here on

    if face_choice not in FACE_CHOICES:
        raise ValueError(f"face_choice: {face_choice!r} is not one of {', '.join(FACE_CHOICES)}")
    if on_no_face not in NO_FACE_POLICIES:
        raise ValueError(f"on_no_face: {on_no_face!r} is not one of {', '.join(NO_FACE_POLICIES)}")
    if face_choice == "most_similar" and (embedder is None or similar_to is None):
        raise ValueError("face_choice most_similar: needs a recognition model (glintr100.onnx or w600k_r50.onnx "
                         "next to the detector in models/insightface) and the similar_to image")
    if frames.ndim != 4 or frames.shape[-1] < 3 or frames.shape[0] == 0:
        raise ValueError(f"images: expected a batch [T, H, W, 3], got {tuple(frames.shape)}")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"images: the frames are {frames.shape[2]}x{frames.shape[1]} pixels (empty), so there is no "
                         "face to find; connect the loaded clip or photo (check a crop or resize node in front of it)")
    t = frames.shape[0]
    times = torch.arange(t, dtype=torch.float32) / 25.0 if times is None else \
        torch.as_tensor(times, dtype=torch.float32).reshape(-1).cpu()
    if times.shape[0] != t:
        raise ValueError(f"times: {times.shape[0]} values for {t} frames; connect the loader's own times output")

    with_embed = embedder is not None
    total_steps = t * (3 if with_embed else 2)
    done = [0]

    def tick(k):
        done[0] += k
        if on_progress:
            on_progress(min(done[0], total_steps), total_steps)

    u8 = to_uint8(frames)
    f32 = frames[..., :3].detach().cpu().float().numpy()
    report = ClipReport(detector=detector.name, provider=detector.provider, frames_in=t,
                        embedder=getattr(embedder, "name", "") if with_embed else "")

    dets = detect_with_ladder(detector, u8, ladder, on_progress=tick)
    report.faces_per_frame = [len(d) for d in dets]
    report.sizes_used = [d.size for d in dets]

    chosen, embeds = [], [None] * t
    for i, det in enumerate(dets):
        sim = None
        if face_choice == "most_similar" and len(det):
            cand = embedder.embed([u8[i]] * len(det), det.landmarks)
            sim = cand @ np.asarray(similar_to, np.float32)
        k = choose_face(det, face_choice, face_index, sim)
        if sim is not None and k is not None:
            embeds[i] = cand[k]
        chosen.append(k)

    missing = [i for i, k in enumerate(chosen) if k is None]
    if missing and on_no_face == "error":
        why = "no face found" if face_choice != "index" else f"no face number {face_index} (left to right)"
        shown = frame_ranges(missing)
        raise NoFaceError(
            f"{why} in {len(missing)} of {t} frames: {shown} (sizes tried: {list(ladder)}). Set on_no_face "
            "to 'skip' to drop them, or 'whole_frame' to pass the whole frame padded white (Stand-In's fallback).",
            missing)
    keep = [i for i in range(t) if not (chosen[i] is None and on_no_face == "skip")]
    report.skipped = [i for i in missing if on_no_face == "skip"]
    report.whole_frame = [i for i in missing if on_no_face == "whole_frame"]
    report.kept = keep
    if not keep:
        raise NoFaceError(f"no face in any of the {t} frames (sizes tried: {list(ladder)}); nothing left to "
                          "crop. Use on_no_face 'whole_frame' to pass the frames whole.", missing)

    n = len(keep)
    crops = np.empty((n, CROP_SIZE, CROP_SIZE, 3), np.float32)
    lm_crop = np.zeros((n, 5, 2), np.float32)
    lm_frame = np.zeros((n, 5, 2), np.float32)
    boxes = np.zeros((n, 4), np.float32)
    scores = np.zeros((n,), np.float32)
    valid = np.zeros((n,), bool)
    for j, i in enumerate(keep):
        k = chosen[i]
        box = None if k is None else dets[i].boxes[k]
        window = crop_window(u8[i].shape[:2], box)
        crops[j] = apply_crop(f32[i], window)
        if k is not None:
            valid[j] = True
            boxes[j] = dets[i].boxes[k]
            scores[j] = dets[i].scores[k]
            lm_frame[j] = dets[i].landmarks[k]
            lm_crop[j] = window.to_crop(lm_frame[j])
            side = int(max(boxes[j, 2] - boxes[j, 0], boxes[j, 3] - boxes[j, 1]))
            if side < SMALL_FACE_PX and not window.whole_frame:
                report.small_faces.append(i)
                if not report.smallest_face or side < report.smallest_face:
                    report.smallest_face, report.smallest_upscale = max(side, 1), window.scale
    np.clip(crops, 0.0, 1.0, out=crops)
    crops_t = torch.from_numpy(crops)

    if parser is not None:
        parsed = [0]

        def parse_tick(d, _total):
            tick(d - parsed[0])
            parsed[0] = d

        labels = parser.parse(crops_t, normalization=normalization, on_progress=parse_tick)
        white, mask = parsing.whiten_background(crops_t, labels, label_set)
        report.parser = f"{getattr(parser, 'source', '') or 'BiSeNet'}, whitened: {label_set}"
        tick(t - parsed[0])
    else:
        lm = torch.from_numpy(lm_crop).clone()
        lm[~torch.from_numpy(valid)] = float("nan")
        white, mask = parsing.fallback_mask(crops_t, lm, fallback)
        report.parser = f"none: fallback '{fallback}' (put parsing_bisenet.pth in models/face_parsing)"
        tick(t)

    # Aligned once from the source frame: the 112 ArcFace input (embeddings here, Lynx's ID embedding later) and
    # Lynx's 256 reference, not from the 1.5x crop, whose edge would cut the extended template.
    aligned = np.zeros((n, 112, 112, 3), np.uint8)
    lynx_crops = np.zeros((n, LYNX_REF_SIZE, LYNX_REF_SIZE, 3), np.float32)
    for j, i in enumerate(keep):
        if valid[j]:
            aligned[j] = norm_crop(u8[i], lm_frame[j], 112)[0]
            lynx_crops[j] = lynx_reference_crop(u8[i], lm_frame[j]) / 255.0

    emb = None
    if with_embed:
        todo = [j for j, i in enumerate(keep) if valid[j] and embeds[i] is None]
        if not todo:
            fresh = None
        elif embedder.input_size == 112:
            fresh = embedder.embed_aligned(aligned[todo])
        else:
            fresh = embedder.embed([u8[keep[j]] for j in todo], lm_frame[todo])
        dim = fresh.shape[1] if fresh is not None else \
            next((e.shape[0] for e in embeds if e is not None), 512)
        emb = np.zeros((n, dim), np.float32)
        for j, i in enumerate(keep):
            if embeds[i] is not None:
                emb[j] = embeds[i]
        if todo:
            emb[todo] = fresh
        tick(t)

    total, front, sharp = anchor_scores([u8[i] for i in keep], lm_frame, scores, valid)
    anchor = int(np.argmax(total)) if valid.any() else 0
    report.anchor_total, report.anchor_frontality, report.anchor_sharpness = total, front, sharp

    clip = FaceClip(
        aligned=torch.from_numpy(aligned.astype(np.float32) / 255.0), lynx_crops=torch.from_numpy(lynx_crops),
        crops=white.float().contiguous(), masks=mask.float().contiguous(), landmarks=torch.from_numpy(lm_crop),
        boxes=torch.from_numpy(boxes), scores=torch.from_numpy(scores), times=times[keep].clone(),
        valid=torch.from_numpy(valid), embeddings=None if emb is None else torch.from_numpy(emb),
        anchor_index=anchor, embedding_model=report.embedder, detector=f"{detector.name} ({detector.provider})")
    return clip, report


def contact_sheet(clip: FaceClip, report: Optional[ClipReport] = None, thumb=128, columns=8):
    """Preview IMAGE [1, H, W, 3]: the crops in a grid, green frame = face found, red = no face (whole
    frame passed), a thick gold frame on the anchor; source frame index and detection score written."""
    n = clip.num_frames
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    pad = 6
    sheet = np.full((rows * (thumb + pad) + pad, cols * (thumb + pad) + pad, 3), 38, np.uint8)
    crops = to_uint8(clip.crops)  # cv2 draws text on 8-bit images only
    src = report.kept if report is not None else list(range(n))
    for j in range(n):
        r, c = divmod(j, cols)
        y, x = pad + r * (thumb + pad), pad + c * (thumb + pad)
        tile = cv2.resize(crops[j], (thumb, thumb), interpolation=cv2.INTER_AREA)
        colour = (25, 200, 50) if bool(clip.valid[j]) else (230, 25, 25)
        width = 2
        if j == clip.anchor_index and bool(clip.valid[j]):
            colour, width = (255, 200, 0), 5
        cv2.rectangle(tile, (0, 0), (thumb - 1, thumb - 1), colour, width)
        label = f"#{src[j]} {float(clip.scores[j]):.2f}" if bool(clip.valid[j]) else f"#{src[j]} no face"
        if j == clip.anchor_index and bool(clip.valid[j]):
            label += " ANCHOR"
        cv2.rectangle(tile, (width, thumb - 16 - width), (thumb - width - 1, thumb - width - 1), (255, 255, 255), -1)
        cv2.putText(tile, label, (width + 2, thumb - width - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                    cv2.LINE_AA)
        sheet[y:y + thumb, x:x + thumb] = tile
    return torch.from_numpy(sheet.astype(np.float32) / 255.0)[None]
