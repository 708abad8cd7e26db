"""Conditional position mapping of Stand-In: where the reference tokens sit in Wan's 3D RoPE grid."""
import torch


ROPE_AXES = (("scale_t", "shift_t"), ("scale_y", "shift_y"), ("scale_x", "shift_x"))


def reference_position_ids(grid_h, grid_w, ref_h, ref_w, device=None, dtype=torch.float32, rope_options=None):
    """(t, h, w) ids [1, ref_h * ref_w, 3] of the reference tokens, row-major like the video's.

    The video occupies t in [0, T), h in [0, grid_h), w in [0, grid_w). The reference goes to t = -1 and
    h in [grid_h, grid_h + ref_h), w in [grid_w, grid_w + ref_w): a block of positions no video token uses,
    so the reference is never mistaken for a frame (the paper's ablation: shared positions cost 0.19 in
    face similarity).

    rope_options (ComfyUI's ScaleROPE: scale_t/shift_t, scale_y/shift_y, scale_x/shift_x) maps every video id p
    to shift + scale * p; the reference ids get the same map, so it keeps its place relative to the video.
    """
    h = torch.arange(grid_h, grid_h + ref_h, device=device, dtype=dtype)
    w = torch.arange(grid_w, grid_w + ref_w, device=device, dtype=dtype)
    ids = torch.empty(ref_h, ref_w, 3, device=device, dtype=dtype)
    ids[..., 0] = -1
    ids[..., 1] = h[:, None]
    ids[..., 2] = w[None, :]
    if rope_options:
        for axis, (scale, shift) in enumerate(ROPE_AXES):
            ids[..., axis] = rope_options.get(shift, 0.0) + rope_options.get(scale, 1.0) * ids[..., axis]
    return ids.reshape(1, ref_h * ref_w, 3)
