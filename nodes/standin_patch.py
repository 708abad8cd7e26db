"""Stand-In on ComfyUI's native Wan model: only its method; the protocol (per-run state, wrapper, block replaces,
side model, multi-GPU rebind, the checks) is nodes/hooks.py's ModelPatch.

- per run and grid, the reference's tokens, t=0 modulation and RoPE (its positions beside the video's);
- per block, on the first model call of a run, the reference's keys/values through the block with Stand-In's LoRA;
- the block's self-attention gets them appended (the rest of the attention passes on to the host).
The LoRA is the side model. The shared model is never touched: all of this sits on a clone of the ModelPatcher.
"""
import functools
import inspect

from comfy.ldm.modules import attention as comfy_attention

from ..wanid.standin.lora import StandInLoRA
from ..wanid.standin.positions import reference_position_ids
from ..wanid.standin.reference_branch import attend_merged, attend_with_reference, reference_block
from . import hooks
from .wan import reference_tokens

KEY = "wanid_standin"


class _Run(hooks.RunState):
    """The reference stream's state for the current grid and each block's reference keys/values."""

    def __init__(self):
        super().__init__()
        self.x = self.e = self.freqs = None
        self.kv = {}


class StandInPatch(hooks.ModelPatch):
    """One RestrictedAttnPatch: the LoRA's side model, the reference latent and the strength."""

    KEY, NAME, NODE = KEY, "Stand-In", "Stand-In Restricted Attention"
    MODELS = "a Wan 2.1/2.2 text-to-video (or VACE) model"
    Run = _Run

    def __init__(self, lora_patcher, reference, strength):
        super().__init__(lora_patcher)
        self.reference = reference  # [1, C, 1, h, w] latent in the DiT's normalised space, CPU
        self.strength = float(strength)

    def prepare(self, model, x, options):
        rope_options = options.get("rope_options") if _reads_rope_options(type(model)) else None
        ph, pw = model.patch_size[1], model.patch_size[2]
        grid_h, grid_w = -(-x.shape[-2] // ph), -(-x.shape[-1] // pw)
        rope_key = tuple(sorted(rope_options.items())) if rope_options else None
        key = (id(model), grid_h, grid_w, x.device, x.dtype, rope_key)
        if self.run.key != key:
            run = self.restart()
            run.key, run.model = key, model
            run.x, (ref_h, ref_w), run.e = reference_tokens(model, self.reference.to(x.device), x.dtype)
            ids = reference_position_ids(grid_h, grid_w, ref_h, ref_w, device=x.device, rope_options=rope_options)
            run.freqs = model.rope_embedder(ids).movedim(1, 2)
        return True

    def reference_kv(self, i):
        run, model = self.run, self.run.model
        if i not in run.kv:
            if run.x is None or len(run.kv) != i:
                raise RuntimeError(f"Stand-In: block {i} ran before the blocks in front of it; another patch "
                                   "reorders the Wan blocks, which Stand-In cannot follow.")
            lora = self.side.model.blocks[i].self_attn
            x, k, v = reference_block(
                model.blocks[i], lora, run.x, run.e, run.freqs,
                rope=apply_rope, attention=comfy_attention.optimized_attention, cast=hooks.cast_like)
            run.kv[i] = (k, v)
            self.builds["reference"] += 1
            run.x = x if i + 1 < len(model.blocks) else None  # the reference stream ends before the head
            if run.x is None:
                self.offload_side()
        return run.kv[i]

    def override(self, index, mine, args, previous):
        k_ref, v_ref = self.reference_kv(index)
        override = _SelfAttentionOverride(previous, self.run.model.blocks[index], args["img"].shape[1],
                                          args["txt"].shape[1], k_ref, v_ref, self.strength)
        for other in override.chain():
            name = hooks.EQUAL_LENGTH_ONLY.get(getattr(other, "__module__", "").rsplit(".", 1)[-1])
            if name:
                self.note_once(name, f"{name} does not engage on Stand-In's self-attention: the reference keys make "
                                     "it longer than the queries, which its kernel does not take, so those calls run "
                                     f"dense (the other attention calls still use {name}).")
        return override


@functools.cache
def _reads_rope_options(model_class):
    """Whether this host's Wan class places the video by transformer_options["rope_options"] (ScaleROPE, 0.3x);
    fixed per class, so asked once rather than on every model call."""
    return "transformer_options" in inspect.signature(model_class.rope_encode).parameters


def apply_rope(x, freqs):
    from comfy.ldm.flux.math import apply_rope1
    return apply_rope1(x, freqs)


class _SelfAttentionOverride(hooks.AttentionOverride):
    """Appends the reference K/V to the block's self-attention; everything else passes on to the host."""

    wants = frozenset({hooks.SELF})

    def __init__(self, previous, block, video_len, context_len, k_ref, v_ref, strength):
        super().__init__(previous, block, video_len, context_len)
        self.k_ref, self.v_ref, self.strength = k_ref, v_ref, strength

    def _host_sdpa(self, func, preferred, args, kwargs):
        """Whether the host would run this attention as plain PyTorch SDPA (no other override, no module attention,
        no mask): then Stand-In can take the reference by the exact two-pass merge instead of concatenating."""
        plain = comfy_attention.attention_pytorch
        return (self.previous is None and preferred is None and not args and kwargs.get("mask") is None
                and not kwargs.get("skip_reshape") and not kwargs.get("skip_output_reshape")
                and func in (plain, getattr(plain, "__wrapped__", None)))

    def attend(self, kind, func, q, k, v, *args, **kwargs):
        preferred = self.preferred[hooks.SELF]
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
            if self.previous is not None:
                return self.previous(func, q_, k_, v_, *args, heads=heads, **kw)
            return (preferred or func)(q_, k_, v_, *args, heads=heads, **kw)

        return attend_with_reference(backend, q, k, v, self.k_ref, self.v_ref, heads, self.strength, **kwargs)


def check_model(patcher, weights):
    """The WanModel behind `patcher`, once the host, the model and the Stand-In file are known to fit."""
    return hooks.wan_model_for(patcher, weights, "RestrictedAttnPatch")


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
    if strength <= 0:
        return patcher.clone()  # strength 0 is the unpatched model, exactly
    return StandInPatch(lora_patcher(weights), reference.detach().cpu(), strength).apply_to(patcher, len(model.blocks))
