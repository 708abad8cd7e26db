"""Stand-In on ComfyUI's native Wan model, through ComfyUI's hooks only.

- a keyed DIFFUSION_MODEL wrapper prepares the reference (tokens, t=0 modulation, RoPE) for the current grid
  and puts this patch into a copy of transformer_options;
- a per-block "double_block" replace (chained to any earlier one) makes the block's reference keys/values (on the
  first model call of a run only) and installs an attention override (chained to any earlier one) that appends them
  to the video's self-attention;
- ON_PRE_RUN / ON_CLEANUP callbacks drop the cached keys/values, so nothing outlives a sampling run;
- the LoRA lives in its own patcher (comfy.ops.manual_cast layers, built the way core builds side models: a
  CoreModelPatcher, so dynamic VRAM stays on) attached with set_additional_models, so ComfyUI budgets, loads,
  casts and offloads it like the model itself;
- native multi-GPU clones (deepclone_multigpu / match_multigpu_clones) get their own patch and LoRA, so two
  devices never share run state.
The shared model is never touched: all of this sits on a clone of the ModelPatcher.
"""
import functools
import inspect
import logging

import torch

import comfy.model_management
import comfy.patcher_extension
from comfy.ldm.modules import attention as comfy_attention

from ..wanid.standin.lora import StandInLoRA
from ..wanid.standin.positions import reference_position_ids
from ..wanid.standin.reference_branch import attend_merged, attend_with_reference, reference_block
from . import hooks
from .wan import patchable_wan_model_of

KEY = "wanid_standin"


class _Run:
    """What one sampling run caches: the reference stream state and each block's reference keys/values."""

    def __init__(self):
        self.key = self.model = None
        self.x = self.e = self.freqs = None
        self.kv = {}
        self.reached = False  # a block replace ran during the current model call


class StandInPatch:
    """Run state of one RestrictedAttnPatch. Shared by clones of the patched ModelPatcher (deepcopy returns self),
    reset at the start and end of every run."""

    def __init__(self, lora_patcher, reference, strength):
        self.lora_patcher = lora_patcher
        self.reference = reference  # [1, C, 1, h, w] latent in the DiT's normalised space, CPU
        self.strength = float(strength)
        self.run = _Run()
        self.reference_builds = 0  # blocks whose reference K/V were computed (diagnostics and tests)

    def __deepcopy__(self, memo):
        return self

    def reset(self, *args):
        self.run = _Run()

    def rebind_clone(self, source, clone):
        """A native multi-GPU clone (ON_DEEPCLONE_MULTIGPU / ON_MATCH_MULTIGPU_CLONES) gets a patch of its own, on
        its own copy of the LoRA: devices run in parallel and must not share run state."""
        loras = clone.get_additional_models_with_key(KEY)
        if not loras or loras[0] is self.lora_patcher:
            loras = [self.lora_patcher.clone()]
        patch = StandInPatch(loras[0], self.reference, self.strength)
        hooks.attach(clone, KEY, patch, patch.lora_patcher, len(clone.model.diffusion_model.blocks))

    # --- DIFFUSION_MODEL wrapper -------------------------------------------------------------------------------
    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        model = executor.class_obj
        args = list(args)
        x = args[0]
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
        self._prepare(model, x, options.get("rope_options") if _reads_rope_options(type(model)) else None)
        if len(args) > 5:
            args[5] = {**options, KEY: self}
        else:
            kwargs["transformer_options"] = {**options, KEY: self}
        self.run.reached = False
        out = executor(*args, **kwargs)
        if not self.run.reached:
            raise RuntimeError(
                f"model: {type(model).__name__} ran without ComfyUI's per-block patches, so Stand-In could not "
                "join its attention. Use a Wan 2.1/2.2 text-to-video (or VACE) model, or remove the Stand-In node.")
        return out

    def _prepare(self, model, x, rope_options=None):
        ph, pw = model.patch_size[1], model.patch_size[2]
        grid_h, grid_w = -(-x.shape[-2] // ph), -(-x.shape[-1] // pw)
        rope_key = tuple(sorted(rope_options.items())) if rope_options else None
        key = (id(model), grid_h, grid_w, x.device, x.dtype, rope_key)
        if self.run.key == key:
            return
        from comfy.ldm.wan.model import sinusoidal_embedding_1d
        self.run = run = _Run()
        run.key, run.model = key, model
        ref = self.reference.to(x.device)
        tokens = model.patch_embedding(ref.float()).to(x.dtype)
        ref_h, ref_w = tokens.shape[-2:]
        run.x = tokens.flatten(2).transpose(1, 2)
        t0 = torch.zeros(1, device=x.device)
        e = model.time_embedding(sinusoidal_embedding_1d(model.freq_dim, t0).to(dtype=x.dtype))
        run.e = model.time_projection(e).unflatten(1, (6, model.dim))
        ids = reference_position_ids(grid_h, grid_w, ref_h, ref_w, device=x.device, rope_options=rope_options)
        run.freqs = model.rope_embedder(ids).movedim(1, 2)

    def reference_kv(self, i):
        run, model = self.run, self.run.model
        if i not in run.kv:
            if run.x is None or len(run.kv) != i:
                raise RuntimeError(f"Stand-In: block {i} ran before the blocks in front of it; another patch "
                                   "reorders the Wan blocks, which Stand-In cannot follow.")
            lora = self.lora_patcher.model.blocks[i].self_attn
            x, k, v = reference_block(
                model.blocks[i], lora, run.x, run.e, run.freqs,
                rope=apply_rope, attention=comfy_attention.optimized_attention,
                cast=lambda p, like: comfy.model_management.cast_to(p, dtype=like.dtype, device=like.device))
            run.kv[i] = (k, v)
            self.reference_builds += 1
            run.x = x if i + 1 < len(model.blocks) else None  # the reference stream ends before the head
            if run.x is None:
                self._offload_lora()
        return run.kv[i]

    def _offload_lora(self):
        hooks.offload_side_model(self.lora_patcher)

    # --- per-block replace -------------------------------------------------------------------------------------
    def block_replace(self, index, previous):
        def replace(args, extra):
            options = args["transformer_options"]
            if options.get(KEY) is not self:
                return previous(args, extra) if previous else extra["original_block"](args)
            self.run.reached = True
            k_ref, v_ref = self.reference_kv(index)
            block = self.run.model.blocks[index]
            override = _SelfAttentionOverride(k_ref, v_ref, self.strength, options.get("optimized_attention_override"),
                                              preferred=(hooks.preferred_attention(block.self_attn), hooks.preferred_attention(block.cross_attn)))
            args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
            return previous(args, extra) if previous else extra["original_block"](args)
        return replace


@functools.cache
def _reads_rope_options(model_class):
    """Whether this host's Wan class places the video by transformer_options["rope_options"] (ScaleROPE, 0.3x);
    fixed per class, so asked once rather than on every model call."""
    return "transformer_options" in inspect.signature(model_class.rope_encode).parameters


def apply_rope(x, freqs):
    from comfy.ldm.flux.math import apply_rope1
    return apply_rope1(x, freqs)


class _SelfAttentionOverride:
    """Appends the reference K/V to the first attention of a block (its self-attention); passes everything else on
    to the override that was there before (the core ModelAttentionBackend's, another pack's), else to the backend the
    host would have used: the module's preferred attention where it has one, else the global one."""

    def __init__(self, k_ref, v_ref, strength, previous, preferred=(None, None)):
        self.k_ref, self.v_ref, self.strength, self.previous = k_ref, v_ref, strength, previous
        self.preferred = preferred  # (self-attention, cross-attention)
        self.pending = True

    def _call(self, func, q, k, v, *args, preferred=None, **kwargs):
        if self.previous is not None:
            return self.previous(func, q, k, v, *args, **kwargs)
        return (preferred or func)(q, k, v, *args, **kwargs)

    def _host_sdpa(self, func, preferred, args, kwargs):
        """Whether the host would run this attention as plain PyTorch SDPA (no other override, no module attention,
        no mask): then Stand-In can take the reference by the exact two-pass merge instead of concatenating."""
        plain = comfy_attention.attention_pytorch
        return (self.previous is None and preferred is None and not args and kwargs.get("mask") is None
                and not kwargs.get("skip_reshape") and not kwargs.get("skip_output_reshape")
                and func in (plain, getattr(plain, "__wrapped__", None)))

    def __call__(self, func, q, k, v, *args, **kwargs):
        q, k, v = hooks.as_tensors(q, k, v)
        if self.pending and q.shape[1] == k.shape[1]:
            self.pending = False
            preferred = self.preferred[0]
            if self.strength != 1.0:
                # the padded head (d + 8) is not every kernel's size
                func, preferred = comfy_attention.attention_pytorch, None
            if "heads" not in kwargs:
                kwargs["heads"], args = args[0], args[1:]
            heads = kwargs.pop("heads")
            if self._host_sdpa(func, preferred, args, kwargs):
                out = attend_merged(q, k, v, self.k_ref, self.v_ref, heads, self.strength)
                if out is not None:
                    return out

            def backend(q_, k_, v_, heads, **kw):
                return self._call(func, q_, k_, v_, *args, heads=heads, preferred=preferred, **kw)

            return attend_with_reference(backend, q, k, v, self.k_ref, self.v_ref, heads, self.strength, **kwargs)
        return self._call(func, q, k, v, *args, preferred=self.preferred[1], **kwargs)


def check_model(patcher, weights):
    """The WanModel behind `patcher`, once the host, the model and the Stand-In file are known to fit."""
    hooks.check_host()
    model = patchable_wan_model_of(patcher, "RestrictedAttnPatch")
    weights.check_against(len(model.blocks), model.dim, f"this Wan model (dim {model.dim})")
    return model


def lora_patcher(weights, disable_dynamic=False):
    """Stand-In's LoRA in its own side-model patcher (side_model_patcher)."""
    return hooks.side_model_patcher(
        lambda operations, device: StandInLoRA(weights.num_blocks, weights.dim, weights.rank, operations=operations,
                                               device=device),
        weights.state_dict, (lora_patcher, (weights,)), disable_dynamic)


def apply_standin(patcher, weights, reference, strength):
    """A clone of `patcher` with Stand-In attached. `reference` is a normalised latent [1, C, 1, h, w]."""
    model = check_model(patcher, weights)
    if reference.shape[1] != model.patch_embedding.in_channels:
        raise ValueError(
            f"reference_image/reference_latent: a {reference.shape[1]}-channel latent, but this model takes "
            f"{model.patch_embedding.in_channels} channels. Stand-In needs a Wan 2.1 14B / 2.2 A14B text-to-video "
            f"model and the Wan 2.1 VAE (16 channels).")
    out = patcher.clone()
    if strength <= 0:
        return out  # strength 0 is the unpatched model, exactly
    if out.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY):
        logging.warning("[WanIdentity] this model already had a Stand-In patch; the new one replaces it.")
    patch = StandInPatch(lora_patcher(weights), reference.detach().cpu(), strength)
    hooks.attach(out, KEY, patch, patch.lora_patcher, len(model.blocks))
    return out
