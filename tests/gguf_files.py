"""Tiny Wan 2.1 T2V .gguf files in ComfyUI-GGUF's layout, and city96's ComfyUI-GGUF imported in-process.

No quantized Wan can be downloaded here, so the tests write what a user's file holds, the way ComfyUI-GGUF's own tools
make one (tools/convert.py, tools/fix_5d_tensors.py, the llama-quantize patch tools/lcpp.patch), from a bf16 source:
  - 1-D tensors, tensors of at most 1024 elements and `.modulation`: F32 (convert.py);
  - the 5-D patch embedding: skipped by the converter and added back unquantized, F32 (fix_5d_tensors.py);
  - patch_embedding/text_embedding/time_embedding/time_projection/head: never quantized, they stay BF16 (lcpp.patch);
  - every other 2-D weight (the blocks' attention and FFN projections) in the file's type: Q8_0; Q4_0 with the FFN's
    down projection (`ffn.2`) in Q4_1 as llama-quantize's Q4_0 does; Q4_K (an encoder of our own below: gguf-py
    only decodes K-quants; rows must be a multiple of 256); or BF16 (the converter's unquantized file).

    write_wan_gguf(path, state_dict, kind) -> {key: GGMLQuantizationType}
    import_gguf_pack() -> (nodes, dequant, loader) modules of ComfyUI-GGUF; skips with the reason where it is missing
    find_gguf_pack() -> (path or None, reason)

ComfyUI-GGUF is found like ComfyUI itself: WANID_GGUF_PATH (its folder), else ComfyUI-GGUF (or comfyui-gguf, the
Manager's name) in the custom_nodes of the ComfyUI under test. It is never vendored (docs/testing.md says where to
put a copy); its Python dependency `gguf` is in requirements-test.txt.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import wanid_testing

KINDS = ("Q8_0", "Q4_0", "Q4_K", "BF16")
UNQUANTIZED = ("patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.", "head.")
FILE_TYPES = {"Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0", "Q4_K": "MOSTLY_Q4_K_S", "BF16": "MOSTLY_BF16"}
MODULE = "comfyui_gguf"  # the name ComfyUI-GGUF is imported under in-process


def find_gguf_pack():
    named = os.environ.get("WANID_GGUF_PATH")
    if named:
        path = Path(named).expanduser()
        if (path / "nodes.py").is_file():
            return path, None
        return None, f"WANID_GGUF_PATH={named} is not a ComfyUI-GGUF folder (no nodes.py there)"
    if wanid_testing.COMFYUI is None:
        return None, wanid_testing.NO_COMFY_REASON
    for name in ("ComfyUI-GGUF", "comfyui-gguf"):
        path = wanid_testing.COMFYUI / "custom_nodes" / name
        if (path / "nodes.py").is_file():
            return path, None
    return None, (f"ComfyUI-GGUF not found in {wanid_testing.COMFYUI / 'custom_nodes'} (and WANID_GGUF_PATH is not "
                  "set): put a copy of github.com/city96/ComfyUI-GGUF there (docs/testing.md); GGUF tests skipped")


def import_gguf_pack():
    """ComfyUI-GGUF's nodes, dequant and loader modules, imported inside the ComfyUI under test; skips without it."""
    wanid_testing.import_comfy()
    path, why = find_gguf_pack()
    if path is None:
        pytest.skip(why)
    pytest.importorskip("gguf", reason="the gguf package is not installed (pip install -r requirements-test.txt)")
    if MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(MODULE, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE] = module
        spec.loader.exec_module(module)
    return tuple(importlib.import_module(f"{MODULE}.{name}") for name in ("nodes", "dequant", "loader"))


def gguf_type(key, shape, kind):
    """The GGML type ComfyUI-GGUF's tools give `key` (shape as torch writes it) in a `kind` file from bf16."""
    from gguf import GGMLQuantizationType as T
    n = int(np.prod(shape))
    if len(shape) == 1 or n <= 1024 or ".modulation" in key or len(shape) > 4:
        return T.F32
    if kind == "BF16" or key.startswith(UNQUANTIZED):
        return T.BF16
    if kind == "Q4_0" and key.endswith(".ffn.2.weight"):
        return T.Q4_1
    return T[kind]


def write_wan_gguf(path, state_dict, kind):
    """Write `state_dict` (a native Wan 2.1 checkpoint's keys, any float dtype: it is rounded to bf16 first, as the
    source a user converts is) as a .gguf file of `kind`; returns {key: type written}."""
    import gguf
    import torch
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: one of {KINDS}")
    writer = gguf.GGUFWriter(path=None, arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[kind]))
    types = {}
    late = {}
    for key, tensor in state_dict.items():
        data = tensor.to(torch.bfloat16).float().numpy()
        qtype = gguf_type(key, data.shape, kind)
        if data.ndim > 4:  # convert.py leaves it out; fix_5d_tensors.py adds it back (F32) after the bias
            late[key.replace(".weight", ".bias")] = (key, data)
            continue
        _add(writer, key, data, qtype)
        types[key] = qtype
        if key in late:
            key5, data5 = late.pop(key)
            _add(writer, key5, data5, gguf.GGMLQuantizationType.F32)
            types[key5] = gguf.GGMLQuantizationType.F32
    for key5, data5 in late.values():
        _add(writer, key5, data5, gguf.GGMLQuantizationType.F32)
        types[key5] = gguf.GGMLQuantizationType.F32
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def _add(writer, key, data, qtype):
    import gguf
    raw = quantize_q4_k(data) if qtype == gguf.GGMLQuantizationType.Q4_K else gguf.quants.quantize(data, qtype)
    writer.add_tensor(key, raw, raw_dtype=qtype)


def quantize_q4_k(data):
    """Q4_K blocks (ggml's block_q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of
    4-bit values) for float rows whose length is a multiple of 256. x ~= d * sc_j * q - dmin * m_j per 32 values, with
    a plain min/max fit per sub-block (llama.cpp searches better scales; any valid encoding decodes the same way)."""
    rows = data.astype(np.float32).reshape(-1, data.shape[-1])
    if rows.shape[-1] % 256:
        raise ValueError(f"Q4_K needs rows of a multiple of 256 values, got {rows.shape[-1]}")
    blocks = rows.reshape(-1, 8, 32)  # super-blocks of 256 = 8 sub-blocks of 32
    lo = np.minimum(blocks.min(-1), 0.0)
    hi = blocks.max(-1)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = (scale.max(-1) / 63.0).astype(np.float16)
    dmin = (mins.max(-1) / 63.0).astype(np.float16)
    df, dminf = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.round(np.divide(scale, df, out=np.zeros_like(scale), where=df > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.round(np.divide(mins, dminf, out=np.zeros_like(mins), where=dminf > 0)), 0, 63).astype(np.uint8)
    step = (df * sc)[..., None]
    q = np.divide(blocks + (dminf * m)[..., None], step, out=np.zeros_like(blocks), where=step > 0)
    q = np.clip(np.round(q), 0, 15).astype(np.uint8)
    packed = np.empty((blocks.shape[0], 12), np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 0x3F) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(blocks.shape[0], 128)  # chunk i: sub-blocks 2i (low) and 2i+1 (high)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs], axis=1)
    return out.reshape(*data.shape[:-1], -1)
