"""The Stand-In crop against a float64 reference written from the recipe (standin.md / official FaceProcessor)."""
import cv2
import numpy as np
import pytest

from wanid.face.crop import CROP_SIZE, crop_window, standin_crop


def area_matrix(n, size):
    """[size, n] weights of cv2.INTER_AREA. Shrinking: output pixel i is the mean of the input over
    [i * n / size, (i + 1) * n / size), input pixels being unit-wide constant cells. Enlarging: OpenCV's
    own formula (the same overlap fractions, except that at an exact cell boundary its float rounding
    takes the left cell: 234 -> 512 px, output 256 reads input 116, not 117); the official code runs
    the same cv2 call, so the reference follows it."""
    if size > n:
        inv = size / n
        scale = 1.0 / inv
        m = np.zeros((size, n))
        for dx in range(size):
            sx = int(np.floor(dx * scale))
            fx = float(np.float32((dx + 1) - (sx + 1) * inv))
            fx = 0.0 if fx <= 0 else fx - np.floor(fx)
            m[dx, min(sx, n - 1)] += 1 - fx
            m[dx, min(sx + 1, n - 1)] += fx
        return m
    scale = n / size
    m = np.zeros((size, n))
    for i in range(size):
        a, b = i * scale, (i + 1) * scale
        for k in range(int(np.floor(a)), min(int(np.ceil(b)), n)):
            m[i, k] = max(0.0, min(b, k + 1) - max(a, k)) / scale
    return m


def reference_crop(frame, box, white=1.0):
    """Float64 transcription of the recipe: int box, all-borders test (10 px), 1.5x square clamped to the
    frame, white padding split (d // 2 first), area resize to 512."""
    frame = frame.astype(np.float64)
    h, w = frame.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
    if box is None or (x1 <= 10 and y1 <= 10 and x2 >= w - 10 and y2 >= h - 10):
        part = frame
    else:
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        half = int(max(x2 - x1, y2 - y1) * 1.5) // 2
        part = frame[max(cy - half, 0):min(cy + half, h), max(cx - half, 0):min(cx + half, w)]
    ch, cw = part.shape[:2]
    side = max(ch, cw)
    sq = np.full((side, side, 3), white)
    top, left = (side - ch) // 2, (side - cw) // 2
    sq[top:top + ch, left:left + cw] = part
    ry, rx = area_matrix(side, CROP_SIZE), area_matrix(side, CROP_SIZE)
    return np.einsum("iy,yxc,jx->ijc", ry, sq, rx, optimize=True)


def test_window_worked_examples():
    # box well inside a 200x100 frame: 40x50 box -> side int(50 * 1.5) = 75, half 37 around (70, 45)
    w = crop_window((100, 200), (50.9, 20.2, 90.7, 70.9))
    assert (w.left, w.top, w.right, w.bottom, w.pad_left, w.pad_top, w.side) == (33, 8, 107, 82, 0, 0, 74)
    # near the left edge: clamped to x = 0, 57 wide x 74 high, padded 8 left / 9 right
    w = crop_window((100, 200), (0.5, 30, 40, 80))
    assert (w.left, w.top, w.right, w.bottom, w.pad_left, w.pad_top, w.side) == (0, 18, 57, 92, 8, 0, 74)
    assert not w.whole_frame
    # a box touching all four borders within 10 px -> whole frame; 9 px off one border is not enough
    assert crop_window((100, 200), (10, 10, 190, 90)).whole_frame
    assert not crop_window((100, 200), (11, 10, 190, 90)).whole_frame
    w = crop_window((100, 200), None)
    assert w.whole_frame and (w.left, w.top, w.right, w.bottom, w.pad_top, w.side) == (0, 0, 200, 100, 50, 200)


@pytest.mark.parametrize("seed", range(4))
def test_crop_matches_float64_reference(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(60, 1100)), int(rng.integers(60, 1100))
    frame = rng.random((h, w, 3)).astype(np.float32)
    boxes = [None, (-3.7, -2.2, w + 4.1, h + 1.0)]  # no face; a box over the whole frame
    for _ in range(4):
        x1, y1 = rng.uniform(-10, w - 20), rng.uniform(-10, h - 20)
        bw, bh = rng.uniform(8, w * 0.9), rng.uniform(8, h * 0.9)
        boxes.append((x1, y1, x1 + bw, y1 + bh))
    for box in boxes:
        ours, _ = standin_crop(frame, box)
        ref = reference_crop(frame, box)
        assert ours.shape == (CROP_SIZE, CROP_SIZE, 3) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0, err_msg=f"box {box} in {w}x{h}")


def test_uint8_path_is_the_official_uint8_result_within_one_level():
    """The official code resizes uint8; ours resizes float32: the same picture up to uint8 rounding."""
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (300, 220, 3), dtype=np.uint8)
    box = (30.2, 120.9, 110.4, 230.0)
    x1, y1, x2, y2 = map(int, box)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) * 1.5) // 2
    part = frame[max(cy - half, 0):min(cy + half, 300), max(cx - half, 0):min(cx + half, 220)]
    hh, ww = part.shape[:2]
    d = abs(hh - ww)
    if hh > ww:
        part = cv2.copyMakeBorder(part, 0, 0, d // 2, d - d // 2, cv2.BORDER_CONSTANT, value=[255] * 3)
    else:
        part = cv2.copyMakeBorder(part, d // 2, d - d // 2, 0, 0, cv2.BORDER_CONSTANT, value=[255] * 3)
    official = cv2.resize(part, (512, 512), interpolation=cv2.INTER_AREA).astype(np.float32)
    ours, _ = standin_crop(frame, box)  # uint8 in -> 0..255 float out
    assert np.abs(ours - official).max() <= 1.0


def test_padding_is_exactly_white_and_points_map_into_the_crop():
    frame = np.zeros((120, 160, 3), np.float32)
    frame[60:64, 4:8] = 0.5  # a small grey square near the left border
    box = (0, 30, 40, 80)     # forces a clamp on the left -> white padding on the left of the crop
    crop, win = standin_crop(frame, box)
    assert win.pad_left > 0
    pad_px = int(np.floor(win.pad_left * win.scale))
    assert np.all(crop[:, :pad_px] == 1.0)
    frame_end = int(np.ceil((win.pad_left + win.right - win.left) * win.scale))
    assert np.all(crop[:, pad_px + 1:frame_end - 1] < 1.0)  # the frame part sits between the white pads
    assert np.all(crop[:, frame_end:] == 1.0)
    # centroid of the grey square in the crop = its mapped centroid from the frame
    ys, xs = np.nonzero(crop[..., 0] == 0.5)
    got = np.array([xs.mean(), ys.mean()])
    expected = win.to_crop(np.array([5.5, 61.5]))  # pixel-centre coordinates of the square's centre
    np.testing.assert_allclose(got, expected, atol=0.5)
