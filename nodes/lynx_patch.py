"""Lynx on ComfyUI's native Wan model: only its method; the protocol (per-run state, wrapper, block replaces, side
model, multi-GPU rebind, the checks) is nodes/hooks.py's ModelPatch.

- on the first model call of a run (within the start/end window), everything that depends on the reference alone:
  the resampler's 16 ID tokens (and the zero-embedding tokens for the negative, as the official code), each adapted
  block's ID K/V, and for the Ref adapter the reference (and the zeroed reference, the official negative) through
  the frozen blocks at t = 0 (wanid/lynx/reference.py) and each block's Ref K/V;
- per block, the self-attention gets + ref_scale * Ref attention and the cross-attention + ip_scale * ID attention;
  which call is which is told by the keys' length (hooks.AttentionOverride), not by call order.
The adapters are the side model. The shared model is never touched: all of this sits on a clone.
"""
import logging
import math

import torch

from ..wanid.errors import check_finite
from ..wanid.lynx.adapters import LynxAdapters, ip_kv, ref_kv, rms_norm, unrotate
from ..wanid.lynx.reference import reference_stream
from . import hooks
from .wan import model_object, reference_tokens

KEY = "wanid_lynx"
ALWAYS = (float("inf"), 0.0)  # the default sigma window: every step


def adapters_patcher(weights, disable_dynamic=False):
    return hooks.side_model_patcher(lambda operations, device: LynxAdapters(weights, operations, device),
                                    LynxAdapters.state_dict_of(weights), (adapters_patcher, (weights,)),
                                    disable_dynamic)


class _Run(hooks.RunState):
    PER_RUN = hooks.RunState.PER_RUN + ("window",)  # the window is decided from the run's whole schedule

    def __init__(self):
        super().__init__()
        self.ip = {}   # block -> (K [2, n, dim], V [2, n, dim]): index 0 positive, 1 negative
        self.ref = {}  # block -> (K, V) likewise
        self.picked = {}  # (block, cond_or_uncond pattern) -> (ip K/V, ref K/V) for that batch: made once per run
        self.window = None  # True / False: the whole schedule is inside / outside the window; "gate": per call


class LynxPatch(hooks.ModelPatch):
    """One Lynx apply: the adapters' side model, the face embedding, the reference and the settings."""

    KEY, NAME, NODE = KEY, "Lynx", "Lynx Apply"
    MODELS = "a Wan 2.1 text-to-video model"
    Run = _Run

    def __init__(self, adapters, weights_info, embedding, reference=None, reference_context=None, ip_scale=1.0,
                 ref_scale=1.0, sigma_range=ALWAYS, ref_blocks=None):
        super().__init__(adapters)
        self.variant, self.ip_blocks = weights_info
        self.embedding = embedding              # [512] ArcFace IR-SE50, CPU
        self.reference = reference              # (positive, negative) latents [1, C, 1, h, w], normalised, or None
        self.reference_context = reference_context  # [1, L, 4096] text of the reference pass, or None
        self.ip_scale, self.ref_scale = float(ip_scale), float(ref_scale)
        self.sigma_range = sigma_range          # active while sigma_end <= sigma <= sigma_start
        self.ref_blocks = ref_blocks            # set of blocks whose self-attention takes the reference (None: all)

    # --- the sigma window, without a device sync per step ----------------------------------------------------------
    def _window(self, options):
        """True (act), False (leave this call unpatched) or a 0-d 0/1 tensor on the device (act, weighted by it).
        Decided once per run from a CPU copy of the sampler's schedule; only a window that splits the schedule needs
        a per-call decision, which stays on the device."""
        sigmas = options.get("sigmas")
        hi, lo = self.sigma_range
        if sigmas is None or self.sigma_range == ALWAYS or (hi == math.inf and lo <= 0):
            return True
        run = self.run
        if run.window is None:
            schedule = options.get("sample_sigmas")
            run.window = "gate"
            if schedule is not None and schedule.numel():
                values = schedule.detach().float().cpu().tolist()  # once per run
                top = max(values)
                if lo <= 0 and top <= hi:
                    run.window = True   # every sigma the sampler can ask for (0 .. top) is inside
                elif lo > top:
                    run.window = False  # the window starts above the whole schedule
        if run.window != "gate":
            return run.window
        current = sigmas.max()
        return ((current >= lo) & (current <= hi)).to(torch.float32)

    def prepare(self, model, x, options):
        window = self._window(options)
        if window is False:
            return None
        self._build(model, x)
        chunks = options.get("cond_or_uncond") or [0]
        per = max(1, x.shape[0] // len(chunks))
        rows = [1 if c == 1 else 0 for c in chunks for _ in range(per)][:x.shape[0]]
        pattern = tuple(rows + [0] * (x.shape[0] - len(rows)))  # batch row -> positive (0) / negative (1) K/V
        return pattern, (None if window is True else window.to(device=x.device, dtype=x.dtype))

    def _build(self, model, x):
        key = (id(model), x.device, x.dtype)
        run = self.run
        if run.key == key:
            return
        if run.key is not None:  # another model or dtype within the run: start its caches afresh
            run = self.restart()
        run.key, run.model = key, model
        side = self.side.model
        dtype, device = x.dtype, x.device
        with torch.no_grad():
            if self.ip_scale != 0:
                emb = self.embedding.to(device=device, dtype=dtype).reshape(1, 1, -1)
                # The negative's tokens come from a zero embedding (official: resampler(embedding * 0)).
                tokens = side.resampler(torch.cat([emb, emb * 0]))
                self.builds["tokens"] += 1
                for layer, block in zip(side.ip, self.ip_blocks):
                    norm = model.blocks[block].cross_attn.norm_k if self.variant == "full" else rms_norm
                    run.ip[block] = ip_kv(layer, tokens, norm, hooks.cast_like)
                    self.builds["ip"] += 1
            if self.ref_scale != 0 and self.reference is not None and len(side.ref):
                feats = []
                for ref in self.reference:
                    tokens, grid, e0 = reference_tokens(model, ref.to(device), dtype)
                    feats.append(reference_stream(model, tokens, grid, e0, self.reference_context, hooks.cast_like))
                    self.builds["reference"] += 1
                for i, layer in enumerate(side.ref):
                    if self.ref_blocks is None or i in self.ref_blocks:
                        f = torch.cat([feats[0][i], feats[1][i]])
                        run.ref[i] = ref_kv(layer, f, model.blocks[i].self_attn.norm_k)
                        self.builds["ref"] += 1
        self.offload_side()

    # --- per block ----------------------------------------------------------------------------------------------
    def _picked(self, index, rows):
        """This block's ID and Ref K/V for a batch laid out as `rows`, selected once per run and layout (every
        step repeats the same layouts)."""
        key = (index, rows)
        if key not in self.run.picked:
            self.run.picked[key] = (_pick(self.run.ip.get(index), rows), _pick(self.run.ref.get(index), rows))
        return self.run.picked[key]

    def override(self, index, mine, args, previous):
        rows, gate = mine
        ip, ref = self._picked(index, rows)
        if ip is None and ref is None:
            return None
        block = self.run.model.blocks[index]
        return _LynxOverride(previous, block, args["img"].shape[1], args["txt"].shape[1], ip, ref, self.ip_scale,
                             self.ref_scale, args["pe"], block.self_attn.num_heads, gate)


def _pick(kv, rows):
    """K/V [2, n, dim] (positive, negative) -> one row per batch entry, as `rows` (0 positive, 1 negative) says."""
    if kv is None:
        return None
    index = torch.tensor(rows, device=kv[0].device)
    return tuple(t.index_select(0, index) for t in kv)


class _LynxOverride(hooks.AttentionOverride):
    """The block's self-attention + ref_scale * Ref attention, its cross-attention + ip_scale * ID attention; the
    host's own attention runs through hooks.AttentionOverride.host."""

    def __init__(self, previous, block, video_len, context_len, ip, ref, ip_scale, ref_scale, freqs, heads, gate):
        super().__init__(previous, block, video_len, context_len)
        self.ip, self.ref, self.ip_scale, self.ref_scale = ip, ref, ip_scale, ref_scale
        self.freqs, self.heads, self.gate = freqs, heads, gate
        self.wants = frozenset(kind for kind, kv in ((hooks.SELF, ref), (hooks.CROSS, ip)) if kv is not None)

    def _extra(self, func, q, kv, kind, kwargs):
        k, v = (t.to(q.dtype) for t in kv)
        kw = {key: value for key, value in kwargs.items() if key not in ("mask", "heads")}
        return (self.preferred[kind] or func)(q, k, v, heads=self.heads, **kw)

    def _add(self, out, scale, extra):
        extra = scale * extra
        return out + (extra if self.gate is None else extra * self.gate)

    def attend(self, kind, func, q, k, v, *args, **kwargs):
        out = self.host(func, q, k, v, *args, kind=kind, **kwargs)
        if kind == hooks.SELF:
            if q.shape[-1] % self.heads or q.shape[-1] != self.ref[0].shape[-1]:
                raise RuntimeError("Lynx: the self-attention query arrived reshaped by another patch (Stand-In with "
                                   "strength != 1 applied after Lynx?). Apply Stand-In before Lynx, or use "
                                   "strength 1.")
            q0 = unrotate(q, self.freqs, self.heads)  # the official Ref query has no RoPE
            return self._add(out, self.ref_scale, self._extra(func, q0, self.ref, kind, kwargs))
        return self._add(out, self.ip_scale, self._extra(func, q, self.ip, kind, kwargs))


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


def _text_to_video(patcher, model):
    cross = type(model_object(patcher, "diffusion_model.blocks.0.cross_attn")).__name__  # this patcher's own view
    if cross != "WanT2VCrossAttention":
        raise ValueError(f"model: Lynx is trained on Wan 2.1 text-to-video; this model's cross-attention is "
                         f"{cross}. Load a Wan 2.1 T2V model.")


def check_model(patcher, weights):
    """The WanModel behind `patcher`, once the host, the model (a Wan 2.1 T2V) and the Lynx files are known to fit."""
    return hooks.wan_model_for(patcher, weights, "Lynx Apply", _text_to_video)


def apply_lynx(patcher, weights, embedding, reference=None, reference_context=None, ip_scale=1.0, ref_scale=1.0,
               start=0.0, end=1.0, ref_blocks="all"):
    """A clone of `patcher` with Lynx attached.

    embedding: [512] ArcFace IR-SE50 of the face; reference: (positive, negative) normalised latents
    [1, C, 1, h, w] (the 256 crop and the zeroed image, VAE-encoded) for the Ref adapter; reference_context:
    [1, L, 4096] text conditioning of the reference pass ("image of a face"). start/end: the part of the sampling
    (0 = first step, 1 = last) during which the adapters act."""
    model = check_model(patcher, weights)
    embedding = torch.as_tensor(embedding).float().reshape(-1)
    if embedding.numel() != weights.resampler_config["embedding_dim"]:
        raise ValueError(f"face: the face embedding must be {weights.resampler_config['embedding_dim']} finite "
                         f"values (ArcFace IR-SE50), got {embedding.numel()}.")
    check_finite(embedding, "face: the face embedding (ArcFace IR-SE50)",
                 "check the face image and the IR-SE50 file (arcface_name)")
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
    if ip_scale == 0 and not use_ref:
        return patcher.clone()  # both adapters off: the unpatched model, exactly
    if start == end:
        logging.warning(f"[WanIdentity] Lynx Apply: start and end are both {start}, so the adapters act on no step "
                        "(the output is the unpatched model's). Set end above start, e.g. start 0 and end 1.")
    sampling = model_object(patcher, "model_sampling")
    sigma_range = ALWAYS if (start, end) == (0.0, 1.0) else \
        (float(sampling.percent_to_sigma(start)), float(sampling.percent_to_sigma(end)))
    patch = LynxPatch(adapters_patcher(weights), (weights.variant, weights.ip_blocks(len(model.blocks))),
                      embedding, tuple(r.detach().cpu().float() for r in reference) if use_ref else None,
                      reference_context.detach().cpu().float() if use_ref else None,
                      ip_scale, ref_scale if use_ref else 0.0, sigma_range, blocks)
    return patch.apply_to(patcher, len(model.blocks))
