"""Lynx on ComfyUI's native Wan model, through ComfyUI's hooks only (the same pattern as standin_patch.py).

- a keyed DIFFUSION_MODEL wrapper, on the first model call of a run, computes everything that depends on the
  reference alone: the resampler's 16 ID tokens (and the zero-embedding tokens for the negative, as the official
  code), each adapted block's ID K/V, and for the Ref adapter the reference (and the zeroed reference, the
  official negative) through the frozen blocks at t = 0 and each block's Ref K/V;
- a per-block "double_block" replace (chained to any earlier one) installs an attention override (chained to any
  earlier one) that adds the Ref attention to the block's self-attention (its first attention call) and the ID
  attention to its cross-attention (its second);
- ON_PRE_RUN / ON_CLEANUP drop the caches; the adapters live in their own side-model patcher
  (hooks.side_model_patcher), attached with set_additional_models, so fp8, offload and dynamic VRAM work.
The shared model is never touched: all of this sits on a clone.
"""
import logging

import torch

import comfy.model_management
import comfy.patcher_extension

from ..wanid.lynx.adapters import ip_kv, reference_features, ref_kv, rms_norm, unrotate
from ..wanid.lynx.checkpoint import LynxAdapters
from . import hooks
from .wan import patchable_wan_model_of

KEY = "wanid_lynx"


def adapters_patcher(weights, disable_dynamic=False):
    return hooks.side_model_patcher(lambda operations, device: LynxAdapters(weights, operations, device),
                                    LynxAdapters.state_dict_of(weights), (adapters_patcher, (weights,)),
                                    disable_dynamic)


def _cast(p, like):
    return comfy.model_management.cast_to(p, dtype=like.dtype, device=like.device)


class _Run:
    def __init__(self):
        self.key = self.model = None
        self.ip = {}   # block -> (K [2, n, dim], V [2, n, dim]): index 0 positive, 1 negative
        self.ref = {}  # block -> (K, V) likewise
        self.reached = False
        self.picked = {}  # (block, cond_or_uncond pattern) -> (ip K/V, ref K/V) for that batch: made once per run


class LynxPatch:
    """Run state of one Lynx apply. Shared by clones of the patched ModelPatcher (deepcopy returns self), reset at
    the start and end of every run."""

    def __init__(self, adapters, weights_info, embedding, reference=None, reference_context=None, ip_scale=1.0,
                 ref_scale=1.0, sigma_range=(float("inf"), 0.0), ref_blocks=None):
        self.adapters = adapters
        self.variant, self.ip_blocks = weights_info
        self.embedding = embedding              # [512] ArcFace IR-SE50, CPU
        self.reference = reference              # (positive, negative) latents [1, C, 1, h, w], normalised, or None
        self.reference_context = reference_context  # [1, L, 4096] text of the reference pass, or None
        self.ip_scale, self.ref_scale = float(ip_scale), float(ref_scale)
        self.sigma_range = sigma_range          # active while sigma_end <= sigma <= sigma_start
        self.ref_blocks = ref_blocks            # set of blocks whose self-attention takes the reference (None: all)
        self.run = _Run()
        self.builds = {"tokens": 0, "ip": 0, "reference": 0, "ref": 0}  # counted for tests and diagnostics

    def __deepcopy__(self, memo):
        return self

    def reset(self, *args):
        self.run = _Run()

    def rebind_clone(self, source, clone):
        """Native multi-GPU clones get a patch of their own, on their own copy of the adapters."""
        side = clone.get_additional_models_with_key(KEY)
        if not side or side[0] is self.adapters:
            side = [self.adapters.clone()]
        patch = LynxPatch(side[0], (self.variant, self.ip_blocks), self.embedding, self.reference,
                          self.reference_context, self.ip_scale, self.ref_scale, self.sigma_range, self.ref_blocks)
        hooks.attach(clone, KEY, patch, patch.adapters, len(clone.model.diffusion_model.blocks))

    # --- DIFFUSION_MODEL wrapper -------------------------------------------------------------------------------
    def diffusion_model_wrapper(self, executor, *args, **kwargs):
        model = executor.class_obj
        args = list(args)
        x = args[0]
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
        if not self._active(options):
            return executor(*args, **kwargs)
        self._prepare(model, x)
        chunks = options.get("cond_or_uncond") or [0]
        per = max(1, x.shape[0] // len(chunks))
        rows = [1 if c == 1 else 0 for c in chunks for _ in range(per)][:x.shape[0]]
        pattern = tuple(rows + [0] * (x.shape[0] - len(rows)))  # batch row -> positive (0) / negative (1) K/V
        options = {**options, KEY: (self, pattern)}
        if len(args) > 5:
            args[5] = options
        else:
            kwargs["transformer_options"] = options
        self.run.reached = False
        out = executor(*args, **kwargs)
        if not self.run.reached:
            raise RuntimeError(
                f"model: {type(model).__name__} ran without ComfyUI's per-block patches, so Lynx could not join "
                "its attention. Use a Wan 2.1 text-to-video model, or remove the Lynx node.")
        return out

    def _active(self, options):
        sigmas = options.get("sigmas")
        if sigmas is None or (self.sigma_range[0] == float("inf") and self.sigma_range[1] <= 0):
            return True
        sigma = float(sigmas.max())
        return self.sigma_range[1] <= sigma <= self.sigma_range[0]

    def _prepare(self, model, x):
        key = (id(model), x.device, x.dtype)
        if self.run.key == key:
            return
        self.run = run = _Run()
        run.key, run.model = key, model
        side = self.adapters.model
        dtype, device = x.dtype, x.device
        with torch.no_grad():
            if self.ip_scale != 0:
                emb = self.embedding.to(device=device, dtype=dtype).reshape(1, 1, -1)
                # The negative's tokens come from a zero embedding (official: resampler(embedding * 0)).
                tokens = side.resampler(torch.cat([emb, emb * 0]))
                self.builds["tokens"] += 1
                for layer, block in zip(side.ip, self.ip_blocks):
                    norm = model.blocks[block].cross_attn.norm_k if self.variant == "full" else rms_norm
                    run.ip[block] = ip_kv(layer, tokens, norm, _cast)
                    self.builds["ip"] += 1
            if self.ref_scale != 0 and self.reference is not None and len(side.ref):
                feats = [self._reference_pass(model, ref.to(device), dtype) for ref in self.reference]
                for i, layer in enumerate(side.ref):
                    if self.ref_blocks is None or i in self.ref_blocks:
                        f = torch.cat([feats[0][i], feats[1][i]])
                        run.ref[i] = ref_kv(layer, f, model.blocks[i].self_attn.norm_k)
                        self.builds["ref"] += 1
        hooks.offload_side_model(self.adapters)

    def _reference_pass(self, model, latent, dtype):
        """The reference alone through the frozen blocks at t = 0 with its own text; each block's features."""
        from comfy.ldm.wan.model import sinusoidal_embedding_1d
        x = model.patch_embedding(latent.float()).to(dtype)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        t0 = torch.zeros(1, device=x.device)
        e = model.time_embedding(sinusoidal_embedding_1d(model.freq_dim, t0).to(dtype=dtype))
        e0 = model.time_projection(e).unflatten(1, (6, model.dim))
        ids = torch.zeros(h, w, 3, device=x.device)
        ids[..., 1] = torch.arange(h, device=x.device)[:, None]
        ids[..., 2] = torch.arange(w, device=x.device)[None, :]
        freqs = model.rope_embedder(ids.reshape(1, h * w, 3)).movedim(1, 2)
        context = model.text_embedding(self.reference_context.to(device=x.device, dtype=dtype))
        self.builds["reference"] += 1
        return reference_features(model.blocks, x, e0, freqs, context,
                                  lambda i, block, y: block(y, e=e0, freqs=freqs, context=context), _cast)

    # --- per-block replace -------------------------------------------------------------------------------------
    def _picked(self, index, rows):
        """This block's ID and Ref K/V for a batch laid out as `rows`, selected once per run and layout (every
        step repeats the same layouts)."""
        key = (index, rows)
        if key not in self.run.picked:
            self.run.picked[key] = (_pick(self.run.ip.get(index), rows), _pick(self.run.ref.get(index), rows))
        return self.run.picked[key]

    def block_replace(self, index, previous):
        def replace(args, extra):
            options = args["transformer_options"]
            mine = options.get(KEY)
            if mine is None or mine[0] is not self:
                return previous(args, extra) if previous else extra["original_block"](args)
            self.run.reached = True
            ip, ref = self._picked(index, mine[1])
            if ip is not None or ref is not None:
                block = self.run.model.blocks[index]
                override = _LynxOverride(ip, ref, self.ip_scale, self.ref_scale, args["pe"],
                                         block.self_attn.num_heads, options.get("optimized_attention_override"),
                                         (hooks.preferred_attention(block.self_attn), hooks.preferred_attention(block.cross_attn)))
                args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
            return previous(args, extra) if previous else extra["original_block"](args)
        return replace


def _pick(kv, rows):
    """K/V [2, n, dim] (positive, negative) -> one row per batch entry, as `rows` (0 positive, 1 negative) says."""
    if kv is None:
        return None
    index = torch.tensor(rows, device=kv[0].device)
    return tuple(t.index_select(0, index) for t in kv)


class _LynxOverride:
    """The block's first attention call is its self-attention (+ ref_scale * Ref attention), the second its
    cross-attention (+ ip_scale * ID attention); the host's own attention runs through the override that was
    there before (Stand-In's, the core backend node's), else the module's preferred one, else the global one."""

    def __init__(self, ip, ref, ip_scale, ref_scale, freqs, heads, previous, preferred):
        self.ip, self.ref, self.ip_scale, self.ref_scale = ip, ref, ip_scale, ref_scale
        self.freqs, self.heads, self.previous, self.preferred = freqs, heads, previous, preferred
        self.calls = 0

    def _host(self, func, q, k, v, *args, preferred=None, **kwargs):
        if self.previous is not None:
            return self.previous(func, q, k, v, *args, **kwargs)
        return (preferred or func)(q, k, v, *args, **kwargs)

    def _extra(self, func, q, kv, preferred, kwargs):
        k, v = (t.to(q.dtype) for t in kv)
        kw = {key: value for key, value in kwargs.items() if key not in ("mask", "heads")}
        return (preferred or func)(q, k, v, heads=self.heads, **kw)

    def __call__(self, func, q, k, v, *args, **kwargs):
        q, k, v = hooks.as_tensors(q, k, v)
        call, self.calls = self.calls, self.calls + 1
        kind = 0 if call == 0 else 1 if call == 1 else None
        out = self._host(func, q, k, v, *args, preferred=self.preferred[0 if call == 0 else 1], **kwargs)
        if kind == 0 and self.ref is not None:
            if q.shape[-1] % self.heads or q.shape[-1] != self.ref[0].shape[-1]:
                raise RuntimeError("Lynx: the self-attention query arrived reshaped by another patch (Stand-In with "
                                   "strength != 1 applied after Lynx?). Apply Stand-In before Lynx, or use "
                                   "strength 1.")
            q0 = unrotate(q, self.freqs, self.heads)  # the official Ref query has no RoPE
            out = out + self.ref_scale * self._extra(func, q0, self.ref, self.preferred[0], kwargs)
        elif kind == 1 and self.ip is not None:
            out = out + self.ip_scale * self._extra(func, q, self.ip, self.preferred[1], kwargs)
        return out


def parse_blocks(text, num_blocks):
    """'all' or e.g. '0-19, 30' -> a set of block indices (None for all); ValueError naming the input."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    out = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            lo, _, hi = part.partition("-")
            lo, hi = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ValueError(f"ref_blocks: {part!r} is not a block number or range; write e.g. 'all' or '0-19, 30'.")
        if not 0 <= lo <= hi < num_blocks:
            raise ValueError(f"ref_blocks: {part!r} is outside this model's blocks 0-{num_blocks - 1}.")
        out.update(range(lo, hi + 1))
    return out


def check_model(patcher, weights):
    hooks.check_host("Lynx Apply")
    model = patchable_wan_model_of(patcher, "Lynx Apply")
    if type(model.blocks[0].cross_attn).__name__ != "WanT2VCrossAttention":
        raise ValueError(f"model: Lynx is trained on Wan 2.1 text-to-video; this model's cross-attention is "
                         f"{type(model.blocks[0].cross_attn).__name__}. Load a Wan 2.1 T2V model.")
    weights.check_against(len(model.blocks), model.dim, f"this Wan model (dim {model.dim})")
    return model


def apply_lynx(patcher, weights, embedding, reference=None, reference_context=None, ip_scale=1.0, ref_scale=1.0,
               start=0.0, end=1.0, ref_blocks="all"):
    """A clone of `patcher` with Lynx attached.

    embedding: [512] ArcFace IR-SE50 of the face; reference: (positive, negative) normalised latents
    [1, C, 1, h, w] (the 256 crop and the zeroed image, VAE-encoded) for the Ref adapter; reference_context:
    [1, L, 4096] text conditioning of the reference pass ("image of a face"). start/end: the part of the sampling
    (0 = first step, 1 = last) during which the adapters act."""
    model = check_model(patcher, weights)
    embedding = torch.as_tensor(embedding).float().reshape(-1)
    if embedding.numel() != weights.resampler_config["embedding_dim"] or not torch.isfinite(embedding).all():
        raise ValueError(f"face: the face embedding must be {weights.resampler_config['embedding_dim']} finite "
                         f"values (ArcFace IR-SE50), got {embedding.numel()}.")
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"start/end: need 0 <= start <= end <= 1, got start={start}, end={end}.")
    blocks = parse_blocks(ref_blocks, len(model.blocks))
    use_ref = bool(weights.ref) and ref_scale != 0
    if use_ref:
        if reference is None or reference_context is None:
            raise ValueError("reference_text: full Lynx's Ref adapter needs the reference face (face_clip + vae) and "
                             "the reference text conditioning (CLIP Text Encode of 'image of a face'); or set "
                             "ref_scale to 0.")
        for name, lat in zip(("reference", "negative reference"), reference):
            if lat.ndim != 5 or lat.shape[0] != 1 or lat.shape[1] != model.patch_embedding.in_channels:
                raise ValueError(f"face_clip: the {name} latent is {list(lat.shape)}; this model needs "
                                 f"[1, {model.patch_embedding.in_channels}, 1, h, w] (the Wan 2.1 VAE).")
        if reference_context.ndim != 3 or reference_context.shape[-1] != model.text_embedding[0].in_features:
            raise ValueError(f"reference_text: conditioning of shape {list(reference_context.shape)}; this model "
                             f"takes [1, L, {model.text_embedding[0].in_features}] (umT5, CLIP Loader type wan).")
    out = patcher.clone()
    if ip_scale == 0 and not use_ref:
        return out  # both adapters off: the unpatched model, exactly
    if out.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY):
        logging.warning("[WanIdentity] this model already had a Lynx patch; the new one replaces it.")
    sampling = patcher.model.model_sampling
    sigma_range = (float("inf"), 0.0) if (start, end) == (0.0, 1.0) else \
        (float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end)))
    patch = LynxPatch(adapters_patcher(weights), (weights.variant, weights.ip_blocks(len(model.blocks))),
                      embedding, tuple(r.detach().cpu().float() for r in reference) if use_ref else None,
                      reference_context.detach().cpu().float() if use_ref else None,
                      ip_scale, ref_scale if use_ref else 0.0, sigma_range, blocks)
    hooks.attach(out, KEY, patch, patch.adapters, len(model.blocks))
    return out
