"""Video face swap preparation: the official Stand-In `VideoMaskGenerator.process`
(preprocessor/videomask_generator.py) step for step, plus the latent-space mask its face swap pipeline
(pipelines/wan_video_face_swap.py, force_background_consistency) builds from the masks. Plain numpy/cv2/PIL/torch.

Per video:
1. Centre-crop to multiples of 16 ((h - new_h) // 2 rows off the top) and trim to 4k+1 frames.
   Official quirk: it keeps (n // 4) * 4 + 1 frames, which for n = 4k is more than there are, so a 4k-frame
   video stays 4k frames and the pipeline then fails (its latents and noise differ in length). Here a video
   keeps ((n - 1) // 4) * 4 + 1 frames: the same for every n the official pipeline can run.
2. The reference face (RGBA: the 512 crop and its parsing alpha, as FaceProcessor(extra_input=True) gives it)
   takes the official float round trip (uint8 / 255 * 255, truncated: 255 stays, some values lose 1).
   Its landmarks are those of the FIRST face the detector returns (the best score, not the largest).
Per frame (detector at size 640, as FaceAnalysis(det_size=640)):
3. The LARGEST face; it is used only if its score > confidence_threshold (a smaller, surer face is not).
4. With landmarks: the similarity transform reference -> frame (cv2.estimateAffinePartial2D, LMEDS); the RGB and
   the alpha are warped (bilinear, black border) and alpha-blended in float32, truncated to uint8; the mask is the
   warped alpha.
5. Otherwise (match_angle_and_size off, or no transform): the box paste. A square of int(max(w, h) * 1.5)
   around the box, clamped to the frame; the reference RGBA resized to it with PIL's LANCZOS (flipped left-right
   with probability flip_chance, from a seeded generator: the official draws from the unseeded global one);
   the mask is BiSeNet's face labels 1..13 on the frame's crop (INTER_AREA to 512, ImageNet normalisation),
   dilated (ellipse, dilation_kernel_size), feathered (GaussianBlur, odd feather_amount), resized back
   (INTER_LINEAR), and PIL pastes the face through it.
6. Frames without a usable face keep their pixels and get an empty mask.
"""
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WanIDError, check_finite
from .pipeline import frame_ranges, unit_to_uint8

SPATIAL_MULTIPLE = 16   # the official centre crop
TIME_STRIDE = 4         # Wan's VAE: 4k+1 frames -> k+1 latent frames
LATENT_STRIDE = 8       # Wan 2.1 VAE (also Wan 2.2 A14B): 8 pixels per latent cell
MIN_FRAMES = 5          # the shortest video that is a video to Wan (4k+1, k >= 1)
DETECTION_SIZE = 640    # FaceAnalysis(det_size=(640, 640))
PARSE_SIZE = 512
FACE_PARTS = tuple(range(1, 14))  # BiSeNet labels the official mask keeps: skin .. lower lip (not hair, neck)
HARD_MASK_THRESHOLD = 0.5          # official: latent_mask > 0.5, on the mask scaled to [-1, 1]


class FaceSwapError(WanIDError):
    """A face swap input the preparation cannot use; the message names the input and the fix."""


@dataclass
class SwapResult:
    frames: np.ndarray            # uint8 [F, H, W, 3], the pasted frames
    masks: np.ndarray             # uint8 [F, H, W], 0..255
    latent_mask: torch.Tensor     # float32 [T, H/8, W/8], exactly 0 or 1
    crop: tuple                   # (top, left, height, width) of the centre crop in the input frames
    frames_in: int
    no_face: List[int] = field(default_factory=list)     # frames left as they were (empty mask)
    box_paste: List[int] = field(default_factory=list)   # frames that took the box-paste path
    flipped: List[int] = field(default_factory=list)
    source_landmarks: Optional[np.ndarray] = None

    def text(self):
        f, h, w = self.masks.shape
        top, left, ch, cw = self.crop
        lines = [f"{f} frames {w}x{h} (from {self.frames_in} frames; centre crop at x={left}, y={top})"]
        if f != self.frames_in:
            lines.append(f"trimmed to 4k+1 frames: the last {self.frames_in - f} dropped")
        t, lh, lw = self.latent_mask.shape
        lines.append(f"latent mask {t}x{lh}x{lw}, {int(self.latent_mask.sum())} of {t * lh * lw} cells regenerated")
        lines.append(f"face pasted in {f - len(self.no_face)} of {f} frames"
                     + (f" ({len(self.box_paste)} by the box paste)" if self.box_paste else ""))
        if self.no_face:
            lines.append(f"no face (kept as is, empty mask) in {len(self.no_face)} frames: "
                         f"{frame_ranges(self.no_face)}")
        if self.flipped:
            lines.append(f"reference flipped in {len(self.flipped)} frames: {frame_ranges(self.flipped)}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ shapes
def crop_and_trim(num_frames, height, width):
    """(top, left, new_h, new_w, frames kept): the official centre crop to multiples of 16, and 4k+1 frames."""
    new_h, new_w = (height // SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE, (width // SPATIAL_MULTIPLE) * SPATIAL_MULTIPLE
    keep = ((num_frames - 1) // TIME_STRIDE) * TIME_STRIDE + 1  # not the official (n // 4) * 4 + 1: see above
    return (height - new_h) // 2, (width - new_w) // 2, new_h, new_w, keep


def latent_shape(num_frames, height, width):
    return (num_frames - 1) // TIME_STRIDE + 1, height // LATENT_STRIDE, width // LATENT_STRIDE


# ------------------------------------------------------------------------------------------------ inputs
def check_inputs(frames, face, face_alpha):
    """Refuse what cannot be swapped, naming the input and the fix. Nothing is modified."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] < 3:
        raise FaceSwapError(f"frames: expected a video as an IMAGE batch [frames, H, W, 3], got "
                            f"{tuple(getattr(frames, 'shape', ()))}; connect LoadVideo + Get Video Components or "
                            "Reference Clip Loader")
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if n < MIN_FRAMES:
        raise FaceSwapError(f"frames: {n} frame{'s' if n != 1 else ''}; the face swap needs a video of at least "
                            f"{MIN_FRAMES} frames (Wan takes 4k+1: 5, 9, ... 81). Load the whole clip (Reference "
                            "Clip Loader: raise num_frames, or LoadVideo)")
    if h < SPATIAL_MULTIPLE or w < SPATIAL_MULTIPLE:
        raise FaceSwapError(f"frames: {w}x{h} pixels; the official crop to multiples of {SPATIAL_MULTIPLE} leaves "
                            f"nothing below {SPATIAL_MULTIPLE} px. Use a video at least {SPATIAL_MULTIPLE}x"
                            f"{SPATIAL_MULTIPLE} (480x832 is what Wan is made for)")
    check_finite(frames, "frames", "the video has NaN or infinite pixels; check the node that made it")
    if not isinstance(face, torch.Tensor) or face.ndim != 4 or face.shape[-1] < 3 or 0 in face.shape[:3]:
        raise FaceSwapError(f"face: expected one image [1, H, W, 3], got {tuple(getattr(face, 'shape', ()))}; "
                            "connect Face Crop / Parse's crops_raw")
    check_finite(face, "face", "the reference image has NaN or infinite pixels; check the node that made it")
    if face.shape[0] != 1:
        raise FaceSwapError(f"face: {face.shape[0]} images; the swap pastes one face. Give Face Crop / Parse one "
                            "photo (or pick one crop with an image-batch node)")
    if face_alpha is None:
        return
    if not isinstance(face_alpha, torch.Tensor) or face_alpha.ndim not in (2, 3):
        raise FaceSwapError(f"face_alpha: expected a MASK [1, H, W], got {tuple(getattr(face_alpha, 'shape', ()))}; "
                            "connect Face Crop / Parse's masks")
    alpha = face_alpha if face_alpha.ndim == 3 else face_alpha[None]
    if alpha.shape[0] != face.shape[0]:
        raise FaceSwapError(f"face_alpha: {alpha.shape[0]} masks for {face.shape[0]} face image; connect the masks "
                            "output of the same Face Crop / Parse node as face")
    if tuple(alpha.shape[1:]) != tuple(face.shape[1:3]):
        raise FaceSwapError(f"face_alpha: {alpha.shape[2]}x{alpha.shape[1]} but face is {face.shape[2]}x"
                            f"{face.shape[1]}; connect the masks output of the same Face Crop / Parse node as face")
    check_finite(alpha, "face_alpha", "the mask has NaN or infinite values; check the node that made it")
    if not bool((alpha > 0.5 / 255).any()):
        raise FaceSwapError("face_alpha: the mask is empty, so there is no face to paste (the parser kept nothing, "
                            "or Face Crop / Parse found no face in the photo). Give a photo where the face is "
                            "visible")


def official_rgba(face, face_alpha):
    """uint8 RGB [H, W, 3] and alpha [H, W] as the official code holds the reference: its RGBA went through
    `pil_to_tensor` (float32 / 255) and back (* 255, astype uint8, which truncates)."""
    rgb = unit_to_uint8(face[0, ..., :3])
    alpha = np.full(rgb.shape[:2], 255, np.uint8) if face_alpha is None else \
        unit_to_uint8(face_alpha if face_alpha.ndim == 2 else face_alpha[0])
    rgba = np.dstack([rgb, alpha])
    back = ((rgba.astype(np.float32) / np.float32(255.0)) * np.float32(255)).astype(np.uint8)
    return np.ascontiguousarray(back[..., :3]), np.ascontiguousarray(back[..., 3])


# ------------------------------------------------------------------------------------------------ pasting
def similarity_paste(frame, rgb, alpha, src_kps, dst_kps):
    """(pasted frame, mask) by the landmark similarity transform, or None when cv2 finds no transform."""
    m, _ = cv2.estimateAffinePartial2D(np.asarray(src_kps, np.float32), np.asarray(dst_kps, np.float32),
                                       method=cv2.LMEDS)
    if m is None:
        return None
    h, w = frame.shape[:2]
    warped_face = cv2.warpAffine(rgb, m, (w, h))
    warped_alpha = cv2.warpAffine(alpha, m, (w, h))
    a = np.expand_dims(warped_alpha.astype(np.float32) / 255.0, axis=2)
    out = ((1.0 - a) * frame + a * warped_face).astype(np.uint8)
    return out, warped_alpha


def face_part_mask(crop_rgb, parser, dilation_kernel_size, feather_amount):
    """uint8 [512, 512] mask of the face parts in a frame crop (the official box-paste mask, before resizing
    back). parser: a wanid.face.parsing.FaceParser, or None: then the whole crop (the box is pasted whole)."""
    face_512 = cv2.resize(crop_rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_AREA)
    if not parser:
        mask = np.full((PARSE_SIZE, PARSE_SIZE), 255, np.uint8)
    else:
        x = torch.from_numpy(face_512.astype(np.float32) / 255.0)[None]
        labels = parser.logits(x, normalization="imagenet").argmax(dim=1)[0].cpu().numpy().astype(np.uint8)
        mask = np.isin(labels, FACE_PARTS).astype(np.uint8) * 255
    if dilation_kernel_size > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (dilation_kernel_size, dilation_kernel_size))
        mask = cv2.dilate(mask, kernel, iterations=1)
    if feather_amount > 0:
        k = feather_amount + 1 if feather_amount % 2 == 0 else feather_amount
        mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask


def box_paste(frame, rgba_pil, box, parser, flip, face_crop_scale, dilation_kernel_size, feather_amount):
    """(pasted frame, mask) by the official box paste, or None when the box is empty."""
    from PIL import Image

    h, w = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in box)  # map(int, bbox): truncation toward zero
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    half = int(max(x2 - x1, y2 - y1) * face_crop_scale) // 2
    top, left = max(cy - half, 0), max(cx - half, 0)
    bottom, right = min(cy + half, h), min(cx + half, w)
    bw, bh = right - left, bottom - top
    if bw <= 0 or bh <= 0:
        return None
    src = rgba_pil.copy()
    if flip:
        src = src.transpose(Image.FLIP_LEFT_RIGHT)
    face = src.resize((bw, bh), Image.Resampling.LANCZOS)
    mask_512 = face_part_mask(np.ascontiguousarray(frame[top:bottom, left:right]), parser,
                              dilation_kernel_size, feather_amount)
    mask = cv2.resize(mask_512, (bw, bh), interpolation=cv2.INTER_LINEAR)
    target = Image.fromarray(frame)
    target.paste(face, (left, top), mask=Image.fromarray(mask, mode="L"))
    full = np.zeros((h, w), np.uint8)
    full[top:bottom, left:right] = mask
    return np.array(target), full


# ------------------------------------------------------------------------------------------------ latent mask
def latent_mask(masks_u8, dtype=torch.float32):
    """The official force_background_consistency mask: the pixel masks scaled to [-1, 1] (preprocess_video),
    resized to the latent grid with 'nearest-exact' (time too: latent frame j reads pixel frame
    floor((j + 0.5) * F / T), not 4j), then > 0.5 (a pixel mask of 192/255 or more). Returns float32
    [T, H/8, W/8] of exactly 0 and 1, which core's Set Latent Noise Mask passes to the sampler unchanged
    (its trilinear resize of a mask already at the latent size is the identity)."""
    m = torch.from_numpy(np.ascontiguousarray(masks_u8)).to(dtype)
    f, h, w = m.shape
    m = m * (2 / 255) + (-1)
    lat = F.interpolate(m[None, None], size=latent_shape(f, h, w), mode="nearest-exact")[0, 0]
    return (lat > HARD_MASK_THRESHOLD).to(torch.float32)


# ------------------------------------------------------------------------------------------------ the whole
def prepare(frames, face, face_alpha, detector, parser=None, *, confidence_threshold=0.5, face_crop_scale=1.5,
            dilation_kernel_size=10, feather_amount=21, flip_chance=0.0, seed=0, match_angle_and_size=True,
            on_progress: Optional[Callable[[int, int], None]] = None) -> SwapResult:
    """frames IMAGE [n, H, W, 3], face IMAGE [1, h, w, 3], face_alpha MASK [1, h, w] (or None: opaque), all
    float 0..1 (never modified); detector: a wanid.face.detect.Detector; parser: a FaceParser or None (box paste
    keeps the whole box). on_progress(done, total) per frame."""
    from PIL import Image

    check_inputs(frames, face, face_alpha)
    if not 0.0 <= float(confidence_threshold) < 1.0:
        raise FaceSwapError(f"confidence_threshold: {confidence_threshold} is outside 0..1 (official: 0.5)")
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    top, left, nh, nw, keep = crop_and_trim(n, h, w)
    video = unit_to_uint8(frames[:keep, top:top + nh, left:left + nw, :3])

    rgb, alpha = official_rgba(face, face_alpha)
    src_kps = None
    if match_angle_and_size:
        det = detector.detect([rgb], DETECTION_SIZE)[0]
        if not len(det):
            raise FaceSwapError("face: no face found in the reference image, so its landmarks cannot be matched to "
                                "the video's. Give Face Crop / Parse a photo where the face is clearly visible; or "
                                "turn match_angle_and_size off to paste the reference box by box (the official "
                                "fallback, without rotation)")
        src_kps = det.landmarks[0]  # the official takes faces[0]: the best score
    rgba_pil = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    rng = random.Random(int(seed))

    out = np.empty_like(video)
    masks = np.zeros(video.shape[:3], np.uint8)
    result = SwapResult(out, masks, torch.zeros(0), (top, left, nh, nw), n, source_landmarks=src_kps)
    for i in range(keep):
        frame = video[i]
        det = detector.detect([frame], DETECTION_SIZE)[0]
        pasted = None
        if len(det):
            k = int(np.argmax((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])))
            if float(det.scores[k]) > confidence_threshold:
                if src_kps is not None:
                    pasted = similarity_paste(frame, rgb, alpha, src_kps, det.landmarks[k])
                if pasted is None:
                    flip = rng.random() < flip_chance  # drawn only here, as the official does
                    pasted = box_paste(frame, rgba_pil, det.boxes[k], parser, flip, face_crop_scale,
                                       dilation_kernel_size, feather_amount)
                    if pasted is not None:
                        result.box_paste.append(i)
                        if flip:
                            result.flipped.append(i)
        if pasted is None:
            out[i] = frame
            result.no_face.append(i)
        else:
            out[i], masks[i] = pasted
        if on_progress is not None:
            on_progress(i + 1, keep)
    if len(result.no_face) == keep:
        raise FaceSwapError(f"frames: no face above confidence_threshold {confidence_threshold} in any of the {keep} "
                            "frames, so there is nowhere to paste. Check the video shows a face, lower "
                            "confidence_threshold, or pick another detector")
    result.latent_mask = latent_mask(masks)
    return result


def preview(frames_u8, masks_u8, color=(1.0, 0.15, 0.15), opacity=0.5):
    """IMAGE [F, H, W, 3]: the pasted frames with the mask tinted red."""
    img = torch.from_numpy(frames_u8).float() / 255.0
    m = torch.from_numpy(masks_u8).float().unsqueeze(-1) / 255.0 * opacity
    return img * (1 - m) + torch.tensor(color) * m
