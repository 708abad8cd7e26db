"""Stand-In overhead on ComfyUI's native Wan: per-step time patched vs unpatched, the one-time reference
precompute, and (on CUDA) peak memory. Random weights: speed does not depend on their values.

    python benchmarks/bench_standin.py                 # CPU: tiny and small models
    python benchmarks/bench_standin.py --sizes 1.3B 14B --frames 81 --height 480 --width 832   # on a GPU
    python benchmarks/bench_standin.py --attention --heads 4 --frames 21 --height 480 --width 832   # attention paths

--attention times one block's self-attention alone, three ways: unpatched, Stand-In by the log-sum-exp merge (what
runs where the host's attention is PyTorch SDPA) and Stand-In by concatenating [video; reference] K/V (every other
backend), with what each holds beyond its inputs and how many video-sized copies it makes (tests/op_counts.py).

Needs ComfyUI (COMFYUI_PATH or ~/ComfyUI). Prints a markdown table naming the machine.
"""
import argparse
import statistics

import torch

from common import (WAN_SIZES as SIZES, build_wan, free_models, machine, peak_gib, prepared_call,  # noqa: E402
                    step_inputs, timed)


def standin_weights(dim, layers, rank=128):
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    g = torch.Generator().manual_seed(1)
    sd = {f"blocks.{i}.self_attn.{p}_loras.{part}.weight":
          torch.randn((rank, dim) if part == "down" else (dim, rank), generator=g) * 0.01
          for i in range(layers) for p in "qkv" for part in ("down", "up")}
    return parse_state_dict(sd, "random")


def time_reference_builds(patched, device):
    """A list that fills with the time of each block's reference K/V build (the one-time precompute)."""
    import comfy.patcher_extension
    from wanid_pack.nodes.standin_patch import KEY
    patch = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, KEY)[0].__self__
    spent, build = [], patch.reference_kv

    def timed_build(i):
        if i in patch.run.kv:
            return build(i)
        out = []
        spent.append(timed(lambda: out.append(build(i)), device))
        return out[0]

    patch.reference_kv = timed_build
    return spent


def attention_paths(args, device, dtype):
    """One block's self-attention at this grid: unpatched vs the merged and the concatenating Stand-In paths."""
    import op_counts
    from wanid.standin.reference_branch import attend_merged, attend_with_reference
    heads, d = args.heads, 128
    n = (1 + (args.frames - 1) // 4) * (args.height // 16) * (args.width // 16)
    n_ref = 1024  # a 64x64 reference latent
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, n, heads * d, generator=g, device=device, dtype=dtype) for _ in range(3))
    k_ref, v_ref = (torch.randn(1, n_ref, heads * d, generator=g, device=device, dtype=dtype) for _ in range(2))

    def sdpa(q_, k_, v_, heads, **kw):
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
        return torch.nn.functional.scaled_dot_product_attention(split(q_), split(k_), split(v_)) \
            .transpose(1, 2).reshape(q_.shape[0], -1, heads * d)

    paths = {"unpatched": lambda: sdpa(q, k, v, heads),
             "Stand-In, log-sum-exp merge": lambda: attend_merged(q, k, v, k_ref, v_ref, heads),
             "Stand-In, concatenated K/V": lambda: attend_with_reference(sdpa, q, k, v, k_ref, v_ref, heads)}
    rows = {}
    for name, fn in paths.items():
        with op_counts.OpCounts() as c:
            fn()
        times = [timed(fn, device) for _ in range(args.steps)]
        video_kv = k.numel() * k.element_size()
        copies = sum(1 for a in c.allocations(min_bytes=video_kv, op="aten.cat"))
        rows[name] = (statistics.median(times), c.peak_bytes / 2**20, copies, c.syncs)
    base = rows["unpatched"]
    print(f"Self-attention of one block on {machine()} ({str(dtype).replace('torch.', '')}, batch 2, {heads} heads "
          f"x 128, {n} video keys + {n_ref} reference keys, median of {args.steps})\n")
    print("| path | time (s) | vs unpatched | held beyond inputs (MiB) | extra held (MiB) | video-sized copies "
          "| host syncs |\n|---|---|---|---|---|---|---|")
    for name, (sec, mib, copies, syncs) in rows.items():
        print(f"| {name} | {sec:.4f} | {100 * (sec / base[0] - 1):+.1f}% | {mib:.1f} | {mib - base[1]:+.1f} | "
              f"{copies} | {syncs} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=9, help="video frames (latent T = (frames-1)//4+1)")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    ap.add_argument("--attention", action="store_true", help="only one block's self-attention, by each path")
    ap.add_argument("--heads", type=int, default=40, help="with --attention: heads of 128 (40 = 14B)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.attention:
        return attention_paths(args, device, dtype)
    lat = (1 + (args.frames - 1) // 4, args.height // 8, args.width // 8)

    rows = []
    for size in args.sizes:
        patcher = build_wan(size, device, dtype)
        dim, _, layers = SIZES[size]
        from wanid_pack.nodes.standin_patch import apply_standin
        x, t, ctx, g = step_inputs(lat, device, dtype)
        ref = torch.randn(1, 16, 1, 64, 64, generator=g, device=device)
        patched = apply_standin(patcher, standin_weights(dim, layers), ref, 1.0)
        base, with_ref = prepared_call(patcher), prepared_call(patched)
        timed(lambda: base(x, t, ctx), device)  # warm-up
        build = time_reference_builds(patched, device)
        timed(lambda: with_ref(x, t, ctx), device)  # the run's first call builds every block's reference K/V
        precompute = sum(build)
        base_times, times = [], []
        for _ in range(args.steps):  # interleaved, so drift in machine load hits both alike
            base_times.append(timed(lambda: base(x, t, ctx), device))
            times.append(timed(lambda: with_ref(x, t, ctx), device))
        base_peak, peak = peak_gib(lambda: base(x, t, ctx), device), peak_gib(lambda: with_ref(x, t, ctx), device)
        base_step, step = statistics.median(base_times), statistics.median(times)
        rows.append((size, f"{lat[0]}x{lat[1]}x{lat[2]}", base_step, step, precompute, base_peak, peak))
        del patched, patcher
        free_models()

    print(f"Stand-In overhead on {machine()} ({str(dtype).replace('torch.', '')}, batch 2 = cond + uncond)\n")
    print("| model | latent TxHxW | step unpatched (s) | step patched (s) | overhead | precompute (s) "
          "| precompute / step | peak GiB unpatched | peak GiB patched |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, grid, b, p, pre, bpk, ppk in rows:
        print(f"| {size} | {grid} | {b:.4f} | {p:.4f} | {100 * (p / b - 1):+.1f}% | {pre:.4f} | "
              f"{100 * pre / p:.1f}% | {bpk:.2f} | {ppk:.2f} |")


if __name__ == "__main__":
    main()
