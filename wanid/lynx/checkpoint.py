"""Reading the official Lynx adapter files (Hugging Face ByteDance/lynx: lynx_full/, lynx_lite/) without running
pickled code, and checking them against the Wan model before anything is built.

A Lynx folder holds
- resampler.safetensors: the Perceiver resampler (ArcFace 512 -> 16 tokens of width 5120 full / 2048 lite);
- ip_layers.safetensors: per adapted block `N.to_k_ip.weight`, `N.to_v_ip.weight` [dim, token width]; full adds
  biases and may add `N.registers` [1, R, token width]; full adapts every block, lite every second block
  (official register_ip_adapter_wan(layers=2): blocks 0, 2, 4, ...);
- ref_layers.safetensors (full only): `N.to_k_ref.{weight,bias}`, `N.to_v_ref.{weight,bias}` [dim, dim] per block.
"""
import os
import re
from dataclasses import dataclass, field

import torch

from ..errors import WanIDError, check_finite
from ..tensor_file import natural_key, read_tensor_file
from .resampler import DIM_HEAD, Resampler

from .files import FILES  # the file names, torch-free for the CLI and Setup Check
IP_RE = re.compile(r"^(\d+)\.(to_k_ip\.weight|to_k_ip\.bias|to_v_ip\.weight|to_v_ip\.bias|registers)$")
REF_RE = re.compile(r"^(\d+)\.(to_k_ref|to_v_ref)\.(weight|bias)$")


class LynxFileError(WanIDError):
    pass



def read(path, what, keep=True, dtype=None):
    """The tensors of one Lynx file (the pack's one reader: never unpickles), each checked finite; floating ones
    converted to `dtype` (None: kept as stored, so the 14B ID/Ref layers stay bf16 in memory). keep=False
    (Setup Check) checks every tensor the same way but keeps only its shape (a meta tensor), one tensor in memory
    at a time: the official 14B files are several GB."""
    name = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}/{what}"
    tensors = None if keep else _stream(path)
    if tensors is None:
        sd = read_tensor_file(path, "lynx_name: Lynx file", "Download it again from ByteDance/lynx.",
                              error=LynxFileError)
        if not isinstance(sd, dict):
            sd = {}
        tensors = ((k, sd[k]) for k in sorted(sd, key=natural_key))
    out = {}
    for key, value in tensors:
        if not isinstance(value, torch.Tensor):
            raise LynxFileError(f"lynx_name: Lynx file {name}: {key} is not a tensor.")
        if not value.is_floating_point():  # Lynx's weights are all floating point; anything else fails later
            raise LynxFileError(f"lynx_name: Lynx file {name}: {key} holds {str(value.dtype).replace('torch.', '')} "
                                "values, not floating-point weights: it is not an official Lynx file. Download "
                                "it again from ByteDance/lynx.")
        check_finite({key: value}, f"lynx_name: Lynx file {name}:", "the file is damaged. Download it again.",
                     LynxFileError)
        if not keep:
            value = torch.empty(value.shape, dtype=value.dtype, device="meta")
        out[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
    if not out:
        raise LynxFileError(f"lynx_name: Lynx file {name} holds no tensors. Download it again from ByteDance/lynx.")
    return out


def _stream(path):
    """(key, tensor) of a readable .safetensors file one at a time, or None (the one reader then words why not)."""
    if not str(path).endswith(".safetensors") or os.path.getsize(path) == 0:
        return None
    from safetensors import safe_open
    try:
        f = safe_open(path, framework="pt", device="cpu")
        keys = sorted(f.keys(), key=natural_key)
    except Exception:  # noqa: BLE001 - damaged header: read_tensor_file says so in the pack's words
        return None
    return ((k, f.get_tensor(k)) for k in keys)


@dataclass
class LynxWeights:
    """The tensors of one Lynx folder (CPU; the resampler fp32, the adapters as stored) and the configuration read
    from them."""
    resampler: dict
    ip: dict
    ref: dict = field(default_factory=dict)
    source: str = ""
    variant: str = ""       # "full" (biases, block norm_k on the ID keys) or "lite" (no bias, plain RMS norm)
    ip_layers: int = 0
    ref_layers: int = 0
    registers: int = 0
    token_dim: int = 0      # width of the resampler's tokens (= to_k_ip's input)
    dim: int = 0            # the Wan model width the adapters project to
    resampler_config: dict = field(default_factory=dict)

    @property
    def dtype(self):
        """The adapters' storage dtype (the ID layers' as stored in the file); their layers are built in it."""
        return self.ip["0.to_k_ip.weight"].dtype

    def ip_blocks(self, num_blocks):
        """The Wan blocks whose cross-attention has an ID adapter, in file order."""
        return list(range(num_blocks)) if self.variant == "full" else list(range(0, num_blocks, 2))

    def check_against(self, num_blocks, dim, model_name="this Wan model"):
        """Raise a LynxFileError naming the first thing that does not fit a Wan model of that size."""
        if self.dim != dim:
            raise LynxFileError(f"Lynx {self.source}: ip_layers 0.to_k_ip.weight projects to width {self.dim}, but "
                                f"{model_name} has dim {dim}. The official Lynx files are for Wan 2.1 T2V 14B "
                                "(dim 5120); use a file made for this model.")
        want = len(self.ip_blocks(num_blocks))
        if self.ip_layers != want:
            rule = "one per block" if self.variant == "full" else "one per second block"
            raise LynxFileError(f"Lynx {self.source}: ip_layers has {self.ip_layers} layers, but {model_name} has "
                                f"{num_blocks} blocks and {self.variant} Lynx needs {want} ({rule}). Use the Lynx "
                                "files made for this Wan model (14B: 40 blocks).")
        if self.ref and self.ref_layers != num_blocks:
            raise LynxFileError(f"Lynx {self.source}: ref_layers has {self.ref_layers} layers, but {model_name} has "
                                f"{num_blocks} blocks. Use the Lynx files made for this Wan model.")


def _count(keys, pattern, what, source):
    idx = sorted({int(pattern.match(k).group(1)) for k in keys})
    if idx != list(range(len(idx))):
        missing = next(i for i in range(len(idx) + 1) if i not in idx)
        raise LynxFileError(f"Lynx {source}: {what} layer {missing} is missing (layers must be 0..N-1). "
                            "Download the file again.")
    return len(idx)


def _expect(sd, key, shape, what, source):
    if key not in sd:
        raise LynxFileError(f"Lynx {source}: {what} is incomplete: {key} is missing. Download it again.")
    if tuple(sd[key].shape) != tuple(shape):
        raise LynxFileError(f"Lynx {source}: {what} {key} has shape {list(sd[key].shape)}, expected {list(shape)} "
                            "(the other tensors of the file say so). The files of one Lynx folder must belong "
                            "together (all lynx_full or all lynx_lite).")


def resampler_config(sd, source):
    if "latents" not in sd or "proj_in.weight" not in sd or "proj_out.weight" not in sd:
        raise LynxFileError(f"Lynx {source}: resampler.safetensors has no latents/proj_in/proj_out: it is not "
                            "Lynx's resampler.")
    _, queries, dim = sd["latents"].shape
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    inner = sd["layers.0.0.to_q.weight"].shape[0] if "layers.0.0.to_q.weight" in sd else 0
    if depth == 0 or inner % DIM_HEAD:
        raise LynxFileError(f"Lynx {source}: resampler.safetensors has {depth} layers and attention width {inner}; "
                            f"Lynx's has layers whose width is a multiple of {DIM_HEAD}.")
    cfg = dict(dim=dim, depth=depth, heads=inner // DIM_HEAD, num_queries=queries,
               embedding_dim=sd["proj_in.weight"].shape[1], output_dim=sd["proj_out.weight"].shape[0],
               ff_mult=sd["layers.0.1.1.weight"].shape[0] // dim if "layers.0.1.1.weight" in sd else 4)
    want = Resampler(**cfg, device="meta").state_dict()
    for key in sorted(want, key=natural_key):
        _expect(sd, key, want[key].shape, "resampler.safetensors", source)
    extra = sorted(set(sd) - set(want), key=natural_key)
    if extra:
        raise LynxFileError(f"Lynx {source}: resampler.safetensors has an unexpected key {extra[0]!r}.")
    if cfg["embedding_dim"] != 512:
        raise LynxFileError(f"Lynx {source}: the resampler takes {cfg['embedding_dim']}-d embeddings; Lynx's takes "
                            "the 512-d ArcFace embedding.")
    return cfg


def parse(resampler, ip, ref=None, source="<memory>"):
    """LynxWeights from the three tensor dicts (ref None/empty for lite), everything checked for consistency."""
    cfg = resampler_config(resampler, source)
    bad = next((k for k in sorted(ip, key=natural_key) if not IP_RE.match(k)), None)
    if bad is not None:
        raise LynxFileError(f"Lynx {source}: ip_layers.safetensors has an unexpected key {bad!r} (expected "
                            "N.to_k_ip.weight ...): it is not Lynx's ID adapter.")
    layers = _count(ip, IP_RE, "ip_layers", source)
    if "0.to_k_ip.weight" not in ip:
        raise LynxFileError(f"Lynx {source}: ip_layers.safetensors is incomplete: 0.to_k_ip.weight is missing.")
    dim, token_dim = ip["0.to_k_ip.weight"].shape
    variant = "full" if "0.to_k_ip.bias" in ip else "lite"
    registers = ip["0.registers"].shape[1] if "0.registers" in ip else 0
    for i in range(layers):
        for p in ("to_k_ip", "to_v_ip"):
            _expect(ip, f"{i}.{p}.weight", (dim, token_dim), "ip_layers.safetensors", source)
            if variant == "full":
                _expect(ip, f"{i}.{p}.bias", (dim,), "ip_layers.safetensors", source)
        if registers:
            _expect(ip, f"{i}.registers", (1, registers, token_dim), "ip_layers.safetensors", source)
    if variant == "lite" and any(k.endswith("bias") or k.endswith("registers") for k in ip):
        raise LynxFileError(f"Lynx {source}: ip_layers.safetensors mixes layers with and without biases.")
    if cfg["output_dim"] != token_dim:
        raise LynxFileError(f"Lynx {source}: the resampler makes tokens of width {cfg['output_dim']}, but "
                            f"ip_layers takes width {token_dim}. The files of one Lynx folder must belong together "
                            "(all lynx_full or all lynx_lite).")
    ref = ref or {}
    ref_layers = 0
    if ref:
        if variant == "lite":
            raise LynxFileError(f"Lynx {source}: ref_layers.safetensors next to lite ID layers; Lynx lite has no "
                                "Ref adapter. Remove it, or use the lynx_full files together.")
        bad = next((k for k in sorted(ref, key=natural_key) if not REF_RE.match(k)), None)
        if bad is not None:
            raise LynxFileError(f"Lynx {source}: ref_layers.safetensors has an unexpected key {bad!r} (expected "
                                "N.to_k_ref.weight ...).")
        ref_layers = _count(ref, REF_RE, "ref_layers", source)
        for i in range(ref_layers):
            for p in ("to_k_ref", "to_v_ref"):
                _expect(ref, f"{i}.{p}.weight", (dim, dim), "ref_layers.safetensors", source)
                _expect(ref, f"{i}.{p}.bias", (dim,), "ref_layers.safetensors", source)
    return LynxWeights(resampler, ip, ref, source, variant, layers, ref_layers, registers, token_dim, dim, cfg)


def load_lynx(folder, keep=True):
    """LynxWeights of a folder holding the official files (keep=False: checked in full, shapes kept; see read)."""
    source = os.path.basename(os.path.normpath(folder))
    if not os.path.isdir(folder):
        raise LynxFileError(f"lynx_name: {folder} is not a folder; put lynx_full/ or lynx_lite/ in models/lynx.")
    paths = {f: os.path.join(folder, f) for f in FILES}
    for f in FILES[:2]:
        if not os.path.isfile(paths[f]):
            raise LynxFileError(f"lynx_name: {source} has no {f}. A Lynx folder holds resampler.safetensors and "
                                "ip_layers.safetensors (and ref_layers.safetensors for lynx_full), as downloaded "
                                "from ByteDance/lynx.")
    ref = read(paths[FILES[2]], FILES[2], keep) if os.path.isfile(paths[FILES[2]]) else None
    # the resampler is small and runs on the fp32 embedding: fp32; the adapters keep the file's dtype
    resampler = read(paths[FILES[0]], FILES[0], keep, dtype=torch.float32)
    weights = parse(resampler, read(paths[FILES[1]], FILES[1], keep), ref, source)
    if weights.variant == "full" and not weights.ref:
        # lynx_full always ships its Ref adapter: without it Lynx would silently run as ID adapter only
        raise LynxFileError(f"lynx_name: {source} holds lynx_full's ID layers but no {FILES[2]} (an interrupted "
                            f"download?): the Ref adapter would silently be left out. Download {FILES[2]} of "
                            "lynx_full from ByteDance/lynx into this folder, or use lynx_lite.")
    return weights
