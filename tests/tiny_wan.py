"""A tiny Wan 2.1 T2V diffusion model with random weights, in ComfyUI's native checkpoint layout.

No Wan weights can be downloaded here, so tests use a file with exactly the key names and shape rules of the
native `wan2.1_t2v_*.safetensors` (no "model.diffusion_model." prefix), small enough to sample on a CPU in
well under a second. ComfyUI's detector (comfy/model_detection.py) reads dim from head.modulation, heads as
dim // 128 (so dim must be a multiple of 128), ffn from blocks.0.ffn.0, layers by counting blocks, in_dim from
patch_embedding and out_dim from head.head // 4 (patch 1x2x2); everything else is fixed.

    tiny_wan_state_dict(**kw) -> {key: tensor}      plain torch, no ComfyUI needed
    write_tiny_wan(path, **kw) -> path              the same, saved as .safetensors
    load_tiny_wan_patcher(weight_dtype=None, **kw)  a real comfy ModelPatcher built in-process (WAN21_T2V)
    diffusion_call(patcher, x, t, ctx, ...)         one model call as a sampler makes it (hooks, wrappers)
    wan21_vae_state_dict(seed=0, dtype=...)         a Wan 2.1 VAE (full size, random weights; needs ComfyUI)
    write_wan21_vae(path, **kw) -> path              the same, saved as .safetensors

Weights are random with non-zero biases (a bias that is silently dropped must change the output), scaled so
that activations stay O(1) through the blocks.
"""
import math
from pathlib import Path

import pytest
import torch

# UNETLoader's weight_dtype choices -> model_options["dtype"] (nodes.py UNETLoader.load_unet)
WEIGHT_DTYPES = {
    None: None,
    "default": None,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def tiny_wan_shapes(dim=128, ffn=256, layers=2, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256, vace_layers=0,
                    vace_in_dim=96):
    """{key: shape} of a Wan 2.1 T2V checkpoint (comfy/ldm/wan/model.py WanModel, model_type 't2v'); with
    vace_layers > 0 a Wan 2.1 VACE one (VaceWanModel: vace_patch_embedding and vace_blocks.N, the first with
    before_proj, each with after_proj), which ComfyUI detects as WAN21_Vace."""
    if dim % 128:
        raise ValueError(f"dim={dim}: ComfyUI detects heads as dim // 128, so dim must be a multiple of 128")
    patch = (1, 2, 2)
    shapes = {
        "patch_embedding.weight": (dim, in_dim, *patch),
        "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim),
        "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim),
        "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim),
        "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim),
        "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim),
        "time_projection.1.bias": (6 * dim,),
    }
    blocks = [f"blocks.{i}." for i in range(layers)] + [f"vace_blocks.{i}." for i in range(vace_layers)]
    for b in blocks:
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"{b}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = (dim,)  # RMSNorm (qk_norm=True)
            shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[f"{b}norm3.weight"] = (dim,)  # LayerNorm with affine (cross_attn_norm=True)
        shapes[f"{b}norm3.bias"] = (dim,)
        shapes[f"{b}ffn.0.weight"] = (ffn, dim)
        shapes[f"{b}ffn.0.bias"] = (ffn,)
        shapes[f"{b}ffn.2.weight"] = (dim, ffn)
        shapes[f"{b}ffn.2.bias"] = (dim,)
        shapes[f"{b}modulation"] = (1, 6, dim)
        if b.startswith("vace_blocks."):
            projs = ("before_proj", "after_proj") if b == "vace_blocks.0." else ("after_proj",)
            for proj in projs:
                shapes[f"{b}{proj}.weight"] = (dim, dim)
                shapes[f"{b}{proj}.bias"] = (dim,)
    if vace_layers:
        shapes["vace_patch_embedding.weight"] = (dim, vace_in_dim, *patch)
        shapes["vace_patch_embedding.bias"] = (dim,)
    shapes["head.head.weight"] = (out_dim * math.prod(patch), dim)
    shapes["head.head.bias"] = (out_dim * math.prod(patch),)
    shapes["head.modulation"] = (1, 2, dim)
    return shapes


def tiny_wan_state_dict(dim=128, ffn=256, layers=2, in_dim=16, out_dim=16, text_dim=4096, freq_dim=256,
                        seed=0, dtype=torch.float32, vace_layers=0):
    """Random weights for every key of tiny_wan_shapes; `dtype` is the dtype stored in the file. The main
    model's weights do not depend on vace_layers (the VACE keys are drawn after them)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    shapes = tiny_wan_shapes(dim, ffn, layers, in_dim, out_dim, text_dim, freq_dim, vace_layers=vace_layers)
    for key, shape in sorted(shapes.items(), key=lambda kv: "vace" in kv[0]):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        if key.endswith("norm_q.weight") or key.endswith("norm_k.weight") or key.endswith("norm3.weight"):
            t = 1.0 + 0.1 * x  # norm gains near 1
        elif key.endswith(".bias"):
            t = 0.05 * x  # non-zero, small
        elif key.endswith("modulation"):
            t = x / math.sqrt(dim)  # as Wan initialises it
        else:
            fan_in = math.prod(shape[1:])
            t = x / math.sqrt(fan_in)  # unit-variance outputs for unit-variance inputs
        sd[key] = t.to(dtype).contiguous()
    return sd


def _save(path, sd):
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


def write_tiny_wan(path, **kw):
    """Save tiny_wan_state_dict(**kw) as .safetensors at `path` (parents created); returns the Path."""
    return _save(path, tiny_wan_state_dict(**kw))


def load_tiny_wan_file(folder, **kw):
    """The tiny model written to `folder` and loaded by UNETLoader's own loader (comfy.sd.load_diffusion_model,
    fp32), so it carries the cached_patcher_init native multi-GPU re-makes it with; skips where the running
    ComfyUI has no native multi-GPU (the only reason to prefer this over load_tiny_wan_patcher)."""
    import wanid_testing

    wanid_testing.import_comfy()
    import comfy.model_patcher
    import comfy.sd
    if not hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu"):
        pytest.skip("this ComfyUI has no native multi-GPU (ModelPatcher.deepclone_multigpu)")
    path = write_tiny_wan(Path(folder) / "tiny.safetensors", **kw)
    return comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})


def load_tiny_wan_patcher(weight_dtype=None, **kw):
    """A real ComfyUI ModelPatcher for the tiny model, built in-process as UNETLoader does.

    weight_dtype: None/"default" (ComfyUI picks), a torch dtype, or a UNETLoader name ("fp8_e4m3fn", ...);
    it becomes model_options["dtype"]. Other keywords go to tiny_wan_state_dict. Skips without ComfyUI;
    raises if ComfyUI does not detect the file as WAN21_T2V (WAN21_Vace with vace_layers).
    """
    import wanid_testing

    wanid_testing.import_comfy()
    import comfy.sd

    if not isinstance(weight_dtype, torch.dtype):
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype={weight_dtype!r}: use a torch dtype or one of {list(WEIGHT_DTYPES)}")
        weight_dtype = WEIGHT_DTYPES[weight_dtype]
    options = {} if weight_dtype is None else {"dtype": weight_dtype}
    patcher = comfy.sd.load_diffusion_model_state_dict(tiny_wan_state_dict(**kw), model_options=options)
    if patcher is None:
        raise RuntimeError("ComfyUI could not detect the tiny Wan state dict")
    kind = type(patcher.model.model_config).__name__
    expected = "WAN21_Vace" if kw.get("vace_layers") else "WAN21_T2V"
    if kind != expected:
        raise RuntimeError(f"tiny Wan detected as {kind}, expected {expected}")
    return patcher


def sampler_options(patcher):
    """transformer_options as a sampler builds them for one model call: the patcher's patches plus its wrappers."""
    import copy

    import comfy.patcher_extension

    options = copy.copy(patcher.model_options["transformer_options"])
    options["wrappers"] = comfy.patcher_extension.merge_nested_dicts({}, patcher.wrappers, copy_dict1=False)
    return options


def diffusion_call(patcher, x, t, ctx, cond_or_uncond=(0,), load=True, **kwargs):
    """One diffusion-model call the way a sampler makes it: the patcher and its additional models loaded
    (load=False keeps however the caller loaded them, e.g. lowvram), hooks in the options, no autograd.
    cond_or_uncond: which batch chunks are positive (0) and negative (1), as the sampler says (default: the
    batch is one positive chunk)."""
    import comfy.model_management

    options = sampler_options(patcher)
    options["cond_or_uncond"] = list(cond_or_uncond)
    with torch.no_grad():  # ComfyUI runs nodes without autograd; patching fp8 weights needs it off
        if load:
            comfy.model_management.load_models_gpu([patcher] + patcher.get_nested_additional_models())
        return patcher.model.diffusion_model(x, t, ctx, transformer_options=options, **kwargs).float()


# comfy/sd.py VAE(): a Wan 2.1 VAE is "decoder.middle.0.residual.0.gamma" without
# "decoder.upsamples.0.upsamples.0.residual.2.weight" (Wan 2.2). 0.3.64 then builds dim=96, 3 image channels; 0.33.0
# reads dim from decoder.head.0.gamma, image channels from encoder.conv1.weight and output channels from
# decoder.head.2.weight. So only the real size (dim 96, 3 channels, ~127M parameters) loads in both.
WAN21_VAE_CONFIG = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0)


def wan21_vae_state_dict(seed=0, dtype=torch.float32):
    """Every key of a Wan 2.1 VAE file in ComfyUI's layout (names and shapes from ComfyUI's own WanVAE, built on the
    meta device), random unit-gain weights: norms' gamma 1, biases 0, other weights N(0, 1/fan_in), so activations
    stay O(1) through the encoder. Needs ComfyUI (skips without it)."""
    import wanid_testing

    wanid_testing.import_comfy()
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanVAE(**WAN21_VAE_CONFIG).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("gamma"):
            t = torch.ones(shape)
        elif name.endswith("bias"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape, generator=g) * math.prod(shape[1:]) ** -0.5
        sd[name] = t.to(dtype)
    return sd


def write_wan21_vae(path, **kw):
    """Save wan21_vae_state_dict(**kw) as .safetensors at `path` (parents created); returns the Path."""
    return _save(path, wan21_vae_state_dict(**kw))
