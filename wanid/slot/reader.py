"""The Sinkhorn-routed slot reader: S slots read a clip's frame tokens in R rounds (after lucidrains' slot-attention,
with the softmax over slots replaced by an entropic OT plan with fixed slot and frame masses).
"""
import torch
from einops import rearrange
from torch import nn

from .sinkhorn import sinkhorn_log, slot_marginals


class SlotReader(nn.Module):
    def __init__(self, dim, num_slots=8, rounds=3, eps=0.05, iters=20, mlp_ratio=2):
        super().__init__()
        self.dim = dim
        self.num_slots = num_slots
        self.rounds = rounds
        self.eps = eps
        self.iters = iters
        self.scale = dim ** -0.5

        # the initial slots are learned vectors (not sampled): the encoder is deterministic at inference
        self.slots_init = nn.Parameter(torch.randn(num_slots, dim) * 0.5)
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, tokens, log_b, slots=None):
        """tokens [B, N, D], log_b [B, N] (log column marginals, -inf for masked tokens), optional initial slots
        [B, S, D] (default: the learned ones). Returns (slots [B, S, D], plan of the last round [B, S, N])."""
        b = tokens.shape[0]
        if slots is None:
            slots = self.slots_init.expand(b, -1, -1)
        num_slots = slots.shape[1]
        tokens = self.norm_tokens(tokens)
        k, v = self.to_k(tokens), self.to_v(tokens)
        work = torch.promote_types(tokens.dtype, torch.float32)  # Sinkhorn in fp32 at least, also under bf16
        log_a = slot_marginals(b, num_slots, device=tokens.device, dtype=work)
        plan = None
        for _ in range(self.rounds):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            cost = -torch.einsum("bsd,bnd->bsn", q, k).to(work) * self.scale
            plan = sinkhorn_log(cost, log_a, log_b, self.eps, self.iters)
            # mean of the values a slot was given (row-normalised plan): the slot's read-out this round
            weights = plan / plan.sum(dim=-1, keepdim=True).clamp_min(1e-12)
            updates = torch.einsum("bsn,bnd->bsd", weights.to(v.dtype), v)
            slots = self.gru(rearrange(updates, "b s d -> (b s) d"), rearrange(prev, "b s d -> (b s) d"))
            slots = rearrange(slots, "(b s) d -> b s d", b=b)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, plan
