"""ComfyUI hook machinery shared by the pack's model patches (Stand-In, Lynx): which hooks the host has, how a
patch's own weights become a side model, how a patch is installed on a clone, and what an attention override must
accept from newer hosts."""
import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
from comfy.ldm.modules import attention as comfy_attention

from ..wanid.host_versions import MIN_SUPPORTED


def check_host(node="RestrictedAttnPatch"):
    """The hooks the patches need, or an error naming the ComfyUI version that has them."""
    from comfy.patcher_extension import CallbacksMP, WrappersMP
    missing = []
    if not hasattr(WrappersMP, "DIFFUSION_MODEL") or not hasattr(comfy.model_patcher.ModelPatcher, "add_wrapper_with_key"):
        missing.append("diffusion-model wrappers")
    if not hasattr(CallbacksMP, "ON_PRE_RUN") or not hasattr(comfy.model_patcher.ModelPatcher, "set_additional_models"):
        missing.append("run callbacks / additional models")
    if not hasattr(comfy_attention, "wrap_attn"):
        missing.append("optimized_attention_override")
    if missing:
        try:
            from comfyui_version import __version__ as version
        except ImportError:
            version = "unknown"
        raise RuntimeError(f"{node} needs ComfyUI {MIN_SUPPORTED} or newer (missing: {', '.join(missing)}); "
                           f"this ComfyUI is {version}. Update ComfyUI.")


def side_model_patcher(build, state_dict, cached_init, disable_dynamic=False):
    """A patch's own weights in their own patcher, built as core builds side models (comfy_extras/nodes_model_patch.py):
    build(operations, device) makes the module of manual_cast layers on the offload device; a CoreModelPatcher (the
    dynamic-VRAM one where ComfyUI enabled it; a plain ModelPatcher among the loaded models would turn dynamic
    freeing off for the whole load); load_state_dict with assign=is_dynamic(): dynamic layers have no weight until
    their state dict is assigned. cached_init (function, args) lets native multi-GPU make a fresh copy per device.
    Shared by Stand-In (its LoRA) and Lynx (its adapters)."""
    core = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    cls = comfy.model_patcher.ModelPatcher if disable_dynamic else core
    offload = comfy.model_management.unet_offload_device()
    module = build(comfy.ops.manual_cast, offload)
    patcher = cls(module, load_device=comfy.model_management.get_torch_device(), offload_device=offload)
    is_dynamic = getattr(patcher, "is_dynamic", lambda: False)()
    module.load_state_dict(state_dict, strict=True, assign=is_dynamic)
    module.eval().requires_grad_(False)
    patcher.cached_patcher_init = cached_init
    return patcher


def offload_side_model(patcher):
    """Once a run's caches are built the side model is idle until the next run: hand its memory back the way
    ComfyUI frees memory itself (the next run's load_models_gpu loads it again)."""
    if patcher.load_device != patcher.offload_device and patcher.loaded_size() > 0:
        patcher.partially_unload(patcher.offload_device, memory_to_free=patcher.model_size())


def attach(out, key, patch, side_model, num_blocks):
    """Install `patch` on the clone `out` under `key`: its DIFFUSION_MODEL wrapper, the run callbacks (reset; native
    multi-GPU rebind), its side model, and one block replace per block chained to what was there (an earlier patch
    under the same key is replaced, other packs' entries are kept). `patch` has diffusion_model_wrapper, reset,
    rebind_clone and block_replace(i, previous)."""
    extension = comfy.patcher_extension
    out.remove_wrappers_with_key(extension.WrappersMP.DIFFUSION_MODEL, key)
    out.add_wrapper_with_key(extension.WrappersMP.DIFFUSION_MODEL, key, patch.diffusion_model_wrapper)
    for call in (extension.CallbacksMP.ON_PRE_RUN, extension.CallbacksMP.ON_CLEANUP):
        out.remove_callbacks_with_key(call, key)
        out.add_callback_with_key(call, key, patch.reset)
    for name in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):  # native multi-GPU (0.33+)
        call = getattr(extension.CallbacksMP, name, None)
        if call is not None:
            out.remove_callbacks_with_key(call, key)
            out.add_callback_with_key(call, key, patch.rebind_clone)
    out.set_additional_models(key, [side_model])

    existing = out.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for i in range(num_blocks):
        previous = existing.get(("double_block", i))
        while previous is not None and getattr(previous, "wanid_key", None) == key:
            previous = getattr(previous, "wanid_previous", None)  # a replaced patch of the same kind: skip it
        replace = patch.block_replace(i, previous)
        replace.wanid_key, replace.wanid_previous = key, previous
        out.set_model_patch_replace(replace, "dit", "double_block", i)


def preferred_attention(module):
    """A checkpoint's own attention for this module (ComfyAttention, newer ComfyUI), or None. The host skips it
    whenever an override is installed, so the override honours it itself."""
    return getattr(getattr(module, "comfy_attention", None), "function", None)


def as_tensors(q, k, v):
    """q, k, v as tensors: newer ComfyUI may pass AttentionTensorContainer (single-owner wrappers)."""
    return tuple(t.take() if hasattr(t, "take") and not isinstance(t, torch.Tensor) else t for t in (q, k, v))
