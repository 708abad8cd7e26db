"""The integration harness itself: the tiny Wan model in-process, and a real ComfyUI server with the pack."""
import pytest
import torch

import wanid_testing
import tiny_wan
from comfy_server import PACK_NAME, PromptError, TINY_WAN, comfy_server, wan_t2v_prompt  # noqa: F401
from wanid_testing import rel_err

integration = pytest.mark.integration  # needs a real ComfyUI (in-process or a server)


# ---------------------------------------------------------------- tiny Wan, in-process


@integration
def test_tiny_wan_is_detected_as_native_wan21_t2v():
    wanid_testing.import_comfy()
    import comfy.model_detection

    sd = tiny_wan.tiny_wan_state_dict(dim=256, ffn=384, layers=3)
    cfg = comfy.model_detection.detect_unet_config(sd, "")
    assert cfg["image_model"] == "wan2.1" and cfg["model_type"] == "t2v"
    assert (cfg["dim"], cfg["num_heads"], cfg["ffn_dim"], cfg["num_layers"], cfg["in_dim"], cfg["out_dim"]) == \
        (256, 2, 384, 3, 16, 16)

    patcher = tiny_wan.load_tiny_wan_patcher()
    model_sd = patcher.model.diffusion_model.state_dict()
    shapes = tiny_wan.tiny_wan_shapes()
    # exactly the native module's parameters: nothing missing, nothing left over
    assert {k: tuple(v.shape) for k, v in model_sd.items()} == shapes
    ref = tiny_wan.tiny_wan_state_dict()
    for k, v in ref.items():
        assert torch.equal(model_sd[k].float(), v), k  # every weight arrived unchanged
        if k.endswith(".bias"):
            assert v.abs().min() > 0, k


def test_tiny_wan_dim_must_give_whole_heads():
    with pytest.raises(ValueError, match="multiple of 128"):
        tiny_wan.tiny_wan_shapes(dim=64)


def _forward(patcher, x, ctx, t=500.0):
    with torch.no_grad():
        return patcher.model.diffusion_model(x, torch.tensor([t]), ctx)


@pytest.fixture(scope="module")
def wan_inputs():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 16, 2, 8, 8, generator=gen)
    ctx = torch.zeros(1, 512, 4096)
    ctx[:, :16] = torch.randn(1, 16, 4096, generator=gen)
    return x, ctx


@integration
def test_forward_fp32(wan_inputs):
    x, ctx = wan_inputs
    patcher = tiny_wan.load_tiny_wan_patcher()
    assert patcher.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float32
    out = _forward(patcher, x, ctx)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert 0.1 < out.std() < 10  # the weight scaling keeps activations O(1)
    ctx2 = ctx.clone()
    ctx2[:, :16] = torch.randn(1, 16, 4096, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(_forward(patcher, x, ctx2), out, atol=1e-4)  # the text reaches the output
    assert torch.equal(_forward(patcher, x, ctx), out)


@integration
@pytest.mark.parametrize("weight_dtype,storage", [("fp8_e4m3fn", torch.float8_e4m3fn), ("bf16", torch.bfloat16)])
def test_forward_low_precision_weights(wan_inputs, weight_dtype, storage):
    """UNETLoader's low-precision weights: stored as `storage`, cast per call (manual_cast) on the CPU.
    Reference: the fp32 model loaded with the same rounded values must give the same output."""
    x, ctx = wan_inputs
    low = tiny_wan.load_tiny_wan_patcher(weight_dtype)
    low_sd = low.model.diffusion_model.state_dict()
    assert low_sd["blocks.0.self_attn.q.weight"].dtype == storage
    assert low_sd["blocks.1.ffn.0.weight"].dtype == storage
    out = _forward(low, x, ctx)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()

    rounded = tiny_wan.load_tiny_wan_patcher()
    rounded.model.diffusion_model.load_state_dict({k: v.float() for k, v in low_sd.items()})
    torch.testing.assert_close(out, _forward(rounded, x, ctx), rtol=1e-5, atol=1e-5)

    full = _forward(tiny_wan.load_tiny_wan_patcher(), x, ctx)
    rel = rel_err(out, full)
    assert 0 < rel < 0.25, rel  # rounded, yet the same network


@integration
def test_support_conditioning_node_shape():
    wanid_testing.import_comfy()
    import importlib.util

    spec = importlib.util.spec_from_file_location("wanid_test_support",
                                                  wanid_testing.REPO / "tests/support_nodes/__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (cond, extra), = mod.WanIDTestWanConditioning.execute(seed=3, tokens=5).args[0]
    assert cond.shape == (1, 512, 4096) and extra == {}
    assert (cond[0, :5].abs().sum(-1) > 0).all() and not cond[0, 5:].any()
    (again, _), = mod.WanIDTestWanConditioning.execute(seed=3, tokens=5).args[0]
    assert torch.equal(cond, again)


# ---------------------------------------------------------------- a real server


def _cached_nodes(entry):
    return {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}


@integration
def test_server_serves_support_nodes_and_tiny_model(comfy_server):
    info = comfy_server.object_info()
    for node in ("WanIDTestWanConditioning", "WanIDTestSaveTensor", "WanIDTestPing"):
        assert node in info, node
    assert info["WanIDTestWanConditioning"]["input"]["required"]["tokens"][1]["default"] == 16
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == [TINY_WAN]
    assert comfy_server.pack_problems("wanid_test_support") == []


@integration
def test_pack_imports_into_the_server_without_errors(comfy_server, comfy_pack):
    info = comfy_server.object_info()
    problems = comfy_server.pack_problems()
    assert problems == [], "\n".join(problems)
    log = comfy_server.log_text()
    loaded = [ln for ln in log.splitlines() if ln.rstrip().endswith(f"custom_nodes/{PACK_NAME}")]
    assert loaded and "IMPORT FAILED" not in loaded[0], loaded

    # every node the pack registers in-process is served, under the same id
    expected = {cls.GET_SCHEMA().node_id for cls in comfy_pack.nodes.all_nodes()}
    assert expected <= set(info), expected - set(info)
    assert all(n.startswith("WanID") for n in expected)


@integration
def test_sampling_is_seeded_and_deterministic(comfy_server):
    first_entry = comfy_server.queue(wan_t2v_prompt(seed=1))
    first, path1 = comfy_server.output_latent(first_entry), comfy_server.output_latent_file(first_entry)
    assert first.shape == (1, 16, 2, 8, 8)
    assert torch.isfinite(first).all() and first.std() > 0.1

    # without a reset ComfyUI answers a repeated prompt from its cache (it keeps the last prompt's results)...
    cached = comfy_server.queue(wan_t2v_prompt(seed=1))
    assert "sampler" in _cached_nodes(cached)
    # ...after reset_cache() the sampler really runs again, and gives the same latent bit for bit
    comfy_server.reset_cache()
    entry = comfy_server.queue(wan_t2v_prompt(seed=1))
    assert "sampler" not in _cached_nodes(entry) and "unet" not in _cached_nodes(entry)
    again, path2 = comfy_server.output_latent(entry), comfy_server.output_latent_file(entry)
    assert path2 != path1
    assert torch.equal(first, again)

    other = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=2)))
    assert not torch.allclose(first, other)


@integration
def test_text_conditioning_matters(comfy_server):
    a = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=5, pos_seed=10)))
    b = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=5, pos_seed=11)))
    assert not torch.allclose(a, b)


@integration
def test_fp8_weights_through_unetloader(comfy_server):
    full = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=4)))
    fp8 = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=4, weight_dtype="fp8_e4m3fn")))
    rel = rel_err(fp8, full)
    assert 0 < rel < 0.25, rel


@integration
def test_bad_input_gets_node_errors_and_server_keeps_serving(comfy_server):
    bad = wan_t2v_prompt(unet_name="no_such_model.safetensors")
    status, data = comfy_server.post_prompt_raw(bad)
    assert status == 400
    assert "unet" in data["node_errors"], data
    assert "unet_name" in str(data["node_errors"]["unet"]), data
    with pytest.raises(PromptError) as err:
        comfy_server.queue(bad)
    assert err.value.response["node_errors"]

    # a prompt that validates but fails while running: SaveLatent refuses to write outside output/
    broken = wan_t2v_prompt(seed=1, filename_prefix="../outside/latent")
    with pytest.raises(PromptError) as err:
        comfy_server.queue(broken)
    assert err.value.entry["status"]["status_str"] == "error"
    assert "outside the output folder" in str(err.value)
    assert comfy_server.queue(broken, check=False)["status"]["status_str"] == "error"

    latent = comfy_server.output_latent(comfy_server.queue(wan_t2v_prompt(seed=3)))
    assert latent.shape == (1, 16, 2, 8, 8) and torch.isfinite(latent).all()


@integration
def test_save_tensor_node_and_upload(comfy_server, tmp_path):
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2,
                                                       "color": 0xFF8000}},
        "lat": {"class_type": "EmptyHunyuanLatentVideo",
                "inputs": {"width": 32, "height": 16, "length": 9, "batch_size": 1}},
        "save": {"class_type": "WanIDTestSaveTensor",
                 "inputs": {"filename_prefix": "wanid_test/t", "image": ["img", 0], "latent": ["lat", 0]}},
    }
    files = comfy_server.output_files(comfy_server.queue(prompt), "tensors")
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    t = comfy_server.load_tensors(files[0])
    assert set(t) == {"image", "latent"}
    assert t["image"].shape == (2, 8, 16, 3)
    torch.testing.assert_close(t["image"], torch.tensor([1.0, 128 / 255, 0.0]).expand(2, 8, 16, 3),
                               rtol=0, atol=1e-6)
    assert t["latent"].shape == (1, 16, 3, 2, 4) and not t["latent"].any()

    # an uploaded image is what LoadImage reads
    from PIL import Image
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "face.png")
    name = comfy_server.upload(tmp_path / "face.png", subfolder="wanid_test")
    assert (comfy_server.input_dir / name).is_file()
    loaded = {
        "load": {"class_type": "LoadImage", "inputs": {"image": name}},
        "save": {"class_type": "WanIDTestSaveTensor", "inputs": {"filename_prefix": "wanid_test/u",
                                                                 "image": ["load", 0]}},
    }
    img = comfy_server.load_tensors(comfy_server.output_files(comfy_server.queue(loaded))[0])["image"]
    assert img.shape == (1, 12, 20, 3)
    torch.testing.assert_close(img[0], torch.from_numpy(pixels).float() / 255, rtol=0, atol=1e-6)
