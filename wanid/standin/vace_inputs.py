"""The official Stand-In VACE input preparation (WeChatCV/Stand-In, pipelines/wan_video.py: WanVideoPipeline.__call__
and load_video_as_list, as infer_with_vace.py runs them). Plain torch/PIL, no ComfyUI.

- Control video: every frame centre-cropped to multiples of 16 (the same crop as the face swap's, one rule:
  wanid.face.swap.crop_and_trim) and the first 4k+1 frames kept (n - (n - 1) % 4); the output width, height and
  frame count are the cropped video's.
- Reference image: when its size differs from the video's, scaled to fit inside it (scale = min(W / w, H / h),
  sizes truncated to int) with PIL's LANCZOS and pasted centred ((W - w') // 2, (H - h') // 2) on white. The
  official code reads it from a file (8-bit): the image is rounded to 8 bits first, so a loaded image is exact.

ComfyUI's WanVaceToVideo does otherwise: it resizes the control video to its width x height (bilinear, cropping
the centre to that aspect) and centre-crops the reference image to fill the frame (cutting off what the
letterbox keeps). Given this preparation's outputs with its width, height and length, it leaves them as they are.
"""
import numpy as np
import torch

from ..errors import WanIDError, check_finite
from ..face.swap import SPATIAL_MULTIPLE, crop_and_trim

WHITE = 255


class VaceInputError(WanIDError):
    """A VACE input the official preparation cannot use; the message names the input and the fix."""


def _check_images(images, name, fix):
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3 or 0 in images.shape:
        raise VaceInputError(f"{name}: expected an IMAGE batch [N, H, W, 3], got {tuple(getattr(images, 'shape', ()))}"
                             f"; {fix}")
    check_finite(images, name, f"it has NaN or infinite pixels; {fix}")


def crop_control_video(frames):
    """(frames cropped and trimmed as load_video_as_list does: a new tensor, the input untouched,
    (top, left, height, width, kept))."""
    fix = "connect LoadVideo + Get Video Components (or another node giving the video's frames)"
    _check_images(frames, "control_video", fix)
    n, h, w = (int(s) for s in frames.shape[:3])
    if h < SPATIAL_MULTIPLE or w < SPATIAL_MULTIPLE:
        raise VaceInputError(f"control_video: {w}x{h} pixels; the official crop to multiples of {SPATIAL_MULTIPLE} "
                             f"leaves nothing below {SPATIAL_MULTIPLE} px. Use a video at least {SPATIAL_MULTIPLE}x"
                             f"{SPATIAL_MULTIPLE} (Wan is made for 832x480)")
    top, left, new_h, new_w, keep = crop_and_trim(n, h, w)
    out = frames[:keep, top:top + new_h, left:left + new_w, :3].clone()
    return out, (top, left, new_h, new_w, keep)


def letterbox_reference(image, width, height):
    """The reference image [1, height, width, 3] as the official pipeline makes it: the first image, 8-bit,
    scaled to fit with LANCZOS and centred on white (unchanged when it already has the video's size)."""
    from PIL import Image

    _check_images(image, "reference_image", "connect LoadImage (a photo of the person)")
    u8 = np.clip(np.rint(image[0, :, :, :3].detach().cpu().float().numpy() * 255.0), 0, 255).astype(np.uint8)
    ref_h, ref_w = u8.shape[:2]
    if (ref_w, ref_h) != (width, height):
        scale = min(width / ref_w, height / ref_h)
        new_w, new_h = int(ref_w * scale), int(ref_h * scale)
        if new_w < 1 or new_h < 1:
            raise VaceInputError(f"reference_image: {ref_w}x{ref_h} becomes {new_w}x{new_h} when fitted into the "
                                 f"{width}x{height} video; give a photo closer to the video's shape")
        resized = Image.fromarray(u8).resize((new_w, new_h), Image.LANCZOS)
        canvas = Image.new("RGB", (width, height), (WHITE, WHITE, WHITE))
        canvas.paste(resized, ((width - new_w) // 2, (height - new_h) // 2))
        u8 = np.asarray(canvas)
    return torch.from_numpy(u8.copy()).float().div_(255.0)[None].to(image.device)
