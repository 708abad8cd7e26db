"""Slot-ID checkpoint format (plain torch): round trip, validation with named errors, the init command."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wanid_testing import REPO
from wanid.slot.checkpoint import (SlotIDCheckpointError, SlotIDModelMismatchError, fresh_checkpoint, load_checkpoint,
                                   lora_key, read_file, save_checkpoint)
from wanid.slot.encoder import SlotIDConfig
from wanid.slot.init_checkpoint import build

SMALL = SlotIDConfig(dim=64, num_slots=4, anchor_tokens=2, text_dim=96, lora_rank=4, time_features=32, pool=2)


@pytest.fixture
def small_file(tmp_path):
    ckpt = fresh_checkpoint(128, 2, SMALL, backbone="tiny", seed=3)
    # a "trained" file: non-zero LoRA up and gate, so the round trip checks real values
    for k in ckpt.lora:
        if k.endswith("lora_up.weight"):
            ckpt.lora[k] = torch.randn_like(ckpt.lora[k])
    ckpt.encoder_state["gate"] = torch.randn(4)
    path = save_checkpoint(ckpt, tmp_path / "slot.safetensors")
    return ckpt, path


def test_round_trip_is_bit_exact(small_file):
    ckpt, path = small_file
    back = load_checkpoint(path)
    assert back.config == ckpt.config and back.dim == 128 and back.num_blocks == 2 and back.backbone == "tiny"
    assert set(back.encoder_state) == set(ckpt.encoder_state) and set(back.lora) == set(ckpt.lora)
    for d0, d1 in ((ckpt.encoder_state, back.encoder_state), (ckpt.lora, back.lora)):
        for k in d0:
            assert d1[k].dtype == d0[k].dtype and torch.equal(d1[k], d0[k]), k
    enc = back.build_encoder()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, ckpt.encoder_state[k]), k


def test_file_layout(small_file):
    _, path = small_file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "slot-id" and meta["version"] == "1" and meta["backbone"] == "tiny"
    assert meta["dim"] == "128" and SlotIDConfig.from_json(meta["config"]) == SMALL
    assert "diffusion_model.blocks.1.cross_attn.o.lora_up.weight" in keys
    assert "diffusion_model.blocks.0.cross_attn.q.alpha" in keys
    assert "encoder.reader.gru.weight_ih" in keys and "encoder.gate" in keys
    assert all(k.startswith("encoder.") or ".cross_attn." in k for k in keys)


def test_fresh_lora_is_zero_on_the_up_side():
    ckpt = fresh_checkpoint(128, 3, SMALL)
    assert len(ckpt.lora) == 3 * 4 * 3
    for i in range(3):
        for p in "qkvo":
            assert torch.count_nonzero(ckpt.lora[lora_key(i, p, "lora_up.weight")]) == 0
            down = ckpt.lora[lora_key(i, p, "lora_down.weight")]
            assert down.shape == (4, 128) and down.abs().max() <= 128 ** -0.5 and down.std() > 0
            assert ckpt.lora[lora_key(i, p, "alpha")].item() == SMALL.lora_alpha
    assert torch.count_nonzero(ckpt.encoder_state["gate"]) == 0


def test_wrong_dim_is_refused_with_a_named_error(small_file):
    _, path = small_file
    ckpt = load_checkpoint(path)
    ckpt.check_against(128, 2)
    with pytest.raises(SlotIDModelMismatchError, match=r"model dim 5120 != checkpoint dim 128"):
        ckpt.check_against(5120, 2)
    with pytest.raises(SlotIDModelMismatchError, match=r"has 40 blocks.*covers 2"):
        ckpt.check_against(128, 40)


def _rewrite(path, tmp_path, edit_tensors=None, edit_meta=None):
    tensors, meta = read_file(path)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


@pytest.mark.parametrize("edit_tensors, edit_meta, message", [
    (lambda t: t.pop("encoder.reader.to_q.weight"), None, r"encoder tensor encoder\.reader\.to_q\.weight is missing"),
    (lambda t: t.update({"encoder.extra": torch.zeros(1)}), None, r"unexpected encoder tensor encoder\.extra"),
    (lambda t: t.update({"encoder.gate": torch.zeros(5)}), None, r"encoder\.gate has shape \[5\].*needs \[4\]"),
    (lambda t: t.pop("diffusion_model.blocks.1.cross_attn.k.lora_up.weight"), None,
     r"blocks\.1\.cross_attn\.k\.lora_up\.weight is missing"),
    (lambda t: t.update({"diffusion_model.blocks.0.cross_attn.v.lora_down.weight": torch.zeros(4, 256)}), None,
     r"cross_attn\.v\.lora_down\.weight has shape \[4, 256\], but dim 128 and rank 4 need \[4, 128\]"),
    (lambda t: t.update({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.zeros(1)}), None,
     r"unexpected tensor diffusion_model\.blocks\.0\.self_attn"),
    (None, lambda m: m.update(format="lora"), r"not a Slot-ID checkpoint"),
    (None, lambda m: m.update(version="2"), r"format version '2'"),
    (None, lambda m: m.update(config="{bad"), r"metadata config is invalid"),
    (None, lambda m: m.update(config=json.dumps({**json.loads(m["config"]), "frobs": 1})), r"unknown fields \['frobs'\]"),
    (None, lambda m: m.update(dim="wide"), r"metadata dim 'wide'"),
    (None, lambda m: m.update(dim="256"), r"lora_down\.weight has shape \[4, 128\], but dim 256"),
])
def test_bad_files_are_refused_with_what_is_wrong(small_file, tmp_path, edit_tensors, edit_meta, message):
    _, path = small_file
    bad = _rewrite(path, tmp_path, edit_tensors, edit_meta)
    with pytest.raises(SlotIDCheckpointError, match=message) as info:
        load_checkpoint(bad)
    assert "edited.safetensors" in str(info.value)  # the error names the file


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(SlotIDCheckpointError, match="junk.safetensors is unreadable"):
        load_checkpoint(junk)
    with pytest.raises(SlotIDCheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_init_command_writes_a_valid_fresh_checkpoint(tmp_path):
    out = tmp_path / "tiny.safetensors"
    cmd = [sys.executable, "-m", "wanid.slot.init_checkpoint", "--dim", "128", "--layers", "2", "--backbone", "tiny",
           "--config", json.dumps({"dim": 64, "num_slots": 4, "lora_rank": 4, "time_features": 32}), "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "dim 128, 2 blocks" in res.stdout
    ckpt = load_checkpoint(out)
    assert ckpt.dim == 128 and ckpt.num_blocks == 2 and ckpt.config.dim == 64 and ckpt.config.num_slots == 4
    assert ckpt.config.anchor_tokens == 4 and ckpt.config.text_dim == 4096  # defaults kept


def test_init_command_refuses_an_unknown_width_without_layers(tmp_path, capsys):
    from wanid.slot.init_checkpoint import main
    with pytest.raises(SystemExit) as info:
        main(["--dim", "777", "--out", str(tmp_path / "x.safetensors")])
    assert info.value.code != 0 and "--layers is needed" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_init_backbones_set_block_count_and_vae_channels():
    # sizes only: build() for the 14B backbone would allocate ~50M LoRA parameters; check its plan instead
    from wanid.slot.checkpoint import BACKBONES, DEFAULT_BACKBONE_FOR_DIM
    assert BACKBONES[DEFAULT_BACKBONE_FOR_DIM[5120]] == dict(dim=5120, num_blocks=40, latent_channels=16)
    small = {"dim": 32, "num_slots": 2, "lora_rank": 1, "time_features": 8, "mlp_ratio": 1}
    ckpt = build(1536, backbone="wan2.1-t2v-1.3b", config_overrides=small)
    assert ckpt.num_blocks == 30 and ckpt.lora[lora_key(29, "o", "lora_up.weight")].shape == (1536, 1)
    ckpt = build(3072, config_overrides=small)
    assert ckpt.backbone == "wan2.2-ti2v-5b" and ckpt.config.latent_channels == 48
    with pytest.raises(ValueError, match="has dim 5120, not 1536"):
        build(1536, backbone="wan2.1-t2v-14b")


def test_fresh_checkpoint_leaves_the_global_rng_alone():
    """Issue #11: a fresh checkpoint is a function of its seed and does not reseed the caller's RNG."""
    from wanid.slot.checkpoint import fresh_checkpoint
    from wanid.slot.encoder import SlotIDConfig

    cfg = dict(dim=32, num_slots=2, anchor_tokens=1, time_features=8, lora_rank=2)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = fresh_checkpoint(64, 1, SlotIDConfig(**cfg), seed=5)
    assert torch.equal(torch.rand(4), expected)  # the draws after it are those without it
    b = fresh_checkpoint(64, 1, SlotIDConfig(**cfg), seed=5)
    c = fresh_checkpoint(64, 1, SlotIDConfig(**cfg), seed=6)
    assert all(torch.equal(a.encoder_state[k], b.encoder_state[k]) for k in a.encoder_state)
    assert not torch.equal(a.encoder_state["proj.weight"], c.encoder_state["proj.weight"])
