"""Slot-ID nodes in-process inside a real ComfyUI (CPU) with the tiny random Wan: LoRA through ComfyUI's machinery,
SlotEncoder, IdentityTokenInject, and what the sampler does with the tokens."""

import pytest
import torch

import standin_reference
import tiny_wan
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration

LAYERS, DIM = 2, 128
SMALL = dict(dim=64, num_slots=4, anchor_tokens=2, lora_rank=4, lora_alpha=8.0, time_features=32, pool=2)


@pytest.fixture(scope="module")
def pack(comfy_pack):
    return comfy_pack


@pytest.fixture(scope="module")
def nodes(pack):
    from wanid_pack.nodes import slot_id
    return slot_id


@pytest.fixture(scope="module")
def slot_dir(pack, tmp_path_factory):
    """A models/slot_id folder registered with folder_paths, holding a fresh and a 'trained' checkpoint."""
    import folder_paths
    from wanid_pack.nodes import paths
    from wanid_pack.wanid.slot.checkpoint import fresh_checkpoint, save_checkpoint
    from wanid_pack.wanid.slot.encoder import SlotIDConfig

    d = tmp_path_factory.mktemp("slot_id")
    paths.register_model_folders()
    folder_paths.add_model_folder_path("slot_id", str(d), is_default=True)
    cfg = SlotIDConfig(**SMALL)
    save_checkpoint(fresh_checkpoint(DIM, LAYERS, cfg, backbone="tiny", seed=1), d / "fresh.safetensors")
    trained = fresh_checkpoint(DIM, LAYERS, cfg, backbone="tiny", seed=1)
    g = torch.Generator().manual_seed(5)
    for k in trained.lora:
        if k.endswith("lora_up.weight"):
            trained.lora[k] = torch.randn(trained.lora[k].shape, generator=g) * 0.3
    trained.encoder_state["gate"] = torch.full((SMALL["num_slots"],), 0.8)
    save_checkpoint(trained, d / "trained.safetensors")
    save_checkpoint(fresh_checkpoint(256, LAYERS, cfg, backbone="wide"), d / "dim256.safetensors")
    save_checkpoint(fresh_checkpoint(DIM, 3, cfg, backbone="deeper"), d / "blocks3.safetensors")
    return d


@pytest.fixture(scope="module")
def base():
    return tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)


def run(cls, **kw):
    return cls.execute(**kw).result


def inputs(seed=0, tokens=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 6, 8, generator=g)
    t = torch.rand(1, generator=g) * 1000
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :tokens] = torch.randn(1, tokens, 4096, generator=g)
    return x, t, ctx


def face_clip(t=5, size=64, seed=0, embeddings=True, anchor=2):
    from wanid_pack.wanid.face_clip import FaceClip
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(t, dtype=torch.bool)
    valid[1] = False
    return FaceClip(crops=torch.rand(t, size, size, 3, generator=g), masks=torch.ones(t, size, size),
                    landmarks=torch.rand(t, 5, 2, generator=g) * 512, boxes=torch.zeros(t, 4), scores=torch.ones(t),
                    times=torch.arange(t, dtype=torch.float32) * 0.4, valid=valid,
                    embeddings=torch.nn.functional.normalize(torch.randn(t, 512, generator=g), dim=-1)
                    if embeddings else None, anchor_index=anchor)


class StubVAE:
    """Duck-types comfy.sd.VAE.encode for a Wan 2.1 VAE: [N, H, W, 3] -> [1, 16, 1, H/8, W/8], records the calls."""

    def __init__(self, channels=16):
        self.channels = channels
        self.calls = []

    def encode(self, pixels):
        self.calls.append(tuple(pixels.shape))
        n, h, w, _ = pixels.shape
        assert n == 1  # one crop at a time: a batch of N images would be read as N frames of one video
        pooled = torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)  # [1, 3, h/8, w/8]
        lat = pooled.repeat(1, (self.channels + 2) // 3, 1, 1)[:, :self.channels]
        return lat.unsqueeze(2) * torch.arange(1, self.channels + 1).view(1, -1, 1, 1, 1)


# ---------------------------------------------------------------- loader and LoRA
def test_fresh_checkpoint_leaves_the_model_unchanged(nodes, slot_dir, base):
    model, slot = run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="fresh.safetensors", lora_strength=1.0)
    assert model is not base and len(base.patches) == 0  # a clone; the shared model is not touched
    assert len(model.patches) == 4 * LAYERS
    x, t, ctx = inputs()
    assert torch.equal(call(model, x, t, ctx), call(base, x, t, ctx))
    assert slot.config.num_slots == 4 and slot.checkpoint.dim == DIM


def test_lora_is_applied_by_comfy_as_the_float64_reference(nodes, slot_dir, base):
    from wanid_pack.wanid.slot.checkpoint import load_checkpoint
    model, _ = run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="trained.safetensors", lora_strength=0.7)
    x, t, ctx = inputs(seed=1)
    got = call(model, x, t, ctx)
    lora = load_checkpoint(slot_dir / "trained.safetensors").lora
    sd = tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3)
    scale = 0.7 * SMALL["lora_alpha"] / SMALL["lora_rank"]
    for i in range(LAYERS):
        for p in "qkvo":
            pre = f"diffusion_model.blocks.{i}.cross_attn.{p}."
            sd[f"blocks.{i}.cross_attn.{p}.weight"] = (sd[f"blocks.{i}.cross_attn.{p}.weight"].double() + scale *
                                                       lora[pre + "lora_up.weight"].double() @
                                                       lora[pre + "lora_down.weight"].double())
    expected = standin_reference.forward(sd, x, t, ctx, LAYERS)
    plain = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), x, t, ctx, LAYERS)
    err = rel_err(got, expected)
    assert err < 1e-5, err
    assert rel_err(plain, expected) > 1e-2  # the LoRA does matter
    zero, _ = run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="trained.safetensors", lora_strength=0.0)
    assert zero is base


def test_lora_on_fp8_weights(nodes, slot_dir):
    fp8 = tiny_wan.load_tiny_wan_patcher("fp8_e4m3fn", layers=LAYERS, seed=3)
    model, _ = run(nodes.WanIDSlotIDLoader, model=fp8, slot_id_name="trained.safetensors", lora_strength=1.0)
    x, t, ctx = inputs(seed=2)
    out, plain = call(model, x, t, ctx), call(fp8, x, t, ctx)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name, message", [("dim256.safetensors", r"model dim 128 != checkpoint dim 256"),
                                           ("blocks3.safetensors", r"has 2 blocks, the checkpoint's LoRA covers 3")])
def test_checkpoint_for_another_model_is_refused(nodes, slot_dir, base, name, message):
    from wanid_pack.wanid.slot.checkpoint import SlotIDModelMismatchError
    with pytest.raises(SlotIDModelMismatchError, match=message):
        run(nodes.WanIDSlotIDLoader, model=base, slot_id_name=name, lora_strength=1.0)


def test_missing_file_and_non_wan_model(nodes, slot_dir, base):
    with pytest.raises(FileNotFoundError, match="slot_id_name: 'nope.safetensors' is not in models/slot_id"):
        run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="nope.safetensors")

    class NotWan:
        model = type("M", (), {"diffusion_model": torch.nn.Linear(2, 2)})()
    with pytest.raises(ValueError, match="model: Slot-ID needs a Wan"):
        run(nodes.WanIDSlotIDLoader, model=NotWan(), slot_id_name="fresh.safetensors")


# ---------------------------------------------------------------- SlotEncoder
def test_slot_encoder_node(nodes, slot_dir, base):
    _, slot = run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="trained.safetensors")
    clip = face_clip()
    vae = StubVAE()
    ids, image = run(nodes.WanIDSlotEncoder, slot_id=slot, face_clip=clip, vae=vae)
    assert len(vae.calls) == 4 and vae.calls[0] == (1, 64, 64, 3)  # valid frames only, one by one
    assert ids.tokens.shape == (6, 4096) and ids.tokens.dtype == torch.float32 and ids.tokens.device.type == "cpu"
    assert ids.plan.shape == (4, 5) and ids.plan[:, 1].abs().max() == 0
    assert ids.dim == DIM and ids.backbone == "tiny" and ids.num_anchor == 2
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3

    # the same as the core encoder on normalised latents (comfy's Wan21 latent format)
    import comfy.latent_formats
    from wanid_pack.wanid.slot.encoder import clip_inputs
    lat = torch.zeros(5, 16, 8, 8)
    for t in (0, 2, 3, 4):
        lat[t] = comfy.latent_formats.Wan21().process_in(StubVAE().encode(clip.crops[t:t + 1]))[0, :, 0]
    ref = slot.checkpoint.build_encoder().encode_clip(**clip_inputs(clip, lat))
    torch.testing.assert_close(ids.tokens, ref.tokens, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="vae: this Slot-ID checkpoint reads each crop's Wan VAE latent"):
        run(nodes.WanIDSlotEncoder, slot_id=slot, face_clip=clip)
    with pytest.raises(ValueError, match="antelopev2"):
        run(nodes.WanIDSlotEncoder, slot_id=slot, face_clip=face_clip(embeddings=False), vae=vae)
    with pytest.raises(ValueError, match="vae: it encodes a crop to .*48"):
        run(nodes.WanIDSlotEncoder, slot_id=slot, face_clip=clip, vae=StubVAE(48))


def test_slot_encoder_with_comfy_wan_vae(nodes, slot_dir, base):
    """ComfyUI's own Wan 2.1 VAE on 64x64 crops, loaded from a complete state dict (real key names and shapes, random
    unit-gain weights: no VAE file can be downloaded) that every supported ComfyUI detects as the Wan 2.1 VAE.
    Slow on CPU (~4 s a crop): one valid frame."""
    import comfy.sd
    vae = comfy.sd.VAE(sd=tiny_wan.wan21_vae_state_dict(seed=0))
    vae.throw_exception_if_invalid()
    assert vae.latent_channels == 16 and vae.downscale_ratio[1:] == (8, 8)
    _, slot = run(nodes.WanIDSlotIDLoader, model=base, slot_id_name="trained.safetensors")
    clip = face_clip(t=2, anchor=0)  # frame 1 invalid: one VAE encode
    ids, _ = run(nodes.WanIDSlotEncoder, slot_id=slot, face_clip=clip, vae=vae)
    assert ids.tokens.shape == (6, 4096) and torch.isfinite(ids.tokens).all()
    assert ids.plan.shape == (4, 2) and torch.equal(ids.plan[:, 0], torch.ones(4))


# ---------------------------------------------------------------- IdentityTokenInject
def _tokens(num_anchor=2, num_slots=4, seed=0):
    from wanid_pack.wanid.slot.encoder import IdentityTokens
    g = torch.Generator().manual_seed(seed)
    return IdentityTokens(tokens=torch.randn(num_anchor + num_slots, 4096, generator=g),
                          plan=torch.full((num_slots, 3), 1 / 3), num_anchor=num_anchor, num_slots=num_slots)


def test_inject_prepends_to_every_positive_and_pads_the_negative(nodes):
    ids = _tokens()
    pos = [[torch.randn(1, 512, 4096), {"a": 1}], [torch.randn(2, 520, 4096, dtype=torch.float16), {}]]
    neg = [[torch.randn(1, 512, 4096), {}]]
    pos_copy = [p[0].clone() for p in pos]
    new_pos, new_neg = run(nodes.WanIDIdentityTokenInject, positive=pos, identity_tokens=ids, strength=0.5,
                           pad_negative=True, negative=neg)
    assert [p[0].shape for p in new_pos] == [(1, 518, 4096), (2, 526, 4096)]
    assert new_pos[0][1] == {"a": 1} and new_pos[0][1] is not pos[0][1]
    torch.testing.assert_close(new_pos[0][0][0, :2], ids.tokens[:2])  # anchor rows as they are
    torch.testing.assert_close(new_pos[0][0][0, 2:6], 0.5 * ids.tokens[2:])  # slot rows times strength
    assert torch.equal(new_pos[0][0][:, 6:], pos_copy[0])
    assert new_pos[1][0].dtype == torch.float16 and torch.equal(new_pos[1][0][1, 6:], pos_copy[1][1])
    assert all(torch.equal(p[0], c) for p, c in zip(pos, pos_copy))  # inputs untouched
    assert new_neg[0][0].shape == (1, 518, 4096) and torch.count_nonzero(new_neg[0][0][:, :6]) == 0
    assert torch.equal(new_neg[0][0][:, 6:], neg[0][0])

    _, same_neg = run(nodes.WanIDIdentityTokenInject, positive=pos, identity_tokens=ids, strength=1.0,
                      pad_negative=False, negative=neg)
    assert same_neg is neg
    with pytest.raises(ValueError, match=r"positive: entry 0 has shape \[1, 77, 768\]"):
        run(nodes.WanIDIdentityTokenInject, positive=[[torch.zeros(1, 77, 768), {}]], negative=neg, identity_tokens=ids)


def _sample(model, positive, negative, steps=2, seed=0):
    """KSampler as the node runs it (comfy.sample.sample), counting the diffusion-model calls and their batch."""
    import comfy.patcher_extension
    import comfy.sample
    calls = []

    def count(executor, x, *args, **kwargs):
        calls.append(x.shape[0])
        return executor(x, *args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "wanid_test_count", count)
    latent = torch.zeros(1, 16, 2, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    out = comfy.sample.sample(m, noise, steps, 4.0, "euler", "simple", positive, negative, latent,
                              disable_pbar=True, seed=seed)
    return out, calls


def test_negative_padding_gives_one_model_call_per_step(nodes, base):
    g = torch.Generator().manual_seed(3)
    pos = [[torch.cat([torch.randn(1, 12, 4096, generator=g), torch.zeros(1, 500, 4096)], 1), {}]]
    neg = [[torch.cat([torch.randn(1, 5, 4096, generator=g), torch.zeros(1, 507, 4096)], 1), {}]]
    ids = _tokens()
    p1, n1 = run(nodes.WanIDIdentityTokenInject, positive=pos, identity_tokens=ids, strength=1.0, pad_negative=True,
                 negative=neg)
    out_pad, calls = _sample(base, p1, n1, steps=3)
    assert calls == [2, 2, 2]  # positive and negative batched: one call per step
    p2, n2 = run(nodes.WanIDIdentityTokenInject, positive=pos, identity_tokens=ids, strength=1.0, pad_negative=False,
                 negative=neg)
    out_nopad, calls = _sample(base, p2, n2, steps=3)
    assert calls == [1] * 6  # shapes differ: two calls per step
    assert torch.isfinite(out_pad).all() and torch.isfinite(out_nopad).all()


def test_tokens_reach_cross_attention(nodes, base):
    g = torch.Generator().manual_seed(4)
    pos = [[torch.cat([torch.randn(1, 12, 4096, generator=g), torch.zeros(1, 500, 4096)], 1), {}]]
    neg = [[torch.zeros(1, 512, 4096), {}]]
    ids = _tokens(seed=1)
    plain, _ = _sample(base, pos, neg)
    outs = []
    for strength in (1.0, 0.0):
        p, n = run(nodes.WanIDIdentityTokenInject, positive=pos, identity_tokens=ids, strength=strength, negative=neg)
        outs.append(_sample(base, p, n)[0])
    assert (outs[0] - plain).abs().max() > 1e-3  # the tokens change the output
    assert (outs[0] - outs[1]).abs().max() > 1e-3  # and so do the slot tokens alone
