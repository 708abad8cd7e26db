"""Manifest rows -> cache entries: the target clip's latent and face mask, the caption's text embedding, the
reference clip's face features (FaceClip fields). Each row is computed once (dataset.entry_key); a row that fails
(missing file, unreadable video, no face, ...) is reported with its row number and reason and skipped.

The encoders are passed in (duck-typed), so this module never imports ComfyUI:

    encoders.name                       str, part of the cache key (model file names)
    encoders.encode_video(frames)       [T, H, W, 3] float 0..1 -> normalised latent [C, F, H/8, W/8]
    encoders.encode_images(images)      [N, H, W, 3] float 0..1 -> normalised latents [N, C, H/8, W/8], each image
                                        encoded as its own one-frame video
    encoders.encode_text(caption)       str -> [L, 4096] umT5 rows (padding rows removed or zero)

wanid/train/comfy_host.py implements them with ComfyUI's own VAE and umT5 loaders.
"""
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from ..face.tools import FaceTools
from ..video import VideoError, resize_frames, sample_frames
from .dataset import (CacheError, Example, ManifestError, entry_key, entry_path, load_entry, save_entry)

log = logging.getLogger("wanid.train")


@dataclass
class PrecomputeSettings:
    width: int = 832
    height: int = 480
    frames: int = 81          # 1 + 4k (Wan's VAE packs 4 frames per latent frame after the first)
    fps: float = 16.0         # Wan 2.1 is trained at 16 fps
    ref_frames: int = 16
    ref_max_side: int = 1024  # decode size for face detection
    min_ref_faces: int = 4    # fewer valid reference frames: the row is skipped
    crop_latents: bool = True  # encode the 512x512 crops (needed by an encoder with pool > 0)
    face_mask: bool = True     # detect faces in the target for the face-region loss
    mask_margin: float = 0.1   # box growth (share of its size) before it becomes the latent mask
    cache_dtype: str = "float16"

    def check(self):
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"--frames {self.frames}: Wan clips have 1 + 4k frames (81, 49, 33, 17, 5, 1)")
        if self.width % 16 or self.height % 16:
            raise ValueError(f"--width/--height {self.width}x{self.height} must be multiples of 16 (VAE 8 x patch 2)")
        if self.ref_frames < 1 or self.min_ref_faces < 1:
            raise ValueError("--ref-frames and --min-ref-faces must be >= 1")


class RowFailed(Exception):
    """A row that could not be precomputed; str() names the row and the reason."""


def settings_key(settings: PrecomputeSettings, encoders_name, face_name):
    return {"settings": asdict(settings), "encoders": encoders_name, "face": face_name}


def center_crop_resize(frames, width, height):
    """[T, H, W, 3] -> [T, height, width, 3]: scale to cover, crop the centre (aspect kept, no bars)."""
    h, w = frames.shape[1:3]
    scale = max(width / w, height / h)
    sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
    frames = resize_frames(frames, sw, sh)
    y, x = (sh - height) // 2, (sw - width) // 2
    return frames[:, y:y + height, x:x + width]


def latent_frame_sources(frames):
    """For each latent frame of a 1 + 4k clip, the pixel frame that stands for it (the last of its group)."""
    return [0] + [min(4 * j, frames - 1) for j in range(1, (frames - 1) // 4 + 1)]


def face_mask_latent(boxes, frame_hw, latent_hw, margin=0.1):
    """Boxes (x1 y1 x2 y2 in pixels, or None) per latent frame -> mask [F, h, w] in {0, 1} on the latent grid,
    each box grown by `margin` of its size and rounded outwards to whole latent cells."""
    h, w = frame_hw
    lh, lw = latent_hw
    mask = torch.zeros(len(boxes), lh, lw)
    for j, box in enumerate(boxes):
        if box is None:
            continue
        x1, y1, x2, y2 = [float(v) for v in box]
        gx, gy = (x2 - x1) * margin, (y2 - y1) * margin
        c0 = int(np.floor(max(0.0, x1 - gx) / w * lw))
        c1 = int(np.ceil(min(w, x2 + gx) / w * lw))
        r0 = int(np.floor(max(0.0, y1 - gy) / h * lh))
        r1 = int(np.ceil(min(h, y2 + gy) / h * lh))
        mask[j, r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = 1.0
    return mask


def _largest(det):
    if len(det) == 0:
        return None
    area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    return det.boxes[int(np.argmax(area))]


def reference_features(frames_u8, times, settings: PrecomputeSettings, tools: FaceTools, encoders=None):
    """A reference clip's frames -> the ref_* cache tensors (FaceCrop/Parse's own pipeline, no-face frames
    dropped, then padded back to ref_frames with invalid frames)."""
    from ..face.pipeline import NoFaceError, process_clip

    try:
        clip, _report = process_clip(frames_u8.float() / 255.0, tools.detector, embedder=tools.embedder,
                                     parser=tools.parser, on_no_face="skip", times=times)
    except NoFaceError as e:
        raise RowFailed(f"no face in the reference clip ({e})") from e
    valid = clip.valid.bool()
    if int(valid.sum()) < settings.min_ref_faces:
        raise RowFailed(f"only {int(valid.sum())} reference frames with a face, at least {settings.min_ref_faces} "
                        f"needed (--min-ref-faces)")
    out = {"ref_embeddings": clip.embeddings.float(), "ref_landmarks": clip.normalized_landmarks.float(),
           "ref_times": clip.times.float(), "ref_valid": valid.to(torch.uint8),
           "ref_anchor": torch.tensor(int(clip.anchor_index), dtype=torch.int64)}
    if settings.crop_latents:
        out["ref_latents"] = encoders.encode_images(clip.crops).float()
    return out


def precompute_row(row, settings: PrecomputeSettings, encoders, tools: FaceTools):
    """One manifest row -> cache tensors. Raises RowFailed / VideoError / ManifestError with the reason."""
    from ..face.detect import detect_with_ladder

    ref = sample_frames(row.reference.path, num_frames=settings.ref_frames, start_time=row.reference.start,
                        duration=row.reference.duration, max_side=settings.ref_max_side, label="reference")
    tensors = reference_features(ref.frames, ref.times.float(), settings, tools, encoders)

    span = settings.frames / settings.fps
    if row.target.duration and row.target.duration + 1e-6 < span:
        raise RowFailed(f"target_duration {row.target.duration:g} s is shorter than {settings.frames} frames at "
                        f"{settings.fps:g} fps ({span:.2f} s)")
    tgt = sample_frames(row.target.path, num_frames=settings.frames, start_time=row.target.start, duration=span,
                        label="target")
    if tgt.frames.shape[0] < settings.frames or float(tgt.times[-1] - tgt.times[0]) < 0.8 * (span - 1 / settings.fps):
        raise RowFailed(f"the target segment from {row.target.start:g} s holds {tgt.frames.shape[0]} frames over "
                        f"{float(tgt.times[-1] - tgt.times[0]):.2f} s; {settings.frames} frames over {span:.2f} s "
                        f"are needed (a shorter clip, or lower --frames)")
    pixels = center_crop_resize(tgt.frames, settings.width, settings.height)
    x0 = encoders.encode_video(pixels.float() / 255.0).float()
    tensors["target_latent"] = x0
    if settings.face_mask:
        picks = latent_frame_sources(settings.frames)
        if len(picks) != x0.shape[1]:
            raise RowFailed(f"the VAE gave {x0.shape[1]} latent frames for {settings.frames} frames, expected "
                            f"{len(picks)}")
        dets = detect_with_ladder(tools.detector, pixels[picks].numpy())
        boxes = [_largest(d) for d in dets]
        tensors["target_face_mask"] = face_mask_latent(boxes, pixels.shape[1:3], x0.shape[2:], settings.mask_margin)
    tensors["context"] = encoders.encode_text(row.caption).float()
    dtype = getattr(torch, settings.cache_dtype)
    for k in ("target_latent", "context", "ref_latents"):
        if k in tensors:
            tensors[k] = tensors[k].to(dtype)
    return tensors


def build_cache(rows, settings: PrecomputeSettings, cache_dir, encoders=None, tools: Optional[FaceTools] = None,
                report=None, progress=True):
    """Rows -> (examples, problems). Cached rows are read; the others are computed (needs encoders and tools) and
    written. Every failing row adds a message 'manifest row N (...): reason' to problems, is reported through
    `report` (default: log.error) and skipped; the others go on."""
    report = report or log.error
    settings.check()
    key_settings = settings_key(settings, getattr(encoders, "name", ""), getattr(tools, "name", ""))
    examples, problems = [], []
    iterator = rows
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(rows, desc="precompute", unit="row")
            iterator = bar
        except ImportError:
            pass
    for row in iterator:
        try:
            key = entry_key(row, key_settings)
            path = entry_path(cache_dir, key)
            tensors = None
            if os.path.isfile(path):
                try:
                    tensors = load_entry(path)
                except CacheError as e:
                    report(f"{e}; computing it again")
            if tensors is None:
                if encoders is None or tools is None:
                    raise RowFailed("not in the cache, and no encoders to compute it (give the ComfyUI models)")
                t0 = time.time()
                tensors = precompute_row(row, settings, encoders, tools)
                save_entry(path, tensors, {"row": row.row, "seconds": round(time.time() - t0, 2)})
            examples.append(Example(row, tensors, key))
        except (ManifestError, RowFailed, VideoError, CacheError, OSError, ValueError, RuntimeError) as e:
            reason = e.reason if isinstance(e, ManifestError) else f"{type(e).__name__}: {e}" \
                if not isinstance(e, (RowFailed, VideoError)) else str(e)
            msg = f"manifest row {row.row} ({os.path.basename(row.target.path)}): {reason} -- row skipped"
            problems.append(msg)
            report(msg)
    if bar is not None:
        bar.close()
    return examples, problems
