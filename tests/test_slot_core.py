"""Slot-ID core (plain torch, no ComfyUI): Sinkhorn, slot reader, frame tokens, SlotEncoder."""

import numpy as np
import pytest
import torch

from wanid.slot.encoder import SlotEncoder, SlotIDConfig, clip_inputs
from wanid.slot.reader import SlotReader
from wanid.slot.routing_image import routing_image
from wanid.slot.sinkhorn import frame_token_marginals, sinkhorn_log, slot_marginals
from wanid.slot.tokenizer import normalize_times

SMALL = dict(dim=64, num_slots=4, anchor_tokens=2, text_dim=96, lora_rank=4, time_features=32, pool=2)


def sinkhorn_knopp_f64(cost, a, b, eps, tol=1e-13, max_iters=200000):
    """Independent reference: plain probability-domain Sinkhorn-Knopp in numpy float64, run to convergence.
    Zero-mass columns simply get scaling 0."""
    k = np.exp(-np.asarray(cost, np.float64) / eps)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    v = np.ones_like(b)
    for _ in range(max_iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
        plan = u[:, None] * k * v[None, :]
        if np.abs(plan.sum(1) - a).max() < tol:
            return plan
    raise AssertionError("reference Sinkhorn did not converge")


def random_clip(b=2, t=6, seed=0, latents=True, config=None):
    gen = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(b, t, 512, generator=gen), dim=-1)
    lm = torch.rand(b, t, 5, 2, generator=gen)
    times = torch.linspace(0, 1, t).expand(b, t).clone()
    valid = torch.ones(b, t, dtype=torch.bool)
    channels = (config or SlotIDConfig()).latent_channels
    lat = torch.randn(b, t, channels, 16, 16, generator=gen) if latents else None
    return dict(embeddings=e, landmarks=lm, times=times, valid=valid, anchor_index=torch.zeros(b, dtype=torch.long),
                latents=lat)


# ---------------------------------------------------------------- Sinkhorn
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sinkhorn_meets_marginals_and_matches_float64_reference(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    b, s, t, p = 3, 8, 12, 5
    valid = torch.rand(b, t, generator=gen) > 0.3
    valid[:, 0] = True
    cost = torch.randn(b, s, t * p, generator=gen) * 0.5  # logits spread 10 at eps 0.05
    log_a, log_b = slot_marginals(b, s), frame_token_marginals(valid, p)
    plan = sinkhorn_log(cost, log_a, log_b, eps=0.05, iters=300)
    assert plan.dtype == torch.float32 and torch.isfinite(plan).all()
    assert (plan.sum(2) - 1 / s).abs().max() < 1e-4
    assert (plan.sum(1) - log_b.exp()).abs().max() < 1e-4
    for i in range(b):
        # marginals built independently, in float64: 1/S per slot, 1/(T_valid P) per token of a valid frame
        col = np.repeat(valid[i].numpy().astype(np.float64), p) / (int(valid[i].sum()) * p)
        ref = sinkhorn_knopp_f64(cost[i].double().numpy(), np.full(s, 1.0 / s), col, 0.05)
        np.testing.assert_allclose(plan[i].double().numpy(), ref, atol=2e-6, rtol=0)


def test_sinkhorn_float64_path_matches_reference_tightly():
    gen = torch.Generator().manual_seed(7)
    cost = torch.randn(1, 4, 30, generator=gen, dtype=torch.float64) * 0.3
    valid = torch.tensor([[True, False, True, True, False, True]])
    log_a, log_b = slot_marginals(1, 4, dtype=torch.float64), frame_token_marginals(valid, 5, dtype=torch.float64)
    plan = sinkhorn_log(cost, log_a, log_b, eps=0.05, iters=300)
    col = np.repeat(valid[0].numpy().astype(np.float64), 5) / 20.0
    ref = sinkhorn_knopp_f64(cost[0].numpy(), np.full(4, 0.25), col, 0.05)
    np.testing.assert_allclose(plan[0].numpy(), ref, atol=1e-12, rtol=0)


def test_masked_frames_get_zero_mass_and_no_nan_gradient():
    gen = torch.Generator().manual_seed(3)
    valid = torch.tensor([[True, False, True, False], [False, False, True, True]])
    p = 3
    cost = torch.randn(2, 5, 4 * p, generator=gen, dtype=torch.float64, requires_grad=True)
    log_b = frame_token_marginals(valid, p, dtype=torch.float64)
    plan = sinkhorn_log(cost, slot_marginals(2, 5, dtype=torch.float64), log_b, eps=0.1, iters=30)
    mass = plan.reshape(2, 5, 4, p).sum((1, 3))
    assert torch.equal(mass[~valid], torch.zeros_like(mass[~valid]))
    torch.testing.assert_close(mass[valid], torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
    (plan * torch.randn_like(plan)).sum().backward()
    assert torch.isfinite(cost.grad).all()
    masked_grad = cost.grad.reshape(2, 5, 4, p).permute(0, 2, 1, 3)[~valid]  # [frames, S, P]
    assert masked_grad.abs().max() == 0  # a masked frame's cost cannot change anything


def test_sinkhorn_gradient_is_right():
    gen = torch.Generator().manual_seed(11)
    valid = torch.tensor([[True, False, True]])
    log_b = frame_token_marginals(valid, 2, dtype=torch.float64)
    log_a = slot_marginals(1, 3, dtype=torch.float64)
    cost = torch.randn(1, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: sinkhorn_log(c, log_a, log_b, eps=0.2, iters=15), (cost,))


def test_masked_rows_too():
    gen = torch.Generator().manual_seed(12)
    log_a = torch.log(torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64))  # middle row: no mass
    log_b = frame_token_marginals(torch.tensor([[True, False, True]]), 2, dtype=torch.float64)
    cost = torch.randn(1, 3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    plan = sinkhorn_log(cost, log_a, log_b, eps=0.2, iters=200)
    assert plan[0, 1].abs().max() == 0 and plan[0, :, 2:4].abs().max() == 0
    torch.testing.assert_close(plan.sum(2), log_a.exp())
    plan.pow(2).sum().backward()
    assert torch.isfinite(cost.grad).all() and cost.grad[0, 1].abs().max() == 0
    assert torch.autograd.gradcheck(lambda c: sinkhorn_log(c, log_a, log_b, eps=0.2, iters=15), (cost.detach().requires_grad_(),))


def test_frame_marginals_refuse_a_clip_without_faces():
    with pytest.raises(ValueError, match="no valid frame"):
        frame_token_marginals(torch.zeros(1, 4, dtype=torch.bool), 3)


# ---------------------------------------------------------------- reader
def test_slots_are_permutation_equivariant_in_their_initial_order():
    torch.manual_seed(0)
    reader = SlotReader(32, num_slots=5, rounds=3, eps=0.05, iters=20).double()
    tokens = torch.randn(2, 4 * 3, 32, dtype=torch.float64)
    log_b = frame_token_marginals(torch.ones(2, 4, dtype=torch.bool), 3, dtype=torch.float64)
    init = torch.randn(2, 5, 32, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, plan = reader(tokens, log_b, init)
    out_p, plan_p = reader(tokens, log_b, init[:, perm])
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(plan_p, plan[:, perm], atol=1e-10, rtol=0)
    assert not torch.allclose(out_p, out, atol=1e-3)  # the slots do differ: the test could fail


def test_encoder_is_sensitive_to_frame_order_and_masks_invalid_frames():
    torch.manual_seed(0)
    enc = SlotEncoder(SlotIDConfig(**SMALL)).double()
    with torch.no_grad():
        enc.gate.fill_(0.7)
    x = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in random_clip(1).items()}
    out, _ = enc(**x)
    rev = dict(x)
    for k in ("embeddings", "landmarks", "latents"):
        rev[k] = x[k].flip(1)  # same frames, reverse order, times unchanged
    out_rev, _ = enc(**{**rev, "anchor_index": torch.tensor([5])})  # the same anchor frame
    na = enc.config.anchor_tokens
    torch.testing.assert_close(out_rev[:, :na], out[:, :na])  # anchor: same frame, same tokens
    assert (out_rev[:, na:] - out[:, na:]).abs().max() > 1e-3

    # an invalid frame's content does not matter at all (even NaN)
    x["valid"] = x["valid"].clone()
    x["valid"][0, 2] = False
    out1, plan1 = enc(**x)
    y = dict(x, embeddings=x["embeddings"].clone(), latents=x["latents"].clone())
    y["embeddings"][0, 2] = float("nan")
    y["latents"][0, 2] = 123.0
    out2, plan2 = enc(**y)
    torch.testing.assert_close(out1, out2, atol=0, rtol=0)
    assert plan1[0, :, 2].abs().max() == 0
    torch.testing.assert_close(plan1.sum(-1), torch.ones(1, enc.config.num_slots, dtype=torch.float64))


def test_gate_zero_gives_the_anchor_alone():
    torch.manual_seed(1)
    enc = SlotEncoder(SlotIDConfig(**SMALL))
    assert torch.equal(enc.gate, torch.zeros_like(enc.gate))  # untrained gate
    x = random_clip(1, seed=1)
    out, _ = enc(**x)
    na = enc.config.anchor_tokens
    assert torch.equal(out[0, na:], torch.zeros_like(out[0, na:]))  # slot rows are zero rows (like Wan's padding)
    other = random_clip(1, seed=2)
    other["embeddings"][0, 0] = x["embeddings"][0, 0]  # only the anchor frame is shared
    out_other, _ = enc(**other)
    torch.testing.assert_close(out_other, out, atol=0, rtol=0)
    assert out[0, :na].abs().max() > 0
    # strength plays the gate's role at inference
    with torch.no_grad():
        enc.gate.fill_(0.5)
    full, _ = enc(**x)
    half, _ = enc(**x, strength=0.5)
    torch.testing.assert_close(half[0, na:], 0.5 * full[0, na:])
    torch.testing.assert_close(half[0, :na], full[0, :na])


def test_gradients_reach_every_trainable_tensor():
    torch.manual_seed(2)
    enc = SlotEncoder(SlotIDConfig(**SMALL))
    with torch.no_grad():
        enc.gate.fill_(0.3)  # at g = 0 only g itself gets gradient on the slot path (tanh gating, as Flamingo)
    out, _ = enc(**random_clip(2, seed=3))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_untrained_gate_still_trains():
    enc = SlotEncoder(SlotIDConfig(**SMALL))
    out, _ = enc(**random_clip(1))
    (out * torch.randn_like(out)).sum().backward()
    assert enc.gate.grad.abs().min() > 0


def test_sizes_come_from_the_config():
    cfg = SlotIDConfig(dim=48, num_slots=3, anchor_tokens=5, text_dim=40, pool=3, latent_channels=48,
                       time_features=16)
    enc = SlotEncoder(cfg)
    out, plan = enc(**random_clip(2, t=4, config=cfg))
    assert out.shape == (2, 8, 40) and plan.shape == (2, 3, 4)
    assert cfg.tokens_per_frame == 10
    no_vae = SlotEncoder(SlotIDConfig(**{**SMALL, "pool": 0}))
    out, _ = no_vae(**random_clip(1, latents=False))
    assert out.shape == (1, 6, 96)
    with pytest.raises(ValueError, match="VAE latents"):
        enc(**random_clip(1, latents=False, config=cfg))


def test_default_sizes():
    cfg = SlotIDConfig()
    assert (cfg.dim, cfg.tokens_per_frame, cfg.num_slots, cfg.rounds, cfg.anchor_tokens, cfg.text_dim,
            cfg.sinkhorn_eps, cfg.sinkhorn_iters, cfg.lora_rank) == (1024, 17, 8, 3, 4, 4096, 0.05, 20, 32)


def test_projection_rms_is_the_configured_scale():
    torch.manual_seed(0)
    enc = SlotEncoder(SlotIDConfig(**{**SMALL, "text_dim": 4096, "output_scale_init": 0.25}))
    with torch.no_grad():
        enc.gate.fill_(10.0)
    out, _ = enc(**random_clip(1, t=8))
    rms = out.pow(2).mean(-1).sqrt()
    assert ((rms - 0.25).abs() < 0.05).all(), rms


def test_encode_clip_from_a_face_clip():
    from wanid.face_clip import FaceClip

    t = 5
    gen = torch.Generator().manual_seed(5)
    clip = FaceClip(crops=torch.zeros(t, 8, 8, 3), masks=torch.zeros(t, 8, 8), landmarks=torch.rand(t, 5, 2) * 512,
                    boxes=torch.zeros(t, 4), scores=torch.ones(t), times=torch.tensor([2.0, 2.5, 3.0, 3.5, 4.0]),
                    valid=torch.tensor([True, True, False, True, True]),
                    embeddings=torch.nn.functional.normalize(torch.randn(t, 512, generator=gen), dim=-1),
                    anchor_index=3)
    enc = SlotEncoder(SlotIDConfig(**SMALL))
    lat = torch.randn(t, 16, 8, 8)
    ids = enc.encode_clip(**clip_inputs(clip, lat), backbone="tiny", dim=128)
    assert ids.tokens.shape == (6, 96) and ids.plan.shape == (4, 5) and ids.tokens.dtype == torch.float32
    assert ids.plan[:, 2].abs().max() == 0
    assert torch.equal(ids.scaled(0.0)[2:], torch.zeros(4, 96))
    torch.testing.assert_close(normalize_times(clip.times[None], clip.valid[None])[0],
                               torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    with pytest.raises(ValueError, match="antelopev2"):
        clip_inputs(FaceClip(**{**clip.__dict__, "embeddings": None}))


def test_routing_image():
    valid = torch.tensor([1, 1, 0, 1, 1, 1]).bool()
    plan = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), -1) * valid
    plan = plan / plan.sum(-1, keepdim=True)
    img = routing_image(plan, valid=valid, cell=8, gap=1)
    assert img.shape == (1, 4 * 9 + 1, 6 * 9 + 1, 3)
    assert img.min() >= 0 and img.max() <= 1
    # the argmax frame of each slot gets the brightest (yellow) colour
    for s in range(4):
        j = int(plan[s].argmax())
        assert img[0, 1 + s * 9 + 4, 1 + j * 9 + 4, 0] > 0.9
        assert img[0, 1 + s * 9 + 4, 1 + 2 * 9 + 4].std() < 1e-6  # the dropped frame is grey
