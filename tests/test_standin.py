"""RestrictedAttnPatch on a real (tiny, random) native Wan model, in-process, against the float64 reference."""
import pytest
import torch

import standin_reference
import tiny_wan
from standin_files import DIM, LAYERS, inputs, standin_state_dict
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pack(comfy_pack):
    return comfy_pack


@pytest.fixture(scope="module")
def parts(pack):
    from wanid_pack.nodes import standin_patch
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    return standin_patch, parse_state_dict


@pytest.fixture(scope="module")
def base():
    return tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)


def test_unpatched_native_model_matches_reference(base):
    # Validates the float64 reference itself on the model ComfyUI builds.
    x, t, ctx, _ = inputs()
    sd = tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3)
    assert rel_err(call(base, x, t, ctx), standin_reference.forward(sd, x, t, ctx, LAYERS)) < 1e-5


@pytest.mark.parametrize("strength", [1.0, 0.4, 2.5])
def test_reference_branch_matches_float64_reference(base, parts, strength):
    standin_patch, parse = parts
    lora = standin_state_dict()
    x, t, ctx, ref = inputs(seed=11, batch=2)
    patched = standin_patch.apply_standin(base, parse(lora), ref, strength)
    expected = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), x, t, ctx, LAYERS,
                                         ref=ref, lora=lora, strength=strength)
    got = call(patched, x, t, ctx)
    assert rel_err(got, expected) < 1e-5
    # and the reference really matters at this size
    assert rel_err(call(base, x, t, ctx), expected) > 1e-3


def test_strength_zero_is_unpatched_and_unpatched_model_stays_bit_identical(base, parts):
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=5)
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    before = call(base, x, t, ctx)
    patched = standin_patch.apply_standin(base, parse(standin_state_dict()), ref, 1.0)
    assert not torch.equal(call(patched, x, t, ctx), before)
    assert torch.equal(call(base, x, t, ctx), before)
    assert all(torch.equal(v, weights[k]) for k, v in base.model.state_dict().items())
    off = standin_patch.apply_standin(base, parse(standin_state_dict()), ref, 0.0)
    assert torch.equal(call(off, x, t, ctx), before)


def sample(patcher, seed, positive_tokens=5, negative_tokens=9, steps=3):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 512 + positive_tokens, 4096, generator=g) * 0.1, {}]]
    neg = [[torch.randn(1, 512 + negative_tokens, 4096, generator=g) * 0.1, {}]]  # other shape: 2 calls/step
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 4.0, "euler", "simple", pos, neg, latent,
                               disable_pbar=True, seed=seed)


def test_reference_kv_built_once_per_run_and_reset(base, parts):
    standin_patch, parse = parts
    _, _, _, ref = inputs(seed=2)
    patched = standin_patch.apply_standin(base, parse(standin_state_dict()), ref, 1.0)
    patch = patched.get_wrappers(
        __import__("comfy.patcher_extension").patcher_extension.WrappersMP.DIFFUSION_MODEL,
        standin_patch.KEY)[0].__self__
    counted = []
    original = patch.reference_kv

    def counting(i):
        built = patch.builds["reference"]
        out = original(i)
        counted.append(patch.builds["reference"] - built)
        return out

    patch.reference_kv = counting
    sample(patched, seed=1, steps=3)
    # 3 steps x (positive + negative, unbatched) x 2 blocks = 12 block calls, 2 builds (one per block)
    assert len(counted) == 3 * 2 * LAYERS
    assert sum(counted) == LAYERS
    assert patch.run.kv == {}, "cached K/V must be freed after the run"
    sample(patched, seed=1, steps=2)
    assert sum(counted) == 2 * LAYERS, "a new run builds the reference K/V again"


def test_new_resolution_rebuilds_and_matches_fresh_patch(base, parts):
    standin_patch, parse = parts
    weights = parse(standin_state_dict())
    x, t, ctx, ref = inputs(seed=4)
    x2 = torch.randn(1, 16, 2, 10, 6)
    patched = standin_patch.apply_standin(base, weights, ref, 1.0)
    call(patched, x, t, ctx)  # caches K/V for the 3x5 grid
    fresh = standin_patch.apply_standin(base, weights, ref, 1.0)
    assert torch.equal(call(patched, x2, t, ctx), call(fresh, x2, t, ctx))


def test_fp8_weights_run_and_follow_fp32(parts):
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=8)
    lora = standin_state_dict()
    fp8 = tiny_wan.load_tiny_wan_patcher("fp8_e4m3fn", layers=LAYERS, seed=3)
    assert fp8.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    out8 = call(standin_patch.apply_standin(fp8, parse(lora), ref, 1.0), x, t, ctx)
    plain8 = call(fp8, x, t, ctx)
    expected = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), x, t, ctx, LAYERS,
                                         ref=ref, lora=lora)
    assert torch.isfinite(out8).all()
    # fp8 rounding is ~6%: the patched fp8 model is much closer to the Stand-In reference than the unpatched one
    assert rel_err(out8, expected) < 0.5 * rel_err(plain8, expected)


def test_lowvram_partial_load_gives_the_same_output(parts):
    import comfy.model_management
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=9)
    full = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    expected = call(standin_patch.apply_standin(full, parse(standin_state_dict()), ref, 1.0), x, t, ctx)
    low = tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)
    patched = standin_patch.apply_standin(low, parse(standin_state_dict()), ref, 1.0)
    comfy.model_management.unload_all_models()
    patched.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)  # casts weights per call
    assert patched.model.model_lowvram
    got = tiny_wan.diffusion_call(patched, x, t, ctx, load=False)
    assert rel_err(got, expected) < 1e-6
    patched.unpatch_model()


def test_stacks_with_a_user_lora(base, parts):
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=12)
    g = torch.Generator().manual_seed(7)
    deltas = {f"blocks.{i}.self_attn.{p}.weight": 0.05 * torch.randn(DIM, DIM, generator=g)
              for i in range(LAYERS) for p in "qv"}
    user = base.clone()
    user.add_patches({"diffusion_model." + k: (d,) for k, d in deltas.items()}, 1.0)
    lora = standin_state_dict()
    got = call(standin_patch.apply_standin(user, parse(lora), ref, 1.0), x, t, ctx)
    sd = tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3)
    merged = {k: v + deltas.get(k, 0) for k, v in sd.items()}
    expected = standin_reference.forward(merged, x, t, ctx, LAYERS, ref=ref, lora=lora)
    assert rel_err(got, expected) < 1e-5
    assert torch.equal(call(base, x, t, ctx), call(base, x, t, ctx))


def test_chains_to_existing_block_replace_and_attention_override(base, parts):
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=13)
    seen = {"blocks": 0, "attn": 0}

    def other_replace(args, extra):
        seen["blocks"] += 1
        return extra["original_block"](args)

    def other_override(func, *args, **kwargs):
        seen["attn"] += 1
        return func(*args, **kwargs)

    other = base.clone()
    for i in range(LAYERS):
        other.set_model_patch_replace(other_replace, "dit", "double_block", i)
    other.model_options["transformer_options"]["optimized_attention_override"] = other_override
    patched = standin_patch.apply_standin(other, parse(standin_state_dict()), ref, 1.0)
    got = call(patched, x, t, ctx)
    assert seen["blocks"] == LAYERS
    assert seen["attn"] == 2 * LAYERS  # self + cross attention of every block still reach the earlier override
    alone = call(standin_patch.apply_standin(base, parse(standin_state_dict()), ref, 1.0), x, t, ctx)
    assert torch.allclose(got, alone, rtol=0, atol=1e-6)


def test_non_wan_model_is_refused(parts):
    standin_patch, parse = parts

    class NotWan:
        class model:
            diffusion_model = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="needs a Wan 2.1/2.2 video model"):
        standin_patch.apply_standin(NotWan(), parse(standin_state_dict()), torch.zeros(1, 16, 1, 8, 8), 1.0)


def test_checkpoint_for_another_model_size_is_refused(base, parts):
    standin_patch, parse = parts
    from wanid_pack.wanid.standin.checkpoint import StandInCheckpointError
    with pytest.raises(StandInCheckpointError, match=r"needs \[8, 128\]|dim 128"):
        standin_patch.apply_standin(base, parse(standin_state_dict(dim=256)), torch.zeros(1, 16, 1, 8, 8), 1.0)
    with pytest.raises(StandInCheckpointError, match="LoRA for 3 blocks, but this Wan model .* has 2"):
        standin_patch.apply_standin(base, parse(standin_state_dict(layers=3)), torch.zeros(1, 16, 1, 8, 8), 1.0)


def test_lora_is_offloaded_once_the_reference_kv_exist(base, parts):
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=14)
    lora = standin_state_dict()
    patched = standin_patch.apply_standin(base, parse(lora), ref, 1.0)
    lora_patcher = patched.get_additional_models_with_key(standin_patch.KEY)[0]
    lora_patcher.offload_device = torch.device("cpu", 0)  # a device other than the load device, as on a GPU box
    expected = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), x, t, ctx, LAYERS,
                                         ref=ref, lora=lora)
    assert rel_err(call(patched, x, t, ctx), expected) < 1e-5
    assert lora_patcher.loaded_size() == 0, "the LoRA should be unloaded after the K/V are built"
    assert rel_err(call(patched, x, t, ctx), expected) < 1e-5  # later steps need only the cache
    for cb in patched.get_all_callbacks(__import__("comfy.patcher_extension").patcher_extension.CallbacksMP.ON_PRE_RUN):
        cb(patched)  # a new run: rebuilt with the LoRA loaded again
    assert rel_err(call(patched, x, t, ctx), expected) < 1e-5


def test_coexists_with_phantom_time_dim_concat(base, parts):
    """Phantom appends reference frames along time (t >= T); Stand-In's reference sits at t = -1 beside them."""
    standin_patch, parse = parts
    x, t, ctx, ref = inputs(seed=15)
    extra = torch.randn(1, 16, 1, x.shape[-2], x.shape[-1], generator=torch.Generator().manual_seed(16))
    lora = standin_state_dict()
    patched = standin_patch.apply_standin(base, parse(lora), ref, 1.0)
    got = tiny_wan.diffusion_call(patched, x, t, ctx, time_dim_concat=extra)
    full = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), torch.cat([x, extra], 2),
                                     t, ctx, LAYERS, ref=ref, lora=lora)
    assert rel_err(got, full[:, :, :x.shape[2]]) < 1e-5


def test_reference_image_and_latent_reach_the_dit_normalised(pack, base):
    from wanid_pack.nodes.standin import reference_latent_of
    raw = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(17)) * 2 + 0.5

    class FakeVAE:
        def encode(self, pixels):
            assert pixels.shape == (1, 64, 64, 3)
            return raw

    expected = base.model.latent_format.process_in(raw)
    via_image = reference_latent_of(base, reference_image=torch.rand(1, 64, 64, 3), vae=FakeVAE())
    via_latent = reference_latent_of(base, reference_latent={"samples": raw[:, :, 0]})  # a 4-D image latent too
    assert torch.equal(via_image, expected) and torch.equal(via_latent, expected)
    assert not torch.allclose(expected, raw)  # Wan's latent normalisation is not the identity
    with pytest.raises(ValueError, match="reference_image: got 2 images"):
        reference_latent_of(base, reference_image=torch.rand(2, 64, 64, 3), vae=FakeVAE())
    with pytest.raises(ValueError, match="vae: connect the Wan VAE"):
        reference_latent_of(base, reference_image=torch.rand(1, 64, 64, 3))
    with pytest.raises(ValueError, match="reference_image: connect the face crop"):
        reference_latent_of(base)
