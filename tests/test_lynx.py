"""Lynx on a real (tiny, random) native Wan model in a real ComfyUI, against the OFFICIAL Lynx code.

The official code (github.com/bytedance/lynx, on diffusers from PyPI) runs in its own process (tests/lynx_oracle.py,
environment from scripts/lynx_oracle_env.py); without it those tests skip with the reason. Everything else
(files, counts, bit-identity, scales, errors) runs on ComfyUI alone.
"""
import json
import subprocess
from pathlib import Path

import pytest
import torch

import lynx_files
import tiny_wan
from lynx_files import DIM, FFN, LAYERS, case, weights_of
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pack(comfy_pack):
    return comfy_pack


@pytest.fixture(scope="module")
def lynx(pack):
    from wanid_pack.nodes import lynx_patch
    from wanid_pack.wanid.lynx import checkpoint
    return lynx_patch, checkpoint


@pytest.fixture(scope="module")
def base():
    return tiny_wan.load_tiny_wan_patcher("fp32", dim=DIM, layers=LAYERS, ffn=FFN, seed=3)


def native_outputs(patcher, steps):
    """[pos step 0, neg step 0, pos step 1, neg step 1] in one run (no reset between), as a sampler calls."""
    out = []
    for x, t, pos, neg in steps:
        out += [call(patcher, x, t, pos, (0,)), call(patcher, x, t, neg, (1,))]
    return out


def run_oracle(tmp_path, variant, steps, emb, ref, ref_ctx, ip_scale, ref_scale, wrong=None):
    python, repo, why = lynx_files.oracle()
    if why:
        pytest.skip(why)
    from safetensors.torch import save_file
    resampler, ip, refl = lynx_files.lynx_tensors(variant, dim=DIM, layers=LAYERS)
    sd = {f"wan.{k}": v for k, v in tiny_wan.tiny_wan_state_dict(dim=DIM, layers=LAYERS, ffn=FFN, seed=3).items()}
    sd.update({f"resampler.{k}": v for k, v in resampler.items()})
    sd.update({f"ip.{k}": v for k, v in ip.items()})
    sd.update({f"ref.{k}": v for k, v in refl.items()})
    sd["embedding"] = emb
    if variant == "full":
        sd["ref_pos"], sd["ref_neg"], sd["ref_ctx"] = ref[0], ref[1], ref_ctx
    k = 0
    for x, t, pos, neg in steps:
        for ctx, is_neg in ((pos, 0), (neg, 1)):
            sd[f"x.{k}"], sd[f"t.{k}"], sd[f"ctx.{k}"], sd[f"neg.{k}"] = x, t, ctx, torch.tensor(is_neg)
            k += 1
    cfg = dict(variant=variant, dim=DIM, layers=LAYERS, ffn=FFN, ip_scale=ip_scale, ref_scale=ref_scale, wrong=wrong)
    inp, outp = tmp_path / f"in_{variant}.safetensors", tmp_path / f"out_{variant}.safetensors"
    save_file({k: v.clone().contiguous() for k, v in sd.items()}, str(inp), metadata={"config": json.dumps(cfg)})
    r = subprocess.run([python, str(HERE / "lynx_oracle.py"), repo, str(inp), str(outp)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"official Lynx code failed:\n{r.stderr[-4000:]}"
    from safetensors.torch import load_file
    out = load_file(str(outp))
    return [out[f"out.{i}"] for i in range(k)]


@pytest.mark.parametrize("variant,ip_scale,ref_scale", [("lite", 1.0, 0.0), ("full", 1.0, 1.0),
                                                         ("full", 0.7, 1.6)])
def test_equals_official_lynx(tmp_path, base, lynx, variant, ip_scale, ref_scale):
    lynx_patch, checkpoint = lynx
    steps, emb, ref, ref_ctx = case(seed=11)
    expected = run_oracle(tmp_path, variant, steps, emb, ref, ref_ctx, ip_scale, ref_scale)
    patched = lynx_patch.apply_lynx(base, weights_of(checkpoint, variant), emb, ref, ref_ctx, ip_scale, ref_scale)
    got = native_outputs(patched, steps)
    unpatched = native_outputs(base, steps)
    for i, (a, b, u) in enumerate(zip(got, expected, unpatched)):
        assert rel_err(a, b) <= 1e-5, f"call {i} ({'neg' if i % 2 else 'pos'}, step {i // 2}): {rel_err(a, b):.2e}"
        assert rel_err(u, b) > 1e-3, f"call {i}: the adapters barely matter at this size"
    # one batched positive+negative call (ComfyUI's usual) gives the same
    x, t, pos, neg = steps[1]
    both = call(patched, torch.cat([x, x]), torch.cat([t, t]), torch.cat([pos, neg]), (0, 1))
    assert rel_err(both[:1], expected[2]) <= 1e-5 and rel_err(both[1:], expected[3]) <= 1e-5


def test_a_wrong_variant_is_detected(tmp_path, base, lynx):
    """The comparison is sharp: the official code with the negative's tokens taken from the positive (a plausible
    mistake) is far outside the tolerance."""
    lynx_patch, checkpoint = lynx
    steps, emb, ref, ref_ctx = case(seed=11)
    wrong = run_oracle(tmp_path, "lite", steps, emb, ref, ref_ctx, 1.0, 0.0, wrong="negative_uses_positive_tokens")
    got = native_outputs(lynx_patch.apply_lynx(base, weights_of(checkpoint, "lite"), emb), steps)
    assert rel_err(got[0], wrong[0]) <= 1e-5  # positive unchanged
    assert rel_err(got[1], wrong[1]) > 1e-3   # the negative's zero-embedding tokens matter


# --- files -------------------------------------------------------------------------------------------------------

def test_official_folders_load_and_are_checked_against_the_model(tmp_path, lynx):
    _, checkpoint = lynx
    full = checkpoint.load_lynx(str(lynx_files.write_lynx(tmp_path / "lynx_full", "full", dim=DIM, layers=LAYERS)))
    lite = checkpoint.load_lynx(str(lynx_files.write_lynx(tmp_path / "lynx_lite", "lite", dim=DIM, layers=LAYERS)))
    assert (full.variant, full.ip_layers, full.ref_layers, full.registers) == ("full", 3, 3, 2)
    assert (lite.variant, lite.ip_layers, lite.ref_layers, lite.ip_blocks(LAYERS)) == ("lite", 2, 0, [0, 2])
    full.check_against(LAYERS, DIM)
    with pytest.raises(checkpoint.LynxFileError, match="projects to width 256, but 14B has dim 5120"):
        full.check_against(40, 5120, "14B")
    with pytest.raises(checkpoint.LynxFileError,
                       match="ip_layers has 2 layers, but m has 40 blocks and lite Lynx needs 20"):
        lite.check_against(40, DIM, "m")


def test_bad_files_are_refused_naming_the_first_problem(tmp_path, lynx):
    _, checkpoint = lynx
    from safetensors.torch import save_file
    resampler, ip, ref = lynx_files.lynx_tensors("full", dim=DIM, layers=LAYERS)
    with pytest.raises(checkpoint.LynxFileError, match="1.to_v_ip.weight has shape \\[256, 100\\]"):
        checkpoint.parse(resampler, {**ip, "1.to_v_ip.weight": torch.zeros(DIM, 100)}, ref)
    with pytest.raises(checkpoint.LynxFileError, match="ip_layers layer 1 is missing"):
        checkpoint.parse(resampler, {k: v for k, v in ip.items() if not k.startswith("1.")}, ref)
    lite_r, lite_ip, _ = lynx_files.lynx_tensors("lite", dim=DIM, layers=LAYERS)
    with pytest.raises(checkpoint.LynxFileError, match="must belong together"):
        checkpoint.parse(resampler, lite_ip, {})
    with pytest.raises(checkpoint.LynxFileError, match="Lynx lite has no Ref adapter"):
        checkpoint.parse(lite_r, lite_ip, ref)
    folder = lynx_files.write_lynx(tmp_path / "nan", "full", dim=DIM, layers=LAYERS)
    bad = dict(ref)
    bad["2.to_k_ref.bias"] = torch.full((DIM,), float("inf"))
    save_file(bad, str(folder / "ref_layers.safetensors"))
    with pytest.raises(checkpoint.LynxFileError, match="nan/ref_layers.safetensors: 2.to_k_ref.bias: holds .*inf"):
        checkpoint.load_lynx(str(folder))
    save_file(ref, str(folder / "ref_layers.safetensors"))
    (folder / "ip_layers.safetensors").write_bytes(b"\0" * 8)
    with pytest.raises(checkpoint.LynxFileError, match="Lynx file ip_layers.safetensors is unreadable"):
        checkpoint.load_lynx(str(folder))
    (folder / "ip_layers.safetensors").unlink()
    with pytest.raises(checkpoint.LynxFileError, match="has no ip_layers.safetensors"):
        checkpoint.load_lynx(str(folder))


# --- on the native model -----------------------------------------------------------------------------------------

def test_unpatched_model_stays_bit_identical_and_zero_scales_are_unpatched(base, lynx):
    lynx_patch, checkpoint = lynx
    steps, emb, ref, ref_ctx = case(seed=5)
    x, t, pos, _ = steps[0]
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    before = call(base, x, t, pos)
    patched = lynx_patch.apply_lynx(base, weights_of(checkpoint, "full"), emb, ref, ref_ctx, 1.0, 1.0)
    assert not torch.equal(call(patched, x, t, pos), before)
    assert torch.equal(call(base, x, t, pos), before)
    assert all(torch.equal(v, weights[k]) for k, v in base.model.state_dict().items())
    off = lynx_patch.apply_lynx(base, weights_of(checkpoint, "full"), emb, ref, ref_ctx, 0.0, 0.0)
    assert torch.equal(call(off, x, t, pos), before)
    # the Ref adapter alone matters too (the ID adapter alone is compared to the official code above)
    ip_only = lynx_patch.apply_lynx(base, weights_of(checkpoint, "full"), emb, ref, ref_ctx, 1.0, 0.0)
    assert rel_err(call(ip_only, x, t, pos), call(patched, x, t, pos)) > 1e-3


def sample(patcher, seed=0, steps=3):
    import comfy.sample
    g = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 512 + 5, 4096, generator=g) * 0.1, {}]]
    neg = [[torch.randn(1, 512 + 9, 4096, generator=g) * 0.1, {}]]  # another shape: two calls per step
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 4.0, "euler", "simple", pos, neg, latent,
                               disable_pbar=True, seed=seed)


def test_adapter_kv_computed_once_per_run_and_reset(base, lynx):
    lynx_patch, checkpoint = lynx
    import comfy.patcher_extension
    _, emb, ref, ref_ctx = case(seed=2)
    patched = lynx_patch.apply_lynx(base, weights_of(checkpoint, "full"), emb, ref, ref_ctx, 1.0, 1.0)
    patch = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, lynx_patch.KEY)[0].__self__
    first = sample(patched, steps=3)  # 6 model calls
    assert patch.builds == {"tokens": 1, "ip": LAYERS, "reference": 2, "ref": LAYERS}
    assert patch.run.key is None  # ON_CLEANUP dropped the caches
    second = sample(patched, steps=3)
    assert patch.builds == {"tokens": 1, "ip": LAYERS, "reference": 2, "ref": LAYERS}, "counted per run, built again"
    assert torch.equal(first, second)
    assert not torch.equal(first, sample(base, steps=3))


def test_start_end_and_ref_blocks(base, lynx):
    lynx_patch, checkpoint = lynx
    _, emb, ref, ref_ctx = case(seed=4)
    w = weights_of(checkpoint, "full")
    never = lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0, start=1.0, end=1.0)
    assert torch.equal(sample(never), sample(base))
    some = lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 0.0, 1.0, ref_blocks="0, 2")
    patch = some.get_wrappers(__import__("comfy.patcher_extension").patcher_extension.WrappersMP.DIFFUSION_MODEL,
                              lynx_patch.KEY)[0].__self__
    sample(some, steps=1)
    assert patch.builds["ref"] == 2 and patch.builds["tokens"] == 0
    with pytest.raises(ValueError, match="ref_blocks: '5' is outside this model's blocks 0-2"):
        lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0, ref_blocks="5")
    with pytest.raises(ValueError, match="ref_blocks: 'x' is not a block number"):
        lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0, ref_blocks="x")
    with pytest.raises(ValueError, match="reference_text: full Lynx's Ref adapter needs"):
        lynx_patch.apply_lynx(base, w, emb, None, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="face: the face embedding .*holds 512 NaN"):
        lynx_patch.apply_lynx(base, w, torch.full((512,), float("nan")))
    with pytest.raises(checkpoint.LynxFileError, match="projects to width 256"):
        lynx_patch.apply_lynx(tiny_wan.load_tiny_wan_patcher("fp32", dim=128, layers=LAYERS), w, emb)


def test_stacks_with_standin(base, lynx):
    """Stand-In and Lynx on one model, in either order: both chains run, and each order gives the same result."""
    lynx_patch, checkpoint = lynx
    from wanid_pack.nodes import standin_patch
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    g = torch.Generator().manual_seed(9)
    lora = {}
    for i in range(LAYERS):
        for p in "qkv":
            lora[f"blocks.{i}.self_attn.{p}_loras.down.weight"] = torch.randn(8, DIM, generator=g) / 16
            lora[f"blocks.{i}.self_attn.{p}_loras.up.weight"] = torch.randn(DIM, 8, generator=g) / 3
    standin_ref = torch.randn(1, 16, 1, 8, 8, generator=g)
    steps, emb, ref, ref_ctx = case(seed=6)
    x, t, pos, _ = steps[0]
    w = weights_of(checkpoint, "full")
    a = lynx_patch.apply_lynx(standin_patch.apply_standin(base, parse_state_dict(lora), standin_ref, 1.0),
                              w, emb, ref, ref_ctx, 1.0, 1.0)
    b = standin_patch.apply_standin(lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0),
                                    parse_state_dict(lora), standin_ref, 1.0)
    ya, yb = call(a, x, t, pos), call(b, x, t, pos)
    assert rel_err(ya, yb) < 1e-5
    only_lynx = call(lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)
    assert rel_err(ya, only_lynx) > 1e-3


def test_stacks_with_loras_and_slot_id_tokens(base, lynx):
    """LoRAs under Lynx (a user's, or Slot-ID's cross-attention LoRA: both reach the model as ComfyUI weight
    patches) and Slot-ID's extra identity tokens in the context: Lynx on the patched model equals Lynx on a model
    whose weights were merged up front, so its adapters ride on the native (patched) projections."""
    import comfy.sd
    lynx_patch, checkpoint = lynx
    g = torch.Generator().manual_seed(11)
    deltas = {f"blocks.{i}.{attn}.{p}.weight": 0.05 * torch.randn(DIM, DIM, generator=g)
              for i in range(LAYERS) for attn in ("self_attn", "cross_attn") for p in "qkv"}
    user = base.clone()
    user.add_patches({"diffusion_model." + k: (d,) for k, d in deltas.items()}, 1.0)
    sd = tiny_wan.tiny_wan_state_dict(dim=DIM, layers=LAYERS, ffn=FFN, seed=3)
    merged = comfy.sd.load_diffusion_model_state_dict({k: v + deltas.get(k, 0) for k, v in sd.items()},
                                                      model_options={"dtype": torch.float32})
    steps, emb, ref, ref_ctx = case(seed=12)
    x, t, pos, _ = steps[0]
    pos = pos.clone()
    pos[:, 7:11] = torch.randn(1, 4, 4096, generator=g)  # identity tokens in front of the padding, as Slot-ID adds
    w = weights_of(checkpoint, "full")
    got = call(lynx_patch.apply_lynx(user, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)
    expected = call(lynx_patch.apply_lynx(merged, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)
    assert rel_err(got, expected) < 1e-5
    assert rel_err(got, call(lynx_patch.apply_lynx(base, w, emb, ref, ref_ctx, 1.0, 1.0), x, t, pos)) > 1e-3


# --- nodes -------------------------------------------------------------------------------------------------------

def face_clip_of(n=2, seed=0):
    from wanid_pack.wanid.face_clip import FaceClip
    g = torch.Generator().manual_seed(seed)
    return FaceClip(crops=torch.rand(n, 512, 512, 3, generator=g), masks=torch.ones(n, 512, 512),
                    landmarks=torch.zeros(n, 5, 2), boxes=torch.zeros(n, 4), scores=torch.ones(n),
                    times=torch.arange(n).float(), valid=torch.tensor([True, False][:n]),
                    aligned=torch.rand(n, 112, 112, 3, generator=g), lynx_crops=torch.rand(n, 256, 256, 3, generator=g))


def test_loader_and_apply_nodes(tmp_path, base, lynx):
    lynx_patch, checkpoint = lynx
    import folder_paths
    from wanid_pack.nodes import lynx as nodes
    from face_files import write_ir_se50
    from wanid_pack.wanid.lynx.arcface import embed_aligned, load_arcface
    for variant in ("full", "lite"):
        lynx_files.write_lynx(tmp_path / "lynx" / f"lynx_{variant}", variant, dim=DIM, layers=LAYERS)
    write_ir_se50(tmp_path / "facexlib" / nodes.ARCFACE_FILE)
    folder_paths.add_model_folder_path("lynx", str(tmp_path / "lynx"), is_default=True)
    folder_paths.add_model_folder_path("facexlib", str(tmp_path / "facexlib"), is_default=True)
    assert {"lynx_full", "lynx_lite"} <= set(nodes.lynx_folders())
    assert nodes.arcface_files()[0] == nodes.ARCFACE_FILE

    lite = nodes.WanIDLynxLoader.execute(lynx_name="lynx_lite", arcface_name=nodes.ARCFACE_FILE).result[0]
    assert lite.weights.variant == "lite"
    clip = face_clip_of()
    kw = dict(ip_scale=1.0, ref_scale=1.0, start=0.0, end=1.0, ref_blocks="all")
    patched = nodes.WanIDLynxApply.execute(model=base, lynx=lite, face_clip=clip, **kw).result[0]
    # the node embeds the anchor's aligned face with the IR-SE50 and applies exactly that
    emb = embed_aligned(load_arcface(str(tmp_path / "facexlib" / nodes.ARCFACE_FILE)),
                        (clip.aligned[:1] * 255).round().byte().numpy())[0]
    direct = lynx_patch.apply_lynx(base, lite.weights, emb)
    steps, *_ = case(seed=8)
    x, t, pos, _ = steps[0]
    assert rel_err(call(patched, x, t, pos), call(direct, x, t, pos)) < 1e-6

    full = nodes.WanIDLynxLoader.execute(lynx_name="lynx_full", arcface_name=nodes.ARCFACE_FILE).result[0]
    with pytest.raises(ValueError, match="vae: lynx_full's Ref adapter encodes the reference face"):
        nodes.WanIDLynxApply.execute(model=base, lynx=full, face_clip=clip, **kw)
    no_face = face_clip_of()
    no_face.anchor_index = 1
    with pytest.raises(ValueError, match="face_clip: its anchor frame has no face"):
        nodes.WanIDLynxApply.execute(model=base, lynx=lite, face_clip=no_face, **kw)
    with pytest.raises(ValueError, match="ip_scale"):
        nodes.WanIDLynxApply.execute(model=base, lynx=lite, face_clip=clip, **{**kw, "ip_scale": float("nan")})
    with pytest.raises(FileNotFoundError, match="lynx_name: 'nope' is not a folder of models/lynx"):
        nodes.WanIDLynxLoader.execute(lynx_name="nope", arcface_name=nodes.ARCFACE_FILE)
    with pytest.raises(FileNotFoundError, match="lynx_name: '../facexlib'"):
        nodes.WanIDLynxLoader.execute(lynx_name="../facexlib", arcface_name=nodes.ARCFACE_FILE)


def test_shape_only_reading_checks_every_tensor_and_keeps_none(tmp_path, lynx):
    """Setup Check reads a Lynx folder with keep=False: the same verdicts as the node's loader (a NaN anywhere is
    refused), the same configuration, but meta tensors only (the official 14B files are several GB)."""
    from safetensors.torch import save_file
    _, checkpoint = lynx
    folder = tmp_path / "lynx_full"
    folder.mkdir()
    resampler, ip, ref = lynx_files.lynx_tensors("full", dim=DIM, layers=LAYERS)
    for name, sd in (("resampler", resampler), ("ip_layers", ip), ("ref_layers", ref)):
        save_file(sd, str(folder / f"{name}.safetensors"))
    full, light = checkpoint.load_lynx(str(folder)), checkpoint.load_lynx(str(folder), keep=False)
    assert (light.variant, light.ip_layers, light.ref_layers, light.dim, light.resampler_config) == \
        (full.variant, full.ip_layers, full.ref_layers, full.dim, full.resampler_config)
    assert all(t.device.type == "meta" for t in (*light.ip.values(), *light.ref.values(), *light.resampler.values()))
    ref = dict(ref)
    last = sorted(ref)[-1]
    ref[last] = ref[last].clone()
    ref[last].view(-1)[-1] = float("nan")  # the last value of the last tensor
    save_file(ref, str(folder / "ref_layers.safetensors"))
    for keep in (True, False):
        with pytest.raises(checkpoint.LynxFileError, match=f"{last}: holds 1 NaN"):
            checkpoint.load_lynx(str(folder), keep=keep)


def test_bf16_files_stay_bf16_and_follow_fp32(tmp_path, base, lynx):
    """The official 14B adapters are about 4B parameters: kept as stored (bf16), in the loaded weights and in the
    side model, not widened to fp32; the result follows the fp32 files."""
    from safetensors.torch import save_file
    lynx_patch, checkpoint = lynx
    resampler, ip, ref = lynx_files.lynx_tensors("full", dim=DIM, layers=LAYERS)
    folders = {}
    for dtype in (torch.float32, torch.bfloat16):
        folder = tmp_path / str(dtype).split(".")[-1]
        folder.mkdir()
        for name, sd in (("resampler", resampler), ("ip_layers", ip), ("ref_layers", ref)):
            save_file({k: v.to(dtype) for k, v in sd.items()}, str(folder / f"{name}.safetensors"))
        folders[dtype] = checkpoint.load_lynx(str(folder))
    w16 = folders[torch.bfloat16]
    assert w16.dtype == torch.bfloat16 and all(v.dtype == torch.bfloat16 for v in (*w16.ip.values(),
                                                                                  *w16.ref.values()))
    assert all(v.dtype == torch.float32 for v in w16.resampler.values())  # small, runs on the fp32 embedding
    steps, emb, ref_lat, ref_ctx = case(seed=13)
    x, t, pos, _ = steps[0]
    patched = lynx_patch.apply_lynx(base, w16, emb, ref_lat, ref_ctx, 1.0, 1.0)
    side = patched.get_additional_models_with_key(lynx_patch.KEY)[0].model
    assert side.ip[0].to_k_ip.weight.dtype == torch.bfloat16 and side.ref[0].to_v_ref.weight.dtype == torch.bfloat16
    got = call(patched, x, t, pos)
    expected = call(lynx_patch.apply_lynx(base, folders[torch.float32], emb, ref_lat, ref_ctx, 1.0, 1.0), x, t, pos)
    unpatched = call(base, x, t, pos)
    assert rel_err(got, expected) < 0.1 * rel_err(unpatched, expected)
