"""Identity Score: the cosine/mean core against float64 numpy, the plot's marks, and the node in a real ComfyUI
on real faces (carphone) with a random-weight ArcFace ONNX of the real signature (no real weights can be had
here), checked against an independent alignment (insightface's norm_crop) and the same network in torch.
An independent judge (dlib's face descriptors) checks that the scoring ranks same vs different person."""
import json
import math
import os

import numpy as np
import pytest
import torch

from face_files import TinyArcFace, carphone, write_arcface, write_ir_se50
from wanid.face_clip import FaceClip
from wanid.face.model_files import find_recognition_model
from wanid.score import (CURVE, MEAN, NO_FACE, cosine_scores, mean_score, per_frame_json,
                         reference_from_clip, render_plot, score_frames, summary_text)


# ------------------------------------------------------------------------------------------------- helpers
def random_embeddings(rng, t, d=512, missing=()):
    e = rng.standard_normal((t, d)).astype(np.float32)
    return [None if i in missing else e[i] for i in range(t)]


# ------------------------------------------------------------------------------------------------- core
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cosine_and_mean_match_float64_and_skip_frames_without_a_face(seed):
    rng = np.random.default_rng(seed)
    t = 17
    missing = set(rng.choice(t, size=5, replace=False).tolist())
    emb = random_embeddings(rng, t, missing=missing)
    ref = rng.standard_normal(512).astype(np.float32) * 3.0  # not unit: cosine must normalise
    s = cosine_scores(emb, ref)
    for i in range(t):
        if i in missing:
            assert math.isnan(s[i])
        else:
            a, b = emb[i].astype(np.float64), ref.astype(np.float64)
            expected = a.dot(b) / math.sqrt(a.dot(a) * b.dot(b))
            assert s[i] == pytest.approx(expected, abs=1e-12)
    mean, n = mean_score(s)
    kept = [s[i] for i in range(t) if i not in missing]
    assert n == t - len(missing)
    assert mean == pytest.approx(math.fsum(kept) / len(kept), abs=1e-12)
    # JSON: one entry per frame, null exactly where no face
    parsed = json.loads(per_frame_json(s))
    assert len(parsed) == t
    assert [i for i, v in enumerate(parsed) if v is None] == sorted(missing)
    assert all(abs(parsed[i] - s[i]) < 1e-6 for i in range(t) if i not in missing)


def test_scale_invariance_and_identical_faces_score_one():
    rng = np.random.default_rng(5)
    e = rng.standard_normal(512)
    s = cosine_scores([e, 7.5 * e, -e, np.full(512, np.nan)], e * 0.01)
    assert s[0] == pytest.approx(1.0, abs=1e-12) and s[1] == pytest.approx(1.0, abs=1e-12)
    assert s[2] == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(s[3])  # a NaN row is "no face", not a score


def test_no_face_at_all_gives_nan_mean_and_says_so():
    s = cosine_scores([None, None], np.ones(4))
    mean, n = mean_score(s)
    assert n == 0 and math.isnan(mean)
    assert json.loads(per_frame_json(s)) == [None, None]
    assert "no face in any of the 2 frames" in summary_text(s)


def test_bad_embeddings_are_named():
    with pytest.raises(ValueError, match="zero"):
        cosine_scores([np.ones(3)], np.zeros(3))
    with pytest.raises(ValueError, match="frame 1: embedding has 4 values, the reference 3"):
        cosine_scores([np.ones(3), np.ones(4)], np.ones(3))


def test_score_frames_passes_uint8_frames_and_marks_what_the_embedder_missed():
    rng = np.random.default_rng(3)
    frames = torch.rand(6, 16, 20, 3)
    emb = random_embeddings(rng, 6, missing={1, 4})
    seen = {}

    def embed_faces(u8, on_progress=None):
        seen["frames"] = u8
        return emb

    ref = rng.standard_normal(512)
    s = score_frames(frames, ref, embed_faces)
    assert seen["frames"].dtype == np.uint8 and seen["frames"].shape == (6, 16, 20, 3)
    assert np.array_equal(seen["frames"], np.clip(np.rint(frames.numpy() * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(np.isnan(s), [False, True, False, False, True, False])


def _clip(emb, valid, anchor=0, model="antelopev2/glintr100.onnx"):
    t = len(valid)
    return FaceClip(crops=torch.rand(t, 512, 512, 3), masks=torch.ones(t, 512, 512),
                    landmarks=torch.tensor([[[190., 230.], [320., 230.], [255., 300.], [205., 370.], [305., 370.]]]
                                           ).repeat(t, 1, 1),
                    boxes=torch.zeros(t, 4), scores=torch.ones(t), times=torch.arange(t) / 25.0,
                    valid=torch.tensor(valid), embeddings=None if emb is None else torch.from_numpy(emb),
                    anchor_index=anchor, embedding_model=model)


class FakeEmbedder:
    """Records what it is asked to embed; embedding = mean colour repeated (distinct per crop)."""
    name = "buffalo_l/w600k_r50.onnx"

    def __init__(self):
        self.calls = []

    def embed(self, frames, landmarks):
        self.calls.append((len(frames), np.asarray(landmarks).copy()))
        return np.stack([np.tile(np.asarray(f, np.float64).mean((0, 1)), 4) + 1.0 for f in frames]).astype(np.float32)


def test_clip_reference_mean_and_anchor_use_only_valid_frames():
    rng = np.random.default_rng(7)
    emb = rng.standard_normal((5, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    valid = [True, False, True, True, False]
    clip = _clip(emb, valid, anchor=2)
    fake = FakeEmbedder()
    fake.name = "antelopev2/glintr100.onnx"  # same model as the clip: its stored embeddings are used
    ref, how = reference_from_clip(clip, "mean", fake)
    expected = emb[[0, 2, 3]].astype(np.float64).mean(0)
    np.testing.assert_allclose(ref, expected / np.linalg.norm(expected), atol=1e-6)
    assert fake.calls == [] and "mean of 3 frames" in how
    ref, how = reference_from_clip(clip, "anchor", fake)
    np.testing.assert_allclose(ref, emb[2], atol=1e-6)
    with pytest.raises(ValueError, match="anchor frame 1 has no face"):
        reference_from_clip(_clip(emb, valid, anchor=1), "anchor", fake)
    with pytest.raises(ValueError, match="no frame with a face"):
        reference_from_clip(_clip(emb, [False] * 5), "mean", fake)


def test_clip_from_another_model_is_re_embedded_from_its_valid_crops():
    rng = np.random.default_rng(8)
    emb = rng.standard_normal((4, 512)).astype(np.float32)
    clip = _clip(emb, [True, True, False, True])
    fake = FakeEmbedder()  # buffalo_l: the clip says antelopev2, the spaces differ
    ref, how = reference_from_clip(clip, "mean", fake)
    assert len(fake.calls) == 1 and fake.calls[0][0] == 3
    np.testing.assert_allclose(fake.calls[0][1], clip.landmarks[[0, 1, 3]].numpy())
    crops = np.clip(np.rint(clip.crops[[0, 1, 3]].numpy() * 255), 0, 255)
    e = np.stack([np.tile(c.mean((0, 1)), 4) + 1.0 for c in crops])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(ref, e.mean(0) / np.linalg.norm(e.mean(0)), atol=1e-5)
    assert "re-embedded with buffalo_l" in how
    # a clip made without a recognition model is embedded the same way
    fake2 = FakeEmbedder()
    ref2, how2 = reference_from_clip(_clip(None, [True, True, False, True]), "mean", fake2)
    assert len(fake2.calls) == 1 and "without a recognition model" in how2


# ------------------------------------------------------------------------------------------------- plot
def _near(img, x, y, colour, r=2, tol=40):
    patch = img[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].astype(int)
    return bool((np.abs(patch - np.array(colour)).sum(-1) <= tol).any())


def test_plot_marks_scores_no_face_frames_and_mean():
    s = np.array([0.9, 0.8, np.nan, 0.6, 0.7, np.nan, np.nan, 0.2, -0.3, 0.5])
    img, lay = render_plot(s, width=640, height=300)
    assert img.shape == (300, 640, 3) and img.dtype == np.uint8
    assert lay.lo == pytest.approx(-0.4) and lay.hi == 1.0  # the axis reaches below the lowest score
    for i, v in enumerate(s):
        x = lay.x(i)
        if np.isfinite(v):
            assert _near(img, x, lay.y(v), CURVE), i  # a dot on the curve
            assert not _near(img, x, lay.floor + 8, NO_FACE, r=3), i
        else:
            assert _near(img, x, lay.floor + 8, NO_FACE, r=3), i  # red x on the time axis
            column = img[lay.top + 5:lay.floor - 5, x].astype(int)
            assert (column[:, 0] > column[:, 2] + 30).mean() > 0.8, i  # red band behind the frame
    # the line breaks across no-face frames: nothing blue halfway between frames 1 and 3
    xm = (lay.x(1) + lay.x(3)) // 2
    assert not _near(img, xm, lay.y(0.7), CURVE, r=4)
    # and joins frames with a face
    xm = (lay.x(0) + lay.x(1)) // 2
    assert _near(img, xm, lay.y(0.85), CURVE, r=2)
    mean, _ = mean_score(s)
    y = lay.y(mean)
    xs = range(lay.left + 2, 640 - lay.right - 2)
    assert sum(_near(img, x, y, MEAN, r=0, tol=60) for x in xs) > 0.3 * len(xs)  # dashed line


def test_plot_without_faces_has_no_curve_and_one_frame_is_centred():
    img, lay = render_plot([np.nan, np.nan, np.nan])
    plot = img[lay.top:lay.floor, lay.left + 1:]
    assert not (np.abs(plot.astype(int) - np.array(CURVE)).sum(-1) <= 40).any()
    img, lay = render_plot([0.5], width=400)
    assert lay.x(0) == lay.left + (400 - lay.left - lay.right) // 2
    assert _near(img, lay.x(0), lay.y(0.5), CURVE)


def test_find_recognition_model_without_a_detector(tmp_path):
    assert find_recognition_model(str(tmp_path)) is None
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    (tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"x")
    assert find_recognition_model(str(tmp_path)) == ("buffalo_l", str(tmp_path / "models/buffalo_l/w600k_r50.onnx"))
    write_arcface(tmp_path / "antelopev2" / "renamed.onnx")  # found by its signature, antelopev2 first
    assert find_recognition_model(str(tmp_path)) == ("antelopev2", str(tmp_path / "antelopev2" / "renamed.onnx"))


# ------------------------------------------------------------------------------------------------- node
@pytest.fixture()
def insightface_dir(comfy_pack, tmp_path, monkeypatch):
    """An empty models/insightface for the node (ComfyUI's own folder list is restored afterwards)."""
    import folder_paths

    from wanid_pack.nodes import paths
    paths.register_model_folders()
    _, exts = folder_paths.folder_names_and_paths["insightface"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path)], exts))
    return tmp_path


def _node(comfy_pack):
    from wanid_pack.nodes.identity_score import WanIDIdentityScore
    return WanIDIdentityScore


@pytest.mark.integration
def test_schema_is_the_public_contract(comfy_pack):
    schema = _node(comfy_pack).GET_SCHEMA()
    assert schema.node_id == "WanIDIdentityScore" and schema.category == "WanIdentity"
    assert [i.id for i in schema.inputs] == ["images", "reference", "detector", "provider", "reference_mode",
                                             "recognition"]
    assert [i.optional for i in schema.inputs][4:] == [True, True]
    assert schema.inputs[5].options[0] == "insightface (onnx)"  # the first option: ComfyUI's default
    assert schema.inputs[1].get_io_type() == "FACE_CLIP,IMAGE"
    assert [o.display_name or o.id for o in schema.outputs] == ["mean", "per_frame", "plot"]
    assert [o.get_io_type() for o in schema.outputs] == ["FLOAT", "STRING", "IMAGE"]
    assert schema.is_output_node


@pytest.mark.integration
def test_without_an_arcface_model_the_error_says_where_to_put_it(insightface_dir, comfy_pack):
    frames = torch.from_numpy(carphone()[:1]).float() / 255
    with pytest.raises(FileNotFoundError) as e:
        _node(comfy_pack).execute(frames, frames, "auto", "CPU")
    msg = str(e.value)
    assert "glintr100.onnx" in msg and "w600k_r50.onnx" in msg
    assert os.path.join(str(insightface_dir), "models", "antelopev2") in msg


def _independent_embedding(frame, landmarks):
    """insightface's own alignment and the ArcFace network in float64 torch (not onnxruntime)."""
    from insightface.utils import face_align
    aligned = face_align.norm_crop(frame, landmarks.astype(np.float32), 112)
    x = torch.from_numpy((aligned.astype(np.float64) - 127.5) / 127.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        return TinyArcFace().double().eval()(x)[0].numpy()  # the network write_arcface saved


@pytest.mark.integration
def test_node_on_real_faces_with_a_random_weight_arcface(insightface_dir, comfy_pack):
    from wanid.face.detect import load_detector
    write_arcface(insightface_dir / "models" / "antelopev2" / "glintr100.onnx")
    car = carphone()
    idx = [0, 20, 40, 60, 80, 100]
    frames = torch.from_numpy(car[idx]).float() / 255
    frames[2] = 0.0   # black: no face
    frames[5] = 1.0   # white: no face
    ref = torch.from_numpy(car[0:1]).float() / 255
    out = _node(comfy_pack).execute(frames, ref, "auto", "CPU")
    mean, per_frame, plot = out.args
    values = json.loads(per_frame)
    assert [v is None for v in values] == [False, False, True, False, False, True]
    assert values[0] == pytest.approx(1.0, abs=1e-5)  # the reference frame itself
    assert mean == pytest.approx(np.mean([v for v in values if v is not None]), abs=1e-5)
    assert plot.shape == (1, 320, 768, 3) and 0.0 <= float(plot.min()) and float(plot.max()) <= 1.0
    # independent: the bundled detector's largest face, insightface's alignment, torch float64 network
    det = load_detector("retinaface_mobilenet")[0]
    u8 = np.clip(np.rint(frames.numpy() * 255), 0, 255).astype(np.uint8)
    ref_e = None
    for j, i in enumerate(idx):
        d = det.detect([car[i]], 640)[0]
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        e = _independent_embedding(u8[j] if values[j] is not None else car[i], d.landmarks[k])
        if j == 0:
            ref_e = e
        if values[j] is not None:
            assert values[j] == pytest.approx(e @ ref_e / np.linalg.norm(e) / np.linalg.norm(ref_e), abs=1e-4), j
    # the UI gets the plot as a preview and the summary as text
    assert out.ui["images"] and out.ui["images"][0]["type"] == "temp"
    assert "mean" in out.ui["text"][0] and "no face: frames 2, 5" in out.ui["text"][0]


@pytest.mark.integration
def test_node_with_a_face_clip_reference(insightface_dir, comfy_pack):
    write_arcface(insightface_dir / "models" / "antelopev2" / "glintr100.onnx")
    rng = np.random.default_rng(11)
    emb = rng.standard_normal((3, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    clip = _clip(emb, [True, True, False], model="antelopev2/glintr100.onnx")
    frames = torch.from_numpy(carphone()[[10, 30]]).float() / 255
    node = _node(comfy_pack)
    m1 = node.execute(frames, clip, "auto", "CPU", reference_mode="mean")
    m2 = node.execute(frames, clip, "auto", "CPU", reference_mode="anchor")
    ref_only = node.execute(frames, torch.from_numpy(carphone()[10:11]).float() / 255, "auto", "CPU")
    # per-frame scores are cosines of one set of frame embeddings with each reference
    f = np.array(json.loads(ref_only.args[1]))
    assert f[0] == pytest.approx(1.0, abs=1e-5)
    s_mean, s_anchor = np.array(json.loads(m1.args[1])), np.array(json.loads(m2.args[1]))
    assert not np.allclose(s_mean, s_anchor)
    assert "mean of 2 frames" in m1.ui["text"][0] and "anchor frame" in m2.ui["text"][0]
    with pytest.raises(ValueError, match="reference: expected a FACE_CLIP or an IMAGE"):
        node.execute(frames, "nope", "auto", "CPU")


# ------------------------------------------------------------------------------------------------- IR-SE50
IR_SE50 = "recognition_arcface_ir_se50.pth"


@pytest.fixture()
def facexlib_dir(comfy_pack, tmp_path, monkeypatch):
    """An empty models/facexlib for the node (ComfyUI's own folder list is restored afterwards)."""
    import folder_paths

    from wanid_pack.nodes import paths
    paths.register_model_folders()
    _, exts = folder_paths.folder_names_and_paths["facexlib"]
    folder = tmp_path / "facexlib"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "facexlib", ([str(folder)], exts))
    return folder


def _direct_ir_se50(model, frame):
    """The bundled detector's largest face, then wanid/lynx/arcface.py as Lynx Apply uses it."""
    from wanid.face.detect import load_detector
    from wanid.lynx.arcface import aligned_faces, embed_aligned

    d = load_detector("retinaface_mobilenet")[0].detect([frame], 640)[0]
    k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
    return embed_aligned(model, aligned_faces([frame], [d.landmarks[k]]))[0].double().numpy()


@pytest.mark.integration
def test_node_scores_with_lynxs_ir_se50(insightface_dir, facexlib_dir, comfy_pack):
    """recognition = the IR-SE50 of models/facexlib: the scores are the cosines of the embeddings that
    wanid/lynx/arcface.py gives directly (also with a FACE_CLIP: from its aligned faces, what Lynx Apply embeds);
    no insightface model is needed."""
    from wanid.lynx.arcface import aligned_faces, embed_aligned, load_arcface
    from wanid_pack.nodes.identity_score import recognition_choices

    path = write_ir_se50(facexlib_dir / IR_SE50)
    assert recognition_choices() == ["insightface (onnx)", IR_SE50]
    model = load_arcface(str(path))
    car = carphone()
    idx = [0, 30, 60, 90]
    frames = torch.from_numpy(car[idx]).float() / 255
    frames[2] = 0.0  # no face
    node = _node(comfy_pack)
    out = node.execute(frames, torch.from_numpy(car[0:1]).float() / 255, "auto", "CPU", recognition=IR_SE50)
    values = json.loads(out.args[1])
    assert [v is None for v in values] == [False, False, True, False]
    ref = _direct_ir_se50(model, car[0])
    for j, i in enumerate(idx):
        if values[j] is not None:
            e = _direct_ir_se50(model, car[i])
            assert values[j] == pytest.approx(e @ ref / np.linalg.norm(e) / np.linalg.norm(ref), abs=1e-5), j
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert "IR-SE50" in out.ui["text"][0] and "torch CPU" in out.ui["text"][0]

    # a FACE_CLIP reference: its valid frames' aligned faces (source-frame alignment), not its crops
    aligned = torch.from_numpy(aligned_faces(car[[10, 20, 40]], np.stack(
        [_landmarks(car[i]) for i in (10, 20, 40)]))).float() / 255
    clip = _clip(None, [True, False, True])
    clip.aligned = aligned
    out = node.execute(frames, clip, "auto", "CPU", reference_mode="mean", recognition=IR_SE50)
    u8 = np.clip(np.rint(aligned.numpy() * 255), 0, 255).astype(np.uint8)
    embs = embed_aligned(model, u8[[0, 2]]).double().numpy()
    ref = embs.mean(0) / np.linalg.norm(embs.mean(0))
    values = json.loads(out.args[1])
    e0 = _direct_ir_se50(model, car[0])
    assert values[0] == pytest.approx(e0 @ ref / np.linalg.norm(e0), abs=1e-5)
    assert "aligned faces embedded with facexlib/" in out.ui["text"][0]

    with pytest.raises(FileNotFoundError, match="recognition: 'nope.pth' is not in models/facexlib"):
        node.execute(frames, clip, "auto", "CPU", recognition="nope.pth")


def _landmarks(frame):
    from wanid.face.detect import load_detector

    d = load_detector("retinaface_mobilenet")[0].detect([frame], 640)[0]
    return d.landmarks[int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))]


# ------------------------------------------------------------------------------------------------- judge
def test_dlib_judge_same_person_scores_above_a_different_person():
    """The scoring pipeline with dlib's 128-d descriptors as the recognition backend: carphone frames vs another
    carphone frame score higher than vs the astronaut (a different person); a frame without a face is left out."""
    dlib = pytest.importorskip("dlib", reason="dlib-bin (requirements-test.txt) is needed for the judge")
    frm = pytest.importorskip("face_recognition_models")
    skimage_data = pytest.importorskip("skimage.data")
    detector = dlib.get_frontal_face_detector()
    shape = dlib.shape_predictor(frm.pose_predictor_model_location())
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())

    def embed_faces(frames, on_progress=None):
        out = []
        for f in frames:
            f = np.ascontiguousarray(f)
            faces = detector(f, 2)
            if not faces:
                out.append(None)
                continue
            box = max(faces, key=lambda r: r.width() * r.height())
            out.append(np.array(rec.compute_face_descriptor(f, shape(f, box), 1)))
        return out

    car = carphone()
    frames = car[[5, 35, 65, 95, 115]].copy()
    frames[2] = 0
    same = embed_faces(car[50:51])[0]
    other = embed_faces(skimage_data.astronaut()[None])[0]
    assert same is not None and other is not None
    s_same = score_frames(frames, same, embed_faces)
    s_other = score_frames(frames, other, embed_faces)
    assert np.isnan(s_same[2]) and np.isnan(s_other[2])
    ok = np.isfinite(s_same)
    assert ok.sum() >= 3  # dlib finds the face in most of these small frames
    assert (s_same[ok] > s_other[ok]).all()
    assert mean_score(s_same)[0] > mean_score(s_other)[0] + 0.05
