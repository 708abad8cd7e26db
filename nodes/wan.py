"""The native Wan DiT behind a MODEL input (comfy.ldm.wan.model.WanModel and its variants)."""

PARTS = ("blocks", "patch_embedding", "rope_embedder", "time_embedding", "time_projection", "text_embedding",
         "patch_size", "dim")


def wan_model_of(patcher, node):
    """The WanModel behind `patcher`, or a ValueError naming the input and what to load instead."""
    dm = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    blocks = getattr(dm, "blocks", None)
    if dm is None or not all(hasattr(dm, a) for a in PARTS) or not len(blocks) or \
            not all(hasattr(blocks[0], a) for a in ("self_attn", "cross_attn")):
        name = type(dm).__name__ if dm is not None else type(patcher).__name__
        raise ValueError(f"model: {node} needs a Wan 2.1/2.2 video model (Load Diffusion Model with a wan2.1/wan2.2 "
                         f"file), got {name}.")
    return dm
