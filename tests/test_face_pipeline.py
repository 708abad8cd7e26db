"""A clip through detection, choice, Stand-In crop, parsing, embeddings and anchor (wanid.face.pipeline), on real
faces; the dlib judge checks that the crops keep the right person."""
import numpy as np
import pytest
import torch

from face_files import carphone, dlib_embedding, face_recognition_photos, t1, write_arcface
from wanid.face import parsing
from wanid.face.crop import standin_crop
from wanid.face.detect import detect_with_ladder, load_detector
from wanid.face.pipeline import NoFaceError, contact_sheet, process_clip


@pytest.fixture(scope="module")
def retina():
    return load_detector("retinaface_mobilenet", None, "CPU")[0]


def as_image(frames_u8):
    return torch.from_numpy(np.asarray(frames_u8)).float() / 255.0


class DiscParser:
    """Labels 1 (skin) in a disc of radius 150 around the crop centre, 0 (background) elsewhere."""

    def __init__(self):
        self.seen = None

    def parse(self, images, normalization="official", chunk_size=8, on_progress=None):
        self.seen = images.clone()
        yy, xx = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
        disc = ((yy - 255.5) ** 2 + (xx - 255.5) ** 2) < 150 ** 2
        if on_progress:
            on_progress(images.shape[0], images.shape[0])
        return disc.long().expand(images.shape[0], 512, 512).clone()


def faceless(h=144, w=176):
    rng = np.random.default_rng(3)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 160
    return np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)


def test_carphone_clip(retina):
    frames = carphone()[:16]
    parser = DiscParser()
    steps = []
    clip, report = process_clip(as_image(frames), retina, parser=parser,
                                on_progress=lambda d, t: steps.append((d, t)))
    assert clip.crops.shape == (16, 512, 512, 3) and clip.masks.shape == (16, 512, 512)
    assert bool(clip.valid.all()) and clip.embeddings is None
    torch.testing.assert_close(clip.times, torch.arange(16) / 25.0)
    # the parser saw the Stand-In crops; background (label 0) is exactly white, the rest untouched
    for i in (0, 7, 15):
        ref, win = standin_crop(frames[i].astype(np.float32) / 255.0, clip.boxes[i].numpy())
        np.testing.assert_allclose(parser.seen[i].numpy(), np.clip(ref, 0, 1), atol=1e-6)
        keep = clip.masks[i] > 0
        assert torch.all(clip.crops[i][~keep] == 1.0)
        torch.testing.assert_close(clip.crops[i][keep], parser.seen[i][keep])
        np.testing.assert_allclose(clip.landmarks[i].numpy(), win.to_crop(report_landmarks(retina, frames[i])),
                                   atol=1e-3)
    # the face sits in the middle of the crop: eyes in the upper half, mouth below, all inside
    lm = clip.landmarks
    assert torch.all((lm > 100) & (lm < 412))
    assert torch.all(lm[:, :2, 1] < lm[:, 3:, 1])
    assert 0 <= clip.anchor_index < 16 and report.anchor_total[clip.anchor_index] == report.anchor_total.max()
    assert steps[-1][0] == steps[-1][1] and all(a[0] <= b[0] for a, b in zip(steps, steps[1:]))
    sheet = contact_sheet(clip, report)
    assert sheet.shape[0] == 1 and sheet.shape[-1] == 3 and 0 <= float(sheet.min()) and float(sheet.max()) <= 1


def report_landmarks(detector, frame):
    return detect_with_ladder(detector, [frame])[0].landmarks[0]


def test_times_are_carried_and_checked(retina):
    frames = as_image(carphone()[:3])
    clip, _ = process_clip(frames, retina, times=torch.tensor([0.0, 0.5, 1.25]))
    torch.testing.assert_close(clip.times, torch.tensor([0.0, 0.5, 1.25]))
    with pytest.raises(ValueError, match="times: 2 values for 3 frames"):
        process_clip(frames, retina, times=torch.tensor([0.0, 0.5]))


def test_fallback_without_parser_weights(retina):
    frames = as_image(carphone()[:2])
    clip, report = process_clip(frames, retina)  # keep_all: mask all ones, crop unchanged
    assert torch.all(clip.masks == 1) and "fallback" in report.text()
    clip_e, _ = process_clip(frames, retina, fallback="ellipse")
    outside = clip_e.masks == 0
    assert 0.2 < float(outside.float().mean()) < 0.95
    assert torch.all(clip_e.crops[outside] == 1.0)  # white outside the face region
    assert torch.all(clip_e.masks[:, 256, 256] == 1)


def test_real_bisenet_file_runs_through(tmp_path, retina):
    """A .pth with facexlib's BiSeNet layout (random weights) loads and whitens exactly its label-0 pixels."""
    torch.manual_seed(0)
    net = parsing.BiSeNet(19)
    for m in net.modules():  # make the random parser output a mix of labels, background among them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(1.0)
    path = tmp_path / "parsing_bisenet.pth"
    torch.save(net.state_dict(), path)
    parser = parsing.load_face_parser(str(path))
    frames = as_image(carphone()[:2])
    clip, report = process_clip(frames, retina, parser=parser, label_set="official")
    plain, _ = process_clip(frames, retina)
    labels = parser.parse(plain.crops)
    bg = labels == 0
    assert torch.equal(clip.masks == 0, bg)
    assert torch.all(clip.crops[bg] == 1.0)
    torch.testing.assert_close(clip.crops[~bg], plain.crops[~bg])
    assert "parsing_bisenet.pth" in report.parser


def test_on_no_face_policies(retina):
    frames = [carphone()[0], faceless(), carphone()[5], faceless()]
    images = as_image(frames)
    with pytest.raises(NoFaceError, match=r"no face found in 2 of 4 frames: 1, 3") as e:
        process_clip(images, retina)
    assert e.value.frames == [1, 3]

    clip, report = process_clip(images, retina, on_no_face="skip", times=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert clip.num_frames == 2 and report.kept == [0, 2] and report.skipped == [1, 3]
    torch.testing.assert_close(clip.times, torch.tensor([0.0, 2.0]))
    assert "skipped (no face): 1, 3" in report.text()

    clip, report = process_clip(images, retina, on_no_face="whole_frame")
    assert clip.num_frames == 4 and clip.valid.tolist() == [True, False, True, False]
    whole, _ = standin_crop(frames[1].astype(np.float32) / 255.0, None)  # whole frame padded white
    np.testing.assert_allclose(clip.crops[1].numpy(), np.clip(whole, 0, 1), atol=1e-6)
    assert float(clip.scores[1]) == 0 and torch.all(clip.boxes[1] == 0)
    assert bool(clip.valid[clip.anchor_index])

    with pytest.raises(NoFaceError, match="no face in any"):
        process_clip(as_image([faceless()]), retina, on_no_face="skip")
    clip, _ = process_clip(as_image([faceless()]), retina, on_no_face="whole_frame")
    assert clip.valid.tolist() == [False] and clip.anchor_index == 0


def test_face_choice_on_t1(tmp_path, retina):
    from wanid.face.embed import ArcFaceEmbedder
    img = as_image([t1()])
    det = detect_with_ladder(retina, [t1()])[0]
    cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
    area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    clip, _ = process_clip(img, retina)
    np.testing.assert_allclose(clip.boxes[0].numpy(), det.boxes[np.argmax(area)])
    for k in (0, 3, 5):
        clip, _ = process_clip(img, retina, face_choice="index", face_index=k)
        np.testing.assert_allclose(clip.boxes[0].numpy(), det.boxes[np.argsort(cx)[k]])
    with pytest.raises(NoFaceError, match="no face number 6"):
        process_clip(img, retina, face_choice="index", face_index=6)

    embedder = ArcFaceEmbedder(str(write_arcface(tmp_path / "glintr100.onnx")), "CPU")
    for k in (1, 4):
        ref = embedder.embed([t1()], det.landmarks[k:k + 1])[0]
        clip, report = process_clip(img, retina, embedder=embedder, face_choice="most_similar", similar_to=ref)
        np.testing.assert_allclose(clip.boxes[0].numpy(), det.boxes[k])
        assert float(clip.embeddings[0] @ torch.from_numpy(ref)) > 1 - 1e-5
    with pytest.raises(ValueError, match="most_similar"):
        process_clip(img, retina, face_choice="most_similar")


def test_embeddings_per_frame(tmp_path, retina):
    from wanid.face.embed import ArcFaceEmbedder
    embedder = ArcFaceEmbedder(str(write_arcface(tmp_path / "w600k_r50.onnx")), "CPU")
    frames = [carphone()[0], faceless(), carphone()[9]]
    clip, report = process_clip(as_image(frames), retina, embedder=embedder, on_no_face="whole_frame")
    assert clip.embeddings.shape == (3, 512) and clip.embedding_model == "arcface"
    torch.testing.assert_close(clip.embeddings[1], torch.zeros(512))  # no face: zeros, valid False
    lm = detect_with_ladder(retina, [frames[2]])[0].landmarks
    np.testing.assert_allclose(clip.embeddings[2].numpy(), embedder.embed([frames[2]], lm)[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- the judge
def test_dlib_judge_carphone_crops_are_one_person(retina):
    frames = carphone()[::15]
    clip, _ = process_clip(as_image(frames), retina)
    crops = (clip.crops.numpy() * 255).round().astype(np.uint8)
    embs = [dlib_embedding(c) for c in crops]
    assert all(e is not None for e in embs), "dlib finds a face in every crop"
    embs = np.stack(embs)
    dist = np.linalg.norm(embs[:, None] - embs[None], axis=-1)
    assert dist.max() < 0.6  # dlib's same-person threshold


def test_dlib_judge_obama_is_not_biden(retina):
    photos = face_recognition_photos()
    emb = {}
    for name, img in photos.items():
        clip, _ = process_clip(as_image([img]), retina)
        crop = (clip.crops[0].numpy() * 255).round().astype(np.uint8)
        emb[name] = dlib_embedding(crop)
        assert emb[name] is not None, name
    assert np.linalg.norm(emb["obama"] - emb["obama2"]) < 0.6
    assert np.linalg.norm(emb["obama"] - emb["biden"]) > 0.6
    assert np.linalg.norm(emb["obama2"] - emb["biden"]) > 0.6
