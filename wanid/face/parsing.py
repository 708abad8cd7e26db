"""Face parsing with BiSeNet (19 CelebAMask-HQ labels) and the white-background composition of Stand-In.

The network is written here in plain torch with the parameter names and shapes of facexlib's
`BiSeNet(num_class=19)`, so facexlib's `parsing_bisenet.pth` loads into it strictly; facexlib itself is not
needed at run time.

Input convention (checked against the official Stand-In `FaceProcessor` and facexlib's own helpers): the
network sees RGB in [0, 1], normalised per channel. Stand-In converts its BGR OpenCV crop to RGB before
parsing and normalises with mean 0.5 / std 0.5 ("official"); the WeChatCV ComfyUI preprocessor uses the
ImageNet mean/std ("imagenet"). `FaceParser.parse` takes RGB images, as ComfyUI IMAGE tensors are.
"""
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import WanIDError
from ..tensor_file import read_tensor_file
from .names import PARSER_FILE

PARSE_SIZE = 512
NUM_CLASSES = 19
LABELS = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
          "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")

# Labels to whiten (replace by white), per policy.
#   official:          background only (Stand-In's FaceProcessor: hair, neck and clothes stay)
#   no_neck_cloth_hat: WeChatCV ComfyUI preprocessor: background, neck, necklace, cloth, hat
#   face_only:         keep the face itself: skin, brows, eyes, glasses, ears, nose, mouth, lips; hair, neck,
#                      necklace, cloth, hat and earrings (jewellery, not identity) are whitened too
LABEL_SETS = {
    "official": [0],
    "no_neck_cloth_hat": [0, 14, 15, 16, 18],
    "face_only": [0, 9, 14, 15, 16, 17, 18],
}

NORMALIZATION = {
    "official": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

EXPECTED_FILE = f"put facexlib's {PARSER_FILE} in models/face_parsing"


class FaceParsingError(WanIDError):
    """A parser file could not be used; the message names the file and what is expected."""


# ---------------------------------------------------------------------------------------------------------------
# Network. Attribute names are the state-dict contract with facexlib's parsing_bisenet.pth.


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, ks=3, stride=1, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """ResNet basic block; a 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + y)


class Backbone(nn.Module):
    """ResNet-18 trunk returning the 1/8, 1/16 and 1/32 feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(ResBlock(64, 64), ResBlock(64, 64))
        self.layer2 = nn.Sequential(ResBlock(64, 128, 2), ResBlock(128, 128))
        self.layer3 = nn.Sequential(ResBlock(128, 256, 2), ResBlock(256, 256))
        self.layer4 = nn.Sequential(ResBlock(256, 512, 2), ResBlock(512, 512))

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        f8 = self.layer2(self.layer1(x))
        f16 = self.layer3(f8)
        return f8, f16, self.layer4(f16)


def _global_pool(x):
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_pool(feat))))


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Backbone()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        f8, f16, f32 = self.resnet(x)
        context = self.conv_avg(_global_pool(f32))  # broadcasts over the 1/32 map (= nearest upsampling)
        up32 = self.conv_head32(F.interpolate(self.arm32(f32) + context, f16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(f16) + up32, f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FeatureFusion(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial, context):
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_pool(feat)))))
        return feat * gate + feat


class SegHead(nn.Module):
    def __init__(self, cin, mid, num_class):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, num_class, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet face parser (ResNet-18 context path; the 1/8 backbone features stand in for the spatial path).

    forward(x [N, 3, H, W] normalised RGB) -> main logits [N, num_class, H, W]. The two auxiliary heads exist
    for state-dict compatibility only (they are training losses) and are not evaluated.
    """

    def __init__(self, num_class=NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegHead(256, 256, num_class)
        self.conv_out16 = SegHead(128, 64, num_class)
        self.conv_out32 = SegHead(128, 64, num_class)

    def forward(self, x):
        f8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(f8, context8))
        return F.interpolate(logits, x.shape[2:], mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _read_state_dict(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FaceParsingError(f"face parser file not found: {path}; {EXPECTED_FILE}")
    return read_tensor_file(path, "face parser file", f"It may be truncated or not a BiSeNet checkpoint: {EXPECTED_FILE}.",
                            error=FaceParsingError)


def _unwrap(sd, name):
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FaceParsingError(f"'{name}' does not hold a state dict of tensors; {EXPECTED_FILE}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _check_keys(model, sd, name):
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # absent in old BN checkpoints
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected]
    hint = f"'{name}' is not facexlib's BiSeNet face parser (19 classes); {EXPECTED_FILE}"
    if missing:
        raise FaceParsingError(f"{hint}. First missing key: '{missing[0]}' ({len(missing)} missing)")
    if unexpected:
        raise FaceParsingError(f"{hint}. First unexpected key: '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise FaceParsingError(f"{hint}. Shape mismatch for '{k}': file {tuple(v.shape)}, "
                                   f"expected {tuple(expected[k].shape)}")
    full = OrderedDict(sd)
    for k in optional:
        full.setdefault(k, torch.zeros((), dtype=torch.long))
    return full


class FaceParser:
    """A loaded BiSeNet in eval mode. Not shared-state: parse() does not modify the model."""

    def __init__(self, net, device="cpu", dtype=torch.float32, source=""):
        self.net = net.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.source = source

    @torch.no_grad()
    def logits(self, images, normalization="official"):
        """Main-head logits [N, 19, 512, 512] for RGB images [N, 512, 512, 3] in [0, 1] (one chunk)."""
        if normalization not in NORMALIZATION:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATION)} (got '{normalization}')")
        mean, std = NORMALIZATION[normalization]
        x = images.to(device=self.device, dtype=self.dtype).permute(0, 3, 1, 2)
        if x.shape[2:] != (PARSE_SIZE, PARSE_SIZE):
            x = F.interpolate(x, (PARSE_SIZE, PARSE_SIZE), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return self.net((x - mean) / std)

    @torch.no_grad()
    def parse(self, images, normalization="official", chunk_size=8, on_progress=None):
        """Labels int64 [N, H, W] (0..18) for RGB images [N, H, W, 3] in [0, 1] (512x512 crops).

        The network runs at 512x512 (other sizes are resized for it, and the logits resized back).
        Frames go through in chunks of chunk_size; on_progress(done, total) is called after each chunk.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"parse expects images [N, H, W, 3], got shape {tuple(images.shape)}")
        n, h, w = images.shape[:3]
        out = torch.empty((n, h, w), dtype=torch.int64)
        for start in range(0, n, max(1, int(chunk_size))):
            chunk = images[start:start + chunk_size]
            logits = self.logits(chunk, normalization)
            if logits.shape[2:] != (h, w):
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
            out[start:start + chunk.shape[0]] = logits.argmax(dim=1).cpu()
            if on_progress is not None:
                on_progress(start + chunk.shape[0], n)
        return out


def load_face_parser(path, device="cpu", dtype=torch.float32):
    """Load facexlib's parsing_bisenet.pth (or the same tensors in .pt/.safetensors, maybe wrapped in
    'params'/'state_dict' and/or with a 'module.' prefix) strictly into a FaceParser."""
    path = os.fspath(path)
    name = os.path.basename(path)
    sd = _unwrap(_read_state_dict(path), name)
    net = BiSeNet(NUM_CLASSES)
    net.load_state_dict(_check_keys(net, sd, name), strict=True)
    return FaceParser(net, device=device, dtype=dtype, source=path)


# ---------------------------------------------------------------------------------------------------------------
# Composition


def label_ids(label_set):
    """A LABEL_SETS name or an explicit list of label ids -> sorted list of ids."""
    if isinstance(label_set, str):
        if label_set not in LABEL_SETS:
            raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)} or a list of ids "
                             f"(got '{label_set}')")
        return list(LABEL_SETS[label_set])
    ids = sorted({int(i) for i in label_set})
    if any(i < 0 or i >= NUM_CLASSES for i in ids):
        raise ValueError(f"label ids must be in 0..{NUM_CLASSES - 1} (got {ids})")
    return ids


def whiten_background(images, labels, label_set="official"):
    """Pixels whose label is in label_set become exactly 1.0 (white); the others are left untouched.

    images [N, H, W, 3] float in [0, 1], labels [N, H, W] int -> (images_white, keep_mask [N, H, W] float,
    1 where kept). Inputs are not modified.
    """
    if labels.shape != images.shape[:3]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
    ids = torch.tensor(label_ids(label_set), dtype=labels.dtype, device=labels.device)
    drop = torch.isin(labels, ids).to(images.device)
    white = images.masked_fill(drop.unsqueeze(-1), 1.0)
    return white, (~drop).to(images.dtype if images.is_floating_point() else torch.float32)


FALLBACK_MODES = ("keep_all", "ellipse")


def fallback_mask(images, landmarks=None, mode="keep_all"):
    """What to use when no parser weights exist. Never raises for a missing model.

    keep_all (the default): images unchanged, mask all ones. Stand-In's crop is already white-padded outside
        the frame; only the background inside the crop stays. This is the least surprising choice: nothing
        of the face can be cut away by a guess.
    ellipse: keep an ellipse fitted to the 5 landmarks [N, 5, 2] (eyes, nose, mouth corners, crop pixels),
        from above the brows to the chin, about ear to ear; whiten the rest. Frames without landmarks
        (NaN, or landmarks=None) keep everything.
    Returns (images_white, keep_mask [N, H, W] float).
    """
    if mode not in FALLBACK_MODES:
        raise ValueError(f"fallback mode must be one of {FALLBACK_MODES} (got '{mode}')")
    n, h, w = images.shape[:3]
    keep = torch.ones((n, h, w), dtype=torch.float32, device=images.device)
    if mode == "ellipse" and landmarks is not None:
        keep = _ellipse_masks(landmarks.to(images.device, torch.float32), h, w)
    white = torch.where(keep.unsqueeze(-1) > 0, images, torch.ones_like(images))
    return white, keep.to(images.dtype if images.is_floating_point() else torch.float32)


def _ellipse_masks(landmarks, h, w):
    eyes = landmarks[:, 0:2].mean(dim=1)
    mouth = landmarks[:, 3:5].mean(dim=1)
    down = mouth - eyes                                      # eye-to-mouth vector, face's vertical axis
    d = down.norm(dim=-1).clamp_min(1e-3)
    e = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1).clamp_min(1e-3)
    axis_v = down / d.unsqueeze(-1)
    axis_h = torch.stack([-axis_v[:, 1], axis_v[:, 0]], dim=-1)
    # forehead ~1.3 d above the eyes, chin ~0.9 d below the mouth; half-width ~1.2 inter-ocular distances
    centre = eyes + axis_v * (0.3 * d).unsqueeze(-1)
    semi_v, semi_h = 1.6 * d, 1.2 * e
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=landmarks.device) + 0.5,
                            torch.arange(w, dtype=torch.float32, device=landmarks.device) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys], dim=-1)                     # [H, W, 2] pixel centres (x, y)
    rel = grid[None] - centre[:, None, None]
    u = (rel * axis_h[:, None, None]).sum(-1) / semi_h[:, None, None]
    v = (rel * axis_v[:, None, None]).sum(-1) / semi_v[:, None, None]
    inside = (u * u + v * v) <= 1.0
    valid = torch.isfinite(landmarks).all(dim=-1).all(dim=-1)
    return torch.where(valid[:, None, None], inside, torch.ones_like(inside)).float()
