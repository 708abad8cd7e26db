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
Both K/V sets depend only on the reference, so they are computed once per sampling run.
"""
import torch


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


def reference_features(blocks, x, e, freqs, context, run_block, cast):
    """The reference stream through the frozen blocks: the modulated self-attention input of each block.

    x: [1, N, dim] patch-embedded reference latent; e: [1, 6, dim] time projection at t = 0; freqs: RoPE of the
    reference's own grid (from 0); context: its text tokens after text_embedding. run_block(i, block, x) runs the
    native block unchanged. Returns a list of [1, N, dim]."""
    out = []
    for i, block in enumerate(blocks):
        shift, scale = (cast(block.modulation, x) + e).chunk(6, dim=1)[:2]
        out.append(torch.addcmul(shift, block.norm1(x), 1 + scale))
        if i + 1 < len(blocks):  # the last block's output is never used
            x = run_block(i, block, x)
    return out
