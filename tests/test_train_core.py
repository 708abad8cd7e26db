"""Slot-ID trainer pieces that need no ComfyUI: the flow-matching math against float64 references, the training
LoRA against a merged weight (what ComfyUI computes at inference), the manifest, the cache format, the builder's
pairing rule, the latent face mask."""
import json
import math
import os

import pytest
import torch

from wanid.slot.checkpoint import PROJECTIONS, fresh_lora, lora_key
from wanid.train import losses
from wanid.train.builder import SegmentCheck, pick_reference
from wanid.train.dataset import (CacheError, Example, ManifestError, check_entry, entry_key, load_entry, pad_context,
                                 pad_reference, read_manifest, save_entry, split_validation)
from wanid.train.lora import CrossAttnLoRA
from wanid.train.precompute import (PrecomputeSettings, center_crop_resize, face_mask_latent, latent_frame_sources)
from train_files import synthetic_tensors


# ------------------------------------------------------------------------------------------------ losses
def test_shift_matches_wan_schedule_float64():
    u = torch.rand(1000, dtype=torch.float64)
    for shift in (1.0, 3.0, 5.0, 8.0):
        ref = shift * u / (1 + (shift - 1) * u)  # ComfyUI time_snr_shift(shift, u)
        assert torch.allclose(losses.shift_sigma(u, shift), ref, rtol=0, atol=1e-15)
    assert torch.equal(losses.shift_sigma(u, 1.0), u)


def test_sampled_sigmas_follow_the_shifted_distribution():
    g = torch.Generator().manual_seed(0)
    s = losses.sample_sigmas(40000, 5.0, g).double()
    # P(s <= shift(q)) = q for u ~ U(0, 1): empirical CDF within 4 standard errors
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        p = float((s <= losses.shift_sigma(torch.tensor(q, dtype=torch.float64), 5.0)).double().mean())
        assert abs(p - q) < 4 * math.sqrt(q * (1 - q) / 40000)
    assert float(s.min()) >= 1e-3 - 1e-7 and float(s.max()) <= 1 - 1e-3 + 1e-7
    assert float(s.median()) > 0.8  # shift 5 spends most steps at high noise
    v = losses.validation_sigmas(4, 5.0).double()
    assert torch.allclose(v, losses.shift_sigma(torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64), 5.0),
                          atol=1e-7)


def test_noisy_latent_and_velocity():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 16, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    x_s, v = losses.noisy_latent(x0, noise, sigma)
    assert torch.equal(x_s[0], x0[0]) and torch.equal(x_s[2], noise[2])
    assert torch.allclose(x_s[1], 0.7 * x0[1] + 0.3 * noise[1], atol=1e-15)
    assert torch.allclose(v, noise - x0, atol=0)
    # ComfyUI's CONST sampling: denoised = x_s - sigma * v recovers x0 for the true velocity
    assert torch.allclose(x_s - sigma.view(-1, 1, 1, 1, 1) * v, x0, atol=1e-12)


def test_weighted_mse_against_float64():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 16, 3, 4, 5, generator=g)
    target = torch.randn(pred.shape, generator=g)
    mask = (torch.rand(2, 3, 4, 5, generator=g) > 0.6).float()
    mask[1] = 0  # a sample without a face: plain mean
    plain = ((pred.double() - target.double()) ** 2).flatten(1).mean(1)
    assert torch.allclose(losses.weighted_mse(pred, target).double(), plain, rtol=1e-6)
    w = losses.face_weight(mask, torch.tensor([True, True]))
    got = losses.weighted_mse(pred, target, w).double()
    err = (pred.double() - target.double()) ** 2
    want0 = (err[0] * mask[0].double()[None]).sum() / (mask[0].double().sum() * 16)
    assert torch.allclose(got[0], want0, rtol=1e-6)
    assert torch.allclose(got[1], plain[1], rtol=1e-6)
    # the coin: tails means every element counts; no coin up means no weight at all
    w = losses.face_weight(mask, torch.tensor([False, True]))
    assert torch.allclose(losses.weighted_mse(pred, target, w)[0].double(), plain[0], rtol=1e-6)
    assert losses.face_weight(mask, torch.tensor([False, False])) is None
    w = losses.face_weight(mask, torch.tensor([True, True]), background=0.25)
    assert float(w[0].min()) == 0.25 and float(w[0].max()) == 1.0


# ------------------------------------------------------------------------------------------------ LoRA
class _Attn(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        for p in PROJECTIONS:
            setattr(self, p, torch.nn.Linear(dim, dim))


class _DiT(torch.nn.Module):
    def __init__(self, dim, blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleList()
        for _ in range(blocks):
            b = torch.nn.Module()
            b.cross_attn = _Attn(dim)
            self.blocks.append(b)


def test_training_lora_equals_merged_weight_float64():
    dim, rank, alpha = 24, 4, 6.0
    torch.manual_seed(0)
    dit = _DiT(dim, 2).double()
    lora = fresh_lora(dim, 2, rank, alpha, torch.Generator().manual_seed(1))
    for k in lora:
        if k.endswith("lora_up.weight"):
            lora[k] = torch.randn(lora[k].shape, dtype=torch.float64)
    train = CrossAttnLoRA(2, dim, rank, alpha).double()
    train.load_checkpoint_lora(lora)
    x = torch.randn(3, 7, dim, dtype=torch.float64)
    train.attach(dit)
    hooked = {(i, p): getattr(b.cross_attn, p)(x) for i, b in enumerate(dit.blocks) for p in PROJECTIONS}
    train.detach()
    for (i, p), y in hooked.items():
        lin = getattr(dit.blocks[i].cross_attn, p)
        merged = lin.weight + (alpha / rank) * lora[lora_key(i, p, "lora_up.weight")].double() @ \
            lora[lora_key(i, p, "lora_down.weight")].double()
        assert torch.allclose(y, x @ merged.t() + lin.bias, rtol=0, atol=1e-12)
        assert not torch.allclose(getattr(dit.blocks[i].cross_attn, p)(x), y)  # detached: hooks gone
    exported = train.export()
    assert set(exported) == set(lora)
    for k in lora:
        assert torch.allclose(exported[k].double(), lora[k].double(), atol=1e-7)


def test_lora_gradients_reach_down_and_up():
    dit = _DiT(16, 1)
    train = CrossAttnLoRA(1, 16, 2, 2.0)
    train.load_checkpoint_lora(fresh_lora(16, 1, 2, 2.0, torch.Generator().manual_seed(0)))
    train.attach(dit)
    dit.blocks[0].cross_attn.q(torch.randn(4, 16)).square().sum().backward()
    train.detach()
    assert train.up["0_q"].grad.abs().sum() > 0  # up starts at 0: only its gradient is non-zero at first
    assert train.down["0_q"].grad.abs().sum() == 0
    assert train.up["0_k"].grad is None


# ------------------------------------------------------------------------------------------------ manifest
def _touch(path, text="x"):
    with open(path, "w") as f:
        f.write(text)
    return path


def test_manifest_rows_and_named_errors(tmp_path):
    _touch(tmp_path / "a.mp4")
    lines = [
        json.dumps({"reference": "a.mp4", "target": "a.mp4", "reference_duration": 2, "target_start": 3,
                    "caption": "hi", "subject": "a"}),
        "",
        "# a comment",
        "{not json",
        json.dumps({"reference": "a.mp4", "caption": "no target"}),
        json.dumps({"reference": "a.mp4", "target": "a.mp4", "caption": "same segment"}),
        json.dumps({"reference": "a.mp4", "target": "b.mp4", "target_start": -1}),
        json.dumps(["a list"]),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    rows, problems = read_manifest(str(tmp_path / "rows.jsonl"))
    assert len(rows) == 1 and rows[0].row == 1
    assert rows[0].reference.path == str(tmp_path / "a.mp4") and rows[0].target.start == 3.0
    msgs = [str(p) for p in problems]
    assert msgs[0].startswith("manifest row 4: not valid JSON")
    assert msgs[1].startswith("manifest row 5: 'target' must be a video path")
    assert msgs[2].startswith("manifest row 6: the reference overlaps the target segment")
    assert msgs[3].startswith("manifest row 7: target_start must be a number of seconds >= 0")
    assert msgs[4].startswith("manifest row 8: expected a JSON object")
    with pytest.raises(FileNotFoundError):
        read_manifest(str(tmp_path / "nope.jsonl"))


def test_cache_key_follows_content_and_settings(tmp_path):
    _touch(tmp_path / "r.mp4", "ref")
    _touch(tmp_path / "t.mp4", "tgt")
    (tmp_path / "m.jsonl").write_text(json.dumps({"reference": "r.mp4", "target": "t.mp4", "caption": "c"}) + "\n")
    row = read_manifest(str(tmp_path / "m.jsonl"))[0][0]
    k1 = entry_key(row, {"a": 1})
    assert entry_key(row, {"a": 1}) == k1
    assert entry_key(row, {"a": 2}) != k1
    os.utime(tmp_path / "t.mp4", ns=(1, 1))  # same bytes, other mtime: same key
    assert entry_key(row, {"a": 1}) == k1
    _touch(tmp_path / "t.mp4", "tgt2")
    assert entry_key(row, {"a": 1}) != k1
    os.remove(tmp_path / "r.mp4")
    with pytest.raises(ManifestError, match="manifest row 1: reference file not found"):
        entry_key(row, {"a": 1})


def test_cache_entry_round_trip_and_checks(tmp_path):
    t = synthetic_tensors(0, 0, 2)
    path = save_entry(str(tmp_path / "e.safetensors"), t)
    back = load_entry(path)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)
    bad = dict(t, target_face_mask=torch.zeros(3, 3, 3))
    with pytest.raises(CacheError, match="target_face_mask .* does not match the latent grid"):
        check_entry(bad)
    with pytest.raises(CacheError, match="no valid reference frame"):
        check_entry(dict(t, ref_valid=torch.zeros(4, dtype=torch.uint8)))
    with pytest.raises(CacheError, match="missing context"):
        check_entry({k: v for k, v in t.items() if k != "context"})
    with pytest.raises(CacheError, match="NaN"):
        check_entry(dict(t, context=torch.full((2, 4096), float("nan"))))
    (tmp_path / "trunc.safetensors").write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(CacheError, match="unreadable"):
        load_entry(str(tmp_path / "trunc.safetensors"))


def test_padding_helpers():
    t = synthetic_tensors(0, 0, 2)
    p = pad_reference(t, 6)
    assert p["ref_embeddings"].shape[0] == 6 and p["ref_valid"][4:].sum() == 0
    assert torch.equal(p["ref_embeddings"][:4], t["ref_embeddings"])
    c = pad_context(torch.ones(3, 8), 5)
    assert c.shape == (5, 8) and c[3:].abs().sum() == 0
    assert pad_context(torch.ones(7, 8), 5).shape == (7, 8)


def test_validation_split_is_fixed_and_disjoint():
    ex = [Example(row=None, tensors={}, key=str(i)) for i in range(20)]
    tr, va = split_validation(ex, 0.1, seed=3)
    tr2, va2 = split_validation(ex, 0.1, seed=3)
    assert [e.key for e in va] == [e.key for e in va2] and len(va) == 2 and len(tr) == 18
    assert not {e.key for e in tr} & {e.key for e in va}
    assert split_validation(ex[:1], 0.1) == (ex[:1], [])


# ------------------------------------------------------------------------------------------------ precompute pieces
def test_latent_geometry_helpers():
    assert latent_frame_sources(81)[:3] == [0, 4, 8] and len(latent_frame_sources(81)) == 21
    assert latent_frame_sources(5) == [0, 4]
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        PrecomputeSettings(frames=80).check()
    frames = torch.zeros(2, 100, 200, 3, dtype=torch.uint8)
    frames[:, :, 50:150] = 255  # the centre square survives a centre crop to a square
    out = center_crop_resize(frames, 64, 64)
    assert out.shape == (2, 64, 64, 3) and int(out[:, :, 2:-2].min()) == 255  # edges: antialiasing bleed
    mask = face_mask_latent([None, [16, 8, 48, 40]], (64, 64), (8, 8), margin=0.0)
    assert mask[0].sum() == 0
    assert torch.equal(mask[1].nonzero()[:, 0].unique(), torch.arange(1, 5))  # rows 8..40 px -> cells 1..4
    assert torch.equal(mask[1].nonzero()[:, 1].unique(), torch.arange(2, 6))


def test_builder_pairs_with_another_moment():
    good = [SegmentCheck(i, float(i), True) for i in (0, 1, 2, 5)]
    assert pick_reference(good[0], good).index == 2  # nearest not adjacent
    assert pick_reference(good[1], good).index == 5  # 0 and 2 are adjacent to 1
    two = [SegmentCheck(0, 0.0, True), SegmentCheck(1, 1.0, True)]
    assert pick_reference(two[0], two).index == 1  # only the adjacent one left
    assert pick_reference(two[0], two[:1]) is None
