"""GGUF-quantized Wan through city96's ComfyUI-GGUF, as most 8-16 GB users run 14B: tiny Wan 2.1 T2V .gguf files in
that pack's layout (tests/gguf_files.py: Q8_0, Q4_0/Q4_1, Q4_K, BF16) loaded by its own Unet Loader (GGUF) node,
whose GGMLOps keep the weights quantized and dequantize them on every call.

Each identity method on the GGUF model must equal the same method on a plain fp32 model built from the dequantized
numbers, bit for bit: the pack's reference streams only call the model's modules and never read a base weight (a
GGMLTensor's dtype is its uint8 storage). Also with a user LoRA and Slot-ID's LoRA (which ComfyUI-GGUF applies at
dequantization) stacked, and under a forced partial load. Skips with the reason without ComfyUI-GGUF or `gguf`.
"""
import pytest
import torch

import gguf_files
import tiny_wan
from lynx_files import DIM, FFN, LAYERS, case, weights_of
from standin_files import standin_state_dict
from tiny_wan import diffusion_call as call
from wanid_testing import rel_err

pytestmark = pytest.mark.integration

KINDS = gguf_files.KINDS  # DIM = 256: rows of 256 values, as the K-quants need
SLOT = dict(dim=64, num_slots=4, anchor_tokens=2, lora_rank=4, lora_alpha=8.0, time_features=32, pool=2)


class Env:
    """ComfyUI-GGUF's modules, the tiny source weights, and per file kind the GGUF model and its fp32 twin."""

    def __init__(self, folder):
        import folder_paths
        self.nodes, self.dequant, self.loader = gguf_files.import_gguf_pack()
        self.folder = folder
        folder_paths.add_model_folder_path("diffusion_models", str(folder))
        self.source = tiny_wan.tiny_wan_state_dict(dim=DIM, layers=LAYERS, ffn=FFN, seed=3)
        self.models = {}

    def file(self, kind):
        return self.folder / f"wanid_tiny_wan21_t2v_{kind}.gguf"

    def get(self, kind):
        """(GGUF model from Unet Loader (GGUF), fp32 model of its dequantized tensors, {key: type written})."""
        if kind not in self.models:
            import comfy.sd
            types = gguf_files.write_wan_gguf(self.file(kind), self.source, kind)
            (gguf_model,) = self.nodes.UnetLoaderGGUF().load_unet(unet_name=self.file(kind).name)
            tensors = self.loader.gguf_sd_loader(str(self.file(kind)))
            # ComfyUI-GGUF's own decoder, as its layers run it on every call (dequant_dtype default)
            numbers = {k: self.dequant.dequantize_tensor(v, dtype=torch.float32).clone() for k, v in tensors.items()}
            twin = comfy.sd.load_diffusion_model_state_dict(numbers, model_options={"dtype": torch.float32})
            self.models[kind] = (gguf_model, twin, types)
        return self.models[kind]


@pytest.fixture(scope="module")
def env(comfy_pack, tmp_path_factory):
    return Env(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def parts(comfy_pack, tmp_path_factory):
    import folder_paths
    from wanid_pack.nodes import lynx_patch, paths, slot_id, standin_patch
    from wanid_pack.wanid.lynx import checkpoint
    from wanid_pack.wanid.slot.checkpoint import fresh_checkpoint, save_checkpoint
    from wanid_pack.wanid.slot.encoder import SlotIDConfig
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    d = tmp_path_factory.mktemp("gguf_slot_id")
    paths.register_model_folders()
    folder_paths.add_model_folder_path("slot_id", str(d), is_default=True)
    slot = fresh_checkpoint(DIM, LAYERS, SlotIDConfig(**SLOT), backbone="tiny", seed=1)
    g = torch.Generator().manual_seed(5)
    for k in slot.lora:
        if k.endswith("lora_up.weight"):
            slot.lora[k] = torch.randn(slot.lora[k].shape, generator=g) * 0.3
    save_checkpoint(slot, d / "wanid_gguf_slot.safetensors")
    return dict(lynx=lynx_patch, lynx_files=checkpoint, slot=slot_id, standin=standin_patch,
                standin_weights=parse_state_dict(standin_state_dict(layers=LAYERS, dim=DIM)))


def user_lora(model, seed=17):
    """A user's LoRA as ComfyUI applies one (weight patches on self- and cross-attention q/k/v and the FFN)."""
    g = torch.Generator().manual_seed(seed)
    keys = [f"blocks.{i}.{a}.{p}.weight" for i in range(LAYERS) for a in ("self_attn", "cross_attn") for p in "qkv"]
    patches = {f"diffusion_model.{k}": (0.05 * torch.randn(DIM, DIM, generator=g),) for k in keys}
    patches["diffusion_model.blocks.1.ffn.2.weight"] = (0.05 * torch.randn(DIM, FFN, generator=g),)
    user = model.clone()
    assert len(user.add_patches(patches, 1.0)) == len(patches)
    return user


def with_methods(model, methods, parts):
    """`model` with the methods applied in the order a graph would: LoRAs (user, Slot-ID) first, then Stand-In, then
    Lynx."""
    _, emb, ref, ref_ctx = case(seed=21)
    g = torch.Generator().manual_seed(4)
    standin_ref = torch.randn(1, 16, 1, 8, 8, generator=g)
    if "lora" in methods:
        model = user_lora(model)
    if "slot_id" in methods:
        model, _ = parts["slot"].WanIDSlotIDLoader.execute(model=model, slot_id_name="wanid_gguf_slot.safetensors",
                                                           lora_strength=1.0).result
    if "standin" in methods:
        model = parts["standin"].apply_standin(model, parts["standin_weights"], standin_ref, 1.0)
    for variant in ("lite", "full"):
        if f"lynx_{variant}" in methods:
            model = parts["lynx"].apply_lynx(model, weights_of(parts["lynx_files"], variant), emb, ref, ref_ctx,
                                             1.0, 1.0 if variant == "full" else 0.0)
    return model


def inputs(seed=0):
    steps, *_ = case(seed=seed)
    x, t, pos, neg = steps[0]
    pos = pos.clone()
    pos[:, 7:11] = torch.randn(1, 4, 4096, generator=torch.Generator().manual_seed(seed))  # Slot-ID's token rows
    return x, t, pos, neg


# --- the files and the loader ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_files_have_comfyui_gguf_layout_and_load_as_quantized_wan(env, kind):
    """The layout ComfyUI-GGUF's tools write, read back by gguf-py; its loader detects Wan 2.1 T2V and keeps the
    blocks quantized; its decoder agrees with gguf-py's own (numpy, float32) and the source within the type's error;
    unpatched, the model gives exactly what the fp32 model of its numbers gives."""
    import comfy.sd
    import gguf
    T = gguf.GGMLQuantizationType
    gguf_model, twin, types = env.get(kind)
    assert type(gguf_model).__name__ == "GGUFModelPatcher"
    assert type(gguf_model.model.model_config).__name__ == "WAN21_T2V"
    reader = gguf.GGUFReader(str(env.file(kind)))
    written = {t.name: t for t in reader.tensors}
    assert {k: t.tensor_type for k, t in written.items()} == types and set(types) == set(env.source)
    block = {"Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_K": T.Q4_K, "BF16": T.BF16}[kind]
    assert types["blocks.0.self_attn.q.weight"] == block and types["blocks.2.cross_attn.o.weight"] == block
    assert types["blocks.1.ffn.2.weight"] == (T.Q4_1 if kind == "Q4_0" else block)
    assert types["patch_embedding.weight"] == T.F32 and len(written["patch_embedding.weight"].shape) == 5
    for key in ("blocks.0.modulation", "head.modulation", "blocks.0.norm3.weight", "blocks.0.self_attn.q.bias"):
        assert types[key] == T.F32, key
    for key in ("text_embedding.0.weight", "time_projection.1.weight", "head.head.weight"):
        assert types[key] == T.BF16, key
    dm = gguf_model.model.diffusion_model
    q = dm.blocks[0].self_attn.q.weight
    assert q.tensor_type == block and q.dtype == torch.uint8 and tuple(q.shape) == (DIM, DIM)
    limit = {"Q8_0": 0.01, "Q4_0": 0.12, "Q4_K": 0.12, "BF16": 0.0}[kind]
    tensors = env.loader.gguf_sd_loader(str(env.file(kind)))
    for key, t in tensors.items():
        theirs = env.dequant.dequantize_tensor(t, dtype=torch.float32)
        independent = torch.from_numpy(gguf.quants.dequantize(written[key].data, written[key].tensor_type).copy())
        assert rel_err(theirs, independent.reshape(theirs.shape)) <= 1e-3, key  # fp16 arithmetic in the torch one
        source = env.source[key].to(torch.bfloat16).float()
        if types[key] in (T.F32, T.BF16):
            assert torch.equal(theirs, source), key
        else:
            assert 0 < rel_err(theirs, source) <= limit, key
    x, t, pos, _ = inputs(seed=1)
    got = call(gguf_model, x, t, pos)
    assert torch.equal(got, call(twin, x, t, pos))
    if kind != "BF16":  # the quantization is really there: the bf16 source gives another output
        source = comfy.sd.load_diffusion_model_state_dict({k: v.to(torch.bfloat16).float() for k, v in
                                                           env.source.items()}, model_options={"dtype": torch.float32})
        assert rel_err(got, call(source, x, t, pos)) > 1e-4


# --- the identity methods -------------------------------------------------------------------------------------------

METHODS = {
    "standin": ("standin",),
    "lynx_lite": ("lynx_lite",),
    "lynx_full": ("lynx_full",),
    "slot_id": ("slot_id",),
    "lora+slot_id+standin+lynx_lite": ("lora", "slot_id", "standin", "lynx_lite"),
    "lora+slot_id+standin+lynx_full": ("lora", "slot_id", "standin", "lynx_full"),
}
STACKS = [m for m in METHODS if m.startswith("lora+")]
# each method alone on the 4-bit K-quant (the most used type); the stacks of all of them on every kind
CASES = [("Q4_K", m) for m in METHODS if m not in STACKS] + [(k, m) for k in KINDS for m in STACKS]


def both_calls(model, x, t, pos, neg):
    """The positive and the negative call in one batch, as ComfyUI's sampler makes them."""
    return call(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([pos, neg]), (0, 1))


@pytest.mark.parametrize("kind,methods", CASES)
def test_method_on_gguf_equals_it_on_the_dequantized_model(env, parts, kind, methods):
    """Stand-In, Lynx lite and full, Slot-ID (its LoRA and identity token rows), alone and stacked on a user's LoRA:
    bit for bit the same as on the fp32 model of the same numbers, for the positive and the negative; the methods
    do change the output, and the loaded GGUF model is left as it was."""
    gguf_model, twin, _ = env.get(kind)
    x, t, pos, neg = inputs(seed=2)
    before = both_calls(gguf_model, x, t, pos, neg)
    got = both_calls(with_methods(gguf_model, METHODS[methods], parts), x, t, pos, neg)
    expected = both_calls(with_methods(twin, METHODS[methods], parts), x, t, pos, neg)
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected), f"{methods} on {kind}: rel. error {rel_err(got, expected):.2e}"
    assert rel_err(got[:1], before[:1]) > 1e-3, "the method barely changes the output"
    if methods in STACKS:
        assert torch.equal(both_calls(gguf_model, x, t, pos, neg), before), "the loaded GGUF model was changed"


def test_partial_load_gives_the_same_output(env, parts):
    """A forced partial load (what ComfyUI does when the model does not fit: weights cast per call, ComfyUI-GGUF's
    patches still applied at dequantization) with every method stacked: the same numbers as the full load."""
    import comfy.model_management
    gguf_model, _, _ = env.get("Q4_K")
    methods = METHODS["lora+slot_id+standin+lynx_full"]
    x, t, pos, _ = inputs(seed=3)
    expected = call(with_methods(gguf_model, methods, parts), x, t, pos)
    patched = with_methods(gguf_model, methods, parts)
    comfy.model_management.unload_all_models()
    patched.load(torch.device("cpu"), lowvram_model_memory=1, full_load=False)
    try:
        assert patched.model.model_lowvram
        got = tiny_wan.diffusion_call(patched, x, t, pos, load=False)
        assert torch.equal(got, expected), f"{rel_err(got, expected):.2e}"
    finally:
        patched.unpatch_model()
        comfy.model_management.unload_all_models()
