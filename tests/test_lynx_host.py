"""Lynx against host behaviour beyond the fp32 tiny model of tests/test_lynx.py: fp8 weights, the dynamic VRAM side
model (comfy-aimdo's branch, monkeypatched on the CPU as tests/test_standin_host.py does) and native multi-GPU
deep clones (0.33.0; skipped with the reason where the host lacks the feature)."""
import pytest
import torch

import tiny_wan
from lynx_files import DIM, FFN, LAYERS, case, weights_of
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lynx(comfy_pack):
    from wanid_pack.nodes import lynx_patch
    from wanid_pack.wanid.lynx import checkpoint
    return lynx_patch, checkpoint


def the_patch(patcher, lynx_patch):
    import comfy.patcher_extension
    return patcher.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, lynx_patch.KEY)[0].__self__


def side_of(patcher, lynx_patch):
    return patcher.get_additional_models_with_key(lynx_patch.KEY)[0]


def tiny(weight_dtype):
    return tiny_wan.load_tiny_wan_patcher(weight_dtype, dim=DIM, layers=LAYERS, ffn=FFN, seed=3)


# --- fp8 weights ---------------------------------------------------------------------------------------------------

def test_fp8_weights_follow_fp32(lynx):
    """The Wan model in fp8_e4m3fn (the shipped workflow's file) with Lynx lite and full: the output follows the fp32
    model's, and so does Lynx's own effect (patched minus unpatched), within fp8's rounding."""
    lynx_patch, checkpoint = lynx
    steps, emb, ref, ref_ctx = case(seed=13)
    x, t, pos, _ = steps[0]
    fp32, fp8 = tiny("fp32"), tiny("fp8_e4m3fn")
    assert any(p.dtype == torch.float8_e4m3fn for p in fp8.model.diffusion_model.parameters())
    base32, base8 = call(fp32, x, t, pos), call(fp8, x, t, pos)
    assert rel_err(base8, base32) < 0.1  # the host's own fp8 error, for scale
    for variant in ("lite", "full"):
        w = weights_of(checkpoint, variant)
        y32 = call(lynx_patch.apply_lynx(fp32, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)
        y8 = call(lynx_patch.apply_lynx(fp8, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)
        assert torch.isfinite(y8).all()
        assert rel_err(y8, y32) < 0.1, variant
        effect32, effect8 = y32 - base32, y8 - base8
        assert rel_err(effect32, base32) > 1e-2, f"{variant}: Lynx barely matters at this size"
        assert rel_err(effect8, effect32) < 0.25, variant


# --- dynamic VRAM --------------------------------------------------------------------------------------------------

def test_dynamic_vram_side_model_assigns_weights_and_matches(lynx, monkeypatch):
    """The GPU branch (ModelPatcherDynamic, comfy-aimdo) on the CPU: a CoreModelPatcher that says is_dynamic() and
    comfy.ops layers created without weights. The adapters' side model takes the loaded tensors themselves (no
    copy) and gives the same output as the ordinary side model."""
    import comfy.model_patcher
    memory_management = pytest.importorskip("comfy.memory_management",
                                            reason="this ComfyUI has no dynamic VRAM (comfy.memory_management)")
    if not hasattr(memory_management, "aimdo_enabled"):
        pytest.skip("this ComfyUI has no dynamic VRAM switch (comfy.memory_management.aimdo_enabled)")
    lynx_patch, checkpoint = lynx
    base = tiny("fp32")
    steps, emb, ref, ref_ctx = case(seed=21)
    x, t, pos, _ = steps[0]
    w = weights_of(checkpoint, "full")
    expected = call(lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)

    class DynamicOnCpu(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicOnCpu, raising=False)
    monkeypatch.setattr(memory_management, "aimdo_enabled", True)
    import comfy.ops
    assert comfy.ops.manual_cast.Linear(4, 4).weight is None, "the host's dynamic layers should start without weights"
    patched = lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0)
    side = side_of(patched, lynx_patch)
    assert type(side) is DynamicOnCpu
    files = checkpoint.LynxAdapters.state_dict_of(w)
    names = dict(side.model.named_parameters())
    assert set(names) == set(files)
    for name, p in names.items():
        assert p.data_ptr() == files[name].data_ptr(), f"{name} was copied, not assigned"
    monkeypatch.setattr(memory_management, "aimdo_enabled", False)
    assert torch.equal(call(patched, x, t, pos), expected)


# --- native multi-GPU ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def file_base(tmp_path_factory, comfy_pack):
    return tiny_wan.load_tiny_wan_file(tmp_path_factory.mktemp("lynx_mgpu"), dim=DIM, layers=LAYERS, ffn=FFN, seed=3)


def test_multigpu_deepclone_gets_its_own_patch_and_adapters(file_base, lynx):
    lynx_patch, checkpoint = lynx
    steps, emb, ref, ref_ctx = case(seed=8)
    x, t, pos, _ = steps[0]
    patched = lynx_patch.apply_lynx(file_base, weights_of(checkpoint, "full"), emb, ref, ref_ctx, 1.0, 1.0)
    expected = call(patched, x, t, pos)
    clone = patched.deepclone_multigpu(new_load_device=torch.device("cpu"))
    assert clone.model is not patched.model
    mine, theirs = the_patch(patched, lynx_patch), the_patch(clone, lynx_patch)
    assert theirs is not mine, "two devices must not share one run state"
    assert theirs.adapters is side_of(clone, lynx_patch)
    assert theirs.adapters is not mine.adapters and theirs.adapters.model is not mine.adapters.model
    builds = dict(mine.builds)
    assert set(theirs.builds.values()) == {0}
    assert torch.equal(call(clone, x, t, pos), expected)
    # the clone's hooks build with the clone's patch, once per block (no stacked Lynx), not the original's
    assert theirs.builds == {"tokens": 1, "ip": LAYERS, "reference": 2, "ref": LAYERS}
    assert mine.builds == builds
