"""Stand-In's reference LoRA: q/k/v low-rank deltas for the reference tokens of every block.

The module tree mirrors the official key names (blocks.N.self_attn.q_loras.down.weight), so a checkpoint loads
with a strict load_state_dict. `operations` is the host's layer factory (torch.nn, or ComfyUI's manual_cast ops so
the host can offload and cast these weights like its own).
"""
import torch
from torch import nn


class LoRAPair(nn.Module):
    def __init__(self, dim, rank, operations, device=None):
        super().__init__()
        self.down = operations.Linear(dim, rank, bias=False, device=device, dtype=torch.float32)
        self.up = operations.Linear(rank, dim, bias=False, device=device, dtype=torch.float32)

    def forward(self, x):
        # The official branch runs in fp32 even in a bf16 pipeline.
        return self.up(self.down(x.float())).to(x.dtype)


class LoRASelfAttn(nn.Module):
    def __init__(self, dim, rank, operations, device=None):
        super().__init__()
        self.q_loras = LoRAPair(dim, rank, operations, device)
        self.k_loras = LoRAPair(dim, rank, operations, device)
        self.v_loras = LoRAPair(dim, rank, operations, device)


class LoRABlock(nn.Module):
    def __init__(self, dim, rank, operations, device=None):
        super().__init__()
        self.self_attn = LoRASelfAttn(dim, rank, operations, device)


class StandInLoRA(nn.Module):
    def __init__(self, num_blocks, dim, rank, operations=nn, device=None):
        super().__init__()
        self.blocks = nn.ModuleList(LoRABlock(dim, rank, operations, device) for _ in range(num_blocks))

    @classmethod
    def from_weights(cls, weights, operations=nn):
        module = cls(weights.num_blocks, weights.dim, weights.rank, operations, device="meta")
        module.load_state_dict(weights.state_dict, strict=True, assign=True)
        return module.eval().requires_grad_(False)
