"""An independent float64 Wan 2.1 T2V forward with Stand-In, written from the papers' equations and standin.md.

It shares no code with ComfyUI or the pack: weights come straight from the state dict; RoPE is written with
complex rotations; attention is an explicit softmax. Used to check the patched native model numerically.
"""
import math

import torch
import torch.nn.functional as F

D = torch.float64


def lin(x, sd, name):
    return x @ sd[name + ".weight"].to(D).T + sd[name + ".bias"].to(D)


def layer_norm(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps)


def rms_norm(x, weight, eps=1e-6):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * weight.to(D)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def sinusoid(dim, t):
    half = dim // 2
    ang = t.to(D)[:, None] * torch.pow(10000.0, -torch.arange(half, dtype=D) / half)[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], 1)


def rope(x, pos, head_dim):
    """x [B, L, heads, d]; pos [L, 3] (t, h, w). Axis split as Wan: d - 4(d//6), 2(d//6), 2(d//6)."""
    dims = [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)]
    angles = []
    for axis, da in enumerate(dims):
        omega = 1.0 / 10000.0 ** (torch.arange(0, da, 2, dtype=D) / da)
        angles.append(pos[:, axis:axis + 1].to(D) * omega[None])
    ang = torch.cat(angles, 1)  # [L, d/2]
    xc = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(ang), ang)[None, :, None]
    return torch.stack([xc.real, xc.imag], -1).flatten(-2)


def attention(q, k, v, heads, bias=None):
    b, lq, dim = q.shape
    d = dim // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        logits = logits + bias
    return (torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, lq, dim)


def video_positions(T, H, W):
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return torch.stack([t, h, w], -1).reshape(-1, 3).to(D)


def scaled(pos, rope_options):
    """ScaleROPE's map of every position: shift + scale * p on each of the t, h, w axes."""
    if not rope_options:
        return pos
    out = pos.clone()
    for axis, name in enumerate("tyx"):
        out[:, axis] = rope_options.get(f"shift_{name}", 0.0) + rope_options.get(f"scale_{name}", 1.0) * pos[:, axis]
    return out


def forward(sd, x, t, context, num_layers, ref=None, lora=None, strength=1.0, rope_options=None):
    """Wan T2V forward in float64. ref: normalised latent [1, C, 1, h, w] or None; lora: Stand-In state dict;
    rope_options: ScaleROPE's scale/shift per axis, applied to video and reference positions alike."""
    sd = {k: v.to(D) for k, v in sd.items()}
    dim = sd["head.modulation"].shape[-1]
    heads, d = dim // 128, 128
    B = x.shape[0]

    def patchify(lat):
        y = F.conv3d(lat.to(D), sd["patch_embedding.weight"], sd["patch_embedding.bias"], stride=(1, 2, 2))
        return y.flatten(2).transpose(1, 2), y.shape[2:]

    xt, (T, H, W) = patchify(x)
    e = lin(F.silu(lin(sinusoid(256, t), sd, "time_embedding.0")), sd, "time_embedding.2")  # [B, dim]
    e0 = lin(F.silu(e), sd, "time_projection.1").reshape(B, 6, dim)
    ctx = lin(gelu_tanh(lin(context.to(D), sd, "text_embedding.0")), sd, "text_embedding.2")
    pos = scaled(video_positions(T, H, W), rope_options)

    if ref is not None:
        r, (_, rh, rw) = patchify(ref)
        rpos = torch.stack(torch.meshgrid(torch.tensor([-1]), torch.arange(H, H + rh), torch.arange(W, W + rw),
                                          indexing="ij"), -1).reshape(-1, 3).to(D)
        rpos = scaled(rpos, rope_options)
        er = lin(F.silu(lin(sinusoid(256, torch.zeros(1)), sd, "time_embedding.0")), sd, "time_embedding.2")
        e0r = lin(F.silu(er), sd, "time_projection.1").reshape(1, 6, dim)

    def qkv(h, p, positions, lora_prefix=None):
        def proj(name):
            y = lin(h, sd, f"{p}.self_attn.{name}")
            if lora_prefix is not None:
                down = lora[f"{lora_prefix}.self_attn.{name}_loras.down.weight"].to(D)
                up = lora[f"{lora_prefix}.self_attn.{name}_loras.up.weight"].to(D)
                y = y + h @ down.T @ up.T
            return y
        q = rms_norm(proj("q"), sd[f"{p}.self_attn.norm_q.weight"])
        k = rms_norm(proj("k"), sd[f"{p}.self_attn.norm_k.weight"])
        v = proj("v")
        n = h.shape[1]
        q = rope(q.reshape(h.shape[0], n, heads, d), positions, d).reshape(h.shape[0], n, dim)
        k = rope(k.reshape(h.shape[0], n, heads, d), positions, d).reshape(h.shape[0], n, dim)
        return q, k, v

    for i in range(num_layers):
        p = f"blocks.{i}"
        m = sd[f"{p}.modulation"]
        if ref is not None:  # reference stream: t = 0, LoRA, attends to itself only, no text
            mr = (m + e0r).unbind(1)
            hr = layer_norm(r) * (1 + mr[1][:, None]) + mr[0][:, None]
            qr, kr, vr = qkv(hr, p, rpos, lora_prefix=p)
            r_next = r + lin(attention(qr, kr, vr, heads), sd, f"{p}.self_attn.o") * mr[2][:, None]
            hr = layer_norm(r_next) * (1 + mr[4][:, None]) + mr[3][:, None]
            r_next = r_next + lin(gelu_tanh(lin(hr, sd, f"{p}.ffn.0")), sd, f"{p}.ffn.2") * mr[5][:, None]
        mv = (m + e0).unbind(1)
        h = layer_norm(xt) * (1 + mv[1][:, None]) + mv[0][:, None]
        q, k, v = qkv(h, p, pos)
        bias = None
        if ref is not None:
            k = torch.cat([k, kr.expand(B, -1, -1)], 1)
            v = torch.cat([v, vr.expand(B, -1, -1)], 1)
            bias = torch.zeros(k.shape[1], dtype=D)
            bias[xt.shape[1]:] = math.log(strength)
        xt = xt + lin(attention(q, k, v, heads, bias), sd, f"{p}.self_attn.o") * mv[2][:, None]
        hc = layer_norm(xt) * sd[f"{p}.norm3.weight"] + sd[f"{p}.norm3.bias"]
        qc = rms_norm(lin(hc, sd, f"{p}.cross_attn.q"), sd[f"{p}.cross_attn.norm_q.weight"])
        kc = rms_norm(lin(ctx, sd, f"{p}.cross_attn.k"), sd[f"{p}.cross_attn.norm_k.weight"])
        vc = lin(ctx, sd, f"{p}.cross_attn.v")
        xt = xt + lin(attention(qc, kc, vc, heads), sd, f"{p}.cross_attn.o")
        h = layer_norm(xt) * (1 + mv[4][:, None]) + mv[3][:, None]
        xt = xt + lin(gelu_tanh(lin(h, sd, f"{p}.ffn.0")), sd, f"{p}.ffn.2") * mv[5][:, None]
        if ref is not None:
            r = r_next

    mh = (sd["head.modulation"] + e[:, None]).unbind(1)
    out = lin(layer_norm(xt) * (1 + mh[1][:, None]) + mh[0][:, None], sd, "head.head")  # [B, L, 4C]
    c = out.shape[-1] // 4
    out = out.reshape(B, T, H, W, 1, 2, 2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(B, c, T, H * 2, W * 2)
