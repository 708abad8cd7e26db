"""Frame tokens: what the slot reader sees of each reference frame.

Per frame, P = 1 + pool^2 tokens of width D:
  - 1 high-frequency token, MLP(ArcFace embedding): who the person is (ConsisID's intrinsic identity signal);
  - pool^2 low-frequency tokens: the frame's Wan-VAE latent average-pooled to pool x pool cells, each cell's
    C channels projected to D: face shape and layout;
and added to every token of the frame: an embedding of the 5 normalised landmarks (pose / expression) and a
sinusoidal embedding of the frame's normalised time (so frame order matters). A learned embedding per token
position (ArcFace token, cell 0..pool^2-1) is added too: the reader treats tokens as a set, and without it the
cells of a frame would be interchangeable.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def sinusoidal(x, features, max_period=10000.0):
    """[..] -> [.., features]: the transformer timestep embedding (cos, sin halves) of x."""
    half = features // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
    args = x.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def normalize_times(times, valid):
    """Seconds [B, T] -> [0, 1] over the valid frames of each clip (0 for a clip with one valid frame).
    Invalid frames get their clamped value; their tokens carry no mass anyway."""
    big = torch.finfo(times.dtype).max
    lo = torch.where(valid, times, torch.full_like(times, big)).amin(dim=1, keepdim=True)
    hi = torch.where(valid, times, torch.full_like(times, -big)).amax(dim=1, keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    return ((times - lo) / span).clamp(0.0, 1.0)


class FrameTokenizer(nn.Module):
    def __init__(self, dim, arcface_dim=512, latent_channels=16, pool=4, num_landmarks=5, time_features=256,
                 time_scale=1000.0):
        super().__init__()
        self.dim = dim
        self.pool = pool
        self.latent_channels = latent_channels
        self.tokens_per_frame = 1 + pool * pool
        self.time_features = time_features
        self.time_scale = time_scale  # times in [0, 1] -> [0, time_scale]: the embedding's useful range
        self.high = nn.Sequential(nn.Linear(arcface_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.low = nn.Linear(latent_channels, dim) if pool > 0 else None
        self.landmarks = nn.Sequential(nn.Linear(num_landmarks * 2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.time = nn.Linear(time_features, dim)
        self.position = nn.Parameter(torch.randn(self.tokens_per_frame, dim) * 0.02)

    def forward(self, embeddings, landmarks, times, latents=None):
        """embeddings [B, T, 512] (L2-normalised ArcFace), landmarks [B, T, 5, 2] in [0, 1] crop coordinates,
        times [B, T] normalised to [0, 1], latents [B, T, C, h, w] (normalised Wan latents; needed when pool > 0).
        Returns tokens [B, T * P, D], frame-major (frame t owns tokens t*P .. t*P + P - 1)."""
        b, t = embeddings.shape[:2]
        high = self.high(embeddings)[:, :, None]  # [B, T, 1, D]
        if self.pool > 0:
            if latents is None:
                raise ValueError("the frame tokenizer needs the crops' VAE latents (its config has pool > 0)")
            if latents.shape[2] != self.latent_channels:
                raise ValueError(f"latents have {latents.shape[2]} channels, the tokenizer expects "
                                 f"{self.latent_channels} (Wan 2.1 VAE: 16)")
            cells = F.adaptive_avg_pool2d(rearrange(latents.float(), "b t c h w -> (b t) c h w"), self.pool)
            cells = rearrange(cells, "(b t) c h w -> b t (h w) c", b=b)
            frame = torch.cat([high, self.low(cells.to(high.dtype))], dim=2)  # [B, T, P, D]
        else:
            frame = high
        lm = rearrange(landmarks, "b t k two -> b t (k two)")
        per_frame = self.landmarks((lm.to(high.dtype) - 0.5) * 2.0)  # centred: [-1, 1]
        per_frame = per_frame + self.time(sinusoidal(times * self.time_scale, self.time_features).to(high.dtype))
        frame = frame + per_frame[:, :, None] + self.position
        return rearrange(frame, "b t p d -> b (t p) d")
