"""BiSeNet face parser (wanid/face/parsing.py) against facexlib's BiSeNet, file formats, and the composition.

No parser weights exist on any registry: facexlib's real architecture is built with random weights (and random
BatchNorm statistics, so every layer matters), saved as facexlib's parsing_bisenet.pth is, and loaded back.
"""
import io

import pytest
import torch

from wanid.face import parsing as P
from wanid.face.parsing import (LABEL_SETS, FaceParsingError, fallback_mask, load_face_parser,
                                whiten_background)

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def reference():
    """facexlib's BiSeNet(num_class=19), random weights, eval mode, float64."""
    bisenet = pytest.importorskip("facexlib.parsing.bisenet", reason="facexlib (requirements-test.txt) is the "
                                                                      "independent reference")
    torch.manual_seed(1234)
    net = bisenet.BiSeNet(num_class=19)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def pth(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("face_parsing") / "parsing_bisenet.pth"
    torch.save(reference.state_dict(), path)
    return path


def _ref_logits(reference, x_nhwc, mean, std):
    x = x_nhwc.permute(0, 3, 1, 2).double()
    x = (x - torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)) / torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        return reference.double()(x)[0]


def test_state_dict_matches_facexlib_names_and_shapes(reference):
    ours = P.BiSeNet(19).state_dict()
    theirs = reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    assert sum(v.numel() for k, v in ours.items() if "running" not in k and "num_batches" not in k) == 13_300_416


def test_logits_equal_facexlib_float64(reference, pth):
    parser = load_face_parser(str(pth), dtype=torch.float64)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 128, dtype=torch.float64) * 4 - 2  # any size: the net itself is size-agnostic
    with torch.no_grad():
        ours = parser.net(x)
        theirs = reference.double()(x)[0]
    assert ours.shape == (2, 19, 96, 128)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours.abs().max() > 1e-2  # not a degenerate all-zero comparison


@pytest.mark.parametrize("normalization,size", [("official", 512), ("imagenet", 128)])
def test_parse_equals_facexlib_argmax(reference, pth, normalization, size, monkeypatch):
    # official = Stand-In's FaceProcessor (RGB, mean/std 0.5); imagenet = WeChatCV ComfyUI preprocessor.
    # Default fp32 parser against the float64 reference; the real working size once, a smaller one for the
    # second normalisation (the net is size-agnostic).
    monkeypatch.setattr(P, "PARSE_SIZE", size)
    parser = load_face_parser(str(pth))
    torch.manual_seed(1)
    images = torch.rand(1, size, size, 3)
    mean, std = P.NORMALIZATION[normalization]
    assert (mean, std) == (((0.5,) * 3, (0.5,) * 3) if normalization == "official" else IMAGENET)
    ref = _ref_logits(reference, images, mean, std)
    logits = parser.logits(images, normalization)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    labels = parser.parse(images, normalization)
    assert labels.dtype == torch.int64 and labels.shape == (1, size, size)
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * ref.abs().max()  # fp32 may flip near-ties only
    assert clear.float().mean() > 0.95
    assert torch.equal(labels[clear], ref.argmax(dim=1)[clear])
    assert labels.unique().numel() > 1


def test_parse_chunks_report_progress_and_keep_input_size(pth, monkeypatch):
    monkeypatch.setattr(P, "PARSE_SIZE", 64)  # small working size keeps this test fast; logic is the same
    parser = load_face_parser(str(pth), dtype=torch.float64)
    torch.manual_seed(2)
    images = torch.rand(5, 64, 64, 3)
    calls = []
    chunked = parser.parse(images, chunk_size=2, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    whole = parser.parse(images, chunk_size=8)
    assert torch.equal(chunked, whole)
    one = parser.parse(images[3:4])
    assert torch.equal(one[0], whole[3])
    with pytest.raises(ValueError, match="normalization"):
        parser.parse(images, normalization="bgr")
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        parser.parse(images[..., 0])


# ------------------------------------------------------------------------------------------------ file formats


def _same_weights(parser, reference):
    ours = parser.net.state_dict()
    return all(torch.equal(ours[k].to(v.dtype), v) for k, v in reference.state_dict().items())


def test_loads_safetensors_wrapped_and_prefixed(reference, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.clone().float() if v.is_floating_point() else v.clone() for k, v in reference.state_dict().items()}
    save_file(sd, str(tmp_path / "bisenet.safetensors"))
    torch.save({"params": sd}, tmp_path / "params.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "wrapped.pt")
    # checkpoints from old PyTorch have no BatchNorm num_batches_tracked
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    for name in ("bisenet.safetensors", "params.pth", "wrapped.pt", "old.pth"):
        parser = load_face_parser(tmp_path / name)  # a Path works as well as a str
        assert _same_weights(parser, reference), name
        assert not parser.net.training


def test_truncated_files_name_the_problem(pth, tmp_path):
    data = pth.read_bytes()
    bad = tmp_path / "parsing_bisenet.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceParsingError, match=r"face parser file parsing_bisenet\.pth is unreadable.*"
                                               r"truncated.*models/face_parsing"):
        load_face_parser(str(bad))
    bad = tmp_path / "half.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    with pytest.raises(FaceParsingError, match=r"half\.safetensors.*truncated"):
        load_face_parser(str(bad))
    with pytest.raises(FaceParsingError, match=r"not found.*parsing_bisenet\.pth in models/face_parsing"):
        load_face_parser(str(tmp_path / "absent.pth"))


def test_wrong_architecture_names_first_bad_key(reference, tmp_path):
    sd = reference.state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "ffm.conv1.weight"},
                    r"First missing key: 'ffm\.conv1\.weight' \(1 missing\)"),
        "unexpected": ({**sd, "head.extra.weight": torch.zeros(1)},
                       r"First unexpected key: 'head\.extra\.weight'"),
        "shape": ({**sd, "conv_out.conv_out.weight": torch.zeros(11, 256, 1, 1)},
                  r"Shape mismatch for 'conv_out\.conv_out\.weight': file \(11, 256, 1, 1\), "
                  r"expected \(19, 256, 1, 1\)"),
        "other_net": (torch.nn.Conv2d(3, 8, 3).state_dict(), r"First missing key: 'cp\.resnet\.conv1\.weight'"),
    }
    for name, (state, pattern) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(FaceParsingError, match=rf"'{name}\.pth' is not facexlib's BiSeNet.*"
                                                   rf"models/face_parsing\. {pattern}"):
            load_face_parser(str(path))
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(FaceParsingError, match="state dict of tensors"):
        load_face_parser(str(path))


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    buf = io.BytesIO()
    torch.save({"x": _Payload()}, buf)
    path.write_bytes(buf.getvalue())
    # the same refusal as for a Stand-In file or a training state (wanid.tensor_file.read_tensor_file)
    with pytest.raises(FaceParsingError, match="evil.pth is refused: it holds pickled code, not only tensors"):
        load_face_parser(str(path))
    assert "pickled code ran" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ composition


def test_label_sets():
    assert LABEL_SETS["official"] == [0]
    assert LABEL_SETS["no_neck_cloth_hat"] == [0, 14, 15, 16, 18]
    kept = set(range(19)) - set(LABEL_SETS["face_only"])
    assert kept == {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13}  # skin, brows, eyes, glasses, ears, nose, mouth, lips


@pytest.mark.parametrize("label_set", ["official", "no_neck_cloth_hat", "face_only", [3, 17]])
def test_whiten_background_exact(label_set):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 16, 20, 3, generator=g) * 0.9
    labels = torch.randint(0, 19, (2, 16, 20), generator=g)
    before = images.clone()
    white, keep = whiten_background(images, labels, label_set)
    ids = LABEL_SETS[label_set] if isinstance(label_set, str) else label_set
    drop = torch.zeros_like(labels, dtype=torch.bool)
    for i in ids:
        drop |= labels == i
    assert drop.any() and (~drop).any()
    assert torch.equal(white[drop], torch.ones_like(white[drop]))        # exactly 1.0
    assert torch.equal(white[~drop], images[~drop])                      # untouched, bit for bit
    assert keep.dtype == torch.float32 and torch.equal(keep, (~drop).float())
    assert torch.equal(images, before)                                   # input not modified


def test_whiten_background_errors():
    images, labels = torch.rand(1, 4, 4, 3), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="label_set"):
        whiten_background(images, labels, "hair_only")
    with pytest.raises(ValueError, match="0..18"):
        whiten_background(images, labels, [19])
    with pytest.raises(ValueError, match="do not match"):
        whiten_background(images, labels[:, :2], "official")


def test_fallback_mask():
    images = torch.rand(2, 512, 512, 3)
    white, keep = fallback_mask(images)
    assert torch.equal(white, images) and torch.equal(keep, torch.ones(2, 512, 512))

    # a frontal face centred in the crop (ArcFace-style 5 points scaled to 512), and a frame without a face
    face = torch.tensor([[190.0, 220.0], [322.0, 220.0], [256.0, 290.0], [200.0, 350.0], [312.0, 350.0]])
    landmarks = torch.stack([face, torch.full((5, 2), float("nan"))])
    white, keep = fallback_mask(images, landmarks, mode="ellipse")
    assert keep[0, 290, 256] == 1 and keep[0, 220, 190] == 1 and keep[0, 350, 312] == 1  # nose, eye, mouth
    assert keep[0, 5, 5] == 0 and keep[0, 505, 505] == 0 and keep[0, 290, 20] == 0        # corners, far side
    assert 0.2 < keep[0].mean() < 0.6
    assert torch.equal(white[0][keep[0] == 0], torch.ones_like(white[0][keep[0] == 0]))
    assert torch.equal(white[0][keep[0] == 1], images[0][keep[0] == 1])
    assert torch.equal(keep[1], torch.ones(512, 512)) and torch.equal(white[1], images[1])
    with pytest.raises(ValueError, match="fallback mode"):
        fallback_mask(images, mode="circle")
