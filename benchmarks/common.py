"""What the benchmark scripts share: the machine's name and random-weight native Wan models of real sizes."""
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from tiny_wan import sampler_options  # noqa: E402

WAN_SIZES = {  # name: (dim, ffn, layers)
    "tiny": (128, 256, 2),
    "small": (512, 1536, 8),
    "1.3B": (1536, 8960, 30),
    "14B": (5120, 13824, 40),
}


def machine():
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}"


def build_wan(size, device, dtype):
    """A native ComfyUI Wan 2.1 T2V ModelPatcher of that size with random weights (speed does not depend on them).
    Imports ComfyUI (COMFYUI_PATH or ~/ComfyUI) on the way."""
    import wanid_testing
    wanid_testing.import_comfy(cpu=device != "cuda")
    import comfy.model_management
    import comfy.sd
    if comfy.model_management.get_torch_device().type != device:
        raise RuntimeError(f"ComfyUI runs on {comfy.model_management.get_torch_device()}, not {device}")
    from tiny_wan import tiny_wan_shapes
    dim, ffn, layers = WAN_SIZES[size]
    g = torch.Generator(device=device).manual_seed(0)
    sd = {}
    for key, shape in tiny_wan_shapes(dim=dim, ffn=ffn, layers=layers).items():
        t = torch.randn(shape, generator=g, device=device, dtype=dtype)
        sd[key] = t * (0.05 if key.endswith("bias") else (1.0 if "norm" in key else shape[-1] ** -0.5))
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    del sd
    return patcher


def prepared_call(patcher):
    """A function making one diffusion-model call the way a sampler does (models loaded, hooks in options)."""
    import comfy.model_management
    import comfy.patcher_extension
    comfy.model_management.load_models_gpu([patcher] + patcher.get_nested_additional_models())
    options = sampler_options(patcher)
    for cb in patcher.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN):
        cb(patcher)  # a new run: the first call builds the reference K/V

    def run(x, t, ctx):
        with torch.no_grad():
            return patcher.model.diffusion_model(x, t, ctx, transformer_options=options)
    return run


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_gib(fn, device):
    if device != "cuda":
        return float("nan")
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 2**30


def step_inputs(lat, device, dtype):
    """One sampler step's inputs at latent grid `lat` (T, H, W): x, t and text context, positive + negative batched."""
    g = torch.Generator(device=device).manual_seed(2)
    x = torch.randn(2, 16, *lat, generator=g, device=device, dtype=dtype)
    t = torch.full((2,), 500.0, device=device)
    ctx = torch.randn(2, 512, 4096, generator=g, device=device, dtype=dtype)
    return x, t, ctx, g


def free_models():
    """Between two model sizes: ComfyUI unloads and empties its cache as it does between prompts."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
