"""Stand-In against host behaviour newer than 0.3.64: the side model's patcher class, attention containers and
backends, ScaleROPE, comfy-kitchen RoPE, Wan classes without per-block patches, VACE. Dynamic VRAM side models and
native multi-GPU clones, which every patch goes through alike, are tested once for all in tests/test_patch_host.py.

GPU-only host paths are taken on the CPU by monkeypatching the host where the real branch needs CUDA
(benchmarks/gpu_host_check.py runs the real ones on a GPU). Tests of a feature the running ComfyUI lacks skip
with the reason."""
import types

import pytest
import torch

import standin_reference
import tiny_wan
from standin_files import LAYERS, inputs, standin_state_dict
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def patch_module(comfy_pack):
    from wanid_pack.nodes import standin_patch
    return standin_patch


@pytest.fixture(scope="module")
def weights(comfy_pack):
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    return parse_state_dict(standin_state_dict())


@pytest.fixture(scope="module")
def base():
    return tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)


def the_patch(patcher, standin_patch):
    import comfy.patcher_extension
    return patcher.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, standin_patch.KEY)[0].__self__


def lora_of(patcher, standin_patch):
    return patcher.get_additional_models_with_key(standin_patch.KEY)[0]


# --- the side model is built the way core builds side models ------------------------------------------------------

def test_lora_patcher_is_the_hosts_core_patcher(base, patch_module, weights):
    import comfy.model_patcher
    patched = patch_module.apply_standin(base, weights, inputs()[3], 1.0)
    lora = lora_of(patched, patch_module)
    expected = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    assert type(lora) is expected
    # not dynamic (CPU): weights were copied into the module, so the loaded file's tensors stay untouched
    for name, p in lora.model.named_parameters():
        assert p.data_ptr() != weights.state_dict[name].data_ptr()
        assert torch.equal(p.float(), weights.state_dict[name].float())


# --- attention -----------------------------------------------------------------------------------------------------

def counting(calls, name):
    from comfy.ldm.modules import attention

    def fn(q, k, v, *args, **kwargs):
        calls.append((name, q.shape[1], k.shape[1]))
        return attention.attention_pytorch(q, k, v, *args, **kwargs)
    return fn


def test_override_takes_attention_tensor_containers(patch_module):
    from comfy.ldm.modules import attention
    if not hasattr(attention, "AttentionTensorContainer"):
        pytest.skip("this ComfyUI has no AttentionTensorContainer")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 12, 256, generator=g) for _ in range(3))
    k_ref, v_ref = torch.randn(1, 5, 256, generator=g), torch.randn(1, 5, 256, generator=g)

    def run(*qkv):
        block = types.SimpleNamespace(self_attn=None, cross_attn=None)  # no module attention of its own
        override = patch_module._SelfAttentionOverride(None, block, 12, 7, k_ref, v_ref, 1.0)
        return override(attention.attention_pytorch, *qkv, heads=2)

    plain = run(q, k, v)
    boxed = run(*(attention.AttentionTensorContainer(t.clone()) for t in (q, k, v)))
    assert torch.equal(plain, boxed)
    assert not torch.equal(plain, attention.attention_pytorch(q, k, v, heads=2))  # the reference was appended


def test_a_modules_preferred_attention_is_kept(patch_module, weights):
    """A checkpoint's per-module attention (ComfyAttention.function, newer ComfyUI): the host bypasses it once an
    override is installed, so the patch must call it itself, for self- and cross-attention."""
    x, t, ctx, ref = inputs(seed=12)
    own = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)  # this test's own model: it is modified
    expected = call(patch_module.apply_standin(own, weights, ref, 1.0), x, t, ctx)
    calls = []
    for i, block in enumerate(own.model.diffusion_model.blocks):
        block.self_attn.comfy_attention = types.SimpleNamespace(function=counting(calls, f"self{i}"))
        block.cross_attn.comfy_attention = types.SimpleNamespace(function=counting(calls, f"cross{i}"))
    got = call(patch_module.apply_standin(own, weights, ref, 1.0), x, t, ctx)
    assert rel_err(got, expected) < 1e-5
    video = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    reference = (ref.shape[3] // 2) * (ref.shape[4] // 2)
    for i in range(LAYERS):
        assert (f"self{i}", video, video + reference) in calls, "the self-attention with the reference"
        assert any(name == f"cross{i}" for name, _, _ in calls), "the cross-attention"


def test_chains_to_the_core_model_attention_backend(base, patch_module, weights):
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher.ModelPatcher, "set_model_optimized_attention"):
        pytest.skip("this ComfyUI has no set_model_optimized_attention (ModelAttentionBackend)")
    x, t, ctx, ref = inputs(seed=13)
    expected = call(patch_module.apply_standin(base, weights, ref, 1.0), x, t, ctx)
    calls = []
    backend = base.clone()
    backend.set_model_optimized_attention(counting(calls, "backend"))
    got = call(patch_module.apply_standin(backend, weights, ref, 1.0), x, t, ctx)
    assert rel_err(got, expected) < 1e-5
    video = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    reference = (ref.shape[3] // 2) * (ref.shape[4] // 2)
    assert calls.count(("backend", video, video + reference)) == LAYERS
    assert len(calls) >= 2 * LAYERS  # and every cross-attention


# --- RoPE ----------------------------------------------------------------------------------------------------------

def test_reference_positions_follow_scale_rope(base, patch_module, weights):
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher.ModelPatcher, "set_model_rope_options"):
        pytest.skip("this ComfyUI has no ScaleROPE (set_model_rope_options)")
    lora = standin_state_dict()
    x, t, ctx, ref = inputs(seed=14)
    scaled = base.clone()
    scaled.set_model_rope_options(scale_x=1.5, shift_x=2.0, scale_y=0.75, shift_y=-1.0, scale_t=2.0, shift_t=3.0)
    rope = scaled.model_options["transformer_options"]["rope_options"]
    sd = tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3)
    got = call(patch_module.apply_standin(scaled, weights, ref, 1.0), x, t, ctx)
    expected = standin_reference.forward(sd, x, t, ctx, LAYERS, ref=ref, lora=lora, rope_options=rope)
    assert rel_err(got, expected) < 1e-5
    # the unscaled reference positions would be wrong
    wrong = standin_reference.forward(sd, x, t, ctx, LAYERS, ref=ref, lora=lora)
    assert rel_err(got, wrong) > 1e-3


def test_reference_stream_runs_the_hosts_kitchen_rope(base, patch_module, weights, monkeypatch):
    import comfy.model_management
    quant_ops = pytest.importorskip("comfy.quant_ops", reason="this ComfyUI has no comfy-kitchen (comfy.quant_ops)")
    kitchen = getattr(getattr(quant_ops, "ck", None), "apply_rope1", None)
    if kitchen is None or not hasattr(comfy.model_management, "in_training"):
        pytest.skip("this ComfyUI has no comfy-kitchen RoPE")
    seen = []

    def counted(x, freqs):
        seen.append(x.dtype)
        return kitchen(x, freqs)

    monkeypatch.setattr(quant_ops.ck, "apply_rope1", counted)
    x, t, ctx, ref = inputs(seed=15)
    fp32 = call(patch_module.apply_standin(base, weights, ref, 1.0), x, t, ctx)
    assert comfy.model_management.in_training is False
    assert len(seen) >= 2 * LAYERS * 2, "video and reference q/k go through the kitchen kernel"
    seen.clear()
    bf16_base = tiny_wan.load_tiny_wan_patcher(torch.bfloat16, layers=LAYERS, seed=3)
    bf16 = call(patch_module.apply_standin(bf16_base, weights, ref, 1.0), x.bfloat16(), t, ctx.bfloat16())
    assert torch.bfloat16 in seen
    assert rel_err(bf16, fp32) < 5e-2


# --- Wan classes that skip per-block patches -----------------------------------------------------------------------

def test_classes_without_block_patches_are_refused_by_name(patch_module, weights):
    from comfy.ldm.wan.model import WanModel
    own = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    dm = own.model.diffusion_model
    try:
        from comfy.ldm.wan.ar_model import CausalWanModel
    except ImportError:
        CausalWanModel = None
    if CausalWanModel is not None:  # same weights as WanModel; samples through forward_block
        dm.__class__ = CausalWanModel
        with pytest.raises(ValueError, match="CausalWanModel.*forward_block"):
            patch_module.apply_standin(own, weights, inputs()[3], 1.0)

    class NewWan(WanModel):  # a class a newer ComfyUI might add, running its blocks its own way
        def forward_orig(self, x, t, context, **kwargs):
            return x

    dm.__class__ = NewWan
    with pytest.raises(ValueError, match="NewWan.*per-block patches"):
        patch_module.apply_standin(own, weights, inputs()[3], 1.0)


def test_a_model_that_skips_the_blocks_at_run_time_is_an_error(patch_module, weights, monkeypatch):
    own = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    dm = own.model.diffusion_model
    x, t, ctx, ref = inputs(seed=16)
    patched = patch_module.apply_standin(own, weights, ref, 1.0)
    # a forward pass that never consults patches_replace (what a silently unpatched run looks like)
    monkeypatch.setattr(type(dm), "forward_orig", lambda self, x, *a, **k: x[:, :16])
    with pytest.raises(RuntimeError, match="without ComfyUI's per-block patches"):
        call(patched, x, t, ctx)


# --- VACE ----------------------------------------------------------------------------------------------------------

def test_standin_runs_on_a_vace_model(patch_module, weights):
    """Official Stand-In supports Wan 2.1 VACE. With VACE's strength at 0 the VACE model is the T2V model with the
    same main weights, so the patched outputs must agree; with VACE on, the patch still changes the output and
    builds each block's reference K/V once."""
    vace = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3, vace_layers=1)
    assert type(vace.model.diffusion_model).__name__ == "VaceWanModel"
    t2v = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    x, t, ctx, ref = inputs(seed=17)
    g = torch.Generator().manual_seed(5)
    vace_context = torch.randn(1, 1, 96, *x.shape[2:], generator=g)

    def run(patcher, strength):
        return tiny_wan.diffusion_call(patcher, x, t, ctx, vace_context=vace_context, vace_strength=[strength])

    patched_vace = patch_module.apply_standin(vace, weights, ref, 1.0)
    patched_t2v = patch_module.apply_standin(t2v, weights, ref, 1.0)
    assert rel_err(run(patched_vace, 0.0), call(patched_t2v, x, t, ctx)) < 1e-5
    patch = the_patch(patched_vace, patch_module)
    patch.reset()  # the run's caches dropped (ON_CLEANUP): the next call builds them again
    builds = patch.builds["reference"]
    on = run(patched_vace, 1.0)
    assert patch.builds["reference"] - builds == LAYERS
    assert rel_err(on, run(vace, 1.0)) > 1e-3, "Stand-In changes the VACE output"
    assert rel_err(on, run(patched_vace, 0.0)) > 1e-3, "and VACE's own context still matters"
