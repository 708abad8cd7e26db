"""The Stand-In reference crop (official FaceProcessor.process), step for step.

1. Box to ints (truncation, like `map(int, bbox)`); if it touches all four borders within 10 px, or there
   is no face, the whole frame is used.
2. Square of side int(max(w, h) * 1.5) centred on the box centre ((x1 + x2) // 2), half = side // 2,
   CLAMPED to the frame (nothing is filled outside the frame).
3. Pad the (possibly non-square) crop to a square with white, (d // 2) before and the rest after.
4. Resize to 512 x 512 with cv2.INTER_AREA.

The official code runs on uint8; here the resampling runs on float32 (the official uint8 result is this
one rounded, within 1/255). Works on uint8 or float frames [H, W, 3]; white is 255 or 1.0 accordingly.
"""
from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 512
BORDER_THRESH = 10
FACE_CROP_SCALE = 1.5


@dataclass
class CropWindow:
    """Where the crop came from: frame rows/cols [top:bottom, left:right], then white padding."""
    left: int
    top: int
    right: int
    bottom: int
    pad_left: int
    pad_top: int
    side: int            # side of the padded square, in frame pixels
    whole_frame: bool    # True when the whole frame was used (no face, or face fills the frame)

    @property
    def scale(self):
        """Frame pixels -> crop pixels."""
        return CROP_SIZE / self.side

    def to_crop(self, points):
        """Map frame pixel coordinates [..., 2] to crop pixel coordinates (same convention as cv2.resize,
        pixel centres at +0.5)."""
        p = np.asarray(points, np.float64)
        off = np.array([self.pad_left - self.left, self.pad_top - self.top], np.float64)
        return ((p + off + 0.5) * self.scale - 0.5)


def _pad_amounts(h, w):
    """White padding (top, bottom, left, right) that makes h x w square, as the official _pad_to_square."""
    if h > w:
        p = (h - w) // 2
        return 0, 0, p, h - w - p
    if w > h:
        p = (w - h) // 2
        return p, w - h - p, 0, 0
    return 0, 0, 0, 0


def crop_window(frame_hw, box=None, border_thresh=BORDER_THRESH, scale=FACE_CROP_SCALE):
    """The crop window for a face box (x1, y1, x2, y2 in frame pixels) or the whole frame when box is None."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    whole = box is None
    if not whole:
        x1, y1, x2, y2 = (int(v) for v in box)  # truncation toward zero, as map(int, bbox)
        whole = x1 <= border_thresh and y1 <= border_thresh and x2 >= w - border_thresh and y2 >= h - border_thresh
    if whole:
        left, top, right, bottom = 0, 0, w, h
    else:
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        half = int(max(x2 - x1, y2 - y1) * scale) // 2
        left, top = max(cx - half, 0), max(cy - half, 0)
        right, bottom = min(cx + half, w), min(cy + half, h)
        if right <= left or bottom <= top:
            raise ValueError(f"face box {tuple(box)} lies outside the {w}x{h} frame")
    ch, cw = bottom - top, right - left
    pt, _, pl, _ = _pad_amounts(ch, cw)
    return CropWindow(left, top, right, bottom, pl, pt, max(ch, cw), whole)


def apply_crop(frame, window, size=CROP_SIZE):
    """Cut, pad white, resize with INTER_AREA. Returns float32 in the frame's range (0..1 for float input)."""
    white = 255.0 if frame.dtype == np.uint8 else 1.0
    part = np.ascontiguousarray(frame[window.top:window.bottom, window.left:window.right], dtype=np.float32)
    pt, pb, pl, pr = _pad_amounts(*part.shape[:2])
    if pt or pb or pl or pr:
        part = cv2.copyMakeBorder(part, pt, pb, pl, pr, cv2.BORDER_CONSTANT, value=[white] * 3)
    return cv2.resize(part, (size, size), interpolation=cv2.INTER_AREA)


def standin_crop(frame, box=None):
    """(crop [512, 512, 3] float32, CropWindow) of the Stand-In recipe for one frame."""
    window = crop_window(frame.shape[:2], box)
    return apply_crop(frame, window), window
