"""The math of Lynx's two adapters, written against a Wan attention block (duck-typed: ComfyUI's
WanAttentionBlock; the host passes its own attention, cast and block-call functions).

ID adapter, in every adapted block's cross-attention (official WanIPAttnProcessor / IPAWanAttnProcessor2_0):
    out = attn(q, k_text, v_text) + ip_scale * attn(q, K_ip, V_ip)       (before the output projection)
    q = norm_q(to_q(x)) (the cross-attention's own query, no RoPE)
    K_ip = norm(to_k_ip([tokens; registers])), V_ip = to_v_ip([tokens; registers])
    norm: full = the block's cross-attention norm_k; lite = RMS norm without weights, eps 1e-5.
Ref adapter (full), in every block's self-attention (official WanRefAttnProcessor):
    out = attn(rope(q), rope(k), v) + ref_scale * attn(q, K_ref, V_ref)   (q = norm_q(to_q(x)), no RoPE)
    K_ref = norm_k(to_k_ref(f)), V_ref = to_v_ref(f), norm_k the block's self-attention one,
    f = the block's modulated self-attention input (norm1(x) * (1 + scale) + shift) for the REFERENCE stream:
    the reference latent passed through the frozen DiT alone, at t = 0, with its own text ("image of a face").
Both K/V sets depend only on the reference, so they are computed once per sampling run. The reference stream is
reference.py's; the adapters' weights are one module, LynxAdapters (the side model the host loads and offloads).
"""
import torch
from torch import nn

from .resampler import Resampler


def rms_norm(x, eps=1e-5):
    """RMS norm without weights, in fp32 (the lite ID keys' norm_rms_k)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def ip_kv(layer, tokens, norm, cast):
    """K/V [B, n, dim] of one block's ID adapter. tokens: [B, 16, token_dim] resampler output."""
    if layer.registers is not None:
        tokens = torch.cat([tokens, cast(layer.registers, tokens).expand(tokens.shape[0], -1, -1)], 1)
    return norm(layer.to_k_ip(tokens)), layer.to_v_ip(tokens)


def ref_kv(layer, features, norm_k):
    """K/V [B, n, dim] of one block's Ref adapter from the reference stream's features [B, n, dim]."""
    return norm_k(layer.to_k_ref(features)), layer.to_v_ref(features)


def unrotate(q, freqs, heads):
    """q [B, L, heads * d] after Wan's RoPE -> before it. freqs: the block's RoPE ([..., d/2, 2, 2] rotation
    matrices, ComfyUI's layout); a rotation's inverse is its transpose, so this is exact up to rounding."""
    b, n = q.shape[:2]
    f = freqs.transpose(-1, -2)
    x = q.reshape(b, n, heads, -1, 1, 2).to(f.dtype)
    out = f[..., 0] * x[..., 0] + f[..., 1] * x[..., 1]
    return out.reshape(b, n, -1).to(q.dtype)


# --- the adapters as one module (the side model the host loads and offloads) --------------------------------------

class IPLayer(nn.Module):
    def __init__(self, token_dim, dim, bias, registers, operations=nn, device=None, dtype=None):
        super().__init__()
        self.to_k_ip = operations.Linear(token_dim, dim, bias=bias, device=device, dtype=dtype)
        self.to_v_ip = operations.Linear(token_dim, dim, bias=bias, device=device, dtype=dtype)
        self.registers = nn.Parameter(torch.zeros(1, registers, token_dim, device=device, dtype=dtype)) \
            if registers else None


class RefLayer(nn.Module):
    def __init__(self, dim, operations=nn, device=None, dtype=None):
        super().__init__()
        self.to_k_ref = operations.Linear(dim, dim, device=device, dtype=dtype)
        self.to_v_ref = operations.Linear(dim, dim, device=device, dtype=dtype)


class LynxAdapters(nn.Module):
    """resampler.*, ip.N.*, ref.N.*: the official files under three prefixes."""

    def __init__(self, weights, operations=nn, device=None):
        super().__init__()
        self.variant = weights.variant
        self.resampler = Resampler(**weights.resampler_config, operations=operations, device=device)
        dtype = weights.dtype  # as stored: the official 14B adapters are about 4B parameters
        self.ip = nn.ModuleList(IPLayer(weights.token_dim, weights.dim, weights.variant == "full", weights.registers,
                                        operations, device, dtype) for _ in range(weights.ip_layers))
        self.ref = nn.ModuleList(RefLayer(weights.dim, operations, device, dtype) for _ in range(weights.ref_layers))

    @staticmethod
    def state_dict_of(weights):
        sd = {f"resampler.{k}": v for k, v in weights.resampler.items()}
        sd.update({f"ip.{k}": v for k, v in weights.ip.items()})
        sd.update({f"ref.{k}": v for k, v in weights.ref.items()})
        return sd
