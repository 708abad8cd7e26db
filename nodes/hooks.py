"""The one model-patch protocol of the pack (Stand-In, Lynx; the next method plugs in with only its math):

- `ModelPatch`: a patch's key and name, its per-run state (reset on ON_PRE_RUN / ON_CLEANUP), its side model
  (its own weights, `side_model_patcher`), the native multi-GPU rebind, the DIFFUSION_MODEL wrapper with the checks
  that every patched block really joined the attention, the chained per-block replace, and installing it on a clone;
- `AttentionOverride`: one block's attention override, which tells self- from cross-attention by what it is given
  and falls through to the host's attention (the previous override, else the module's preferred attention, else
  the global one);
- `check_host`, `wan_model_for`, `side_model_patcher`, `offload_side_model`, `patch_of`, `as_tensors`,
  `preferred_attention`, `cast_like`.
The reference inputs (tokens at t = 0, VAE-encoded latents) are nodes/wan.py's."""
import collections
import copy
import logging

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import comfy.utils
from comfy.ldm.modules import attention as comfy_attention

from ..wanid.errors import check_finite
from ..wanid.host_versions import MIN_SUPPORTED
from .wan import patchable_wan_model_of


def check_host(node="RestrictedAttnPatch"):
    """The hooks the patches need, or an error naming the ComfyUI version that has them."""
    from comfy.patcher_extension import CallbacksMP, WrappersMP
    missing = []
    patcher = comfy.model_patcher.ModelPatcher
    if not hasattr(WrappersMP, "DIFFUSION_MODEL") or not hasattr(patcher, "add_wrapper_with_key"):
        missing.append("diffusion-model wrappers")
    if not hasattr(CallbacksMP, "ON_PRE_RUN") or not hasattr(patcher, "set_additional_models"):
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


def wan_model_for(patcher, weights, node, check=None):
    """The WanModel behind `patcher` once the host (check_host), the model (nodes/wan.py's patchable_wan_model_of,
    then check(patcher, model): the method's own demands) and the method's weights (weights.check_against) are known
    to fit; node: the node as messages name it."""
    check_host(node)
    model = patchable_wan_model_of(patcher, node)
    if check is not None:
        check(patcher, model)
    weights.check_against(len(model.blocks), model.dim, f"this Wan model (dim {model.dim})")
    return model


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
    if not is_dynamic:  # its host copies, kept: handing the weights back is then dropping the device copies
        patcher.wanid_host_weights = {name: t.data for name, t in module.named_parameters()}
    return patcher


def offload_side_model(patcher):
    """Once a run's caches are built the side model is idle until the next run: hand its memory back the way
    ComfyUI frees memory itself (the next run's load_models_gpu loads it again). Where the weights' host copies were
    kept (side_model_patcher) and nothing patches them, each device copy is swapped for its host copy first, so
    ComfyUI's unload has nothing to copy back: the run's first call does not wait on a device-to-host copy of every
    side-model weight (Lynx full: about 4B parameters)."""
    if patcher.load_device != patcher.offload_device and patcher.loaded_size() > 0:
        host = getattr(patcher, "wanid_host_weights", None)
        if host is not None and not patcher.patches:
            for prefix, module in patcher.model.named_modules():
                if not hasattr(module, "comfy_cast_weights"):
                    continue  # ComfyUI unloads only the layers that can cast their weights per call
                for name, t in module.named_parameters(recurse=False):
                    kept = host.get(f"{prefix}.{name}" if prefix else name)
                    if kept is not None and t.device != kept.device and t.shape == kept.shape:
                        comfy.utils.set_attr_param(module, name, kept)
        patcher.partially_unload(patcher.offload_device, memory_to_free=patcher.model_size())


def patch_of(patcher, key):
    """The pack's patch installed on `patcher` under `key` (its DIFFUSION_MODEL wrapper's owner), or None."""
    wrappers = patcher.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, key)
    return getattr(wrappers[0], "__self__", None) if wrappers else None


def preferred_attention(module):
    """A checkpoint's own attention for this module (ComfyAttention, newer ComfyUI), or None. The host skips it
    whenever an override is installed, so the override honours it itself."""
    return getattr(getattr(module, "comfy_attention", None), "function", None)


def cast_like(p, like):
    """A weight `p` in the dtype and on the device of `like`, as ComfyUI's manual_cast layers cast theirs: how the
    patches run a side-model or frozen-model weight on the reference stream."""
    return comfy.model_management.cast_to(p, dtype=like.dtype, device=like.device)


def as_tensors(q, k, v):
    """q, k, v as tensors: newer ComfyUI may pass AttentionTensorContainer (single-owner wrappers)."""
    return tuple(t.take() if hasattr(t, "take") and not isinstance(t, torch.Tensor) else t for t in (q, k, v))


SELF, CROSS, OTHER = "self", "cross", "other"

# Attention overrides of other nodes that only engage on q, k, v of one length (ComfyUI's Model Sparse Attention,
# comfy_extras/nodes_sparse_attention.py, 0.3x): under a patch that appends keys to the self-attention they run dense.
EQUAL_LENGTH_ONLY = {"nodes_sparse_attention": "Model Sparse Attention"}


class AttentionOverride:
    """One block's `optimized_attention_override` for one model call. It tells the block's self-attention (keys as
    long as the queries: the video's; or longer: keys appended by an override above) from its cross-attention (keys
    as long as the block's text context) by the tensors it is given, never by call order, runs the patch's method for
    the kinds in `wants`, and passes every call on to the host (`host`). `seen` records which kinds reached it: the
    patch's wrapper checks after the call that each wanted kind did."""

    wants = frozenset()

    def __init__(self, previous, block, video_len, context_len):
        self.previous = previous  # the override that was there before (core backend node, another pack's), or None
        self.preferred = {SELF: preferred_attention(block.self_attn), CROSS: preferred_attention(block.cross_attn)}
        self.video_len, self.context_len = video_len, context_len
        self.seen = set()

    def kind(self, q, k):
        n, m = k.shape[1], q.shape[1]
        if n == m and (n != self.context_len or SELF not in self.seen):
            return SELF   # the video's keys (equal to the text's length only by chance: then the first such call)
        if n == self.context_len:
            return CROSS  # the text's keys
        if n > m == self.video_len and SELF not in self.seen:
            return SELF   # the video's keys with keys appended by an override above (Stand-In's reference)
        return OTHER      # e.g. an I2V model's image keys: a cross-attention the patch leaves alone

    def host(self, func, q, k, v, *args, kind=CROSS, **kwargs):
        """The attention the host would have run: the previous override, else the module's preferred attention (the
        host bypasses it under an override), else the global one."""
        if self.previous is not None:
            return self.previous(func, q, k, v, *args, **kwargs)
        return (self.preferred[SELF if kind == SELF else CROSS] or func)(q, k, v, *args, **kwargs)

    def __call__(self, func, q, k, v, *args, **kwargs):
        q, k, v = as_tensors(q, k, v)
        kind = self.kind(q, k)
        self.seen.add(kind)
        if kind in self.wants:
            return self.attend(kind, func, q, k, v, *args, **kwargs)
        return self.host(func, q, k, v, *args, kind=kind, **kwargs)

    def attend(self, kind, func, q, k, v, *args, **kwargs):
        """The patch's method for a call of a kind it wants (subclasses)."""
        raise NotImplementedError

    def chain(self):
        """The overrides below this one that expose their previous one (the pack's own)."""
        p = self.previous
        while p is not None:
            yield p
            p = getattr(p, "previous", None)


class RunState:
    """What one sampling run caches. Subclasses add the method's caches; PER_RUN names the fields that hold for the
    whole run and survive `ModelPatch.restart` (another model, grid or dtype within the run)."""

    PER_RUN = ("checked_input",)

    def __init__(self):
        self.key = self.model = None
        self.checked_input = False  # the model input was checked finite (once per run: a device sync)
        self.reached = False        # a block replace of this patch ran during the current model call
        self.blocks = []            # (block, its override, whether the block itself ran) of the current call


class ModelPatch:
    """Base of the pack's model patches. A subclass sets KEY (its wrapper, callbacks, side model and block replaces
    are keyed by it), NAME (in messages), NODE (the node that applies it), MODELS (what to load instead) and Run,
    and implements `prepare` (per model call: build the run's caches, `restart` them for another model or grid;
    what the block replaces get) and `override` (one block's AttentionOverride, or None). The patch object is
    shared by plain clones of the patched ModelPatcher (deepcopy returns self); native multi-GPU clones get their
    own (`rebind_clone`)."""

    KEY = NAME = NODE = MODELS = None
    Run = RunState

    def __init__(self, side):
        self.side = side  # the side-model patcher holding the patch's own weights
        self._fresh()

    def _fresh(self):
        self.run = self.Run()
        self.builds = collections.Counter()  # what the current (or last) run built: diagnostics and tests
        self.noted = set()                   # warnings already given by this patch

    def __deepcopy__(self, memo):
        return self

    def reset(self, *args):
        """ON_CLEANUP: drop the run's caches; `builds` keeps counting the run."""
        self.run = self.Run()

    def restart(self):
        """Another model, grid or dtype within the run: the run's caches start afresh, its PER_RUN fields stay."""
        kept = {name: getattr(self.run, name) for name in self.run.PER_RUN}
        self.reset()
        for name, value in kept.items():
            setattr(self.run, name, value)
        return self.run

    def begin_run(self, *args):
        """ON_PRE_RUN: a new sampling run starts from nothing."""
        self.reset()
        self.builds = collections.Counter()

    def note_once(self, key, message):
        if key not in self.noted:
            self.noted.add(key)
            logging.warning(f"[WanIdentity] {message}")

    # --- installing ------------------------------------------------------------------------------------------------
    def apply_to(self, patcher, num_blocks):
        """A clone of `patcher` with this patch installed (an earlier patch of the same kind is replaced)."""
        out = patcher.clone()
        if patch_of(out, self.KEY) is not None:
            logging.warning(f"[WanIdentity] this model already had a {self.NAME} patch; the new one replaces it.")
        self.install(out, num_blocks)
        return out

    def install(self, out, num_blocks):
        """On the clone `out`: the DIFFUSION_MODEL wrapper, the run callbacks (reset; native multi-GPU rebind), the side
        model, and one block replace per block chained to what was there (an earlier patch under the same key is
        skipped, other packs' entries are kept)."""
        extension, key = comfy.patcher_extension, self.KEY
        out.remove_wrappers_with_key(extension.WrappersMP.DIFFUSION_MODEL, key)
        out.add_wrapper_with_key(extension.WrappersMP.DIFFUSION_MODEL, key, self.diffusion_model_wrapper)
        for call, fn in ((extension.CallbacksMP.ON_PRE_RUN, self.begin_run),
                         (extension.CallbacksMP.ON_CLEANUP, self.reset)):
            out.remove_callbacks_with_key(call, key)
            out.add_callback_with_key(call, key, fn)
        for name in ("ON_DEEPCLONE_MULTIGPU", "ON_MATCH_MULTIGPU_CLONES"):  # native multi-GPU (0.33+)
            call = getattr(extension.CallbacksMP, name, None)
            if call is not None:
                out.remove_callbacks_with_key(call, key)
                out.add_callback_with_key(call, key, self.rebind_clone)
        out.set_additional_models(key, [self.side])

        existing = out.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
        for i in range(num_blocks):
            previous = existing.get(("double_block", i))
            while previous is not None and getattr(previous, "wanid_key", None) == key:
                previous = getattr(previous, "wanid_previous", None)  # a replaced patch of the same kind: skip it
            replace = self.block_replace(i, previous)
            replace.wanid_key, replace.wanid_previous = key, previous
            out.set_model_patch_replace(replace, "dit", "double_block", i)

    def rebind_clone(self, source, clone):
        """A native multi-GPU clone (ON_DEEPCLONE_MULTIGPU / ON_MATCH_MULTIGPU_CLONES) gets a patch of its own, on its
        own copy of the side model: devices run in parallel and must not share run state."""
        side = clone.get_additional_models_with_key(self.KEY)
        if not side or side[0] is self.side:
            side = [self.side.clone()]
        patch = copy.copy(self)
        patch.side = side[0]
        patch._fresh()
        patch.install(clone, len(clone.get_model_object("diffusion_model").blocks))

    def offload_side(self):
        offload_side_model(self.side)

    # --- the DIFFUSION_MODEL wrapper ----------------------------------------------------------------------------------
    def prepare(self, model, x, options):
        """Per model call: build what the run needs; return what this call's block replaces get, or None to leave the
        call unpatched."""
        raise NotImplementedError

    def override(self, index, mine, args, previous):
        """Block `index`'s AttentionOverride for this call (mine: what prepare returned), or None."""
        raise NotImplementedError

    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        model = executor.class_obj
        args = list(args)
        x = args[0]
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
        if not self.run.checked_input:
            self.check_input(x)
        mine = self.prepare(model, x, options)
        if mine is None:
            return executor(*args, **kwargs)
        options = {**options, self.KEY: (self, mine)}
        if len(args) > 5:
            args[5] = options
        else:
            kwargs["transformer_options"] = options
        run = self.run
        run.reached, run.blocks = False, []
        out = executor(*args, **kwargs)
        self.check_reached(model, run)
        return out

    def check_input(self, x):
        """The model input, once per run (a device sync): an inf or NaN latent would give a NaN video and a success."""
        if not bool(torch.isfinite(x).all()):
            check_finite(x, f"latent: the sampler's input to this {self.NAME}-patched model",
                         "the LATENT given to the sampler is not a usable latent; re-create it (Empty Latent, or VAE "
                         "Encode of a valid image) and check the node that made it")
        self.run.checked_input = True

    def check_reached(self, model, run):
        if not run.reached:
            raise RuntimeError(
                f"model: {type(model).__name__} ran without ComfyUI's per-block patches, so {self.NAME} could not join "
                f"its attention. Use {self.MODELS}, or remove the {self.NODE} node.")
        for index, override, ran in run.blocks:
            missing = sorted(override.wants - override.seen) if ran else []
            if missing:
                raise RuntimeError(
                    f"model: in block {index} the {' and '.join(missing)}-attention never reached {self.NAME}'s "
                    f"attention override: another node installed its own per-block attention override on top of it "
                    f"and did not pass the call on, so {self.NAME} would silently do nothing there. Most likely that "
                    f"node patches the model before {self.NODE}: apply {self.NODE} first (connect its MODEL output to "
                    "that node), or remove that node.")

    # --- the per-block replace ----------------------------------------------------------------------------------------
    def block_replace(self, index, previous):
        def replace(args, extra):
            options = args["transformer_options"]
            entry = options.get(self.KEY)
            if entry is None or entry[0] is not self:
                return previous(args, extra) if previous else extra["original_block"](args)
            run = self.run
            run.reached = True
            override = self.override(index, entry[1], args, options.get("optimized_attention_override"))
            if override is not None:
                record = [index, override, False]
                run.blocks.append(record)
                original = extra["original_block"]

                def original_block(a):
                    record[2] = True  # the block itself ran, so its attention calls must reach the override
                    return original(a)

                extra = {**extra, "original_block": original_block}
                args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
            return previous(args, extra) if previous else extra["original_block"](args)
        return replace
