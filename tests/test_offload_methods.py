"""Lynx full and Slot-ID (identity tokens + cross-attention LoRA) under ComfyUI's lowvram partial load and with a
dynamic-VRAM side model: the output equals the full load's. The partial load is forced on the CPU as for Stand-In
(tests/test_standin.py): the model loaded with a 1-byte budget casts (and patches) every weight per call. The GPU
rows of the same are benchmarks/gpu_report.py's fp8-lowvram and dynamic cells."""
import pytest
import torch

import lynx_files
import tiny_wan

pytestmark = pytest.mark.integration

LAYERS = lynx_files.LAYERS


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def pack(comfy_pack):
    return comfy_pack


def partial_call(patcher, x, t, ctx):
    """One model call with the model forced into lowvram (every weight cast per call), side models loaded as usual."""
    import comfy.model_management
    comfy.model_management.unload_all_models()
    patcher.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)
    assert patcher.model.model_lowvram
    comfy.model_management.load_models_gpu(patcher.get_nested_additional_models())
    try:
        return tiny_wan.diffusion_call(patcher, x, t, ctx, load=False)
    finally:
        patcher.unpatch_model()


def lynx_case(pack):
    from wanid_pack.nodes import lynx_patch
    from wanid_pack.wanid.lynx import checkpoint
    steps, emb, ref, ref_ctx = lynx_files.case(seed=4)
    x, t, pos, neg = steps[0]
    inputs = torch.cat([x, x]), torch.cat([t, t]), torch.cat([pos, neg])

    def apply(base):
        weights = lynx_files.weights_of(checkpoint, "full")
        return lynx_patch.apply_lynx(base, weights, emb, ref, ref_ctx, 1.0, 1.0)
    return apply, inputs


def test_lynx_full_under_a_partial_load_equals_full_load(pack):
    apply, (x, t, ctx) = lynx_case(pack)
    full_base = tiny_wan.load_tiny_wan_patcher("fp32", dim=lynx_files.DIM, layers=LAYERS, seed=3)
    expected = tiny_wan.diffusion_call(apply(full_base), x, t, ctx)
    unpatched = tiny_wan.diffusion_call(full_base, x, t, ctx)
    low_base = tiny_wan.load_tiny_wan_patcher("fp32", dim=lynx_files.DIM, layers=LAYERS, seed=3)
    got = partial_call(apply(low_base), x, t, ctx)
    assert rel(got, expected) < 1e-6
    assert rel(expected, unpatched) > 1e-3, "Lynx changes the output (its effect is what was compared)"


def test_lynx_full_with_a_dynamic_vram_side_model_equals_full_load(pack, monkeypatch):
    """The dynamic branch on the CPU, as tests/test_standin_host.py does for Stand-In: the adapters' patcher is the
    host's CoreModelPatcher saying is_dynamic(), its layers made without weights and given the file's by assignment."""
    import comfy.model_patcher
    memory_management = pytest.importorskip("comfy.memory_management",
                                            reason="this ComfyUI has no dynamic VRAM (comfy.memory_management)")
    if not hasattr(memory_management, "aimdo_enabled"):
        pytest.skip("this ComfyUI has no dynamic VRAM switch (comfy.memory_management.aimdo_enabled)")
    from wanid_pack.nodes import lynx_patch
    apply, (x, t, ctx) = lynx_case(pack)
    base = tiny_wan.load_tiny_wan_patcher("fp32", dim=lynx_files.DIM, layers=LAYERS, seed=3)
    expected = tiny_wan.diffusion_call(apply(base), x, t, ctx)

    class DynamicOnCpu(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicOnCpu, raising=False)
    monkeypatch.setattr(memory_management, "aimdo_enabled", True)
    patched = apply(base)
    side = patched.get_additional_models_with_key(lynx_patch.KEY)[0]
    assert type(side) is DynamicOnCpu
    monkeypatch.setattr(memory_management, "aimdo_enabled", False)
    assert rel(tiny_wan.diffusion_call(patched, x, t, ctx), expected) < 1e-6


def slot_case(pack):
    from wanid_pack.nodes.slot_id import apply_lora
    from wanid_pack.wanid.slot.checkpoint import fresh_checkpoint
    ckpt = fresh_checkpoint(128, LAYERS)
    g = torch.Generator().manual_seed(9)
    for k, v in ckpt.lora.items():
        if k.endswith("lora_up.weight"):  # a trained-like LoRA: it changes the output
            ckpt.lora[k] = torch.randn(v.shape, generator=g) * 0.05
    rows = torch.randn(ckpt.config.num_tokens, 4096, generator=g) * 0.1
    x = torch.randn(2, 16, 2, 8, 8, generator=g)
    t = torch.tensor([700.0, 700.0])
    ctx = torch.zeros(2, 512, 4096)
    ctx[:, :7] = torch.randn(2, 7, 4096, generator=g)
    ctx = torch.cat([torch.stack([rows, torch.zeros_like(rows)]), ctx], 1)  # tokens; the negative padded
    return (lambda base: apply_lora(base, ckpt, 1.0)), (x, t, ctx)


def test_slot_id_under_a_partial_load_equals_full_load(pack):
    apply, (x, t, ctx) = slot_case(pack)
    full_base = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    expected = tiny_wan.diffusion_call(apply(full_base), x, t, ctx)
    unpatched = tiny_wan.diffusion_call(full_base, x, t, ctx)
    low_base = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    got = partial_call(apply(low_base), x, t, ctx)  # the LoRA is applied per call to the cast weights
    assert rel(got, expected) < 1e-6
    assert rel(expected, unpatched) > 1e-3, "the LoRA changes the output"
    # and the shared model is left as it was
    assert torch.equal(tiny_wan.diffusion_call(full_base, x, t, ctx), unpatched)
