"""Lynx's reference images from the pack (wanid/face/lynx_crop.py: the Ref adapter's 256 crop; wanid/face/align.py: the
112 ArcFace alignment) against the OFFICIAL `align_face` (modules/common/face_utils.py of github.com/bytedance/lynx),
run in the oracle's own process (scripts/lynx_oracle_env.py; skipped with the reason when it is not set up).
Real faces (carphone, landmarks from the bundled RetinaFace) and synthetic landmark sets: rotated, small, large,
and near the frame's edge (the black border)."""
import subprocess

import numpy as np
import pytest

import lynx_files
from wanid.face.align import ARCFACE_TEMPLATE, norm_crop
from wanid.face.lynx_crop import lynx_reference_crop

SCRIPT = r"""
import sys
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
from modules.common.face_utils import align_face
data = np.load(sys.argv[2])
out = {}
for i in range(len(data["frames"])):
    image, kpts = Image.fromarray(data["frames"][i]), data["landmarks"][i]
    out[f"ref{i}"] = np.asarray(align_face(image, kpts, extend_face_crop=True, face_size=256))
    out[f"arc{i}"] = np.asarray(align_face(image, kpts, extend_face_crop=False, face_size=112))
np.savez(sys.argv[3], **out)
"""


def faces():
    """(frames uint8 [N, H, W, 3], landmarks float32 [N, 5, 2]): carphone's face, and synthetic sets."""
    from face_files import carphone
    from wanid.face.detect import load_detector

    car = carphone()
    det = load_detector("retinaface_mobilenet")[0]
    frames, marks = [], []
    for i in (0, 45, 90):
        d = det.detect([car[i]], 640)[0]
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        frames.append(np.pad(car[i], ((40, 40), (40, 40), (0, 0))))  # one frame size for all cases
        marks.append(d.landmarks[k] + 40)
    rng = np.random.default_rng(3)
    h, w = frames[0].shape[:2]
    for angle, scale, centre in ((25, 1.6, (120, 110)), (-40, 0.8, (60, 50)), (10, 3.0, (200, 150)),
                                 (0, 2.2, (20, 30))):  # the last one hangs over the corner: black outside
        a = np.deg2rad(angle)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = (ARCFACE_TEMPLATE - 56.0) @ rot.T * scale + np.array(centre)
        frames.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        marks.append(pts + rng.normal(0, 1.5, pts.shape))  # not an exact similarity: least squares matters
    return np.stack(frames), np.stack(marks).astype(np.float32)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    python, repo, why = lynx_files.oracle()
    if why:
        pytest.skip(why)
    frames, marks = faces()
    folder = tmp_path_factory.mktemp("lynx_align")
    np.savez(folder / "in.npz", frames=frames, landmarks=marks)
    r = subprocess.run([python, "-c", SCRIPT, repo, str(folder / "in.npz"), str(folder / "out.npz")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"official align_face failed:\n{r.stderr[-4000:]}"
    out = np.load(folder / "out.npz")
    return frames, marks, [out[f"ref{i}"] for i in range(len(frames))], [out[f"arc{i}"] for i in range(len(frames))]


def _close(mine, theirs, what):
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype == np.uint8, what
    diff = np.abs(mine.astype(int) - theirs.astype(int))
    # the same similarity (least squares, 1e-15 apart) and the same cv2 warp: equal up to one rounding step on rare
    # pixels (random-noise frames make those most frequent: at most 0.11% of the pixels of a case here)
    assert diff.max() <= 1 and (diff > 0).mean() < 5e-3, f"{what}: max {diff.max()}, {(diff > 0).mean():.2%} differ"


def test_lynx_256_reference_crop_is_the_official_align_face(official):
    frames, marks, ref, _ = official
    for i, (frame, lm) in enumerate(zip(frames, marks)):
        mine = lynx_reference_crop(frame, lm)
        assert mine.shape == (256, 256, 3)
        _close(mine, ref[i], f"case {i}")
    corner = ref[-1]
    assert (corner.reshape(-1, 3) == 0).all(1).mean() > 0.05, "the corner case should reach outside the frame"


def test_112_arcface_alignment_is_the_official_one(official):
    """What FACE_CLIP.aligned holds (and Lynx's IR-SE50 embeds): insightface's norm_crop at 112."""
    frames, marks, _, arc = official
    for i, (frame, lm) in enumerate(zip(frames, marks)):
        _close(norm_crop(frame, lm.astype(np.float64), 112)[0], arc[i], f"case {i}")
