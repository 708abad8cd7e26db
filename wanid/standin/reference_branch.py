"""The two halves of Stand-In's restricted self-attention, written against a Wan attention block.

Reference tokens attend only to themselves, so their stream depends on the reference image and t = 0 alone:
`reference_block` runs it for one block and returns the keys/values the video will see. Video queries then
attend to [video keys; reference keys] (`attend_with_reference`). The block is duck-typed (Wan's
`WanAttentionBlock`: modulation, norm1, self_attn.{q,k,v,o,norm_q,norm_k}, norm2, ffn); the host passes its own
rope, attention and cast functions so fp8 weights, offloading and merged user LoRAs behave as in the base model.

Two exact ways to let the video see the reference: `attend_merged` (two SDPA passes, video keys and reference keys,
merged by their log-sum-exp: no copy of the video K/V, strength as an exact bias) where the host's attention is
PyTorch SDPA, and `attend_with_reference` (one pass over the concatenated keys) for every other backend.
"""
import logging
import math

import torch


def reference_block(block, lora, x, e, freqs, rope, attention, cast):
    """One Wan block for the reference tokens: t=0 adaLN, LoRA'd self-attention among themselves, FFN.

    x: [1, N, dim] reference tokens; e: [1, 6, dim] time projection at t = 0; freqs: RoPE of the reference
    positions; lora: the block's LoRASelfAttn. Returns (x after the block, k, v) with k after norm and RoPE,
    both [1, N, dim] - exactly what the video's self-attention appends.
    """
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (cast(block.modulation, x) + e).chunk(6, dim=1)
    attn = block.self_attn
    b, n, heads, head_dim = x.shape[0], x.shape[1], attn.num_heads, attn.head_dim

    h = torch.addcmul(shift_sa, block.norm1(x), 1 + scale_sa)
    q = rope(attn.norm_q(attn.q(h) + lora.q_loras(h)).view(b, n, heads, head_dim), freqs).view(b, n, -1)
    k = rope(attn.norm_k(attn.k(h) + lora.k_loras(h)).view(b, n, heads, head_dim), freqs).view(b, n, -1)
    v = attn.v(h) + lora.v_loras(h)
    y = attn.o(attention(q, k, v, heads=heads))
    x = torch.addcmul(x, y, gate_sa)
    # No cross-attention: the reference never sees the text.
    y = block.ffn(torch.addcmul(shift_ff, block.norm2(x), 1 + scale_ff))
    return torch.addcmul(x, y, gate_ff), k, v


_REFUSED = set()  # (device type, dtype) where a fused kernel refused the merge's inputs: concatenate there


def sdpa_with_lse(q, k, v):
    """PyTorch SDPA on [B, H, N, D] tensors with the softmax's log-sum-exp: (out [B, H, N, D], lse [B, H, N] fp32),
    from the fused kernel F.scaled_dot_product_attention itself picks (flash, memory-efficient, CPU flash), so the
    output is the one the host's SDPA would give. None where that kernel gives no log-sum-exp (math, cuDNN), or once
    one has refused such inputs on this device and dtype (logged once; the caller then concatenates)."""
    from torch.nn.attention import SDPBackend
    where = (q.device.type, q.dtype)
    if where in _REFUSED:
        return None
    choice = torch._fused_sdp_choice(q, k, v)
    aten = torch.ops.aten
    try:
        if choice == int(SDPBackend.FLASH_ATTENTION):
            if q.device.type == "cpu":
                return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
            out, lse = aten._scaled_dot_product_flash_attention(q, k, v)[:2]
            return out, lse
        if choice == int(SDPBackend.EFFICIENT_ATTENTION):
            out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
            return out, lse[..., :q.shape[2]]  # the kernel pads the query axis of its log-sum-exp
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # a kernel's own input checks (e.g. a broadcast batch stride) on some torch build
        _REFUSED.add(where)
        logging.getLogger(__name__).warning(
            "[WanIdentity] Stand-In: PyTorch's fused attention refused the log-sum-exp merge on %s %s (%s); "
            "using the concatenated keys instead (same result, more memory).", *where, str(e).splitlines()[0])
    return None


def attend_merged(q, k, v, k_ref, v_ref, heads, strength=1.0):
    """The same result as attend_with_reference, without ever concatenating the video's keys and values.

    softmax over [video; reference] = the video pass and the reference pass, each normalised, mixed by their
    log-sum-exps: out = lerp(out_video, out_ref, sigmoid(lse_ref + log s - lse_video)). strength s is exactly the
    log s bias. The video pass is the host's own SDPA kernel (identical to the unpatched attention); the reference
    pass (its ~1k keys) runs a few heads at a time into the video output, so the transient memory is a fraction of
    one head group, not a second copy of the video K/V. q, k, v: [B, N, H*D]; k_ref, v_ref: [1, Nr, H*D].
    Returns [B, N, H*D], or None where SDPA has no kernel with a log-sum-exp for these inputs (the caller falls
    back to attend_with_reference)."""
    if strength <= 0:
        return None
    b, n, width = q.shape
    d = width // heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)

    qh = split(q)
    main = sdpa_with_lse(qh, split(k), split(v))
    if main is None:
        return None
    out, lse = main
    k_ref, v_ref = (split(t.to(q.dtype)).expand(b, -1, -1, -1) for t in (k_ref, v_ref))
    bias = math.log(strength)
    step = max(1, heads // 8)  # heads per reference pass: its output is at most ~1/8 of the video output
    for h in range(0, heads, step):
        part = sdpa_with_lse(qh[:, h:h + step], k_ref[:, h:h + step], v_ref[:, h:h + step])
        if part is None:
            return None
        out_ref, lse_ref = part
        weight = torch.sigmoid(lse_ref.add_(bias).sub_(lse[:, h:h + step])).unsqueeze(-1)
        out[:, h:h + step].lerp_(out_ref, weight.to(out.dtype))
        del part, out_ref, lse_ref, weight  # before the next group's pass: one group's output alive at a time
    return out.transpose(1, 2).reshape(b, n, width)


def attend_with_reference(attention, q, k, v, k_ref, v_ref, heads, strength=1.0, **kwargs):
    """Video self-attention over [video; reference] keys and values.

    strength s multiplies every reference key's attention weight (a logit bias of log s): s = 1 is Stand-In
    exactly, s -> 0 fades to the unpatched model. For s != 1 the bias rides on an extra head channel
    (q gets a constant 1, reference keys get log s), so any attention backend works unchanged; the head is
    padded to a multiple of 8 for fused kernels and q is rescaled so the softmax scale stays 1/sqrt(d).
    """
    if strength <= 0:
        return attention(q, k, v, heads=heads, **kwargs)
    batch = q.shape[0]
    k_ref = k_ref.to(k.dtype).expand(batch, -1, -1)
    v_ref = v_ref.to(v.dtype).expand(batch, -1, -1)
    if strength == 1.0:
        return attention(q, torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1), heads=heads, **kwargs)

    d = q.shape[-1] // heads
    pad = 8
    d2 = d + pad

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d)

    def extend(t, first=0.0):
        extra = t.new_zeros(*t.shape[:-1], pad)
        extra[..., 0] = first
        return torch.cat([t, extra], -1)

    qa = extend(split(q) * math.sqrt(d2 / d), 1.0)
    ka = torch.cat([extend(split(k)), extend(split(k_ref), math.log(strength) * math.sqrt(d2))], 1)
    va = extend(split(torch.cat([v, v_ref], 1)))
    flat = lambda t: t.reshape(t.shape[0], t.shape[1], heads * d2)  # noqa: E731
    out = attention(flat(qa), flat(ka), flat(va), heads=heads, **kwargs)
    return out.reshape(batch, -1, heads, d2)[..., :d].reshape(batch, -1, heads * d)
