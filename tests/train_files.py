"""The trainer tests' files (no tests here): a synthetic Slot-ID training set written as cache fixtures in
the trainer's own cache format, and the tiny encoder config.

Synthetic identities: identity i has a unit ArcFace direction e_i and a latent pattern P_i. Its reference clips
carry noisy copies of e_i (per frame), its target latents are P_i plus a little noise. The captions are the same
for everyone, so only the reference tells the model which pattern to produce: the loss can fall beyond the mean
only through the identity tokens.
"""
import json
import os

import torch

from wanid.slot.encoder import SlotIDConfig
from wanid.train.dataset import entry_key, entry_path, read_manifest, save_entry
from wanid.train.precompute import PrecomputeSettings, settings_key

TINY_CONFIG = dict(dim=64, arcface_dim=512, latent_channels=16, pool=1, num_landmarks=5, time_features=16,
                   num_slots=2, rounds=1, sinkhorn_eps=0.05, sinkhorn_iters=5, mlp_ratio=2, anchor_tokens=2,
                   text_dim=4096, output_scale_init=1.0, lora_rank=4, lora_alpha=4.0)
LATENT = (16, 2, 8, 8)  # C, F, H, W: 5 frames of 64 x 64
REF_FRAMES = 4


def tiny_config():
    return SlotIDConfig(**TINY_CONFIG)


def synthetic_tensors(identity, sample, identities, seed=0):
    g = torch.Generator().manual_seed(seed * 1000 + identity * 100 + sample)
    base = torch.Generator().manual_seed(seed * 7 + 12345)
    directions = torch.nn.functional.normalize(torch.randn(identities, 512, generator=base), dim=1)
    patterns = torch.randn(identities, *LATENT, generator=base)
    text = 0.1 * torch.randn(6, 4096, generator=base)
    emb = torch.nn.functional.normalize(directions[identity] + 0.05 * torch.randn(REF_FRAMES, 512, generator=g), dim=1)
    mask = torch.zeros(LATENT[1:])
    mask[:, 2:6, 2:6] = 1.0
    return {
        "target_latent": patterns[identity] + 0.1 * torch.randn(*LATENT, generator=g),
        "target_face_mask": mask,
        "context": text.clone(),
        "ref_embeddings": emb,
        "ref_landmarks": 0.4 + 0.2 * torch.rand(REF_FRAMES, 5, 2, generator=g),
        "ref_times": torch.arange(REF_FRAMES, dtype=torch.float32) / 8.0,
        "ref_valid": torch.ones(REF_FRAMES, dtype=torch.uint8),
        "ref_anchor": torch.tensor(0, dtype=torch.int64),
        "ref_latents": (directions[identity][:16, None, None] * 4 + 0.1 * torch.randn(REF_FRAMES, 16, 4, 4,
                                                                                       generator=g)),
    }


def write_synthetic_set(folder, identities=2, per_identity=3, settings=None, encoders_name="", face_name="",
                        seed=0, extra_rows=()):
    """Write dummy clip files, a manifest and the cache entries the trainer will find for them.
    Returns (manifest path, cache dir). `extra_rows` (dicts) are appended to the manifest as they are."""
    settings = settings or PrecomputeSettings()
    os.makedirs(folder, exist_ok=True)
    cache = os.path.join(folder, "cache")
    raw = []
    for i in range(identities):
        for k in range(per_identity):
            # distinct bytes per file: the cache key hashes the content. These are stand-ins for video files whose
            # features are already in the cache; they are never decoded.
            for part in ("ref", "tgt"):
                with open(os.path.join(folder, f"id{i}_{k}_{part}.mp4"), "wb") as f:
                    f.write(f"synthetic {part} clip of identity {i}, sample {k}, seed {seed}".encode())
            raw.append({"reference": f"id{i}_{k}_ref.mp4", "target": f"id{i}_{k}_tgt.mp4",
                        "caption": "a person", "subject": f"id{i}", "_tensors": (i, k)})
    manifest = os.path.join(folder, "rows.jsonl")
    with open(manifest, "w") as f:
        for r in raw:
            f.write(json.dumps({k: v for k, v in r.items() if k != "_tensors"}) + "\n")
        for r in extra_rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    rows, _ = read_manifest(manifest)
    key_settings = settings_key(settings, encoders_name, face_name)
    for row, r in zip(rows, raw):
        i, k = r["_tensors"]
        save_entry(entry_path(cache, entry_key(row, key_settings)), synthetic_tensors(i, k, identities, seed))
    return manifest, cache


class StandInEncoders:
    """Tiny stand-ins for the Wan VAE and umT5 with the precompute interface (wanid.train.precompute): the VAE packs
    frames like Wan's (first frame alone, then 4 per latent frame; 8x8 pixels per cell) by averaging and mixes the
    3 colours into 16 channels with a fixed matrix; the text encoder gives seeded random rows per caption. Counts
    its calls, so a test can see the cache being used."""
    name = "stand-in-vae+umt5"

    def __init__(self):
        self.mix = torch.randn(16, 3, generator=torch.Generator().manual_seed(11))
        self.calls = {"video": 0, "images": 0, "text": 0}

    def _latent(self, x):  # [3, F, h, w] -> [16, F, h, w]
        return torch.einsum("oc,cfhw->ofhw", self.mix, x * 2 - 1)

    def encode_video(self, frames):
        self.calls["video"] += 1
        x = frames.permute(3, 0, 1, 2).float()  # [3, T, H, W]
        first = torch.nn.functional.avg_pool3d(x[:, :1][None], (1, 8, 8))[0]
        rest = torch.nn.functional.avg_pool3d(x[:, 1:][None], (4, 8, 8))[0] if x.shape[1] > 1 else first[:, :0]
        return self._latent(torch.cat([first, rest], dim=1))

    def encode_images(self, images):
        self.calls["images"] += 1
        x = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2).float(), 8)  # [N, 3, h, w]
        return torch.stack([self._latent(i[:, None])[:, 0] for i in x])

    def encode_text(self, caption):
        self.calls["text"] += 1
        seed = sum(ord(c) * (i + 1) for i, c in enumerate(caption)) % (2 ** 31)
        return 0.1 * torch.randn(len(caption.split()) + 1, 4096, generator=torch.Generator().manual_seed(seed))


def write_video(path, frames, fps=16):
    """uint8 [T, H, W, 3] -> a video file (libx264 if present, else mpeg4)."""
    import av
    import numpy as np
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def face_tools(tmp_dir):
    """FaceCrop/Parse's tools with no downloaded model: the bundled RetinaFace detector and a random ArcFace ONNX
    with the real signature (face_files.write_arcface); no parser (the landmark-ellipse fallback)."""
    import face_files
    from wanid.face.detect import load_detector
    from wanid.face.embed import ArcFaceEmbedder
    from wanid.face.tools import FaceTools

    detector, _ = load_detector("retinaface_mobilenet")
    path = os.path.join(tmp_dir, "glintr100.onnx")
    if not os.path.isfile(path):
        face_files.write_arcface(path)
    return FaceTools(detector, ArcFaceEmbedder(path, name="tiny-arcface"), None, name="retinaface+tiny-arcface")
