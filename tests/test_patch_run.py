"""The pack's model patches at run time, in-process on the tiny Wan (issue 15): what they refuse instead of a wrong or
silent result (a non-finite latent under Stand-In, a broken VAE's NaN reference latents for Lynx, int64 or missing
Lynx files, start == end), that inspecting the model goes through the patcher's own view (no false refusal after
another clone's object patch), and that no sampling step makes a device -> host sync for the patches (issue 15,
Lynx's start/end window)."""
import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lynx_files
import standin_files
import tiny_wan

pytestmark = pytest.mark.integration

DIM, LAYERS, FFN = lynx_files.DIM, lynx_files.LAYERS, lynx_files.FFN


@pytest.fixture(scope="module")
def mods(comfy_pack):
    from wanid_pack.nodes import lynx_patch, standin_patch
    from wanid_pack.wanid.lynx import checkpoint
    return standin_patch, lynx_patch, checkpoint


def tiny():
    return tiny_wan.load_tiny_wan_patcher("fp32", dim=DIM, layers=LAYERS, ffn=FFN, seed=3)


@pytest.fixture(scope="module")
def base(comfy_pack):
    return tiny()


def standin(mods, patcher, strength=1.0):
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    weights = parse_state_dict(standin_files.standin_state_dict(layers=LAYERS, dim=DIM))
    return mods[0].apply_standin(patcher, weights, standin_files.inputs(seed=4)[3], strength)


def lynx(mods, patcher, **kw):
    _, emb, ref, ref_ctx = lynx_files.case(seed=6)
    return mods[1].apply_lynx(patcher, lynx_files.weights_of(mods[2], "full"), emb, ref, ref_ctx, 1.0, 1.0, **kw)


def call(patcher, x, t, ctx, **options):
    """One model call as the sampler makes it, with extra transformer_options (sigmas, sample_sigmas)."""
    import comfy.model_management
    opts = tiny_wan.sampler_options(patcher)
    opts["cond_or_uncond"] = [0]
    opts.update(options)
    with torch.no_grad():
        comfy.model_management.load_models_gpu([patcher] + patcher.get_nested_additional_models())
        return patcher.model.diffusion_model(x, t, ctx, transformer_options=opts).float()


def step_inputs(seed=3):
    x, t, pos, _ = lynx_files.case(seed=seed)[0][0]
    return x, t, pos


# --- refused instead of a silent NaN ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["standin", "lynx"])
def test_a_non_finite_latent_is_refused_naming_it(mods, base, which):
    from wanid_pack.wanid.errors import NonFiniteError
    patched = standin(mods, base) if which == "standin" else lynx(mods, base)
    x, t, ctx = step_inputs()
    x = x.clone()
    x[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^latent: the sampler's input to this (Stand-In|Lynx)-patched model: "
                                             r"holds 1 inf .*re-create it"):
        tiny_wan.diffusion_call(patched, x, t, ctx)


def test_lynx_refuses_nan_reference_latents_from_the_vae(mods, base):
    from wanid_pack.nodes.lynx import WanIDLynxApply, LynxModel
    from wanid_pack.wanid.face_clip import FaceClip
    from wanid_pack.wanid.errors import NonFiniteError
    g = torch.Generator().manual_seed(0)
    clip = FaceClip(crops=torch.rand(1, 512, 512, 3, generator=g), masks=torch.ones(1, 512, 512),
                    landmarks=torch.zeros(1, 5, 2), boxes=torch.zeros(1, 4), scores=torch.ones(1),
                    times=torch.zeros(1), valid=torch.tensor([True]),
                    aligned=torch.rand(1, 112, 112, 3, generator=g), lynx_crops=torch.rand(1, 256, 256, 3, generator=g))
    from wanid_pack.wanid.lynx.arcface import ArcFaceIRSE50
    model = LynxModel(lynx_files.weights_of(mods[2], "full"), ArcFaceIRSE50().eval(), "lynx_full")

    class BrokenVAE:
        def encode(self, image):
            return torch.full((1, 16, 1, image.shape[1] // 8, image.shape[2] // 8), float("nan"))

    text = [[torch.zeros(1, 512, 4096), {}]]
    with pytest.raises(NonFiniteError, match=r"^vae: the encoded reference face .*holds \d+ NaN.*check the VAE file"):
        WanIDLynxApply.execute(model=base, lynx=model, face_clip=clip, ip_scale=1.0, ref_scale=1.0, start=0.0,
                               end=1.0, ref_blocks="all", vae=BrokenVAE(), reference_text=text)


def test_lynx_files_int64_and_a_full_folder_without_its_ref_layers(mods, tmp_path):
    from safetensors.torch import save_file
    checkpoint = mods[2]
    folder = lynx_files.write_lynx(tmp_path / "lynx_full", "full")
    (folder / "ref_layers.safetensors").unlink()  # an interrupted download
    with pytest.raises(checkpoint.LynxFileError, match=r"^lynx_name: lynx_full holds lynx_full's ID layers but no "
                                                       r"ref_layers\.safetensors.*Download ref_layers\.safetensors"):
        checkpoint.load_lynx(str(folder))
    _, ip, ref = lynx_files.lynx_tensors("full")
    save_file(ref, str(folder / "ref_layers.safetensors"))
    checkpoint.load_lynx(str(folder))
    save_file({**ip, "1.to_v_ip.weight": ip["1.to_v_ip.weight"].long()}, str(folder / "ip_layers.safetensors"))
    for keep in (True, False):
        with pytest.raises(checkpoint.LynxFileError, match=r"^lynx_name: Lynx file lynx_full/ip_layers\.safetensors: "
                                                           r"1\.to_v_ip\.weight holds int64 values"):
            checkpoint.load_lynx(str(folder), keep=keep)


def test_lynx_start_equal_to_end_warns(mods, base, caplog):
    with caplog.at_level(logging.WARNING):
        lynx(mods, base, start=0.4, end=0.4)
    assert any("start and end are both 0.4" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        lynx(mods, base, start=0.0, end=0.4)
    assert not any("start and end" in r.getMessage() for r in caplog.records)


def test_lynx_inspects_the_patchers_own_model_not_the_live_module(mods):
    """Another clone of the same model, last loaded with an object patch on a cross-attention (another pack's), left
    that object in the shared module: Lynx Apply on this clone must look at this clone's view."""
    import comfy.model_management
    own = tiny()
    other = own.clone()
    replaced = torch.nn.Identity()
    other.add_object_patch("diffusion_model.blocks.0.cross_attn", replaced)
    comfy.model_management.load_models_gpu([other])
    try:
        assert own.model.diffusion_model.blocks[0].cross_attn is replaced  # the live module holds the other's object
        patched = lynx(mods, own)  # no refusal: this clone's own cross-attention is Wan 2.1 T2V's
        assert mods[1].hooks.patch_of(patched, mods[1].KEY) is not None
        with pytest.raises(ValueError, match="this model's cross-attention is Identity"):
            lynx(mods, other)  # that clone's own view is the replaced module
    finally:
        comfy.model_management.load_models_gpu([own])  # put the shared module back
    assert type(own.model.diffusion_model.blocks[0].cross_attn).__name__ == "WanT2VCrossAttention"


# --- the sigma window without a device sync per step ------------------------------------------------------------

class ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (Tensor.item / float / bool: aten._local_scalar_dense), each a
    device -> host sync on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def counted(fn):
    with ScalarReads() as reads:
        out = fn()
    return reads.count, out


def test_lynx_window_in_and_out_and_no_scalar_read_per_step(mods, base):
    x, t, ctx = step_inputs()
    schedule = torch.linspace(1.0, 0.0, 5)
    windowed = lynx(mods, base, start=0.3, end=0.7)
    always = lynx(mods, base)
    sampling = base.model.model_sampling
    hi, lo = float(sampling.percent_to_sigma(0.3)), float(sampling.percent_to_sigma(0.7))
    inside, outside = torch.tensor([(hi + lo) / 2]), torch.tensor([min(1.0, hi + 0.05)])
    for sigma, expected in ((inside, always), (outside, base)):
        got = call(windowed, x, t, ctx, sigmas=sigma, sample_sigmas=schedule)
        assert torch.equal(got, call(expected, x, t, ctx, sigmas=sigma, sample_sigmas=schedule))
    # a step after the run's first call reads no tensor value on the host, for either patch, as the unpatched model
    for patched in (windowed, always, standin(mods, base), standin(mods, windowed)):
        patched.pre_run()  # ON_PRE_RUN: a new run
        call(patched, x, t, ctx, sigmas=inside, sample_sigmas=schedule)  # the run's first call: its checks, once
        reads, _ = counted(lambda: call(patched, x, t, ctx, sigmas=outside, sample_sigmas=schedule))
        base_reads, _ = counted(lambda: call(base, x, t, ctx, sigmas=outside, sample_sigmas=schedule))
        assert reads == base_reads, f"{reads} host reads of a tensor per step (unpatched: {base_reads})"


def test_no_scalar_read_per_sampling_step(mods, base):
    """Through ComfyUI's sampler: more steps add no host reads for the patches beyond the unpatched model's."""
    import comfy.sample

    def sample(patcher, steps):
        g = torch.Generator().manual_seed(0)
        pos = [[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]]
        neg = [[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]]
        latent = torch.zeros(1, 16, 2, 8, 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        return counted(lambda: comfy.sample.sample(patcher, noise, steps, 4.0, "euler", "simple", pos, neg, latent,
                                                   disable_pbar=True, seed=0))[0]

    patched = standin(mods, lynx(mods, base, start=0.2, end=0.8))
    extra = [sample(patched, steps) - sample(base, steps) for steps in (2, 4)]
    assert extra[0] == extra[1], f"host reads beyond the unpatched model's: {extra[0]} (2 steps), {extra[1]} (4)"
    assert extra[0] <= 4, "only the per-run checks read values on the host"
