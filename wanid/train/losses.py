"""Wan's flow-matching objective, as the trainer uses it (plain torch).

    x_s    = (1 - s) x0 + s * noise          s in (0, 1): the noise level ("sigma" in ComfyUI)
    target = noise - x0                       the velocity Wan predicts
    loss   = weighted mean of (pred - target)^2

s is drawn with the shift Wan samples with at inference (ComfyUI's ModelSamplingDiscreteFlow / ModelSamplingSD3:
s = shift * u / (1 + (shift - 1) * u)), so training spends its steps where sampling spends them (shift 5 pushes
most of them to high noise, where identity and layout are decided). The DiT's timestep is s * 1000.
"""
import torch

TIMESTEP_SCALE = 1000.0  # ComfyUI's ModelSamplingDiscreteFlow multiplier: timestep = sigma * 1000


def shift_sigma(u, shift):
    """The time shift Wan applies to its schedule: u in [0, 1] -> s in [0, 1], s = shift u / (1 + (shift - 1) u)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(batch, shift, generator=None, device="cpu", min_sigma=1e-3):
    """s for `batch` samples: u ~ U(0, 1), shifted. Clamped away from 0 (pure data: no signal to learn) and 1."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return shift_sigma(u, shift).clamp(min_sigma, 1.0 - min_sigma).float().to(device)


def validation_sigmas(count, shift):
    """A fixed grid of noise levels for the validation loss: the shifted midpoints of `count` equal u-bins, so the
    validation loss estimates the training loss's expectation with the same weighting, without randomness."""
    u = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    return shift_sigma(u, shift).float()


def noisy_latent(x0, noise, sigma):
    """x_s = (1 - s) x0 + s noise and the velocity target noise - x0. sigma [B] broadcasts over [B, ...]."""
    s = sigma.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise, noise - x0


def weighted_mse(pred, target, weight=None):
    """Per-sample loss [B]: mean squared error over every element, or the weight-averaged error when a weight
    [B, 1 | C, F, H, W] is given (sum w e^2 / sum w over the same elements; a sample with zero total weight
    falls back to the plain mean, so an empty face mask never gives 0/0)."""
    err = (pred.float() - target.float()) ** 2
    plain = err.flatten(1).mean(dim=1)
    if weight is None:
        return plain
    w = weight.float().expand_as(err)
    total = w.flatten(1).sum(dim=1)
    weighted = (w * err).flatten(1).sum(dim=1) / total.clamp_min(1e-12)
    return torch.where(total > 0, weighted, plain)


def face_weight(mask, use_face, background=0.0):
    """ConsisID's dynamic mask loss: with the coin `use_face` [B] (bool) the loss is restricted to the face
    region (latent-space mask [B, F, H, W] in [0, 1]; `background` > 0 keeps a share of the rest), otherwise
    every element counts. Returns the weight [B, 1, F, H, W] for weighted_mse, or None when no coin came up."""
    if mask is None or not bool(use_face.any()):
        return None
    m = mask.float()[:, None]
    face = background + (1.0 - background) * m
    return torch.where(use_face.reshape(-1, 1, 1, 1, 1).to(m.device), face, torch.ones_like(m))
