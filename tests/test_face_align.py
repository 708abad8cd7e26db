"""ArcFace alignment (our Umeyama vs insightface/skimage), the anchor score, and ArcFace embeddings on an ONNX
file with the real recognition signature (vs insightface's ArcFaceONNX)."""
import numpy as np
import pytest

from face_files import carphone, t1, write_arcface
from wanid.face import align as A
from wanid.face.anchor import choose_anchor, frontality
from wanid.face.detect import detect_with_ladder, load_detector


@pytest.fixture(scope="module")
def t1_landmarks():
    det = load_detector("retinaface_mobilenet", None, "CPU")[0]
    return detect_with_ladder(det, [t1()])[0].landmarks


def umeyama_f64_reference(src, dst):
    """Closed-form least-squares similarity via complex numbers: dst ~ a * src + b, a = s e^{i theta}."""
    z, w = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    a = (np.conj(zc) @ wc) / (np.conj(zc) @ zc)
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def test_umeyama_matches_closed_form_and_insightface(t1_landmarks):
    face_align = pytest.importorskip("insightface.utils.face_align")
    rng = np.random.default_rng(0)
    sets = list(t1_landmarks.astype(np.float64)) + [rng.uniform(0, 500, (5, 2)) for _ in range(5)]
    for lm in sets:
        ours = A.estimate_norm(lm)
        np.testing.assert_allclose(ours, umeyama_f64_reference(lm, A.ARCFACE_TEMPLATE), atol=1e-9)
        np.testing.assert_allclose(ours, face_align.estimate_norm(lm.astype(np.float32)), atol=1e-4)


def test_random_similarity_is_recovered_exactly():
    rng = np.random.default_rng(1)
    for _ in range(10):
        s, th = rng.uniform(0.2, 5), rng.uniform(-np.pi, np.pi)
        m = np.array([[s * np.cos(th), -s * np.sin(th), rng.uniform(-99, 99)],
                      [s * np.sin(th), s * np.cos(th), rng.uniform(-99, 99)]])
        src = rng.uniform(0, 300, (5, 2))
        np.testing.assert_allclose(A.umeyama(src, A.transform_points(m, src)), m, atol=1e-9)


def test_real_landmarks_align_onto_the_template():
    """The carphone man faces the camera: every aligned landmark lands within 5 px of the template (112 px);
    t1's turned heads fit worse, which is what frontality measures."""
    det = load_detector("retinaface_mobilenet", None, "CPU")[0]
    frames = carphone()[::5]
    for d, frame in zip(detect_with_ladder(det, list(frames)), frames):
        warped, m = A.norm_crop(frame, d.landmarks[0])
        assert warped.shape == (112, 112, 3)
        assert np.abs(A.transform_points(m, d.landmarks[0]) - A.ARCFACE_TEMPLATE).max() < 5.0


def test_norm_crop_matches_insightface(t1_landmarks):
    face_align = pytest.importorskip("insightface.utils.face_align")
    img = t1()
    for lm in t1_landmarks:
        warped, _ = A.norm_crop(img, lm)
        ref = face_align.norm_crop(img, lm)
        assert np.abs(warped.astype(int) - ref.astype(int)).max() <= 1


def test_frontality_falls_as_the_face_turns():
    tpl = A.ARCFACE_TEMPLATE
    turned = tpl.copy()
    turned[2, 0] += 15  # nose towards one eye: a head turned sideways
    assert frontality(tpl) > 0.99 and frontality(turned) < 0.5 * frontality(tpl)
    # invariant to where and how big the face is
    assert frontality(tpl * 3 + 40) == pytest.approx(frontality(tpl), abs=1e-9)


def test_anchor_prefers_sharp_frontal_confident_frames():
    frames = carphone()[:3].copy()
    det = load_detector("retinaface_mobilenet", None, "CPU")[0]
    lms = np.stack([d.landmarks[0] for d in detect_with_ladder(det, frames)])
    import cv2
    frames[0] = cv2.GaussianBlur(frames[0], (0, 0), 3)  # blurred
    scores = np.array([0.99, 0.99, 0.99])
    turned = lms.copy()
    turned[1, 2, 0] += 0.6 * (turned[1, 1, 0] - turned[1, 0, 0])  # frame 1: landmarks of a turned head
    best, total = choose_anchor(frames, turned, scores, np.array([True, True, True]))
    assert best == 2 and total[2] > total[0] and total[2] > total[1]
    best, total = choose_anchor(frames, turned, scores, np.array([True, True, False]))
    assert best != 2 and total[2] == 0


# ------------------------------------------------------------------------------------------------ ArcFace
@pytest.mark.parametrize("batched", [True, False])
def test_arcface_embeddings_match_insightface(tmp_path, t1_landmarks, batched):
    arc = pytest.importorskip("insightface.model_zoo.arcface_onnx")
    from wanid.face.embed import ArcFaceEmbedder
    path = str(write_arcface(tmp_path / "w600k_r50.onnx", batched=batched))
    ours = ArcFaceEmbedder(path, "CPU")
    assert ours.batched == batched and ours.provider == "CPUExecutionProvider"
    img = t1()
    emb = ours.embed([img] * len(t1_landmarks), t1_landmarks)
    assert emb.shape == (6, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref_model = arc.ArcFaceONNX(model_file=path)
    bgr = np.ascontiguousarray(img[..., ::-1])

    class Face:
        pass

    for k, lm in enumerate(t1_landmarks):
        f = Face()
        f.kps = lm
        ref = ref_model.get(bgr, f)
        ref = ref / np.linalg.norm(ref)
        assert float(ref @ emb[k]) > 1 - 1e-5
