"""SlotEncoder: a reference clip's faces -> identity tokens in Wan's text space (the design: docs/slot-id.md).

    anchor tokens  A = MLP(ArcFace of the anchor frame) reshaped to A x D
    slots          S = SlotReader(FrameTokenizer(clip))
    output         [proj(anchor) ; strength * tanh(g) * proj(slots)]     g in R^S, 0 at init
    proj(x)        = out_scale * Linear(LN(x)), D -> 4096

The gate multiplies the PROJECTED slot tokens, so g = 0 (or strength 0) gives zero rows: exactly Wan's own
padding rows, i.e. the anchor alone. (Gating before a biased projection would leave the bias as extra tokens.)
"""
import json
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
from torch import nn

from .reader import SlotReader
from .sinkhorn import frame_token_marginals
from .tokenizer import FrameTokenizer, normalize_times


@dataclass
class SlotIDConfig:
    dim: int = 1024  # encoder width D
    arcface_dim: int = 512
    latent_channels: int = 16  # Wan 2.1 VAE; 48 for the Wan 2.2 TI2V-5B VAE
    pool: int = 4  # low-frequency tokens per frame = pool^2 (0: ArcFace token only, no VAE needed)
    num_landmarks: int = 5
    time_features: int = 256
    num_slots: int = 8
    rounds: int = 3
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 20
    mlp_ratio: int = 2
    anchor_tokens: int = 4
    text_dim: int = 4096  # umT5 width: Wan's text_embedding input
    output_scale_init: float = 1.0  # RMS of an output token at init (the projection is initialised for RMS 1)
    lora_rank: int = 32
    lora_alpha: float = 32.0  # ComfyUI scales the LoRA by alpha / rank

    @property
    def tokens_per_frame(self):
        return 1 + self.pool * self.pool

    @property
    def num_tokens(self):
        return self.anchor_tokens + self.num_slots

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"config is a JSON {type(raw).__name__}, not an object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"config has unknown fields {unknown} (a newer Slot-ID format?)")
        out = {}
        for name, value in raw.items():
            kind = int if known[name].type in (int, "int") else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"config field {name}={value!r} is not a{'n int' if kind is int else ' number'}")
            out[name] = kind(value)
        config = cls(**out)
        config.check()
        return config

    def check(self):
        positive = ("dim", "arcface_dim", "latent_channels", "num_landmarks", "time_features", "num_slots", "rounds",
                    "sinkhorn_iters", "mlp_ratio", "anchor_tokens", "text_dim", "lora_rank")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config field {name}={getattr(self, name)} must be > 0")
        if self.pool < 0 or self.sinkhorn_eps <= 0 or self.time_features % 2:
            raise ValueError(f"config: pool={self.pool} must be >= 0, sinkhorn_eps={self.sinkhorn_eps} > 0, "
                             f"time_features={self.time_features} even")


@dataclass
class IdentityTokens:
    """What SlotEncoder hands to IdentityTokenInject (the IDENTITY_TOKENS type). CPU, float32.

    tokens: [A + S, text_dim], anchor rows first, slot rows already gated (strength 1)
    plan:   [S, T], share of each slot's mass on each frame (rows sum to 1; invalid frames 0)
    """
    tokens: torch.Tensor
    plan: torch.Tensor
    num_anchor: int
    num_slots: int
    backbone: str = ""
    dim: int = 0  # the DiT width the checkpoint (and its LoRA) was made for
    source: str = ""

    def scaled(self, strength):
        """The tokens with the slot part multiplied by `strength` (0: the anchor alone, as with an untrained gate)."""
        out = self.tokens.clone()
        out[self.num_anchor:] *= strength
        return out


class SlotEncoder(nn.Module):
    def __init__(self, config: SlotIDConfig):
        super().__init__()
        config.check()
        self.config = config
        d = config.dim
        self.tokenizer = FrameTokenizer(d, config.arcface_dim, config.latent_channels, config.pool,
                                        config.num_landmarks, config.time_features)
        self.reader = SlotReader(d, config.num_slots, config.rounds, config.sinkhorn_eps, config.sinkhorn_iters,
                                 config.mlp_ratio)
        self.anchor = nn.Sequential(nn.Linear(config.arcface_dim, d), nn.GELU(),
                                    nn.Linear(d, config.anchor_tokens * d))
        self.gate = nn.Parameter(torch.zeros(config.num_slots))
        self.norm_out = nn.LayerNorm(d)
        self.proj = nn.Linear(d, config.text_dim)
        nn.init.normal_(self.proj.weight, std=d ** -0.5)  # unit-variance input -> unit-RMS output
        nn.init.zeros_(self.proj.bias)
        self.out_scale = nn.Parameter(torch.tensor(float(config.output_scale_init)))

    def project(self, x):
        return self.out_scale * self.proj(self.norm_out(x))

    def forward(self, embeddings, landmarks, times, valid, anchor_index, latents=None, strength=1.0, slots=None):
        """embeddings [B, T, 512], landmarks [B, T, 5, 2] in [0, 1], times [B, T] in [0, 1] (normalize_times),
        valid [B, T] bool, anchor_index [B] long, latents [B, T, C, h, w] or None (pool = 0).
        Returns (tokens [B, A + S, text_dim], plan [B, S, T]: share of each slot's mass per frame)."""
        cfg = self.config
        b, t = embeddings.shape[:2]
        valid = valid.bool()
        # invalid frames may hold anything (zeros, NaN): they get no mass, and must not poison the sums
        embeddings = torch.where(valid[:, :, None], embeddings, torch.zeros_like(embeddings))
        landmarks = torch.where(valid[:, :, None, None], landmarks, torch.full_like(landmarks, 0.5))
        if latents is not None:
            latents = torch.where(valid[:, :, None, None, None], latents, torch.zeros_like(latents))
        tokens = self.tokenizer(embeddings, landmarks, times, latents)
        log_b = frame_token_marginals(valid, cfg.tokens_per_frame).to(tokens.device)
        slots, plan = self.reader(tokens, log_b, slots)

        anchor_e = embeddings[torch.arange(b, device=embeddings.device), anchor_index.to(embeddings.device)]
        anchor = self.anchor(anchor_e).reshape(b, cfg.anchor_tokens, cfg.dim)
        gate = torch.tanh(self.gate) * strength
        out = torch.cat([self.project(anchor), gate[None, :, None] * self.project(slots)], dim=1)

        per_frame = plan.reshape(b, plan.shape[1], t, cfg.tokens_per_frame).sum(-1)
        per_frame = per_frame / per_frame.sum(-1, keepdim=True).clamp_min(1e-12)
        return out, per_frame

    @torch.no_grad()
    def encode_clip(self, embeddings, landmarks, times, valid, anchor_index, latents=None, device=None,
                    backbone="", dim=0, source=""):
        """One clip (no batch dim; times in seconds, landmarks in [0, 1]) -> IdentityTokens on the CPU."""
        device = device or next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        if not bool(valid.bool().any()):
            raise ValueError("no valid frame in the clip: every frame was rejected (no usable face)")
        if not bool(valid.bool()[int(anchor_index)]):
            raise ValueError(f"anchor frame {anchor_index} is not a valid frame")
        tokens, plan = self(**batch_inputs(embeddings, landmarks, times, valid, anchor_index, latents, device, dtype))
        return IdentityTokens(tokens=tokens[0].float().cpu(), plan=plan[0].float().cpu(),
                              num_anchor=self.config.anchor_tokens, num_slots=self.config.num_slots,
                              backbone=backbone, dim=dim, source=source)


def batch_inputs(embeddings, landmarks, times, valid, anchor_index, latents=None, device="cpu", dtype=torch.float32):
    """One clip's tensors (no batch dim: what clip_inputs gives, or training's cached ref_* tensors; times in seconds)
    -> SlotEncoder.forward's arguments for a batch of one on `device`: the one preparation of the encoder's inputs,
    for inference (encode_clip) and training (Trainer.encode_reference). Features in `dtype`, times normalised
    over the valid frames."""
    valid = valid.bool().to(device)[None]
    return dict(embeddings=embeddings.to(device, dtype)[None], landmarks=landmarks.to(device, dtype)[None],
                times=normalize_times(times.to(device, torch.float32)[None], valid), valid=valid,
                anchor_index=torch.as_tensor(anchor_index, dtype=torch.long).reshape(1).to(device),
                latents=None if latents is None else latents.to(device, dtype)[None])


def clip_inputs(face_clip, latents: Optional[torch.Tensor] = None):
    """A FaceClip (wanid.face_clip) -> the keyword arguments of SlotEncoder.encode_clip."""
    if face_clip.embeddings is None:
        raise ValueError("face_clip: it has no ArcFace embeddings, which SlotEncoder needs. Put antelopev2 (or "
                         "buffalo_l) in models/insightface/models/antelopev2 and run Face Crop / Parse again.")
    return dict(embeddings=face_clip.embeddings.float(), landmarks=face_clip.normalized_landmarks.float(),
                times=face_clip.times.float(), valid=face_clip.valid.bool(), anchor_index=int(face_clip.anchor_index),
                latents=latents)
