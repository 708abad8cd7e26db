"""The native Wan DiT behind a MODEL input (comfy.ldm.wan.model.WanModel and its variants), and what the pack's
patches feed it: reference latents (encode_reference) and reference tokens at t = 0 (reference_tokens).

The model is inspected through the patcher's own view (ModelPatcher.get_model_object): the live module may still
hold another clone's object patches from the last run."""
import inspect

import torch

from ..wanid.errors import check_finite

PARTS = ("blocks", "patch_embedding", "rope_embedder", "time_embedding", "time_projection", "text_embedding",
         "patch_size", "dim")

# Wan classes whose sampling path skips ComfyUI's per-block replace, and why (a patch on them would be ignored).
NO_BLOCK_PATCHES = {
    "CausalWanModel": "it samples frame by frame through forward_block (autoregressive Wan), which skips "
                      "ComfyUI's per-block patches",
}


def model_object(patcher, name):
    """`patcher`'s view of its model's attribute `name` ("diffusion_model.blocks.0.cross_attn"): its own object
    patches, not whatever another clone left in the shared module; None where there is no such attribute."""
    get = getattr(patcher, "get_model_object", None)
    try:
        if get is not None:
            return get(name)
        obj = getattr(patcher, "model", None)
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (AttributeError, KeyError, IndexError, TypeError):
        return None


def wan_model_of(patcher, node):
    """The WanModel behind `patcher`, or a ValueError naming the input and what to load instead."""
    dm = model_object(patcher, "diffusion_model")
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


def check_channels(samples, channels, name, needs):
    """The latent's channel count against the model's, before anything (process_latent_in) reads it. needs: what the
    method needs, for the message ("Stand-In needs a Wan 2.1 14B / 2.2 A14B text-to-video model and its VAE")."""
    if samples.shape[1] != channels:
        kind = {4: " (an SD 1.x/SDXL latent)", 16: " (a Wan 2.1 latent)", 48: " (a Wan 2.2 5B latent)"}
        raise ValueError(
            f"{name}: a {samples.shape[1]}-channel latent{kind.get(samples.shape[1], '')}, but this model takes "
            f"{channels} channels. Encode the face crop with the Wan 2.1 VAE (wan_2.1_vae.safetensors, 16 "
            f"channels): {needs}.")


def latent_in(patcher, samples):
    """A checked image latent [1, C, 1, h, w] in the DiT's normalised space (the model's latent format)."""
    return patcher.model.process_latent_in(samples[:, :, :1].float())


def encode_reference(patcher, vae, image, what, needs):
    """An IMAGE [1, H, W, 3+] as the DiT sees it: VAE-encoded, its channels checked against the model, its values
    checked finite (a broken VAE gives NaN), in the normalised space. what: the image as the user knows it
    ("reference_image"); needs: see check_channels."""
    channels = model_object(patcher, "diffusion_model.patch_embedding").in_channels
    samples = vae.encode(image[..., :3])
    if samples.ndim == 4:
        samples = samples.unsqueeze(2)
    check_channels(samples, channels, f"vae (the encoded {what})", needs)
    check_finite(samples, f"vae: the encoded {what}", "check the VAE file (use wan_2.1_vae.safetensors)")
    return latent_in(patcher, samples)


def reference_tokens(model, latent, dtype):
    """A reference latent [B, C, 1, h, w] as the DiT's tokens at t = 0: (tokens [B, N, dim], its (h, w) grid after the
    patch embedding, the time projection e0 [1, 6, dim] at t = 0). model: the WanModel."""
    from comfy.ldm.wan.model import sinusoidal_embedding_1d
    x = model.patch_embedding(latent.float()).to(dtype)
    grid = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    t0 = torch.zeros(1, device=x.device)
    e = model.time_embedding(sinusoidal_embedding_1d(model.freq_dim, t0).to(dtype=dtype))
    return x, grid, model.time_projection(e).unflatten(1, (6, model.dim))
