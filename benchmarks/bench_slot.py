"""Slot-ID speed: SlotEncoder forward for a 16-frame clip (goal < 20 ms on a GPU), and one sampling step of the
native ComfyUI Wan model with the identity tokens vs without (padded negative: one batched call; unpadded: two).
Random weights: speed does not depend on their values.

    python benchmarks/bench_slot.py                                   # CPU: encoder + tiny/small DiT
    python benchmarks/bench_slot.py --sizes 1.3B 14B --frames 81 --height 480 --width 832 --dtype bf16   # GPU

The encoder part needs only torch; the step part needs ComfyUI (COMFYUI_PATH or ~/ComfyUI).
Prints markdown tables naming the machine (copy them into docs/bench-slot.md).
"""
import argparse
import statistics
import time

import torch

from common import WAN_SIZES as SIZES, build_wan, machine  # noqa: E402
from tiny_wan import sampler_options  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_encoder(device, dtype, frames, repeats):
    from wanid.slot.encoder import SlotEncoder, SlotIDConfig
    from wanid.slot.sinkhorn import frame_token_marginals

    cfg = SlotIDConfig()
    torch.manual_seed(0)
    enc = SlotEncoder(cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        enc.gate.fill_(0.5)
    e = torch.nn.functional.normalize(torch.randn(1, frames, 512, device=device), dim=-1).to(dtype)
    lm = torch.rand(1, frames, 5, 2, device=device, dtype=dtype)
    times = torch.linspace(0, 1, frames, device=device)[None]
    valid = torch.ones(1, frames, dtype=torch.bool, device=device)
    lat = torch.randn(1, frames, cfg.latent_channels, 64, 64, device=device, dtype=dtype)
    anchor = torch.zeros(1, dtype=torch.long, device=device)

    def full():
        with torch.no_grad():
            enc(e, lm, times, valid, anchor, lat)

    def tokenizer():
        with torch.no_grad():
            enc.tokenizer(e, lm, times, lat)

    with torch.no_grad():
        tokens = enc.tokenizer(e, lm, times, lat)
    log_b = frame_token_marginals(valid, cfg.tokens_per_frame).to(device)

    def reader():
        with torch.no_grad():
            enc.reader(tokens, log_b)

    rows = [("SlotEncoder forward (all)", timed(full, device, repeats)),
            ("  frame tokenizer", timed(tokenizer, device, repeats)),
            ("  slot reader (3 rounds x 20 Sinkhorn iterations)", timed(reader, device, repeats))]
    params = sum(p.numel() for p in enc.parameters())
    return rows, params, cfg


def bench_step(size, device, dtype, frames, height, width, repeats, extra_tokens):
    patcher = build_wan(size, device, dtype)  # imports ComfyUI first
    import comfy.model_management
    comfy.model_management.load_models_gpu([patcher])
    options = sampler_options(patcher)
    dm = patcher.model.diffusion_model
    lt = (frames - 1) // 4 + 1
    x = torch.randn(2, 16, lt, height // 8, width // 8, device=device, dtype=dtype)
    t = torch.full((2,), 500.0, device=device)
    ctx = torch.randn(2, 512, 4096, device=device, dtype=dtype)
    ctx_tok = torch.randn(2, 512 + extra_tokens, 4096, device=device, dtype=dtype)

    def call(xx, tt, cc):
        with torch.no_grad():
            dm(xx, tt, cc, transformer_options=options)

    rows = {
        "without tokens (batched)": lambda: call(x, t, ctx),
        "with tokens, negative padded (batched)": lambda: call(x, t, ctx_tok),
        "with tokens, not padded (2 calls)": lambda: (call(x[:1], t[:1], ctx_tok[:1]), call(x[1:], t[1:], ctx[1:])),
    }
    # interleave the variants so background load hits them alike
    results = {k: [] for k in rows}
    for k, fn in rows.items():
        fn()  # warm-up
    for _ in range(repeats):
        for k, fn in rows.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            results[k].append(time.perf_counter() - t0)
    del patcher
    comfy.model_management.unload_all_models()
    return {k: statistics.median(v) for k, v in results.items()}, (lt, height // 8, width // 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=["tiny", "small"], choices=list(SIZES))
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--clip-frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-step", action="store_true", help="only the encoder")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (on a shared, loaded CPU, 1 thread avoids waiting on descheduled workers)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    print(f"machine: {machine()}; dtype {dtype}; {torch.get_num_threads()} CPU threads; "
          f"{time.strftime('%Y-%m-%d')}\n")

    rows, params, cfg = bench_encoder(device, dtype, args.clip_frames, max(args.repeats, 10))
    print(f"SlotEncoder, default config (D={cfg.dim}, {args.clip_frames} frames x {cfg.tokens_per_frame} tokens, "
          f"S={cfg.num_slots}, A={cfg.anchor_tokens}, {params / 1e6:.1f}M parameters); median of "
          f"{max(args.repeats, 10)} runs\n")
    print("| part | time (ms) |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1e3:.2f} |")
    print()
    if args.no_step:
        return
    extra = cfg.num_tokens
    print(f"One sampling step (positive + negative), {extra} identity tokens, latent from {args.frames} frames at "
          f"{args.width}x{args.height}; median of {args.repeats}, variants interleaved\n")
    print("| model | latent TxHxW | without tokens (s) | tokens, padded negative (s) | tokens, unpadded (s) | "
          "padded vs without | unpadded vs without |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        res, grid = bench_step(size, device, dtype, args.frames, args.height, args.width, args.repeats, extra)
        base = res["without tokens (batched)"]
        pad = res["with tokens, negative padded (batched)"]
        nopad = res["with tokens, not padded (2 calls)"]
        dim, _, layers = SIZES[size]
        print(f"| {size} (dim {dim}, {layers} blocks) | {'x'.join(map(str, grid))} | {base:.4f} | {pad:.4f} | "
              f"{nopad:.4f} | {100 * (pad / base - 1):+.1f}% | {100 * (nopad / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
