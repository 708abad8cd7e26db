"""Lynx against host behaviour beyond the fp32 tiny model of tests/test_lynx.py: fp8 weights. The dynamic VRAM side
model and native multi-GPU deep clones, which every patch goes through alike, are tested once for all in
tests/test_patch_host.py."""
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
