"""Stand-In + VACE on a real (tiny, random) native Wan 2.1 VACE model in a real ComfyUI, against the OFFICIAL
Stand-In code (infer_with_vace.py's path: WanVideoUnit_VACE, set_stand_in, model_fn_wan_video).

The same control video, masks, VACE reference image and Stand-In face go through ComfyUI's WanVaceToVideo and the
pack's Stand-In node on one side and through the official VACE input preparation and model calls on the other
(tests/standin_vace_oracle.py, in its own process, from a copy of github.com/WeChatCV/Stand-In that
scripts/standin_oracle_env.py makes under ~/.cache; without it those tests skip with the reason). Both sides share
the tiny VACE model, a full-size random Wan 2.1 VAE and the Stand-In weights. The ComfyUI side samples two Euler
steps with CFG; every model call (positive and negative) is recorded and the official model_fn gets the same
latents, timesteps and text embeddings. Wrong variants (Stand-In joined to the VACE blocks, VACE hints added to
the reference tokens, the VACE strength ignored) must fall outside the tolerance.
"""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_wan
from standin_files import oracle_env, standin_state_dict
from wanid_testing import rel_err

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DIM, FFN, LAYERS, VACE_LAYERS = 128, 256, 4, 2  # VACE after blocks 0 and 2, as range(0, 4, 4 // 2)
T, H, W = 5, 32, 48  # control video: 4k+1 frames, multiples of 16 (the official preparation leaves it as is)
IP = 64  # the Stand-In face crop (512 in the real model)
STRENGTH = 0.8  # infer_with_vace.py's default vace_scale
TOL = 1e-5


def run_oracle(tmp_path, tensors, config):
    from safetensors.torch import load_file, save_file
    python, repo = oracle_env()
    inp, outp = tmp_path / "oracle_in.safetensors", tmp_path / "oracle_out.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(inp), metadata={"config": json.dumps(config)})
    r = subprocess.run([python, str(HERE / "standin_vace_oracle.py"), repo, str(inp), str(outp)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"official code failed:\n{r.stderr[-4000:]}"
    return load_file(str(outp))


def pixels(seed):
    """uint8 inputs: control video, a mask video (a box plus grey levels), the VACE reference image, the face."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (T, H, W, 3), generator=g, dtype=torch.uint8)
    mask = torch.zeros(T, H, W, dtype=torch.uint8)
    mask[:, 8:24, 16:40] = 255
    mask[1, :4] = 128
    vace_ref = torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8)
    face = torch.randint(0, 256, (IP, IP, 3), generator=g, dtype=torch.uint8)
    return video, mask, vace_ref, face


def as_image(u8):
    return u8.float() / 255


@pytest.fixture(scope="module")
def setup(comfy_pack):
    """The ComfyUI side, sampled once: the recorded model calls and what the oracle needs."""
    import comfy.sample
    import comfy.sd
    from comfy_extras.nodes_wan import WanVaceToVideo
    from wanid_pack.nodes import standin_patch
    from wanid_pack.nodes.standin import reference_latent_of
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict

    model = tiny_wan.load_tiny_wan_patcher("fp32", dim=DIM, ffn=FFN, layers=LAYERS, vace_layers=VACE_LAYERS, seed=3)
    vae_sd = tiny_wan.wan21_vae_state_dict(seed=4)
    vae = comfy.sd.VAE(sd=vae_sd)
    lora = standin_state_dict(layers=LAYERS, dim=DIM, rank=128)  # init_lora builds rank 128
    video, mask, vace_ref, face = pixels(5)

    g = torch.Generator().manual_seed(6)
    pos_ctx, neg_ctx = torch.zeros(1, 512, 4096), torch.zeros(1, 512, 4096)
    pos_ctx[:, :7] = torch.randn(1, 7, 4096, generator=g)
    neg_ctx[:, :5] = torch.randn(1, 5, 4096, generator=g)
    positive, negative, latent, trim = WanVaceToVideo.execute(
        [[pos_ctx, {}]], [[neg_ctx, {}]], vae, W, H, T, 1, STRENGTH, control_video=as_image(video),
        control_masks=as_image(mask), reference_image=as_image(vace_ref)[None]).args
    assert trim == 1 and latent["samples"].shape[2] == (T - 1) // 4 + 2

    ref = reference_latent_of(model, reference_image=as_image(face)[None], vae=vae)
    patched = standin_patch.apply_standin(model, parse_state_dict(lora), ref, 1.0)

    records = []

    def record(module, args, kwargs, output):
        options = kwargs["transformer_options"]
        for i, which in enumerate(options["cond_or_uncond"]):
            records.append({"x": args[0][i:i + 1].clone(), "t": args[1][i:i + 1].clone(),
                            "ctx": kwargs["context"][i:i + 1].clone(), "neg": which,
                            "vace_context": kwargs["vace_context"][i:i + 1].clone(),
                            "vace_strength": list(kwargs["vace_strength"]), "out": output[i:i + 1].float().clone()})

    hook = patched.model.diffusion_model.register_forward_hook(record, with_kwargs=True)
    try:
        samples = latent["samples"]
        noise = comfy.sample.prepare_noise(samples, 7)
        comfy.sample.sample(patched, noise, 2, 5.0, "euler", "simple", positive, negative, samples,
                            disable_pbar=True, seed=7)
    finally:
        hook.remove()
    # the official order within a step: the positive call (which carries ip_image on the first step), then the negative
    records.sort(key=lambda r: (-float(r["t"]), r["neg"]))
    assert [r["neg"] for r in records] == [0, 1, 0, 1], "two steps, each with a positive and a negative call"
    tensors = {**{f"wan.{k}": v for k, v in tiny_wan.tiny_wan_state_dict(dim=DIM, ffn=FFN, layers=LAYERS,
                                                                       vace_layers=VACE_LAYERS, seed=3).items()},
               **{f"vae.{k}": v for k, v in vae_sd.items()}, **{f"lora.{k}": v for k, v in lora.items()},
               "ip_image": face, "video": video, "mask": mask, "vace_ref": vace_ref}
    for k, r in enumerate(records):
        tensors.update({f"x.{k}": r["x"], f"t.{k}": r["t"], f"ctx.{k}": r["ctx"]})
    return {"patched": patched, "records": records, "tensors": tensors, "standin_patch": standin_patch}


@pytest.fixture(scope="module")
def official(setup, tmp_path_factory):
    config = {"mode": "calls", "dim": DIM, "ffn": FFN, "layers": LAYERS, "vace_scale": STRENGTH,
              "vace_layers": list(range(0, LAYERS, LAYERS // VACE_LAYERS)), "wrong": "hints_on_reference"}
    return run_oracle(tmp_path_factory.mktemp("standin_vace"), setup["tensors"], config)


def errors(records, outputs):
    """rel err over the positive calls and over the negative calls, all steps together."""
    out = {}
    for neg in (0, 1):
        ks = [k for k, r in enumerate(records) if r["neg"] == neg]
        got = torch.cat([records[k]["out"] for k in ks])
        expected = torch.cat([outputs[k] for k in ks])
        out[neg] = rel_err(got, expected)
    return out


def test_vace_context_equals_the_official_one(setup, official):
    """WanVaceToVideo's frames, masks and reference image as the model sees them (after process_latent_in): the
    official WanVideoUnit_VACE's vace_context."""
    got = setup["records"][0]["vace_context"]  # [1, 1, 96, T', h, w] (one VACE input)
    assert got.shape[1] == 1
    assert rel_err(got[:, 0], official["vace_context"]) < TOL


def test_standin_with_vace_equals_the_official_calls(setup, official):
    outputs = [official[f"out.{k}"] for k in range(len(setup["records"]))]
    err = errors(setup["records"], outputs)
    assert err[0] < TOL and err[1] < TOL, f"rel err positive {err[0]:.2e}, negative {err[1]:.2e}"


def the_patch(setup):
    """The Stand-In patch object behind the patched model (its wrapper's owner)."""
    import comfy.patcher_extension
    wrappers = setup["patched"].get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                             setup["standin_patch"].KEY)
    return wrappers[0].__self__


def replay(setup, vace_strength=None):
    """The recorded calls again, in the official order, in a fresh Stand-In run."""
    import comfy.model_management
    patched, patch = setup["patched"], the_patch(setup)
    patch.reset()
    out = []
    with torch.no_grad():
        comfy.model_management.load_models_gpu([patched] + patched.get_nested_additional_models())
        for r in setup["records"]:
            options = tiny_wan.sampler_options(patched)
            options["cond_or_uncond"] = [r["neg"]]
            out.append(patched.model.diffusion_model(
                r["x"], r["t"], context=r["ctx"], vace_context=r["vace_context"],
                vace_strength=vace_strength or r["vace_strength"], transformer_options=options).float())
    patch.reset()
    return out


def test_replay_reproduces_the_sampled_calls(setup):
    """The wrong-variant checks below replay the recorded calls; unchanged, the replay gives the sampled outputs."""
    for got, r in zip(replay(setup), setup["records"]):
        assert rel_err(got, r["out"]) < 1e-6


def test_standin_joined_to_the_vace_blocks_is_detected(setup, official, monkeypatch):
    """The official code gives the LoRA and the reference keys/values to the main blocks only (set_stand_in walks
    dit.blocks; VaceWanModel calls its blocks without x_ip). A variant whose VACE blocks also attend to the
    reference (the keys/values of the main block they follow) must fail the comparison."""
    from comfy.ldm.wan.model import VaceWanAttentionBlock
    patch = the_patch(setup)
    model = setup["patched"].model.diffusion_model
    main_index = {n: i for i, n in model.vace_layers_mapping.items()}
    forward = VaceWanAttentionBlock.forward

    def wrong(self, c, x, **kwargs):
        k_ref, v_ref = patch.reference_kv(main_index[self.block_id])  # built already: the main block ran first
        pending = [True]

        def joined(func, q, k, v, *args, **kw):  # the VACE block's self-attention also sees the reference
            if pending[0] and q.shape[1] == k.shape[1]:
                pending[0] = False
                k = torch.cat([k, k_ref.expand(k.shape[0], -1, -1).to(k)], 1)
                v = torch.cat([v, v_ref.expand(v.shape[0], -1, -1).to(v)], 1)
            return func(q, k, v, *args, **kw)

        kwargs["transformer_options"] = {**kwargs["transformer_options"], "optimized_attention_override": joined}
        return forward(self, c, x, **kwargs)

    monkeypatch.setattr(VaceWanAttentionBlock, "forward", wrong)
    records = [{**r, "out": o} for r, o in zip(setup["records"], replay(setup))]
    err = errors(records, [official[f"out.{k}"] for k in range(len(records))])
    assert min(err.values()) > 100 * TOL, err


def test_hints_added_to_the_reference_tokens_are_detected(setup, official):
    """The official code adds VACE hints to the video tokens only (x, not x_ip). The oracle's variant that runs the
    VACE branch over the reference tokens too and adds its hints to them must fail the comparison."""
    err = errors(setup["records"], [official[f"wrong.{k}"] for k in range(len(setup["records"]))])
    assert min(err.values()) > 100 * TOL, err


def test_vace_strength_ignored_is_detected(setup, official):
    """infer_with_vace.py scales the hints by vace_scale (0.8); a path that drops WanVaceToVideo's strength
    (hints at 1.0) must fail the comparison."""
    records = [{**r, "out": o} for r, o in zip(setup["records"], replay(setup, vace_strength=[1.0]))]
    err = errors(records, [official[f"out.{k}"] for k in range(len(records))])
    assert min(err.values()) > 100 * TOL, err


# --- the official input preparation (WanIDVaceReferencePrep) ---------------------------------------------------------

def official_images(repo):
    """Real inputs from the official repository's test/input: pose.mp4's first 10 frames cut to an odd size (so the
    crop and the trim both act), and two photos of other sizes (lecun.jpg, ruonan.jpg) as reference images."""
    import av
    from PIL import Image

    with av.open(str(Path(repo) / "test" / "input" / "pose.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(10), c.decode(video=0))]
    video = torch.from_numpy(np.stack(frames)[:, 3:473, 2:827].copy())  # 825x470: crops to 816x464, 9 frames
    photos = [torch.from_numpy(np.asarray(Image.open(Path(repo) / "test" / "input" / n).convert("RGB")).copy())
              for n in ("lecun.jpg", "ruonan.jpg")]
    return video, photos


def test_vace_prep_node_equals_the_official_preparation(comfy_pack, tmp_path):
    """The node against WanVideoPipeline.__call__'s own preparation (load_video_as_list's crop and trim, the
    letterbox on white), run by the official code on the same real frames and photos: frames identical, the
    reference within 1 grey level (both use PIL's LANCZOS: identical here)."""
    from wanid_pack.nodes.vace import WanIDVaceReferencePrep
    _, repo = oracle_env()
    video, photos = official_images(repo)
    for photo in photos:
        expected = run_oracle(tmp_path, {"video": video, "vace_ref": photo}, {"mode": "prep"})
        frames_in, photo_in = as_image(video), as_image(photo)[None]
        before = (frames_in.clone(), photo_in.clone())
        frames, ref, width, height, length = WanIDVaceReferencePrep.execute(frames_in, photo_in).args
        assert torch.equal(frames_in, before[0]) and torch.equal(photo_in, before[1]), "inputs left untouched"
        assert (length, height, width) == tuple(expected["video"].shape[:3]) == (9, 464, 816)
        assert torch.equal(frames, as_image(expected["video"]))
        assert ref.shape == (1, height, width, 3)
        assert (ref[0] * 255 - expected["vace_ref"].float()).abs().max() <= 1.0
        assert photo.shape[:2] != (height, width)  # the letterbox did act


def test_vace_prep_node_then_wanvacetovideo_leaves_the_inputs_as_they_are(comfy_pack):
    """Fed the prep node's outputs at their own size, WanVaceToVideo resizes nothing: its control frames and its
    reference are the prepared ones (checked through a VAE that records what it encodes)."""
    from comfy_extras.nodes_wan import WanVaceToVideo
    from wanid_pack.nodes.vace import WanIDVaceReferencePrep
    g = torch.Generator().manual_seed(9)
    video = torch.rand(7, 37, 53, 3, generator=g)
    photo = torch.rand(1, 30, 20, 3, generator=g)
    frames, ref, width, height, length = WanIDVaceReferencePrep.execute(video, photo).args
    assert (length, height, width) == (5, 32, 48)
    seen = []

    class RecordingVae:
        def encode(self, pixels):
            seen.append(pixels.clone())
            return torch.zeros(1, 16, (pixels.shape[0] - 1) // 4 + 1, pixels.shape[1] // 8, pixels.shape[2] // 8)

    WanVaceToVideo.execute([[torch.zeros(1, 4, 4096), {}]], [[torch.zeros(1, 4, 4096), {}]], RecordingVae(), width,
                           height, length, 1, 1.0, control_video=frames, reference_image=ref)
    reference, inactive, reactive = seen
    assert torch.equal(reference, ref)
    assert torch.allclose(reactive, frames, atol=1e-6) and torch.allclose(inactive, torch.full_like(frames, 0.5))


@pytest.mark.parametrize("frames, error", [
    (torch.rand(5, 15, 40, 3), "control_video: 40x15 pixels"),
    (torch.rand(0, 32, 32, 3), "control_video: expected an IMAGE batch"),
    (torch.full((5, 32, 32, 3), float("nan")), "control_video"),
])
def test_vace_prep_refuses_bad_video(comfy_pack, frames, error):
    from wanid_pack.nodes.vace import WanIDVaceReferencePrep
    from wanid_pack.wanid.errors import WanIDError
    with pytest.raises(WanIDError, match=error):
        WanIDVaceReferencePrep.execute(frames, None)


def test_vace_prep_refuses_a_nan_reference_and_passes_no_reference_on(comfy_pack):
    from wanid_pack.nodes.vace import WanIDVaceReferencePrep
    from wanid_pack.wanid.errors import NonFiniteError
    video = torch.rand(5, 32, 32, 3)
    with pytest.raises(NonFiniteError, match="reference_image"):
        WanIDVaceReferencePrep.execute(video, torch.full((1, 8, 8, 3), float("nan")))
    frames, ref, *_ = WanIDVaceReferencePrep.execute(video, None).args
    assert ref is None and torch.equal(frames, video)
