"""Random-weight Lynx files in the official formats (Hugging Face ByteDance/lynx, lynx_full/ and lynx_lite/), sized for
the tiny Wan of tests/tiny_wan.py; and the oracle environment (scripts/lynx_oracle_env.py) if this machine has it.

    lynx_tensors(variant, dim, layers, ...) -> (resampler, ip, ref)   dicts of tensors ({} ref for lite)
    write_lynx(folder, variant, ...)                                    the three .safetensors files
    weights_of(checkpoint, variant)                                     the same tensors, parsed as the pack does
    case(seed) -> (steps, embedding, (ref_pos, ref_neg), ref_context)   two sampling steps' model inputs
    oracle() -> (python, repo, None) or (None, None, why)              the official code's process, if built

DIM, LAYERS, FFN: the Lynx tests' tiny Wan (tiny_wan.load_tiny_wan_patcher(dim=DIM, layers=LAYERS, ffn=FFN)).
"""
import math
import os
from pathlib import Path

import torch

from wanid_testing import official_code

REPO = Path(__file__).resolve().parents[1]
DIM, LAYERS, FFN = 256, 3, 256


def resampler_tensors(g, dim=128, depth=2, heads=2, queries=16, emb=512, out=256, ff=4):
    sd = {"latents": torch.randn(1, queries, dim, generator=g) / math.sqrt(dim),
          "proj_in.weight": torch.randn(dim, emb, generator=g) / math.sqrt(emb),
          "proj_in.bias": 0.05 * torch.randn(dim, generator=g),
          "proj_out.weight": torch.randn(out, dim, generator=g) / math.sqrt(dim),
          "proj_out.bias": 0.05 * torch.randn(out, generator=g),
          "norm_out.weight": 1 + 0.1 * torch.randn(out, generator=g),
          "norm_out.bias": 0.05 * torch.randn(out, generator=g)}
    inner = heads * 64
    for i in range(depth):
        p = f"layers.{i}."
        for n in ("0.norm1", "0.norm2", "1.0"):
            sd[f"{p}{n}.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
            sd[f"{p}{n}.bias"] = 0.05 * torch.randn(dim, generator=g)
        sd[f"{p}0.to_q.weight"] = torch.randn(inner, dim, generator=g) / math.sqrt(dim)
        sd[f"{p}0.to_kv.weight"] = torch.randn(2 * inner, dim, generator=g) / math.sqrt(dim)
        sd[f"{p}0.to_out.weight"] = torch.randn(dim, inner, generator=g) / math.sqrt(inner)
        sd[f"{p}1.1.weight"] = torch.randn(dim * ff, dim, generator=g) / math.sqrt(dim)
        sd[f"{p}1.3.weight"] = torch.randn(dim, dim * ff, generator=g) / math.sqrt(dim * ff)
    return sd


def lynx_tensors(variant="full", dim=DIM, layers=LAYERS, registers=2, token_dim=None, seed=7, resampler=None):
    """Official-format tensors: full = every block, biases, registers, ref layers; lite = every second block, no
    biases, tokens of width token_dim (2048 at 14B; 192 here by default), no ref layers. resampler: keyword
    arguments of resampler_tensors (the official one: dim=1280, depth=4, heads=20)."""
    g = torch.Generator().manual_seed(seed)
    token_dim = token_dim or (dim if variant == "full" else 192)
    resampler = resampler_tensors(g, out=token_dim, **(resampler or {}))
    n = layers if variant == "full" else len(range(0, layers, 2))
    ip = {}
    for i in range(n):
        for p in ("to_k_ip", "to_v_ip"):
            ip[f"{i}.{p}.weight"] = torch.randn(dim, token_dim, generator=g) / math.sqrt(token_dim)
            if variant == "full":
                ip[f"{i}.{p}.bias"] = 0.05 * torch.randn(dim, generator=g)
        if variant == "full" and registers:
            ip[f"{i}.registers"] = torch.randn(1, registers, token_dim, generator=g)
    ref = {}
    if variant == "full":
        for i in range(layers):
            for p in ("to_k_ref", "to_v_ref"):
                ref[f"{i}.{p}.weight"] = torch.randn(dim, dim, generator=g) / math.sqrt(dim)
                ref[f"{i}.{p}.bias"] = 0.05 * torch.randn(dim, generator=g)
    return resampler, ip, ref


def write_lynx(folder, variant="full", **kw):
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resampler, ip, ref = lynx_tensors(variant, **kw)
    save_file(resampler, str(folder / "resampler.safetensors"))
    save_file(ip, str(folder / "ip_layers.safetensors"))
    if ref:
        save_file(ref, str(folder / "ref_layers.safetensors"))
    return folder


def weights_of(checkpoint, variant, **kw):
    """lynx_tensors(variant, **kw) for the tests' tiny Wan, parsed by `checkpoint` (the pack's wanid.lynx.checkpoint,
    imported by the caller inside ComfyUI) as the Lynx Loader parses a folder."""
    resampler, ip, ref = lynx_tensors(variant, dim=DIM, layers=LAYERS, **kw)
    return checkpoint.parse(resampler, ip, ref, f"lynx_{variant}")


def case(seed=0):
    """Model inputs for the tiny Wan: two sampling steps (x, t, positive, negative context), the ArcFace embedding,
    the reference latents (positive, and the negative's: a zeroed image's latent is not zero) and the reference
    pass's text."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for k in range(2):  # two sampling steps, each with a positive and a negative call
        x = torch.randn(1, 16, 2, 8, 8, generator=g)
        t = torch.tensor([900.0 - 500.0 * k])
        pos, neg = (torch.zeros(1, 512, 4096) for _ in range(2))
        pos[:, :7] = torch.randn(1, 7, 4096, generator=g)
        neg[:, :5] = torch.randn(1, 5, 4096, generator=g)
        steps.append((x, t, pos, neg))
    emb = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
    ref_pos = torch.randn(1, 16, 1, 8, 8, generator=g)
    ref_neg = 0.3 * torch.randn(1, 16, 1, 8, 8, generator=g)
    ref_ctx = torch.zeros(1, 512, 4096)
    ref_ctx[:, :6] = torch.randn(1, 6, 4096, generator=g)
    return steps, emb, (ref_pos, ref_neg), ref_ctx


def oracle():
    """(python, repo, None) of the official-code environment, or (None, None, why). The venv is built here when the
    repository copy exists (or WANID_LYNX_REPO names one) and only the venv is missing (about two minutes)."""
    return official_code("lynx_oracle_env.py", "Lynx", "bytedance/lynx", build_when=lambda found: not found.get(
        "python") and bool(found.get("repo") or os.environ.get("WANID_LYNX_REPO")))
