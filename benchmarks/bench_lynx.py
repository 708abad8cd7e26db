"""Lynx overhead on ComfyUI's native Wan: per-step time unpatched vs lynx_lite vs lynx_full, side by side in one run
(interleaved), the one-time precompute of each (tokens, ID K/V, the reference pass and Ref K/V, built on the run's
first call), and on CUDA the peak memory. Random weights in the official shapes: speed does not depend on values.

    python benchmarks/bench_lynx.py                    # CPU: tiny and small models (docs/bench-lynx.md)
    python benchmarks/bench_lynx.py --gpu              # GPU: Wan 2.1 14B, 81 frames at 480x832, bf16

--gpu refuses to run without CUDA (a 14B table timed on a CPU would be meaningless). Needs ComfyUI (COMFYUI_PATH
or ~/ComfyUI). Prints a markdown table naming the machine.
"""
import argparse
import statistics
import sys

import torch

from common import (WAN_SIZES as SIZES, build_wan, free_models, machine, peak_gib, prepared_call,  # noqa: E402
                    step_inputs, timed)

OFFICIAL_RESAMPLER = dict(dim=1280, depth=4, heads=20)  # ByteDance/lynx resampler.safetensors
REF_LATENT = (32, 32)  # the 256x256 reference crop through the Wan VAE (8x)


def lynx_weights(variant, dim, layers):
    """LynxWeights of the official layout at this model size (lite tokens 2048 wide at 14B, 2/5 of dim below)."""
    import lynx_files
    from wanid_pack.wanid.lynx.checkpoint import parse
    token_dim = dim if variant == "full" else (2048 if dim == 5120 else max(64, dim * 2 // 5))
    resampler, ip, ref = lynx_files.lynx_tensors(variant, dim=dim, layers=layers, token_dim=token_dim,
                                                 resampler=OFFICIAL_RESAMPLER)
    return parse(resampler, ip, ref, f"random lynx_{variant}")


def time_precompute(patched, device):
    """A list that fills with the time of each run's one-time build (LynxPatch._build when it builds)."""
    import comfy.patcher_extension
    from wanid_pack.nodes.lynx_patch import KEY
    patch = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY)[0].__self__
    spent, build = [], patch._build

    def timed_build(model, x):
        before = patch.run.key
        seconds = timed(lambda: build(model, x), device)
        if patch.run.key != before:
            spent.append(seconds)

    patch._build = timed_build
    return spent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="the 14B table: --sizes 14B --frames 81 --height 480 "
                                                       "--width 832, bf16; refuses to run without CUDA")
    ap.add_argument("--sizes", nargs="+", default=None, choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=None, help="video frames (latent T = (frames-1)//4+1)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.gpu and device != "cuda":
        print("error: --gpu times Wan 2.1 14B on CUDA, and no CUDA device is visible here (torch "
              f"{torch.__version__}, cuda available: False). Run it on a GPU machine, or drop --gpu for the CPU "
              "table (tiny and small models).", file=sys.stderr)
        return 2
    defaults = (["14B"], 81, 480, 832) if args.gpu else (["tiny", "small"], 9, 128, 224)
    sizes, frames, height, width = (v if v is not None else d for v, d in
                                    zip((args.sizes, args.frames, args.height, args.width), defaults))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lat = (1 + (frames - 1) // 4, height // 8, width // 8)

    rows = []
    for size in sizes:
        patcher = build_wan(size, device, dtype)
        dim, _, layers = SIZES[size]
        from wanid_pack.nodes.lynx_patch import apply_lynx
        x, t, ctx, _ = step_inputs(lat, device, dtype)
        emb = torch.nn.functional.normalize(torch.randn(512), dim=0)
        ref = tuple(torch.randn(1, 16, 1, *REF_LATENT) for _ in range(2))
        ref_ctx = torch.zeros(1, 512, 4096)
        ref_ctx[:, :6] = torch.randn(1, 6, 4096)
        calls, builds = {"unpatched": prepared_call(patcher)}, {}
        calls["unpatched"](x, t, ctx)  # warm-up
        for variant in ("lite", "full"):
            patched = apply_lynx(patcher, lynx_weights(variant, dim, layers), emb, ref, ref_ctx, 1.0, 1.0)
            prepared_call(patched)(x, t, ctx)  # a warm-up run (first use of the side model and its casts)
            calls[variant] = prepared_call(patched)  # a new run (ON_PRE_RUN): its first call builds everything
            builds[variant] = time_precompute(patched, device)
            calls[variant](x, t, ctx)  # ... once, timed inside
        times = {k: [] for k in calls}
        for _ in range(args.steps):  # interleaved, so drift in machine load hits all three alike
            for k, call in calls.items():
                times[k].append(timed(lambda: call(x, t, ctx), device))
        step = {k: statistics.median(v) for k, v in times.items()}
        peak = {k: peak_gib(lambda: call(x, t, ctx), device) for k, call in calls.items()}
        rows.append((size, dim, layers, f"{lat[0]}x{lat[1]}x{lat[2]}", step,
                     {k: sum(v) for k, v in builds.items()}, peak))
        del calls, patcher
        free_models()

    print(f"Lynx overhead on {machine()} ({str(dtype).replace('torch.', '')}, batch 2 = cond + uncond, reference "
          f"latent {REF_LATENT[0]}x{REF_LATENT[1]}, median of {args.steps} interleaved steps)\n")
    print("| model | latent TxHxW | step unpatched (s) | step lite (s) | lite overhead | step full (s) "
          "| full overhead | precompute lite (s) | precompute full (s) | precompute full / step "
          "| peak GiB unpatched / lite / full |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, dim, layers, grid, s, pre, pk in rows:
        print(f"| {size} (dim {dim}, {layers} blocks) | {grid} | {s['unpatched']:.4f} | {s['lite']:.4f} | "
              f"{100 * (s['lite'] / s['unpatched'] - 1):+.1f}% | {s['full']:.4f} | "
              f"{100 * (s['full'] / s['unpatched'] - 1):+.1f}% | {pre['lite']:.4f} | {pre['full']:.4f} | "
              f"{pre['full'] / s['full']:.1f} steps | {pk['unpatched']:.2f} / {pk['lite']:.2f} / {pk['full']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
