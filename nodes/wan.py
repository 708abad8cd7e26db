"""The native Wan DiT behind a MODEL input (comfy.ldm.wan.model.WanModel and its variants)."""
import inspect

PARTS = ("blocks", "patch_embedding", "rope_embedder", "time_embedding", "time_projection", "text_embedding",
         "patch_size", "dim")

# Wan classes whose sampling path skips ComfyUI's per-block replace, and why (a patch on them would be ignored).
NO_BLOCK_PATCHES = {
    "CausalWanModel": "it samples frame by frame through forward_block (autoregressive Wan), which skips "
                      "ComfyUI's per-block patches",
}


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


def block_patch_problem(dm):
    """Why this Wan class would ignore per-block replace patches, or None. Known classes by name; any other
    class whose forward_orig never reads patches_replace (a class a newer ComfyUI adds) by its source."""
    for cls in type(dm).__mro__:
        if cls.__name__ in NO_BLOCK_PATCHES:
            return NO_BLOCK_PATCHES[cls.__name__]
        if "forward_block" in vars(cls):
            return "it has its own forward_block sampling path, which skips ComfyUI's per-block patches"
    forward = getattr(type(dm), "forward_orig", None)
    try:
        source = inspect.getsource(forward) if forward is not None else ""
    except (OSError, TypeError):
        return None  # no source to read (a compiled build): the run-time check in the patch still guards it
    if "patches_replace" not in source:
        return "its forward pass does not run ComfyUI's per-block patches"
    return None


def patchable_wan_model_of(patcher, node):
    """wan_model_of, refusing Wan classes that would silently ignore a per-block patch."""
    dm = wan_model_of(patcher, node)
    problem = block_patch_problem(dm)
    if problem:
        raise ValueError(f"model: {node} cannot patch a {type(dm).__name__}: {problem}. Use a Wan 2.1/2.2 "
                         "text-to-video (or VACE) model loaded with Load Diffusion Model.")
    return dm
