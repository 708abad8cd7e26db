"""Lynx's resampler: a Perceiver that turns one 512-d ArcFace embedding into 16 identity tokens.

Keys as in the official resampler.safetensors (latents, proj_in, layers.N.0.{norm1,norm2,to_q,to_kv,to_out},
layers.N.1.{0,1,3}, proj_out, norm_out). Each layer: the latents attend to [input; latents] (LayerNorm on both,
one K/V projection for both, softmax in fp32), then a GELU feed-forward; both residual.
`operations` is the host's layer factory (torch.nn, or ComfyUI's manual_cast ops).
"""
import torch
from torch import nn

DIM_HEAD = 64  # the official configuration's head width (heads = inner width / 64)


class PerceiverAttention(nn.Module):
    def __init__(self, dim, heads, dim_head=DIM_HEAD, operations=nn, device=None):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.norm1 = operations.LayerNorm(dim, device=device)
        self.norm2 = operations.LayerNorm(dim, device=device)
        self.to_q = operations.Linear(dim, inner, bias=False, device=device)
        self.to_kv = operations.Linear(dim, 2 * inner, bias=False, device=device)
        self.to_out = operations.Linear(inner, dim, bias=False, device=device)

    def forward(self, x, latents):
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], 1)).chunk(2, dim=-1)
        split = lambda t: t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        s = self.dim_head ** -0.25  # scaled on both sides, as the official code (fp16-friendly)
        w = torch.softmax(((q * s) @ (k * s).transpose(-2, -1)).float(), dim=-1).to(q.dtype)
        return self.to_out((w @ v).transpose(1, 2).reshape(b, n, -1))


class Resampler(nn.Module):
    def __init__(self, dim=1280, depth=4, heads=20, num_queries=16, embedding_dim=512, output_dim=5120, ff_mult=4,
                 operations=nn, device=None):
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, num_queries, dim, device=device))
        self.proj_in = operations.Linear(embedding_dim, dim, device=device)
        self.proj_out = operations.Linear(dim, output_dim, device=device)
        self.norm_out = operations.LayerNorm(output_dim, device=device)
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, heads, operations=operations, device=device),
            nn.Sequential(operations.LayerNorm(dim, device=device),
                          operations.Linear(dim, dim * ff_mult, bias=False, device=device), nn.GELU(),
                          operations.Linear(dim * ff_mult, dim, bias=False, device=device)),
        ]) for _ in range(depth))

    def forward(self, x):
        """x: [B, n, embedding_dim] (Lynx: [1, 1, 512]) -> [B, num_queries, output_dim]."""
        latents = self.latents.to(x).repeat(x.shape[0], 1, 1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
