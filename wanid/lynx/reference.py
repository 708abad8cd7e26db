"""Lynx's reference stream (the Ref adapter's input): the reference latent alone through the frozen Wan blocks at
t = 0, on its own grid (RoPE positions from 0, official Lynx), with its own text ("image of a face"). The model is
duck-typed (ComfyUI's WanModel: blocks, rope_embedder, text_embedding); the host passes the block call and cast."""
import torch


def grid_positions(h, w, device=None):
    """RoPE ids [1, h * w, 3] of an h x w image at frame 0, rows and columns from 0 (the reference's own grid)."""
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    return ids.reshape(1, h * w, 3)


def reference_stream(model, tokens, grid, e0, context, cast):
    """Each block's Ref-adapter features of one reference: tokens [1, N, dim] on `grid` (h, w) and e0 [1, 6, dim] at
    t = 0 (nodes/wan.reference_tokens), context [1, L, text dim] its text conditioning (before text_embedding)."""
    freqs = model.rope_embedder(grid_positions(*grid, device=tokens.device)).movedim(1, 2)
    context = model.text_embedding(context.to(device=tokens.device, dtype=tokens.dtype))
    return reference_features(model.blocks, tokens, e0, freqs, context,
                              lambda i, block, y: block(y, e=e0, freqs=freqs, context=context), cast)


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
