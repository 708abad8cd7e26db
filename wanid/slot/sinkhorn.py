"""Entropic optimal transport between slots and frame tokens: Sinkhorn iterations in the log domain.

A zero-mass row or column is written as log-marginal -inf. Its potential is then -inf, every plan entry it
touches is exactly 0, and neither the forward nor the backward pass meets inf - inf or NaN (tests check the
plan, the gradient, and gradcheck with masked frames). No torch.where in the loop: the encoder's Sinkhorn is
launch-bound on a GPU (3 rounds x 20 iterations), so every op per iteration counts.
"""
import math

import torch


def sinkhorn_log(cost, log_a, log_b, eps=0.05, iters=20):
    """The entropic OT plan for `cost` with row marginals exp(log_a) and column marginals exp(log_b).

    cost:  [B, S, N]; log_a: [B, S]; log_b: [B, N]; both marginals sum to the same total (1 here).
    Returns the plan [B, S, N] (float32, or float64 if the cost is float64), which minimises
    <P, C> - eps H(P) under the marginals. Iterations alternate row then column scaling and END on the columns,
    so column (frame) masses are exact and the row sums carry what is left of the convergence error.
    """
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32  # bf16 would not meet 1e-4
    log_k = -cost.to(dtype) / eps
    log_a = log_a.to(dtype)
    log_b = log_b.to(dtype)
    # Masked potentials need no torch.where in the loop: log_a/log_b = -inf minus a finite logsumexp is -inf
    # (finite because every row and column has a finite partner), and the backward pass through an -inf entry
    # of logsumexp or exp is exactly 0. Only the starting g must already be -inf on masked columns.
    g = torch.where(torch.isfinite(log_b), torch.zeros_like(log_b), log_b)
    f = None
    for _ in range(iters):
        f = log_a - torch.logsumexp(log_k + g[:, None, :], dim=2)
        g = log_b - torch.logsumexp(log_k + f[:, :, None], dim=1)
    if f is None:
        f = log_a - torch.logsumexp(log_k + g[:, None, :], dim=2)
    return torch.exp(log_k + f[:, :, None] + g[:, None, :])

def slot_marginals(batch, num_slots, device=None, dtype=torch.float32):
    """log a: every slot holds 1/S of the mass. [B, S]"""
    return torch.full((batch, num_slots), -math.log(num_slots), device=device, dtype=dtype)


def frame_token_marginals(valid, tokens_per_frame, dtype=torch.float32):
    """log b for T frames of P tokens each: a valid frame holds 1/T_valid, spread evenly over its P tokens;
    an invalid frame holds nothing (-inf). valid: [B, T] bool -> [B, T * P].

    Raises ValueError for a clip without any valid frame (there is no mass to transport).
    """
    valid = valid.bool()
    count = valid.sum(dim=1, keepdim=True)
    if bool((count == 0).any()):
        raise ValueError("no valid frame in the clip: every frame was rejected (no usable face)")
    per_token = -(torch.log(count.to(dtype)) + math.log(tokens_per_frame))  # log(1 / (T_valid * P))
    log_b = torch.where(valid, per_token, torch.full_like(per_token, -math.inf))
    return log_b.repeat_interleave(tokens_per_frame, dim=1)
