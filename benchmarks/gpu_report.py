"""The pack on a GPU machine in one command: every method at Wan 14B in bf16, fp8, fp8 under a forced lowvram
partial load and with dynamic VRAM, plus the host checks. Random weights in the official shapes (speed and memory do
not depend on their values); nothing is read from the network.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_report.py                 # GPU: all cells (about 7 minutes, H100/H200)
    python benchmarks/gpu_report.py --cpu --size tiny                  # CPU rehearsal of every cell (about 1 minute)
    python benchmarks/gpu_report.py --cells host fp8                   # some cells

Each cell runs in its own Python process with its own time limit, so a cell that fails or is cut off loses only its
own rows; its table prints as soon as it ends (rows print as they finish). Cells:
  host         gpu_host_check.py: dynamic VRAM side model, fp32 vs float64 (TF32 off), bf16 follows fp32, kitchen RoPE
  bf16         bf16 weights, full load, 81x480x832 (cond + uncond batched)
  fp8          fp8_e4m3fn weights (bf16 compute), full load, 81x480x832
  fp8-lowvram  fp8 under a forced lowvram partial load (--budget-gib of weights on the GPU): resident bytes, output
               against full load, the method's effect against full load; a shorter video (--small-frames)
  dynamic      dynamic VRAM on (comfy-aimdo initialised before anything imports comfy, as ComfyUI's main.py does),
               fp8 weights, --small-frames
Per method (unpatched, Stand-In, Lynx lite, Lynx full, Slot-ID tokens + cross-attention LoRA, Stand-In + Lynx full):
step time and overhead, the first call's extra time (the run's one-time precompute, after a small warm-up run of
methods whose kernels no earlier row ran) and how much of it is handing the side model back to the CPU, peak extra
memory over the unpatched step, and steady-state extra memory (what the method keeps allocated between steps).
Adapters in the official files' dtypes where known: Lynx bf16 (the release); Stand-In's and Slot-ID's LoRA fp32.

Needs ComfyUI (COMFYUI_PATH; 0.33+ for the dynamic cell) and the pack; benchmarks/make_gpu_bundle.py packs all of it
for a bare GPU machine (docs/testing.md, "On a GPU machine").
"""
import argparse
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = {  # name: default time limit (s); together under the device tool's 10 minutes a command
    "host": 50,
    "bf16": 180,
    "fp8": 180,
    "fp8-lowvram": 95,
    "dynamic": 85,
}
METHODS = ["unpatched", "Stand-In", "Lynx lite", "Lynx full", "Slot-ID tokens + LoRA", "Stand-In + Lynx full"]
# Methods whose kernels no earlier row ran: a small warm-up run first, so their first call is a run's cost, not the
# process's (Slot-ID runs the unpatched kernels; the stacked row, Stand-In's and Lynx full's).
WARM_UP = {"Stand-In", "Lynx lite", "Lynx full"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--cpu", action="store_true", help="rehearse on the CPU (use with --size tiny)")
    ap.add_argument("--size", default=None, choices=["tiny", "small", "1.3B", "14B"],
                    help="Wan size (default 14B on a GPU, tiny with --cpu)")
    ap.add_argument("--frames", type=int, default=None, help="frames of the bf16/fp8 cells (default 81; 5 with --cpu)")
    ap.add_argument("--small-frames", type=int, default=None,
                    help="frames of the lowvram and dynamic cells (default 21; 5 with --cpu)")
    ap.add_argument("--height", type=int, default=None, help="default 480 (64 with --cpu)")
    ap.add_argument("--width", type=int, default=None, help="default 832 (96 with --cpu)")
    ap.add_argument("--budget-gib", type=float, default=8.0, help="weights on the GPU in the lowvram cell")
    ap.add_argument("--limit-scale", type=float, default=1.0, help="multiply every cell's time limit")
    ap.add_argument("--limit", nargs="*", default=[], metavar="CELL=SECONDS", help="one cell's own time limit")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS,
                    help="rows of the method cells (unpatched always runs: the baseline)")
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell in this process
    args = ap.parse_args(argv)
    big = not args.cpu
    defaults = dict(size="14B" if big else "tiny", frames=81 if big else 5, small_frames=21 if big else 5,
                    height=480 if big else 64, width=832 if big else 96)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


# --- the parent: one process per cell ------------------------------------------------------------------------------

def cell_arguments(argv):
    """The command line without the parent's own options (--cells, --limit and their values)."""
    out, skip = [], False
    for a in argv:
        if a in ("--cells", "--limit"):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def run_cells(args, argv):
    passthrough = cell_arguments(argv)
    limits = dict(item.split("=", 1) for item in args.limit)
    summary = []
    start = time.perf_counter()
    for cell in args.cells:
        limit = float(limits[cell]) if cell in limits else CELLS[cell] * args.limit_scale * (3 if args.cpu else 1)
        cmd = [sys.executable, "-u", str(HERE / "gpu_report.py"), "--cell", cell, *passthrough]
        if cell == "host":
            cmd = [sys.executable, "-u", str(HERE / "gpu_host_check.py"), "--size", "tiny"] + \
                (["--cpu"] if args.cpu else [])
        print(f"\n## cell {cell} (limit {limit:.0f} s)\n", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        tail = []

        def pump():
            for line in proc.stdout:
                print(line, end="", flush=True)
                tail.append(line)
                del tail[:-40]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the cell and anything it started; the next cell starts clean
            proc.wait()
            status = f"CUT OFF at its {limit:.0f} s limit (rows above are complete)"
        reader.join(timeout=5)
        summary.append((cell, status, time.perf_counter() - t0))
        print(f"\n[cell {cell}: {status}, {time.perf_counter() - t0:.0f} s]", flush=True)
    print(f"\n## summary ({time.perf_counter() - start:.0f} s)\n\n| cell | result | s |\n|---|---|---|")
    for cell, status, secs in summary:
        print(f"| {cell} | {status} | {secs:.0f} |")
    return 0 if all(s == "ok" for _, s, _ in summary) else 1


# --- one cell ------------------------------------------------------------------------------------------------------

def init_dynamic_vram_first():
    """ComfyUI main.py's order: comfy_aimdo.control.init() before anything imports comfy (comfy_aimdo.host_buffer
    binds its library when imported). Returns None or the reason it is not available."""
    if "comfy" in sys.modules:
        return "comfy was imported before comfy-aimdo could be initialised"
    try:
        import comfy_aimdo.control
    except ImportError as e:
        return f"comfy-aimdo not installed ({e})"
    for kwargs in ({"simple_vram_headroom": None}, {}):
        try:
            ok = comfy_aimdo.control.init(**kwargs)
        except TypeError:
            continue
        if ok is False:  # it logs why at INFO and returns False, e.g. its pure-Python wheel without aimdo.so
            return "comfy_aimdo.control.init() failed: its native library did not load (aimdo.so missing?)"
        return None
    return "comfy_aimdo.control.init() refused every known signature"


def enable_dynamic_vram():
    """The rest of main.py's start-up on NVIDIA, after comfy is imported: init_devices, then the dynamic patcher."""
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control
    devices = mm.get_all_torch_devices() if hasattr(mm, "get_all_torch_devices") else [mm.get_torch_device()]
    try:
        ok = comfy_aimdo.control.init_devices((d.index, 0) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if not ok:
        return "comfy_aimdo.control.init_devices failed"
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return None


def import_comfy(cpu):
    """ComfyUI and the pack in-process. On the CPU rehearsal ComfyUI is told to use PyTorch's attention, the backend
    it picks on an NVIDIA GPU (on a CPU it would pick sub-quadratic attention), so the same patch paths run."""
    import wanid_testing
    if cpu and wanid_testing.COMFYUI is not None and "comfy.model_management" not in sys.modules:
        sys.path.insert(0, str(wanid_testing.COMFYUI))
        import comfy.cli_args
        comfy.cli_args.args.use_pytorch_cross_attention = True
    return wanid_testing.import_comfy(cpu=cpu)


class Cell:
    def __init__(self, args):
        import torch
        self.torch, self.args = torch, args
        self.device = "cpu" if args.cpu else "cuda"
        self.cuda = self.device == "cuda"

    # memory (CUDA; on the CPU rehearsal these read nan)
    def allocated(self):
        return self.torch.cuda.memory_allocated() / 2**30 if self.cuda else float("nan")

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self):
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


def build_model(size, device, weight_dtype, host=False):
    """A native Wan T2V ModelPatcher with random bf16-drawn weights stored as `weight_dtype` (fp8 included).
    host: the drawn weights are handed over in `weight_dtype` on the CPU, as read from a file: a dynamic-VRAM patcher
    takes the given tensors as its weights (assign), and its weights live in host memory."""
    import torch

    import comfy.sd
    from common import WAN_SIZES
    from tiny_wan import tiny_wan_shapes
    dim, ffn, layers = WAN_SIZES[size]
    g = torch.Generator(device=device).manual_seed(0)
    sd = {}
    for key, shape in tiny_wan_shapes(dim=dim, ffn=ffn, layers=layers).items():
        t = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
        if key.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            t = 1.0 + 0.1 * t  # norm gains near 1 (tests/tiny_wan.py's rules: activations stay O(1) at any depth)
        elif key.endswith(".bias"):
            t = 0.05 * t
        elif key.endswith("modulation"):
            t = t * dim ** -0.5
        else:
            t = t * math.prod(shape[1:]) ** -0.5
        sd[key] = t.to(weight_dtype).cpu() if host else t
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": weight_dtype})


def method_builders(size, device):
    """name -> function(patcher) -> (patched, positive-context transform). Weights built once, on first use."""
    import torch

    from bench_lynx import OFFICIAL_RESAMPLER, REF_LATENT
    from bench_standin import standin_weights
    from common import WAN_SIZES
    dim, _, layers = WAN_SIZES[size]
    cache = {}

    def lynx(variant):
        if variant not in cache:
            import lynx_files
            from wanid_pack.wanid.lynx.checkpoint import parse
            token_dim = dim if variant == "full" else (2048 if dim == 5120 else max(64, dim * 2 // 5))
            real = torch.randn

            def on_device(*size, generator=None, **kw):  # draws on the device: seconds, not a minute, at 14B
                return real(*size, device=device, dtype=torch.bfloat16, **kw)

            torch.randn = on_device
            try:
                parts = lynx_files.lynx_tensors(variant, dim=dim, layers=layers, token_dim=token_dim,
                                                resampler=OFFICIAL_RESAMPLER)
            finally:
                torch.randn = real
            parts = [{k: v.to("cpu", torch.bfloat16) for k, v in p.items()} for p in parts]  # the release is bf16
            cache[variant] = parse(*parts, f"random lynx_{variant} (bf16)")
        return cache[variant]

    g = torch.Generator().manual_seed(5)
    ref = torch.randn(1, 16, 1, 64, 64, generator=g)
    emb = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
    lynx_ref = tuple(torch.randn(1, 16, 1, *REF_LATENT, generator=g) for _ in range(2))
    ref_ctx = torch.zeros(1, 512, 4096)
    ref_ctx[:, :6] = torch.randn(1, 6, 4096, generator=g)

    def standin(p):
        from wanid_pack.nodes.standin_patch import apply_standin
        if "standin" not in cache:
            cache["standin"] = standin_weights(dim, layers)
        return apply_standin(p, cache["standin"], ref, 1.0)

    def apply_lynx(p, variant):
        from wanid_pack.nodes.lynx_patch import apply_lynx as apply
        return apply(p, lynx(variant), emb, lynx_ref, ref_ctx, 1.0, 1.0)

    def slot(p):
        from wanid_pack.nodes.slot_id import apply_lora
        from wanid_pack.wanid.slot.checkpoint import fresh_checkpoint
        if "slot" not in cache:
            ckpt = fresh_checkpoint(dim, layers)
            gen = torch.Generator().manual_seed(6)
            for k, v in ckpt.lora.items():
                if k.endswith("lora_up.weight"):  # trained-like: a LoRA that changes the output
                    ckpt.lora[k] = torch.randn(v.shape, generator=gen) * 0.01
            rows = torch.randn(ckpt.config.num_tokens, 4096, generator=gen) * 0.1
            cache["slot"] = (ckpt, rows)
        ckpt, rows = cache["slot"]

        def context(ctx):  # tokens prepended to the positive, zero rows to the negative (pad_negative: one batch)
            extra = torch.stack([rows, torch.zeros_like(rows)]).to(ctx)
            return torch.cat([extra, ctx], 1)
        return apply_lora(p, ckpt, 1.0), context

    return {
        "unpatched": lambda p: p,
        "Stand-In": standin,
        "Lynx lite": lambda p: apply_lynx(p, "lite"),
        "Lynx full": lambda p: apply_lynx(p, "full"),
        "Slot-ID tokens + LoRA": slot,
        "Stand-In + Lynx full": lambda p: apply_lynx(standin(p), "full"),
    }


def resident_gib(patcher, device):
    """What really sits on the device: the diffusion model's parameters and buffers whose device is `device`."""
    tensors = list(patcher.model.diffusion_model.parameters()) + list(patcher.model.diffusion_model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == device) / 2**30


def rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_cell(args):
    import torch
    torch.set_grad_enabled(False)  # as ComfyUI runs nodes; patching fp8 weights (a LoRA) needs it off
    dynamic_reason = None
    if args.cell == "dynamic":
        dynamic_reason = "no CUDA (CPU rehearsal): rows run with the legacy patcher" if args.cpu \
            else init_dynamic_vram_first()
    sys.path[:0] = [str(HERE)]
    import common  # noqa: F401  (tests/ and the repo on sys.path)
    import wanid_testing
    import_comfy(args.cpu)
    import comfy.model_management as mm
    import comfy.patcher_extension
    from tiny_wan import sampler_options
    if args.cell == "dynamic" and dynamic_reason is None:
        dynamic_reason = enable_dynamic_vram()
    cell = Cell(args)
    from wanid_pack.nodes import hooks
    offload_times, hand_back = [], hooks.offload_side_model

    def timed_offload(patcher):  # what the first call waits on besides arithmetic: handing the side model back
        seconds, _ = cell.timed(lambda: hand_back(patcher))
        offload_times.append(seconds)

    hooks.offload_side_model = timed_offload
    if cell.cuda and not torch.cuda.is_available():
        sys.exit("gpu_report: no CUDA device here; rehearse with --cpu --size tiny")
    weight_dtype = torch.bfloat16 if args.cell == "bf16" else torch.float8_e4m3fn
    frames = args.frames if args.cell in ("bf16", "fp8") else args.small_frames
    lat = (1 + (frames - 1) // 4, args.height // 8, args.width // 8)
    print(f"machine: {common.machine()}; ComfyUI {wanid_testing.COMFYUI_VERSION}; Wan {args.size}, weights "
          f"{str(weight_dtype).replace('torch.', '')}, compute bf16; latent {lat[0]}x{lat[1]}x{lat[2]} "
          f"({frames} frames at {args.width}x{args.height}), cond + uncond batched")
    if args.cell == "dynamic":
        print(f"dynamic VRAM: {'ON' if dynamic_reason is None else 'OFF: ' + dynamic_reason}")
    t0 = time.perf_counter()
    base = build_model(args.size, cell.device, weight_dtype, host=args.cell == "dynamic")
    print(f"model built in {time.perf_counter() - t0:.1f} s; patcher {type(base).__name__}")
    builders = method_builders(args.size, cell.device)
    g = torch.Generator(device=cell.device).manual_seed(2)
    x = torch.randn(2, 16, *lat, generator=g, device=cell.device, dtype=torch.bfloat16)
    t = torch.full((2,), 500.0, device=cell.device)
    ctx = torch.randn(2, 512, 4096, generator=g, device=cell.device, dtype=torch.bfloat16) * 0.1
    lowvram = args.cell == "fp8-lowvram"

    def load(patcher):
        models = [patcher] + patcher.get_nested_additional_models()
        if not lowvram:
            mm.load_models_gpu(models)
            return
        mm.unload_all_models()
        if cell.cuda:  # leave only the budget free for weights: ComfyUI then loads the model partially
            saved = mm.EXTRA_RESERVED_VRAM
            free = mm.get_free_memory(mm.get_torch_device())
            mm.EXTRA_RESERVED_VRAM = max(0, int(free - args.budget_gib * 2**30))
            try:
                mm.load_models_gpu(models)
            finally:
                mm.EXTRA_RESERVED_VRAM = saved
        else:  # the CPU has no VRAM budget: force ComfyUI's lowvram path the way tests/test_standin.py does
            patcher.load(mm.get_torch_device(), lowvram_model_memory=1, full_load=False)
            mm.load_models_gpu(models[1:]) if models[1:] else None

    def new_run(patcher):
        for cb in patcher.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN):
            cb(patcher)
        options = sampler_options(patcher)

        def call(context, latent=None):
            with torch.no_grad():
                return patcher.model.diffusion_model(x if latent is None else latent, t, context,
                                                     transformer_options=options)
        return call

    header = ("| method | step (s) | overhead | first call extra (s) | of which side-model offload (s) "
              "| first extra / step | peak extra GiB "
              "| steady extra GiB |")
    if lowvram:
        header += " resident GiB (of model) | vs full load (rel err) | effect vs full load (rel err) |"
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1), flush=True)
    full_outputs = {}
    unpatched = {}
    failed = 0
    for name in [m for m in METHODS if m in args.methods or m == "unpatched"]:  # the baseline always
        try:
            made = builders[name](base)
            patched, context = made if isinstance(made, tuple) else (made, None)
            c = context(ctx) if context else ctx
            if lowvram:  # full-load output of this method first (the run's first call: precompute included)
                mm.load_models_gpu([patched] + patched.get_nested_additional_models())
                full_outputs[name] = new_run(patched)(c).float().cpu()
            load(patched)
            if name == "unpatched":
                new_run(patched)(c)  # warm-up: the process's first kernels, not a method's cost
            elif name in WARM_UP:  # a small run first: this method's first kernels are a process's cost
                new_run(patched)(c, x[:, :, :1, :16, :16])
                load(patched)
            cell.sync()
            offloads = len(offload_times)
            before = cell.allocated()
            call = new_run(patched)
            cell.reset_peak()
            first, out_first = cell.timed(lambda: call(c))
            steady = cell.allocated() - before
            cell.reset_peak()
            step, _ = cell.timed(lambda: call(c))
            peak = cell.peak() - before
            if name == "unpatched":
                unpatched.update(step=step, peak=peak, steady=steady)
                base_out = out_first.float().cpu()
            offload = sum(offload_times[offloads:])
            row = (f"| {name} | {step:.3f} | {100 * (step / unpatched['step'] - 1):+.1f}% | "
                   f"{first - step:+.3f} | {offload:.3f} | {(first - step) / step:.2f} | "
                   f"{peak - unpatched['peak']:+.2f} | {steady - unpatched['steady']:+.2f} |")
            if lowvram:
                res = resident_gib(patched, mm.get_torch_device().type)
                total = patched.model_size() / 2**30
                got = out_first.float().cpu()
                eq = rel(got, full_outputs[name])
                if name == "unpatched":
                    effect = "-"
                else:
                    effect = f"{rel(got - base_out, full_outputs[name] - full_outputs['unpatched']):.1e}"
                row += f" {res:.3f} of {total:.3f} | {eq:.1e} | {effect} |"
            print(row, flush=True)
            del patched, call, out_first
        except Exception as e:  # a method that fails is a row; the others still run
            import traceback
            traceback.print_exc()
            print(f"| {name} | FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]} |", flush=True)
            failed += 1
        mm.unload_all_models()
        mm.soft_empty_cache()
    return 1 if failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.cell:
        return run_cell(args)
    return run_cells(args, argv)


if __name__ == "__main__":
    sys.exit(main())
