"""GPU check of the host paths the CPU tests can only monkeypatch (tests/test_standin_host.py): run it on a machine
with an NVIDIA GPU, against ComfyUI 0.33+ installed with its requirements (comfy-aimdo, comfy-kitchen).

    COMFYUI_PATH=~/ComfyUI-0.33.0 python benchmarks/gpu_host_check.py [--size tiny|small|1.3B] [--cpu]

It turns dynamic VRAM on the way ComfyUI's main.py does (comfy_aimdo.control.init() before anything imports comfy:
comfy_aimdo.host_buffer binds its library when imported; then init_devices, CoreModelPatcher =
ModelPatcherDynamic, aimdo_enabled), then checks, each as one table row (PASS / FAIL / SKIP with the reason):
  1. the Stand-In LoRA side model is a ModelPatcherDynamic whose layers received the file's weights by assignment;
  2. a patched model call on the GPU (comfy-kitchen RoPE, fp32, TF32 off: ComfyUI leaves cuDNN TF32 on, and Wan's
     patch embedding is a Conv3d) equals the float64 reference (rel err < 1e-4);
  3. the same in bf16 follows fp32 (rel err < 5e-2), with the kitchen kernel counted (its own fp32 run if row 2
     failed);
  4. with two or more GPUs: deepclone_multigpu of the patched model (own patch and LoRA) on cuda:1 matches cuda:0.
--cpu rehearses every row on the CPU (no dynamic VRAM, no second GPU: those rows SKIP). benchmarks/gpu_report.py
runs this as its "host" cell.
Exit code 0 only if nothing failed. Loads nothing from the network; weights are random.
"""
import argparse
import sys
import time
import traceback

import torch

from common import REPO, machine  # noqa: F401  (puts tests/ and the repo on sys.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "1.3B"])
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU")
    opts = parser.parse_args()
    if not opts.cpu and not torch.cuda.is_available():
        sys.exit("gpu_host_check: no CUDA device here; run it on a GPU machine, or rehearse with --cpu")
    from gpu_report import enable_dynamic_vram, import_comfy, init_dynamic_vram_first
    reason = "CPU rehearsal" if opts.cpu else init_dynamic_vram_first()  # before anything imports comfy
    import_comfy(opts.cpu)
    import comfy.model_management as mm
    import standin_reference
    import tiny_wan
    from standin_files import standin_state_dict
    from wanid_testing import rel_err as rel
    from wanid_pack.nodes import standin_patch
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict

    rows = []

    def row(name, fn):
        t0 = time.perf_counter()
        try:
            verdict = fn() or "PASS"
        except Exception as e:  # a check that breaks is a FAIL row, the others still run
            traceback.print_exc()
            verdict = f"FAIL: {type(e).__name__}: {e}"
        rows.append((name, verdict, time.perf_counter() - t0))

    if reason is None:
        reason = enable_dynamic_vram()
    dims = {"tiny": (128, 256, 2), "small": (512, 1536, 8), "1.3B": (1536, 8960, 30)}[opts.size]
    dim, ffn, layers = dims
    sd = tiny_wan.tiny_wan_state_dict(dim=dim, ffn=ffn, layers=layers, seed=3)
    base = tiny_wan.load_tiny_wan_patcher("fp32", dim=dim, ffn=ffn, layers=layers, seed=3)
    lora_sd = standin_state_dict(layers=layers, dim=dim)
    weights = parse_state_dict(lora_sd)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 12, generator=g)
    t = torch.rand(1, generator=g) * 1000
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :7] = torch.randn(1, 7, 4096, generator=g)
    ref = torch.randn(1, 16, 1, 8, 12, generator=g)
    dev = mm.get_torch_device()
    state = {}

    def dynamic_side_model():
        if reason:
            return f"SKIP: dynamic VRAM not enabled: {reason}"
        patched = standin_patch.apply_standin(base, weights, ref, 1.0)
        lora = patched.get_additional_models_with_key(standin_patch.KEY)[0]
        assert lora.is_dynamic(), f"LoRA patcher is {type(lora).__name__}, not dynamic"
        state["patched"] = patched

    def fp32_run():
        # exactness needs true fp32: ComfyUI leaves TF32 on (cuDNN convolutions, matmuls where enabled)
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            patched = state.get("patched") or standin_patch.apply_standin(base, weights, ref, 1.0)
            return tiny_wan.diffusion_call(patched, x.to(dev), t.to(dev), ctx.to(dev))
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def fp32_vs_reference():
        got = fp32_run()
        expected = standin_reference.forward(sd, x, t, ctx, layers, ref=ref, lora=lora_sd)
        err = rel(got, expected)
        assert err < 1e-4, f"rel err {err:.2e}"
        state["fp32"] = got
        return f"PASS (rel err {err:.1e}, TF32 off)"

    def bf16_follows():
        calls = []
        quant_ops = sys.modules.get("comfy.quant_ops")
        kitchen = getattr(getattr(quant_ops, "ck", None), "apply_rope1", None)
        if kitchen is None:
            return "SKIP: this ComfyUI has no comfy-kitchen RoPE (comfy.quant_ops.ck.apply_rope1)"

        def counted(a, f):
            calls.append(a.dtype)
            return kitchen(a, f)

        quant_ops.ck.apply_rope1 = counted
        try:
            bf = tiny_wan.load_tiny_wan_patcher(torch.bfloat16, dim=dim, ffn=ffn, layers=layers, seed=3)
            got = tiny_wan.diffusion_call(standin_patch.apply_standin(bf, weights, ref, 1.0),
                                          x.to(dev, torch.bfloat16), t.to(dev), ctx.to(dev, torch.bfloat16))
        finally:
            quant_ops.ck.apply_rope1 = kitchen
        assert torch.bfloat16 in calls, "the kitchen RoPE kernel did not run in bf16"
        err = rel(got, state["fp32"] if "fp32" in state else fp32_run())
        assert err < 5e-2, f"bf16 vs fp32 rel err {err:.2e}"
        return f"PASS (rel err {err:.1e}, {len(calls)} kitchen RoPE calls)"

    def multigpu():
        if torch.cuda.device_count() < 2:
            return "SKIP: one GPU"
        import tempfile
        import comfy.sd
        path = tiny_wan.write_tiny_wan(tempfile.mkdtemp() + "/tiny.safetensors", dim=dim, ffn=ffn, layers=layers,
                                       seed=3)
        loaded = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float32})
        patched = standin_patch.apply_standin(loaded, weights, ref, 1.0)
        clone = patched.deepclone_multigpu(new_load_device=torch.device("cuda", 1))
        a = tiny_wan.diffusion_call(patched, x.to(dev), t.to(dev), ctx.to(dev))
        b = tiny_wan.diffusion_call(clone, x.to("cuda:1"), t.to("cuda:1"), ctx.to("cuda:1"))
        err = rel(b, a)
        assert err < 1e-5, f"cuda:1 vs cuda:0 rel err {err:.2e}"

    row("dynamic VRAM: LoRA side model is ModelPatcherDynamic", dynamic_side_model)
    row("fp32 (kitchen RoPE, TF32 off) vs float64 reference", fp32_vs_reference)
    row("bf16 follows fp32, kitchen RoPE in bf16", bf16_follows)
    row("multi-GPU deepclone matches", multigpu)

    print(f"\nStand-In host check, {machine()}, Wan size {opts.size}\n")
    print("| check | result | s |\n|---|---|---|")
    for name, verdict, secs in rows:
        print(f"| {name} | {verdict} | {secs:.2f} |")
    sys.exit(1 if any(v.startswith("FAIL") for _, v, _ in rows) else 0)


if __name__ == "__main__":
    main()
