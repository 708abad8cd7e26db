"""The face embedding Lynx was trained with: facexlib's ArcFace IR-SE50 (`recognition_arcface_ir_se50.pth`).

The module tree reproduces facexlib's `Backbone(num_layers=50, drop_ratio=0.6, mode='ir_se')` key for key
(input_layer.N, body.N.{shortcut_layer,res_layer}.N, output_layer.N), so the official file loads strictly; the
file is read without running pickled code (wanid.tensor_file). Inference only: dropout is the identity.
Input as Lynx feeds it: the insightface 5-point alignment at 112, RGB scaled to [-1, 1], then channels flipped
to BGR (modules/common/face_encoder.py); output L2-normalised [N, 512].
"""
import os

import numpy as np
import torch
from torch import nn

from ..errors import WanIDError, check_finite
from ..tensor_file import read_tensor_file
from ..face.align import norm_crop
from .files import ARCFACE_FILE

# (in_channels, depth, units) of the four IR-SE50 stages; the first unit of each stage has stride 2
STAGES_50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))


class _SE(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * w


class _Unit(nn.Module):
    """Improved residual unit with squeeze-excitation: BN-conv-PReLU-conv(stride)-BN-SE, plus the shortcut."""

    def __init__(self, cin, depth, stride):
        super().__init__()
        self.stride = stride
        # A same-width unit's shortcut is a strided identity (facexlib: MaxPool2d(1, stride), no weights).
        self.shortcut_layer = None if cin == depth else nn.Sequential(
            nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), _SE(depth))

    def forward(self, x):
        short = x[:, :, ::self.stride, ::self.stride] if self.shortcut_layer is None else self.shortcut_layer(x)
        return self.res_layer(x) + short


def is_arcface_file(name):
    """The files of models/facexlib the nodes offer as IR-SE50 (facexlib keeps its other models there too)."""
    base = os.path.basename(name)
    return base == ARCFACE_FILE or "arcface" in base.lower()


class ArcFaceIRSE50(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in STAGES_50:
            units.append(_Unit(cin, depth, 2))
            units += [_Unit(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        # indices 1 (dropout) and 2 (flatten) hold no weights; kept so the keys are output_layer.0/.3/.4
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Identity(), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x):
        """x: [N, 3, 112, 112] BGR in [-1, 1] -> [N, 512], unit length."""
        y = self.output_layer(self.body(self.input_layer(x)))
        return y / y.norm(dim=1, keepdim=True)


class ArcFaceFileError(WanIDError):
    pass


def load_arcface(path, input_name="arcface_name"):
    """The IR-SE50 with the weights of `path` (.pth read with weights_only, or .safetensors), in eval mode.
    input_name: the node input that named the file (Lynx Loader's arcface_name, Identity Score's recognition),
    which every error begins with."""
    name = os.path.basename(path)
    fix = f"Download {ARCFACE_FILE} (facexlib) again."
    sd = read_tensor_file(path, f"{input_name}:", fix, error=ArcFaceFileError)
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict):
        raise ArcFaceFileError(f"{input_name}: {name} holds a {type(sd).__name__}, not a dict of tensors. {fix}")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    model = ArcFaceIRSE50()
    want = model.state_dict()
    for key, value in want.items():
        if key not in sd:
            raise ArcFaceFileError(f"{input_name}: {name} is not facexlib's ArcFace IR-SE50: {key} is missing. "
                                   f"Use {ARCFACE_FILE}.")
        if not isinstance(sd[key], torch.Tensor):
            raise ArcFaceFileError(f"{input_name}: {name}: {key} is not a tensor. Use {ARCFACE_FILE}.")
        if tuple(sd[key].shape) != tuple(value.shape):
            raise ArcFaceFileError(f"{input_name}: {name}: {key} has shape {list(sd[key].shape)}, IR-SE50 needs "
                                   f"{list(value.shape)}. Use {ARCFACE_FILE}.")
        check_finite({key: sd[key]}, f"{input_name}: {name}:", "download the file again", ArcFaceFileError)
    extra = sorted(set(sd) - set(want))
    if extra:
        raise ArcFaceFileError(f"{input_name}: {name}: unexpected key {extra[0]!r}; this is not the IR-SE50 file. "
                               f"Use {ARCFACE_FILE}.")
    model.load_state_dict({k: sd[k].float() for k in want}, strict=True)
    return model.eval().requires_grad_(False)


def aligned_faces(frames, landmarks):
    """uint8 RGB [N, 112, 112, 3]: insightface's norm_crop of each frame by its 5 landmarks."""
    return np.stack([norm_crop(np.asarray(f), np.asarray(l, np.float64), 112)[0] for f, l in zip(frames, landmarks)])


def to_input(aligned):
    """uint8 RGB [N, 112, 112, 3] -> the tensor Lynx feeds IR-SE50: (x / 255 - 0.5) / 0.5, channels to BGR."""
    x = torch.from_numpy(np.ascontiguousarray(aligned)).float().div(255.0).permute(0, 3, 1, 2)
    return ((x - 0.5) / 0.5)[:, [2, 1, 0]].contiguous()


@torch.no_grad()
def embed_aligned(model, aligned):
    """Unit-length [N, 512] float32 embeddings of aligned uint8 RGB faces."""
    p = next(model.parameters())
    return model(to_input(aligned).to(device=p.device, dtype=p.dtype)).float().cpu()


class IRSE50Embedder:
    """The IR-SE50 behind the interface of wanid.face.embed.ArcFaceEmbedder (embed, embed_aligned, name, provider),
    so Identity Score (wanid/score.py) can score with the embedding Lynx sees: numpy float32 [N, 512], unit length.
    prefers_aligned: a FACE_CLIP reference is embedded from its `aligned` faces (the source-frame alignment Lynx
    Apply embeds), not re-aligned from the crops."""
    prefers_aligned = True
    input_size = 112

    def __init__(self, model, name="recognition_arcface_ir_se50.pth"):
        self.model = model
        self.name = f"facexlib/{name} (IR-SE50)"
        self.provider = f"torch {next(model.parameters()).device.type.upper()}"

    def embed_aligned(self, faces, batch_size=32):
        faces = np.asarray(faces)
        if len(faces) == 0:
            return np.zeros((0, 512), np.float32)
        return np.concatenate([embed_aligned(self.model, faces[i:i + batch_size]).numpy()
                               for i in range(0, len(faces), batch_size)]).astype(np.float32)

    def embed(self, frames, landmarks):
        """One face per frame: frames uint8 RGB [H, W, 3] each, landmarks [N, 5, 2] in the frame."""
        if len(frames) == 0:
            return np.zeros((0, 512), np.float32)
        return self.embed_aligned(aligned_faces(frames, landmarks))
