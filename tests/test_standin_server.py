"""RestrictedAttnPatch through a real ComfyUI server: UNETLoader -> RestrictedAttnPatch -> KSampler."""
import pytest
import torch

from comfy_server import PromptError, comfy_server, wan_t2v_prompt  # noqa: F401  (fixture)
from standin_files import ckpt_bytes, standin_state_dict

pytestmark = pytest.mark.integration

CKPT = "wanid_test_standin.ckpt"


@pytest.fixture(scope="module")
def server(comfy_server):
    comfy_server.add_model("stand_in", CKPT, ckpt_bytes(standin_state_dict()))
    return comfy_server


def patched_prompt(seed=3, strength=1.0, standin_name=CKPT, **kw):
    p = wan_t2v_prompt(seed=seed, **kw)
    p["ref"] = {"class_type": "EmptyHunyuanLatentVideo",
                "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1}}
    p["standin"] = {"class_type": "WanIDRestrictedAttnPatch", "inputs": {
        "model": ["unet", 0], "standin_name": standin_name, "strength": strength, "reference_latent": ["ref", 0]}}
    p["sampler"]["inputs"]["model"] = ["standin", 0]
    return p


def test_node_is_listed_with_its_public_inputs(server):
    info = server.object_info("WanIDRestrictedAttnPatch")
    assert list(info["input"]["required"]) == ["model", "standin_name", "strength"]
    assert set(info["input"]["optional"]) == {"reference_image", "vae", "reference_latent"}
    assert CKPT in info["input"]["required"]["standin_name"][1]["options"] or \
        CKPT in info["input"]["required"]["standin_name"][0]


def test_patched_sampling_finishes_and_changes_the_output(server):
    plain = server.output_latent(server.queue(wan_t2v_prompt(seed=3, filename_prefix="wanid_test/plain")))
    patched = server.output_latent(server.queue(patched_prompt(filename_prefix="wanid_test/standin")))
    assert patched.shape == plain.shape and torch.isfinite(patched).all()
    assert (patched - plain).abs().max() > 1e-3
    server.reset_cache()
    again = server.output_latent(server.queue(patched_prompt(filename_prefix="wanid_test/standin2")))
    assert torch.equal(again, patched), "a second run must not reuse stale K/V or differ"


def test_bad_inputs_give_clear_errors_and_the_server_keeps_serving(server):
    with pytest.raises(PromptError, match="missing.ckpt"):
        server.queue(patched_prompt(standin_name="missing.ckpt", seed=8))

    server.add_model("stand_in", "truncated.ckpt", ckpt_bytes(standin_state_dict())[:2000])
    with pytest.raises(PromptError, match="truncated.ckpt is unreadable"):
        server.queue(patched_prompt(standin_name="truncated.ckpt", seed=4))

    server.add_model("stand_in", "wrong_dim.safetensors", standin_state_dict(dim=256))
    with pytest.raises(PromptError, match="dim 128"):
        server.queue(patched_prompt(standin_name="wrong_dim.safetensors", seed=5))

    odd = patched_prompt(seed=6)
    odd["img"] = {"class_type": "EmptyImage", "inputs": {"width": 100, "height": 90, "batch_size": 1, "color": 0}}
    del odd["standin"]["inputs"]["reference_latent"]
    odd["standin"]["inputs"]["reference_image"] = ["img", 0]
    with pytest.raises(PromptError, match="100x90 is not a multiple of 16"):
        server.queue(odd)

    entry = server.queue(patched_prompt(seed=7, filename_prefix="wanid_test/after_errors"))
    assert torch.isfinite(server.output_latent(entry)).all()


def test_wan22_two_experts_each_with_its_own_file(server):
    """Wan 2.2 A14B: high-noise and low-noise experts, each patched with its own Stand-In file, sampled in turn
    with KSamplerAdvanced (as ComfyUI's own Wan 2.2 template does)."""
    server.add_model("stand_in", "high.ckpt", ckpt_bytes(standin_state_dict(seed=21)))
    server.add_model("stand_in", "low.ckpt", ckpt_bytes(standin_state_dict(seed=22)))

    def two_experts(high, low, prefix):
        p = patched_prompt(seed=9, steps=4, filename_prefix=prefix)
        p["unet_low"] = {"class_type": "UNETLoader", "inputs": dict(p["unet"]["inputs"])}
        p["standin"]["inputs"]["standin_name"] = high
        p["standin_low"] = {"class_type": "WanIDRestrictedAttnPatch", "inputs": {
            **p["standin"]["inputs"], "model": ["unet_low", 0], "standin_name": low}}
        common = {"positive": ["pos", 0], "negative": ["neg", 0], "noise_seed": 9, "steps": 4, "cfg": 5.0,
                  "sampler_name": "euler", "scheduler": "simple"}
        p["sampler"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": ["standin", 0], "latent_image": ["latent", 0], "add_noise": "enable",
            "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable"}}
        p["sampler_low"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": ["standin_low", 0], "latent_image": ["sampler", 0], "add_noise": "disable",
            "start_at_step": 2, "end_at_step": 4, "return_with_leftover_noise": "disable"}}
        p["save"]["inputs"]["samples"] = ["sampler_low", 0]
        return p

    pair = server.output_latent(server.queue(two_experts("high.ckpt", "low.ckpt", "wanid_test/pair")))
    same = server.output_latent(server.queue(two_experts("high.ckpt", "high.ckpt", "wanid_test/same")))
    assert torch.isfinite(pair).all()
    assert (pair - same).abs().max() > 1e-4, "the low-noise expert must use its own file"
