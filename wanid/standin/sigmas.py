"""The official Stand-In sampling schedule (schedulers/flow_match.py, FlowMatchScheduler as the face swap pipeline
makes it: shift 5, sigma_min 0, extra_one_step=True) as a ComfyUI SIGMAS list. Plain torch.

    sigma_start = denoising_strength                 (sigma_min 0, sigma_max 1)
    s_k = linspace(sigma_start, 0, steps + 1)[:-1]    k = 0 .. steps-1
    sigma_k = shift * s_k / (1 + (shift - 1) * s_k)
and the last step goes to 0 (the scheduler's step() uses sigma_ = 0 after the last timestep).

Core's KSampler(denoise) reaches the same list only when steps / denoise is a whole number (17 or 34 steps at
0.85, with Model Sampling SD3 shift 5 and the simple scheduler): it samples int(steps / denoise) steps of the
full schedule and keeps the last `steps`. For 20 steps at 0.85 it starts at sigma(0.913) instead of sigma(0.85).
"""
import torch


def flow_match_sigmas(steps, denoise=0.85, shift=5.0):
    """float32 [steps + 1], the last 0. Computed in float64 (the official computes in float32: within 1e-7)."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps: {steps}; need at least 1")
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"denoise: {denoise} is outside (0, 1]; the official face swap uses 0.85")
    if not float(shift) > 0.0:
        raise ValueError(f"shift: {shift} must be positive; the official uses 5.0")
    s = torch.linspace(float(denoise), 0.0, steps + 1, dtype=torch.float64)[:-1]
    sig = shift * s / (1 + (shift - 1) * s)
    return torch.cat([sig, sig.new_zeros(1)]).to(torch.float32)
