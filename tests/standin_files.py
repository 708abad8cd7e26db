"""Stand-In test material (no tests here): random Stand-In files in the official formats, sized for the tiny Wan of
tests/tiny_wan.py, and the inputs of one model call with a reference.

    standin_state_dict(layers, dim, rank, seed, scaled) -> {key: tensor}  a Stand-In file's tensors
    ckpt_bytes(sd) -> bytes                                               the official .ckpt (a wrapped torch pickle)
    inputs(seed, ...) -> (x, t, ctx, ref)                                 one call of the tiny model with a reference
    oracle_env() -> (python, repo)          the official Stand-In code's process (scripts/standin_oracle_env.py);
                                            skips with the reason when it cannot be made
"""
import io
import math
from pathlib import Path

import pytest
import torch

from wanid_testing import official_code

REPO = Path(__file__).resolve().parents[1]

LAYERS, DIM, RANK = 2, 128, 8  # the Stand-In tests' tiny Wan (tiny_wan.load_tiny_wan_patcher(layers=LAYERS))


def standin_state_dict(layers=LAYERS, dim=DIM, rank=RANK, seed=1, scaled=True):
    """A Stand-In file's tensors (the q/k/v LoRA of every block's self-attention), random with up != 0 so the LoRA
    matters. scaled: down ~ N(0, 1/dim) and up ~ N(0, 1/rank), so the LoRA's output is at its input's scale (what
    sampling needs); unscaled N(0, 1) draws serve tests of the file formats alone. Same draws either way."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(layers):
        for p in "qkv":
            down, up = torch.randn(rank, dim, generator=g), torch.randn(dim, rank, generator=g)
            if scaled:
                down, up = down / math.sqrt(dim), up / math.sqrt(rank)
            sd[f"blocks.{i}.self_attn.{p}_loras.down.weight"] = down
            sd[f"blocks.{i}.self_attn.{p}_loras.up.weight"] = up
    return sd


def ckpt_bytes(sd):
    """The bytes of an official Stand-In .ckpt: a torch zip-pickle of {"state_dict": sd}."""
    buf = io.BytesIO()
    torch.save({"state_dict": sd}, buf)
    return buf.getvalue()


def inputs(seed=0, batch=1, frames=3, h=6, w=10, ctx_tokens=7):
    """(x, t, ctx, ref): a latent, timesteps, a padded umT5 context and a reference latent for the tiny Wan."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, frames, h, w, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    ctx = torch.zeros(batch, 512, 4096)
    ctx[:, :ctx_tokens] = torch.randn(batch, ctx_tokens, 4096, generator=g)
    ref = torch.randn(1, 16, 1, 8, 12, generator=g)
    return x, t, ctx, ref


def oracle_env():
    """(python, repo) of the official-code environment, built when missing (the script knows the sources); skips
    with the reason when it cannot be made."""
    python, repo, why = official_code("standin_oracle_env.py", "Stand-In", "WeChatCV/Stand-In",
                                      build_when=lambda found: not (found.get("python") and found.get("repo")))
    if why:
        pytest.skip(why)
    return python, repo
