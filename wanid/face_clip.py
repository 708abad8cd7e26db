"""FaceClip: what FaceCrop/Parse hands to SlotEncoder (and to IdentityScore). Plain torch, no ComfyUI."""
from dataclasses import dataclass
from typing import Optional

import torch

CROP_SIZE = 512


@dataclass
class FaceClip:
    """Per-frame face data of a reference clip, in temporal order. T frames, all tensors on the CPU.

    crops:      [T, 512, 512, 3] float in [0, 1], Stand-In crop with the background whitened
    masks:      [T, 512, 512] float, 1 where the parser kept the pixel (face, hair, ...)
    landmarks:  [T, 5, 2] float, 5 points (ArcFace order: eyes, nose, mouth corners) in crop pixels
    boxes:      [T, 4] float, x1 y1 x2 y2 of the chosen face in the source frame's pixels
    scores:     [T] float, detection score (0 where no face)
    times:      [T] float, the frame's time in seconds
    valid:      [T] bool, False for frames without a usable face (kept by policy for alignment of indices)
    embeddings: [T, 512] float, L2-normalised ArcFace embeddings, or None without a recognition model
    anchor_index: index of the best frame (detection score x frontality x sharpness)
    aligned:    [T, 112, 112, 3] float in [0, 1], insightface's 5-point alignment from the source frame (what
                ArcFace models see; Lynx's IR-SE50 embeds it), zeros for frames without a face; or None
    lynx_crops: [T, 256, 256, 3] float in [0, 1], Lynx's Ref-adapter reference (the extended-template alignment at
                256 from the source frame, wanid.face.lynx_crop), zeros for frames without a face; or None
    raw_crops:  [T, 512, 512, 3] float in [0, 1], the same crops before whitening (with `masks` as alpha: the RGBA
                the official FaceProcessor(extra_input=True) gives, which the face swap pastes); or None
    """
    crops: torch.Tensor
    masks: torch.Tensor
    landmarks: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    times: torch.Tensor
    valid: torch.Tensor
    embeddings: Optional[torch.Tensor] = None
    anchor_index: int = 0
    embedding_model: str = ""
    detector: str = ""
    aligned: Optional[torch.Tensor] = None
    lynx_crops: Optional[torch.Tensor] = None
    raw_crops: Optional[torch.Tensor] = None

    def __post_init__(self):
        t = self.crops.shape[0]
        for name in ("masks", "landmarks", "boxes", "scores", "times", "valid"):
            value = getattr(self, name)
            if value.shape[0] != t:
                raise ValueError(f"FaceClip.{name} has {value.shape[0]} frames, crops has {t}")
        if self.embeddings is not None and self.embeddings.shape[0] != t:
            raise ValueError(f"FaceClip.embeddings has {self.embeddings.shape[0]} frames, crops has {t}")
        if not 0 <= self.anchor_index < max(t, 1):
            raise ValueError(f"FaceClip.anchor_index {self.anchor_index} is outside 0..{t - 1}")

    @property
    def num_frames(self):
        return self.crops.shape[0]

    @property
    def normalized_landmarks(self):
        """Landmarks in [0, 1] crop coordinates."""
        return self.landmarks / CROP_SIZE
