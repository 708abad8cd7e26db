"""GPU check of the host paths the CPU tests can only monkeypatch (tests/test_standin_host.py): run it on a machine
with an NVIDIA GPU, against ComfyUI 0.33+ installed with its requirements (comfy-aimdo, comfy-kitchen).

    COMFYUI_PATH=~/ComfyUI-0.33.0 python benchmarks/gpu_host_check.py [--size tiny|small|1.3B]

It turns dynamic VRAM on the way ComfyUI's main.py does (comfy_aimdo init, CoreModelPatcher = ModelPatcherDynamic,
aimdo_enabled), then checks, each as one table row (PASS / FAIL / SKIP with the reason):
  1. the Stand-In LoRA side model is a ModelPatcherDynamic whose layers received the file's weights by assignment;
  2. a patched model call on the GPU (comfy-kitchen RoPE, fp32) equals the float64 reference (rel err < 1e-4);
  3. the same in bf16 follows fp32 (rel err < 5e-2), with the kitchen kernel counted;
  4. with two or more GPUs: deepclone_multigpu of the patched model (own patch and LoRA) on cuda:1 matches cuda:0.
Exit code 0 only if nothing failed. Loads nothing from the network; weights are random.
"""
import argparse
import sys
import time
import traceback

import torch

from common import REPO, machine  # noqa: F401  (puts tests/ and the repo on sys.path)


def enable_dynamic_vram():
    """What ComfyUI's main.py does at start-up on NVIDIA (0.33): returns a reason string if it cannot."""
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    try:
        import comfy_aimdo.control
    except ImportError as e:
        return f"comfy-aimdo not installed ({e})"
    try:
        comfy_aimdo.control.init()
    except TypeError:
        comfy_aimdo.control.init(simple_vram_headroom=0)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "1.3B"])
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_host_check: no CUDA device here; run it on a GPU machine (the CPU tests cover the rest)")
    import wanid_testing
    wanid_testing.import_comfy(cpu=False)
    import comfy.model_management as mm
    import comfy.quant_ops
    import standin_reference
    import tiny_wan
    from test_standin import standin_state_dict
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
    rel = lambda a, b: ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()  # noqa: E731
    state = {}

    def dynamic_side_model():
        if reason:
            return f"SKIP: dynamic VRAM not enabled: {reason}"
        patched = standin_patch.apply_standin(base, weights, ref, 1.0)
        lora = patched.get_additional_models_with_key(standin_patch.KEY)[0]
        assert lora.is_dynamic(), f"LoRA patcher is {type(lora).__name__}, not dynamic"
        state["patched"] = patched

    def fp32_vs_reference():
        patched = state.get("patched") or standin_patch.apply_standin(base, weights, ref, 1.0)
        got = tiny_wan.diffusion_call(patched, x.to(dev), t.to(dev), ctx.to(dev))
        expected = standin_reference.forward(sd, x, t, ctx, layers, ref=ref, lora=lora_sd)
        err = rel(got, expected)
        assert err < 1e-4, f"rel err {err:.2e}"
        state["fp32"] = got
        return f"PASS (rel err {err:.1e})"

    def bf16_follows():
        calls = []
        kitchen = comfy.quant_ops.ck.apply_rope1

        def counted(a, f):
            calls.append(a.dtype)
            return kitchen(a, f)

        comfy.quant_ops.ck.apply_rope1 = counted
        try:
            bf = tiny_wan.load_tiny_wan_patcher(torch.bfloat16, dim=dim, ffn=ffn, layers=layers, seed=3)
            got = tiny_wan.diffusion_call(standin_patch.apply_standin(bf, weights, ref, 1.0),
                                          x.to(dev, torch.bfloat16), t.to(dev), ctx.to(dev, torch.bfloat16))
        finally:
            comfy.quant_ops.ck.apply_rope1 = kitchen
        assert torch.bfloat16 in calls, "the kitchen RoPE kernel did not run in bf16"
        err = rel(got, state["fp32"])
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
    row("GPU fp32 (kitchen RoPE) vs float64 reference", fp32_vs_reference)
    row("GPU bf16 follows fp32, kitchen RoPE in bf16", bf16_follows)
    row("multi-GPU deepclone matches", multigpu)

    print(f"\nStand-In host check, {machine()}, Wan size {opts.size}\n")
    print("| check | result | s |\n|---|---|---|")
    for name, verdict, secs in rows:
        print(f"| {name} | {verdict} | {secs:.2f} |")
    sys.exit(1 if any(v.startswith("FAIL") for _, v, _ in rows) else 0)


if __name__ == "__main__":
    main()
