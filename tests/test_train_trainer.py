"""The Slot-ID trainer on the tiny random Wan (ComfyUI in-process, CPU): the loss falls, the checkpoint loads in
the Slot-ID nodes and changes sampling, training computes what inference runs, resume is exact, bad rows are
skipped with a named reason while the run goes on, and the command line works end to end."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

import wanid_testing
import tiny_wan
from train_files import (REF_FRAMES, TINY_CONFIG, StandInEncoders, face_tools, tiny_config, write_synthetic_set,
                        write_video)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(comfy_pack):
    return comfy_pack


def dit(seed=3):
    """A fresh tiny Wan per trainer: the trainer hooks its modules, so none is shared between tests."""
    return tiny_wan.load_tiny_wan_patcher("fp32", layers=2, seed=seed)


def load_examples(folder, **kw):
    from wanid.train.dataset import read_manifest
    from wanid.train.precompute import PrecomputeSettings, build_cache
    manifest, cache = write_synthetic_set(folder, **kw)
    rows, problems = read_manifest(manifest)
    examples, problems = build_cache(rows, PrecomputeSettings(), cache, progress=False)
    assert not problems
    return examples


def trainer(patcher, examples, out, val=(), **kw):
    from wanid.slot.checkpoint import fresh_checkpoint
    from wanid.train.trainer import TrainConfig, Trainer
    base = dict(steps=30, lr=3e-3, warmup=0, text_len=16, save_every=0, val_every=0, progress=False, val_sigmas=3)
    base.update(kw)
    init = fresh_checkpoint(128, 2, tiny_config(), backbone="tiny", seed=0)
    return Trainer(patcher.model.diffusion_model, init, examples, list(val), TrainConfig(**base), str(out))


@pytest.fixture(scope="module")
def trained(comfy, tmp_path_factory):
    """30 steps on 2 synthetic identities x 3 rows; returns (examples, checkpoint path, val before, val after)."""
    d = tmp_path_factory.mktemp("train30")
    examples = load_examples(str(d / "data"), identities=2, per_identity=3)
    tr = trainer(dit(), examples, d / "out")
    try:
        before = tr.validate(examples)
        tr.train()
        after = tr.validate(examples)
    finally:
        tr.close()
    return examples, str(d / "out" / "step_000030.safetensors"), before, after, tr.history


def test_thirty_steps_lower_the_loss(trained):
    examples, path, before, after, history = trained
    assert [h["step"] for h in history] == list(range(1, 31))
    assert all(np.isfinite(h["loss"]) for h in history)
    # fixed noise and noise levels on the training rows: a drop far beyond the noise of a single run
    assert after < 0.9 * before, (before, after)
    first, last = np.mean([h["loss"] for h in history[:5]]), np.mean([h["loss"] for h in history[-5:]])
    assert last < first


def _slot_dir(ckpt_path, tmp_path):
    import folder_paths
    from wanid_pack.nodes import paths
    d = tmp_path / "slot_id"
    d.mkdir()
    shutil.copy(ckpt_path, d / "trained_slot.safetensors")
    paths.register_model_folders()
    folder_paths.add_model_folder_path("slot_id", str(d), is_default=True)
    return "trained_slot.safetensors"


class ReplayVAE:
    """comfy VAE.encode stand-in returning, crop after crop, the cached latents in ComfyUI's raw VAE space (the node
    normalises with the Wan 2.1 latent format: the same normalisation the cache holds)."""

    def __init__(self, latents):
        import comfy.latent_formats
        self.raw = comfy.latent_formats.Wan21().process_out(latents.float()[:, :, None])  # [T, C, 1, h, w]
        self.i = 0

    def encode(self, pixels):
        out = self.raw[self.i:self.i + 1]
        self.i += 1
        return out


def face_clip_of(t):
    from wanid_pack.wanid.face_clip import FaceClip
    n = t["ref_embeddings"].shape[0]
    return FaceClip(crops=torch.rand(n, 64, 64, 3), masks=torch.ones(n, 64, 64), landmarks=t["ref_landmarks"] * 512,
                    boxes=torch.zeros(n, 4), scores=torch.ones(n), times=t["ref_times"].float(),
                    valid=t["ref_valid"].bool(), embeddings=t["ref_embeddings"].float(),
                    anchor_index=int(t["ref_anchor"]))


def test_checkpoint_loads_in_the_nodes_and_changes_sampling(trained, tmp_path):
    import comfy.model_management
    import comfy.sample
    from wanid_pack.nodes import slot_id as nodes
    examples, path, *_ = trained
    name = _slot_dir(path, tmp_path)
    base = dit()
    model, slot = nodes.WanIDSlotIDLoader.execute(model=base, slot_id_name=name, lora_strength=1.0).result
    assert slot.checkpoint.backbone == "tiny" and slot.checkpoint.num_blocks == 2
    ref = examples[0].tensors
    tokens, routing = nodes.WanIDSlotEncoder.execute(slot_id=slot, face_clip=face_clip_of(ref),
                                                vae=ReplayVAE(ref["ref_latents"])).result
    assert tokens.tokens.shape == (TINY_CONFIG["anchor_tokens"] + TINY_CONFIG["num_slots"], 4096)

    # the node's tokens are the trainer's tokens for this reference (same encoder, same normalisation)
    tr = trainer(dit(), examples, tmp_path / "unused")
    try:
        from wanid.slot.checkpoint import load_checkpoint
        ck = load_checkpoint(path)
        tr.encoder.load_state_dict(ck.encoder_state)
        tr.encoder.eval()
        with torch.no_grad():
            mine = tr.encode_reference(ref)[0]
    finally:
        tr.close()
    assert torch.allclose(mine, tokens.tokens, atol=1e-5, rtol=1e-4)

    text = torch.cat([ref["context"].float(), torch.zeros(10, 4096)])[None]
    pos = [[text, {}]]
    neg = [[torch.zeros(1, 16, 4096), {}]]
    p_id, n_id = nodes.WanIDIdentityTokenInject.execute(positive=pos, identity_tokens=tokens, strength=1.0,
                                                   pad_negative=True, negative=neg).result

    def sample(m, positive, negative):
        latent = torch.zeros(1, 16, 2, 8, 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        return comfy.sample.sample(m, noise, 3, 4.0, "euler", "simple", positive, negative, latent,
                                   disable_pbar=True, seed=0)

    plain = sample(base, pos, neg)
    with_id = sample(model, p_id, n_id)
    again = sample(base, pos, neg)
    assert torch.equal(plain, again)  # the shared model was not changed by the loader
    assert torch.isfinite(with_id).all()
    assert (with_id - plain).abs().max() > 1e-2


def kitchen_rope_calls(monkeypatch):
    """Count comfy-kitchen RoPE calls: newer ComfyUI (0.33.0) runs RoPE there unless model_management.in_training is
    set. None on a ComfyUI without that dispatch (0.3.64: always torch)."""
    import comfy.model_management
    quant_ops = sys.modules.get("comfy.quant_ops")
    ck = getattr(quant_ops, "ck", None)
    if not hasattr(comfy.model_management, "in_training") or not hasattr(ck, "apply_rope1"):
        return None
    calls = {"n": 0}
    for name in ("apply_rope", "apply_rope1"):
        if hasattr(ck, name):
            def counted(*a, _f=getattr(ck, name), **kw):
                calls["n"] += 1
                return _f(*a, **kw)
            monkeypatch.setattr(ck, name, counted)
    return calls


def test_training_mode_sets_the_flag_and_restores_it(comfy, tmp_path, monkeypatch):
    """Every DiT call of the trainer (the forward, the backward's block recompute, validation) runs with ComfyUI's
    in_training set; afterwards the flag is what it was before, also when the step raises. On a ComfyUI without
    the flag (0.3.64) training_mode adds none; a stand-in flag there checks the same behaviour."""
    import comfy.model_management as mm
    from wanid.train import comfy_host
    if not hasattr(mm, "in_training"):
        with comfy_host.training_mode():
            assert not hasattr(mm, "in_training")
    monkeypatch.setattr(mm, "in_training", "before", raising=False)  # any prior value comes back, not just False
    with comfy_host.training_mode():
        assert mm.in_training is True
        with comfy_host.training_mode():
            pass
        assert mm.in_training is True  # nested: the inner exit keeps the outer's value
    assert mm.in_training == "before"

    examples = load_examples(str(tmp_path / "data"), identities=2, per_identity=1)
    tr = trainer(dit(), examples, tmp_path / "out", steps=2, grad_checkpointing=True)  # as run_training builds it
    seen = []
    # a pre-hook: the recompute stops early, once it has what the backward needs, so a block's forward hook may not run
    hook = tr.dm.blocks[0].register_forward_pre_hook(lambda m, i: seen.append(mm.in_training))
    try:
        tr.train_step()
        assert seen == [True, True] and mm.in_training == "before"  # the forward and the backward's recompute
        seen.clear()
        tr.validate(examples[:1])
        assert seen and all(v is True for v in seen) and mm.in_training == "before"
        seen.clear()
        ex = examples[0]
        noise = torch.randn(ex.latent_shape, generator=torch.Generator().manual_seed(1))[None]
        loss = tr.example_loss(ex, ex.tensors, torch.tensor([0.6]), noise, torch.tensor([True]))
        assert mm.in_training == "before"
        loss.backward()  # outside any step: the checkpointed block sets the flag for its own recompute
        assert seen == [True, True] and mm.in_training == "before"

        def fail(m, i, o):
            assert mm.in_training is True
            raise RuntimeError("boom in block 0")
        hook.remove()
        hook = tr.dm.blocks[0].register_forward_hook(fail)
        with pytest.raises(RuntimeError, match="boom in block 0"):
            tr.train_step()
        assert mm.in_training == "before"
    finally:
        hook.remove()
        tr.close()


def test_training_forward_equals_comfy_lora_inference(trained, tmp_path, monkeypatch):
    """The trainer's hooked LoRA + prepended tokens compute what ComfyUI's LoRA patch + IdentityTokenInject run, and
    the trainer's RoPE (torch, in_training set) what inference runs (comfy-kitchen on 0.33.0): random inputs, fp32."""
    import comfy.model_management
    from wanid.slot.checkpoint import load_checkpoint
    from wanid_pack.nodes import slot_id as nodes
    examples, path, *_ = trained
    ck = load_checkpoint(path)
    patched = nodes.apply_lora(dit(), ck, 1.0)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 16, 2, 8, 8, generator=g)
    sigma = torch.tensor([0.7])
    ctx = torch.randn(1, 20, 4096, generator=g) * 0.1
    kitchen = kitchen_rope_calls(monkeypatch)
    with torch.no_grad():
        comfy.model_management.load_models_gpu([patched])
        want = patched.model.diffusion_model(x, sigma * 1000, ctx).float()
    if kitchen is not None:
        assert kitchen["n"] > 0  # inference took the kitchen RoPE
        kitchen["n"] = 0
    tr = trainer(dit(), examples, tmp_path / "unused")
    try:
        tr.lora.load_checkpoint_lora(ck.lora)
        with torch.no_grad():
            got = tr.velocity(x, sigma, ctx)
            tr.lora.detach()
            plain = tr.velocity(x, sigma, ctx)
    finally:
        tr.close()
    if kitchen is not None:
        assert kitchen["n"] == 0  # training took torch's (autograd, float64)
    assert (want - plain).abs().max() > 1e-3  # the LoRA matters here
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4)


def test_resume_continues_with_the_same_steps_and_losses(comfy, tmp_path):
    from safetensors.torch import load_file
    examples = load_examples(str(tmp_path / "data"), identities=2, per_identity=2)
    kw = dict(steps=4, batch=2, save_every=2, ref_swap=0.5, face_loss_prob=0.5)
    a = trainer(dit(), examples, tmp_path / "a", **kw)
    try:
        a.train()
    finally:
        a.close()
    b = trainer(dit(), examples, tmp_path / "b", **dict(kw, steps=2))
    try:
        b.train()
    finally:
        b.close()
    c = trainer(dit(), examples, tmp_path / "b", **kw)
    try:
        assert c.resume(str(tmp_path / "b")) == 2
        c.train()
    finally:
        c.close()
    assert [h["step"] for h in c.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in c.history] == [h["loss"] for h in a.history]  # bit for bit on the CPU
    ta, tc = load_file(str(tmp_path / "a" / "step_000004.safetensors")), \
        load_file(str(tmp_path / "b" / "step_000004.safetensors"))
    assert set(ta) == set(tc) and all(torch.equal(ta[k], tc[k]) for k in ta)
    d = trainer(dit(), examples, tmp_path / "b", **dict(kw, seed=1))
    try:
        with pytest.raises(ValueError, match="seed=0, now 1"):
            d.resume(str(tmp_path / "b" / "step_000002.state.pt"))
    finally:
        d.close()


def test_gradient_checkpointing_and_bf16(comfy, tmp_path):
    examples = load_examples(str(tmp_path / "data"), identities=2, per_identity=1)
    results = []
    ex = examples[0]
    noise = torch.randn(ex.latent_shape, generator=torch.Generator().manual_seed(1))[None]
    for gc in (False, True):
        tr = trainer(dit(), examples, tmp_path / f"gc{gc}", steps=1, grad_checkpointing=gc)
        try:
            loss = tr.example_loss(ex, ex.tensors, torch.tensor([0.6]), noise, torch.tensor([True]))
            loss.backward()
            results.append((float(loss.detach()), [p.grad.clone() for p in tr.trainable() if p.grad is not None]))
        finally:
            tr.close()
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert len(results[0][1]) == len(results[1][1]) > 0
    for g0, g1 in zip(results[0][1], results[1][1]):  # recomputing the blocks gives the same gradients
        assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-6 * float(g0.abs().max()) + 1e-12)
    tr = trainer(dit(), examples, tmp_path / "fp32", steps=1)
    try:
        tr.train()
        fp32_first = tr.history[0]["loss"]
    finally:
        tr.close()
    tr = trainer(tiny_wan.load_tiny_wan_patcher("bf16", layers=2, seed=3), examples, tmp_path / "bf16", steps=2,
                 bf16=True, grad_checkpointing=True)
    try:
        tr.train()
        assert all(np.isfinite(h["loss"]) for h in tr.history)
        assert fp32_first == pytest.approx(tr.history[0]["loss"], rel=0.1)  # same step, bf16 rounding only
        assert all(p.dtype == torch.float32 for p in tr.trainable())  # float32 masters
    finally:
        tr.close()


def test_bad_rows_are_named_and_skipped_and_the_run_goes_on(comfy, tmp_path):
    from wanid.train.__main__ import run_training
    from wanid.train.precompute import PrecomputeSettings
    from wanid.train.trainer import TrainConfig
    data = tmp_path / "data"
    data.mkdir()
    blocks = np.zeros((24, 64, 64, 3), np.uint8)
    blocks[:, 16:48, 16:48] = [40, 160, 90]  # a green square: no face in it
    write_video(data / "noface.mp4", blocks)
    (data / "garbage.mp4").write_bytes(b"\x00not a video" * 50)
    extra = [
        {"reference": "missing.mp4", "target": "id0_0_tgt.mp4", "caption": "x"},
        {"reference": "garbage.mp4", "target": "id1_0_tgt.mp4", "caption": "x"},
        {"reference": "noface.mp4", "target": "noface.mp4", "reference_duration": 0.5, "target_start": 0.5,
         "caption": "x"},
        "{broken json",
        {"reference": "id0_0_ref.mp4", "target": "id0_0_ref.mp4", "caption": "copy-paste"},
    ]
    settings = PrecomputeSettings(width=64, height=64, frames=5, ref_frames=REF_FRAMES, min_ref_faces=1)
    enc = StandInEncoders()
    tools = face_tools(str(tmp_path))
    manifest, cache = write_synthetic_set(str(data), identities=2, per_identity=2, settings=settings,
                                          encoders_name=enc.name, face_name=tools.name, extra_rows=extra)
    # a good row whose cache entry got truncated: recomputing it fails (its "video" is a stand-in), so it is skipped
    entries = sorted(os.listdir(cache))
    victim = os.path.join(cache, entries[0])
    with open(victim, "r+b") as f:
        f.truncate(64)
    messages = []
    out = tmp_path / "out"
    config = TrainConfig(steps=3, lr=1e-3, warmup=0, text_len=16, save_every=0, val_every=0, progress=False)
    tr = run_training(manifest, str(out), dit().model.diffusion_model, config=config, settings=settings,
                      cache_dir=cache, encoders=enc, face_tools=tools, encoder_config=TINY_CONFIG, backbone="tiny",
                      val_fraction=0, report=messages.append)
    text = "\n".join(messages)
    assert "manifest row 5 (id0_0_tgt.mp4): reference file not found:" in text
    assert "manifest row 6 (id1_0_tgt.mp4): reference: " in text  # the video reader's message names the input
    assert "manifest row 7 (noface.mp4): no face in the reference clip" in text
    assert "manifest row 8: not valid JSON" in text
    assert "manifest row 9: the reference overlaps the target segment" in text
    assert "is unreadable" in text and "computing it again" in text
    assert all(m.endswith("row skipped") for m in messages if m.startswith("manifest row"))
    assert tr.step == 3 and (out / "step_000003.safetensors").is_file()
    assert len(tr.train_set) == 3  # 4 good rows, one lost with its cache entry
    skipped = (out / "skipped.txt").read_text()
    assert "manifest row 7" in skipped and "manifest row 5" in skipped


def test_command_line_trains_and_resumes(comfy, tmp_path, capsys):
    from wanid.train.__main__ import encoders_name, face_tools_name, main
    from wanid.train.precompute import PrecomputeSettings
    unet = tiny_wan.write_tiny_wan(tmp_path / "tiny_wan.safetensors", layers=2, seed=3)
    settings = PrecomputeSettings(width=64, height=64, frames=5, ref_frames=REF_FRAMES)
    ins = str(tmp_path / "insightface")
    manifest, cache = write_synthetic_set(str(tmp_path / "data"), identities=2, per_identity=2, settings=settings,
                                          encoders_name=encoders_name("vae.safetensors", "umt5.safetensors", "Wan21"),
                                          face_name=face_tools_name("auto", ins, None))
    args = ["--comfyui", str(wanid_testing.COMFYUI), "--cpu", "--unet", str(unet), "--vae", "vae.safetensors",
            "--text-encoder", "umt5.safetensors", "--manifest", manifest, "--out", str(tmp_path / "run"),
            "--cache", cache, "--insightface", ins, "--face-parsing", "none", "--width", "64", "--height", "64",
            "--frames", "5", "--ref-frames", str(REF_FRAMES), "--encoder-config", json.dumps(TINY_CONFIG),
            "--text-len", "16", "--lr", "1e-3", "--warmup", "0", "--save-every", "2", "--val-every", "2",
            "--val-fraction", "0.25", "--backbone", "tiny", "--no-progress"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "4", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "3 training and 1 validation examples, 0 rows skipped" in err
    assert "resumed at step 2" in err
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert [e["step"] for e in log if "val_loss" in e] == [0, 2, 4]
    latest = json.loads((tmp_path / "run" / "latest.json").read_text())
    assert latest["step"] == 4
    from wanid.slot.checkpoint import load_checkpoint
    ck = load_checkpoint(str(tmp_path / "run" / latest["checkpoint"]))
    assert ck.dim == 128 and ck.num_blocks == 2 and ck.backbone == "tiny"
    assert any(float(v.abs().max()) > 0 for k, v in ck.lora.items() if k.endswith("lora_up.weight"))
