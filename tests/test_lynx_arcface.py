"""The pack's ArcFace IR-SE50 (Lynx's face embedding) against facexlib's own Backbone, on random weights, and
the safe reading of recognition_arcface_ir_se50.pth. Plain torch + facexlib; no ComfyUI."""

import numpy as np
import pytest
import torch

from wanid.lynx import arcface
from wanid_testing import rel_err

facexlib_arch = pytest.importorskip("facexlib.recognition.arcface_arch",
                                    reason="facexlib (the reference IR-SE50) is not installed")


def random_facexlib(seed=0):
    torch.manual_seed(seed)
    net = facexlib_arch.Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")  # builds without any download
    for m in net.modules():  # non-trivial batch-norm statistics, so a dropped or misplaced BN shows
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(0.0, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    net = random_facexlib()
    path = tmp_path_factory.mktemp("facexlib") / "recognition_arcface_ir_se50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_backbone_matches_facexlib(theirs):
    net, path = theirs
    mine = arcface.load_arcface(str(path))
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = mine(x), net(x)
    assert rel_err(a, b) < 1e-5
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)


def test_input_is_lynx_normalisation_and_bgr():
    faces = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    x = arcface.to_input(faces)
    # official: ToTensor (/255, CHW), Normalize(0.5, 0.5), then channels [2, 1, 0]
    ref = (torch.from_numpy(faces).float().permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    assert torch.allclose(x, ref[:, [2, 1, 0]], atol=1e-6)


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"input_layer.0.weight": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(arcface.ArcFaceFileError, match="arcface_name: evil.pth is refused: it holds pickled code"):
        arcface.load_arcface(str(path))
    assert "pickled code ran" not in capsys.readouterr().out


def test_bad_files_name_the_problem(tmp_path, theirs):
    net, _ = theirs
    sd = net.state_dict()
    broken = dict(sd)
    broken["body.3.res_layer.1.weight"] = torch.full_like(sd["body.3.res_layer.1.weight"], float("nan"))
    torch.save(broken, tmp_path / "nan.pth")
    with pytest.raises(arcface.ArcFaceFileError, match="body.3.res_layer.1.weight: holds .*NaN"):
        arcface.load_arcface(str(tmp_path / "nan.pth"))
    small = {k: v for k, v in sd.items() if not k.startswith("output_layer.3")}
    torch.save(small, tmp_path / "short.pth")
    with pytest.raises(arcface.ArcFaceFileError, match="output_layer.3.weight is missing"):
        arcface.load_arcface(str(tmp_path / "short.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(arcface.ArcFaceFileError, match="unreadable"):
        arcface.load_arcface(str(tmp_path / "junk.pth"))
