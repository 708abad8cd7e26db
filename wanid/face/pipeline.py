"""A reference clip -> FaceClip: detect, choose one face per frame, Stand-In crop, parse + whiten, ArcFace
embed, pick the anchor. Plain numpy/torch; the ComfyUI node is a thin wrapper around process_clip."""
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import cv2
import numpy as np
import torch

from ..errors import WanIDError, check_finite
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


def unit_to_uint8(values):
    """Values in 0..1 (torch or numpy, any shape: an IMAGE, a MASK) -> uint8 numpy, rounded."""
    a = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, np.float32)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def to_uint8(images):
    """ComfyUI IMAGE (float 0..1, torch or numpy) -> uint8 numpy [..., 3]."""
    return unit_to_uint8((images if isinstance(images, torch.Tensor) else np.asarray(images, np.float32))[..., :3])


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
    check_finite(image[..., :3] if isinstance(image, torch.Tensor) else image, "similar_to", NON_FINITE_FIX)
    frame = to_uint8(image)
    if frame.ndim == 4:
        frame = frame[0]
    det = detect_with_ladder(detector, [frame])[0]
    k = choose_face(det, "largest")
    if k is None:
        raise ValueError("similar_to: no face found in this image; give a photo where the face is visible")
    return embedder.embed([frame], det.landmarks[k:k + 1])[0]


NON_FINITE_FIX = ("an image holds colours in 0..1; connect the loaded clip or photo (a VAE decode of a broken "
                  "latent gives NaN frames)")


def process_clip(frames, detector, *, embedder=None, parser=None, label_set="official",
                 normalization="official", fallback="keep_all", face_choice="largest", face_index=0,
                 similar_to=None, on_no_face="error", times=None, ladder=DETECTION_LADDER,
                 on_progress: Optional[Callable[[int, int], None]] = None):
    """frames: IMAGE [T, H, W, 3] float 0..1. Returns (FaceClip, ClipReport).

    similar_to: a reference embedding [D] (see reference_embedding) for face_choice='most_similar'.
    parser: a FaceParser, or None for the documented fallback (parsing.fallback_mask with `fallback`).
    The stages, in order: check the inputs, detect, choose one face per frame, apply on_no_face, crop, parse and
    whiten, align, embed, pick the anchor.
    """
    check_inputs(frames, face_choice, on_no_face, embedder, similar_to)
    t = frames.shape[0]
    times = frame_times(times, t)
    tick = _Steps(t * (3 if embedder is not None else 2), on_progress)  # detect, parse (and embed) per frame
    u8 = to_uint8(frames)
    f32 = frames[..., :3].detach().cpu().float().numpy()
    report = ClipReport(detector=detector.name, provider=detector.provider, frames_in=t,
                        embedder=getattr(embedder, "name", "") if embedder is not None else "")

    dets = detect_with_ladder(detector, u8, ladder, on_progress=tick)
    report.faces_per_frame = [len(d) for d in dets]
    report.sizes_used = [d.size for d in dets]
    chosen, embeds = choose_faces(dets, u8, face_choice, face_index, embedder, similar_to)
    keep = frames_to_keep(chosen, on_no_face, face_choice, face_index, ladder, report)
    faces = crop_faces(u8, f32, dets, chosen, keep, report)
    crops_t = torch.from_numpy(faces.crops)
    white, mask = whiten(crops_t, faces, parser, label_set, normalization, fallback, report, tick)
    aligned, lynx_crops = align_faces(u8, keep, faces)
    emb = embed_faces(embedder, u8, keep, faces, aligned, embeds, tick) if embedder is not None else None
    anchor = pick_anchor(u8, keep, faces, report)

    clip = FaceClip(
        aligned=torch.from_numpy(aligned.astype(np.float32) / 255.0), lynx_crops=torch.from_numpy(lynx_crops),
        crops=white.float().contiguous(), masks=mask.float().contiguous(), landmarks=torch.from_numpy(faces.lm_crop),
        boxes=torch.from_numpy(faces.boxes), scores=torch.from_numpy(faces.scores), times=times[keep].clone(),
        valid=torch.from_numpy(faces.valid), embeddings=None if emb is None else torch.from_numpy(emb),
        anchor_index=anchor, embedding_model=report.embedder, detector=f"{detector.name} ({detector.provider})",
        raw_crops=crops_t)
    return clip, report


class _Steps:
    """The progress callback in steps: detection, parsing and (with an embedder) embedding each count every frame."""

    def __init__(self, total, on_progress):
        self.total, self.done, self.on_progress = total, 0, on_progress

    def __call__(self, k):
        self.done += k
        if self.on_progress:
            self.on_progress(min(self.done, self.total), self.total)


def check_inputs(frames, face_choice, on_no_face, embedder, similar_to):
    """Refuse options and frames process_clip cannot work with, naming the input."""
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
    # NaN would become black pixels for the detector and NaN in the crops: refused where it enters
    check_finite(frames[..., :3], "images", NON_FINITE_FIX)


def frame_times(times, t):
    """Seconds of each frame: the loader's `times`, else index / 25 (Stand-In's frame rate)."""
    times = torch.arange(t, dtype=torch.float32) / 25.0 if times is None else \
        torch.as_tensor(times, dtype=torch.float32).reshape(-1).cpu()
    if times.shape[0] != t:
        raise ValueError(f"times: {times.shape[0]} values for {t} frames; connect the loader's own times output")
    return times


def choose_faces(dets, u8, face_choice, face_index, embedder, similar_to):
    """(index into each frame's detections or None, the chosen face's embedding where most_similar computed it)."""
    chosen, embeds = [], [None] * len(dets)
    for i, det in enumerate(dets):
        sim = None
        if face_choice == "most_similar" and len(det):
            cand = embedder.embed([u8[i]] * len(det), det.landmarks)
            sim = cand @ np.asarray(similar_to, np.float32)
        k = choose_face(det, face_choice, face_index, sim)
        if sim is not None and k is not None:
            embeds[i] = cand[k]
        chosen.append(k)
    return chosen, embeds


def frames_to_keep(chosen, on_no_face, face_choice, face_index, ladder, report):
    """The source frames that go on (on_no_face: 'error' raises NoFaceError naming the frames without a face,
    'skip' drops them, 'whole_frame' keeps them); written into the report."""
    t = len(chosen)
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
    return keep


@dataclass
class Faces:
    """The kept frames' Stand-In crops and the chosen face of each (zeros where the frame has none)."""
    crops: np.ndarray      # [N, 512, 512, 3] float32 in 0..1
    lm_crop: np.ndarray    # [N, 5, 2] landmarks in the crop
    lm_frame: np.ndarray   # [N, 5, 2] landmarks in the source frame
    boxes: np.ndarray      # [N, 4] in the source frame
    scores: np.ndarray     # [N]
    valid: np.ndarray      # [N] bool: a face was found


def crop_faces(u8, f32, dets, chosen, keep, report):
    """Stand-In's crop of each kept frame around its chosen face (the whole frame padded when it has none); small
    faces are noted in the report."""
    n = len(keep)
    faces = Faces(np.empty((n, CROP_SIZE, CROP_SIZE, 3), np.float32), np.zeros((n, 5, 2), np.float32),
                  np.zeros((n, 5, 2), np.float32), np.zeros((n, 4), np.float32), np.zeros((n,), np.float32),
                  np.zeros((n,), bool))
    for j, i in enumerate(keep):
        k = chosen[i]
        box = None if k is None else dets[i].boxes[k]
        window = crop_window(u8[i].shape[:2], box)
        faces.crops[j] = apply_crop(f32[i], window)
        if k is None:
            continue
        faces.valid[j] = True
        faces.boxes[j] = dets[i].boxes[k]
        faces.scores[j] = dets[i].scores[k]
        faces.lm_frame[j] = dets[i].landmarks[k]
        faces.lm_crop[j] = window.to_crop(faces.lm_frame[j])
        side = int(max(faces.boxes[j, 2] - faces.boxes[j, 0], faces.boxes[j, 3] - faces.boxes[j, 1]))
        if side < SMALL_FACE_PX and not window.whole_frame:
            report.small_faces.append(i)
            if not report.smallest_face or side < report.smallest_face:
                report.smallest_face, report.smallest_upscale = max(side, 1), window.scale
    np.clip(faces.crops, 0.0, 1.0, out=faces.crops)
    return faces


def whiten(crops_t, faces, parser, label_set, normalization, fallback, report, tick):
    """(crops on white, mask of the kept pixels): the parser's labels painted white, or without a parser the
    documented fallback (parsing.fallback_mask)."""
    from . import parsing  # the parser module is only needed from here on

    t = report.frames_in  # the steps count the clip's frames, skipped ones included
    if parser is not None:
        parsed = [0]

        def parse_tick(d, _total):
            tick(d - parsed[0])
            parsed[0] = d

        labels = parser.parse(crops_t, normalization=normalization, on_progress=parse_tick)
        white, mask = parsing.whiten_background(crops_t, labels, label_set)
        report.parser = f"{getattr(parser, 'source', '') or 'BiSeNet'}, whitened: {label_set}"
        tick(t - parsed[0])
        return white, mask
    lm = torch.from_numpy(faces.lm_crop).clone()
    lm[~torch.from_numpy(faces.valid)] = float("nan")
    white, mask = parsing.fallback_mask(crops_t, lm, fallback)
    report.parser = f"none: fallback '{fallback}' (put parsing_bisenet.pth in models/face_parsing)"
    tick(t)
    return white, mask


def align_faces(u8, keep, faces):
    """(the 112 ArcFace alignment uint8, Lynx's 256 reference float 0..1) of each face, zeros without one.
    Aligned once from the source frame: the 112 ArcFace input (embeddings here, Lynx's ID embedding later) and
    Lynx's 256 reference, not from the 1.5x crop, whose edge would cut the extended template."""
    n = len(keep)
    aligned = np.zeros((n, 112, 112, 3), np.uint8)
    lynx_crops = np.zeros((n, LYNX_REF_SIZE, LYNX_REF_SIZE, 3), np.float32)
    for j, i in enumerate(keep):
        if faces.valid[j]:
            aligned[j] = norm_crop(u8[i], faces.lm_frame[j], 112)[0]
            lynx_crops[j] = lynx_reference_crop(u8[i], faces.lm_frame[j]) / 255.0
    return aligned, lynx_crops


def embed_faces(embedder, u8, keep, faces, aligned, embeds, tick):
    """[N, D] float32 ArcFace embeddings (zeros without a face): those most_similar computed, the rest from the
    112 alignment (a 112 model) or the source frame and its landmarks."""
    n = len(keep)
    todo = [j for j, i in enumerate(keep) if faces.valid[j] and embeds[i] is None]
    if not todo:
        fresh = None
    elif embedder.input_size == 112:
        fresh = embedder.embed_aligned(aligned[todo])
    else:
        fresh = embedder.embed([u8[keep[j]] for j in todo], faces.lm_frame[todo])
    dim = fresh.shape[1] if fresh is not None else \
        next((e.shape[0] for e in embeds if e is not None), 512)
    emb = np.zeros((n, dim), np.float32)
    for j, i in enumerate(keep):
        if embeds[i] is not None:
            emb[j] = embeds[i]
    if todo:
        emb[todo] = fresh
    tick(len(u8))
    return emb


def pick_anchor(u8, keep, faces, report):
    """The output frame whose face is best as Stand-In's reference (wanid.face.anchor), 0 when none has one."""
    total, front, sharp = anchor_scores([u8[i] for i in keep], faces.lm_frame, faces.scores, faces.valid)
    report.anchor_total, report.anchor_frontality, report.anchor_sharpness = total, front, sharp
    return int(np.argmax(total)) if faces.valid.any() else 0


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
