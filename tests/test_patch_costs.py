"""The patches cost what their math costs, counted on the CPU (tests/op_counts.py): operators, host syncs and the
memory a step's tensors hold. Counts, never times (benchmarks/gpu_report.py times them on a GPU).

- Stand-In's self-attention takes the reference without a copy of the video's keys/values: two SDPA passes merged by
  their log-sum-exp where the host's attention is PyTorch SDPA (what ComfyUI picks on NVIDIA); exact against the
  float64 references; per step no extra host sync and no video-sized allocation beyond a fraction of one head group.
- The run's first call (the one-time precompute) adds no host sync but the run's one check that the model input is
  finite, and casts each side-model weight at most once.
- Lynx full's first call: the reference pass twice (positive and the official negative), each adapter weight cast
  at most once, no host sync but that check.
"""
import math

import pytest
import torch

import op_counts
from wanid.standin.reference_branch import attend_merged, attend_with_reference


def sdpa(q, k, v, heads, **kwargs):
    b, n, width = q.shape
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, width // heads).transpose(1, 2)  # noqa: E731
    return torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2) \
        .reshape(b, n, width)


def attention64(q, k, v, k_ref, v_ref, heads, strength):
    """softmax(q [k; k_ref]^T / sqrt(d) + [0; log s]) [v; v_ref], per head, in float64 from the equation."""
    b, n, width = q.shape
    d = width // heads
    q, k, v = (t.double().view(t.shape[0], t.shape[1], heads, d) for t in (q, k, v))
    k_ref, v_ref = (t.double().view(1, t.shape[1], heads, d).expand(b, -1, -1, -1) for t in (k_ref, v_ref))
    keys, values = torch.cat([k, k_ref], 1), torch.cat([v, v_ref], 1)
    logits = torch.einsum("bnhd,bmhd->bhnm", q, keys) / math.sqrt(d)
    logits[..., k.shape[1]:] += math.log(strength)
    return torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), values).reshape(b, n, width)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("strength", [1.0, 0.4, 2.5])
def test_merged_attention_is_exact_and_copies_no_video_kv(strength):
    g = torch.Generator().manual_seed(0)
    heads, d, n, n_ref = 16, 32, 600, 40
    q, k, v = (torch.randn(2, n, heads * d, generator=g) for _ in range(3))
    k_ref, v_ref = (torch.randn(1, n_ref, heads * d, generator=g) for _ in range(2))
    expected = attention64(q, k, v, k_ref, v_ref, heads, strength)

    with op_counts.OpCounts() as plain:
        sdpa(q, k, v, heads)
    with op_counts.OpCounts() as merged:
        out = attend_merged(q, k, v, k_ref, v_ref, heads, strength)
    with op_counts.OpCounts() as joined:
        cat_out = attend_with_reference(sdpa, q, k, v, k_ref, v_ref, heads, strength)
    assert rel(out, expected) < 1e-6
    assert rel(cat_out, expected) < 1e-6

    video_kv = k.numel() * k.element_size()  # one of the video's K or V
    assert merged.count("aten.cat") == 0
    assert merged.syncs == 0
    # the merge holds one reference pass of a few heads (1/8 of them here) and the log-sum-exps, never K/V-sized
    extra = merged.peak_bytes - plain.peak_bytes
    lse = 2 * heads * n * 4
    assert extra <= video_kv // 8 + 3 * lse, extra
    # the concatenation this replaces: the meter sees its copy of both K and V
    assert joined.peak_bytes - plain.peak_bytes >= 2 * video_kv


def test_merged_attention_declines_where_sdpa_has_no_log_sum_exp(monkeypatch):
    q = k = v = torch.randn(2, 10, 64)
    k_ref = v_ref = torch.randn(1, 3, 64)
    assert attend_merged(q, k, v, k_ref, v_ref, 2, 0.0) is None  # strength 0: the caller's unpatched path
    assert attend_merged(q, k, v, k_ref, v_ref, 2, 1.0) is not None
    from torch.nn.attention import SDPBackend
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a, **k: int(SDPBackend.MATH))
    assert attend_merged(q, k, v, k_ref, v_ref, 2, 1.0) is None  # the math kernel: the caller concatenates


def test_a_kernel_that_refuses_the_merge_leaves_the_concatenation(monkeypatch, caplog):
    """Should a fused kernel of some torch build refuse the merge's inputs (its own checks), the patch says so once
    and concatenates on that device and dtype from then on: the same result, never an error."""
    from wanid.standin import reference_branch
    monkeypatch.setattr(reference_branch, "_REFUSED", set())
    calls = []

    def refusing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("key batch stride must be non-zero")

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", refusing)
    q = k = v = torch.randn(2, 10, 64)
    k_ref = v_ref = torch.randn(1, 3, 64)
    with caplog.at_level("WARNING"):
        assert attend_merged(q, k, v, k_ref, v_ref, 2) is None
        assert attend_merged(q, k, v, k_ref, v_ref, 2) is None
    assert len(calls) == 1, "asked once per device and dtype"
    assert sum("concatenated keys instead" in r.getMessage() for r in caplog.records) == 1


# --- on the native model, in ComfyUI -------------------------------------------------------------------------------

LAYERS = 2


@pytest.fixture(scope="module")
def pack(comfy_pack):
    return comfy_pack


@pytest.fixture
def sdpa_host(pack, monkeypatch):
    """ComfyUI's attention as on an NVIDIA GPU: PyTorch SDPA (on a CPU ComfyUI picks sub-quadratic attention)."""
    import comfy.ldm.wan.model
    from comfy.ldm.modules import attention
    monkeypatch.setattr(comfy.ldm.wan.model, "optimized_attention", attention.attention_pytorch)


@pytest.fixture(scope="module")
def base(pack):
    import tiny_wan
    return tiny_wan.load_tiny_wan_patcher("fp32", layers=LAYERS, seed=3)


def standin(base, strength=1.0, seed=11):
    from standin_files import inputs, standin_state_dict
    from wanid_pack.nodes import standin_patch
    from wanid_pack.wanid.standin.checkpoint import parse_state_dict
    x, t, ctx, ref = inputs(seed=seed, batch=2, frames=3, h=12, w=16)
    lora = standin_state_dict(layers=LAYERS)
    return standin_patch.apply_standin(base, parse_state_dict(lora), ref, strength), lora, (x, t, ctx, ref)


def counted_calls(patcher, x, t, ctx, calls=2):
    """Each of `calls` model calls of one run (the first builds the run's caches), counted."""
    import comfy.model_management
    import comfy.patcher_extension

    import tiny_wan
    comfy.model_management.load_models_gpu([patcher] + patcher.get_nested_additional_models())
    for cb in patcher.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN):
        cb(patcher)
    out = []
    for _ in range(calls):
        with op_counts.OpCounts() as c:
            y = tiny_wan.diffusion_call(patcher, x, t, ctx, load=False)
        out.append((c, y))
    return out


@pytest.mark.integration
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_standin_on_sdpa_is_exact_and_a_step_copies_no_video_kv(base, sdpa_host, strength):
    import standin_reference
    import tiny_wan
    patched, lora, (x, t, ctx, ref) = standin(base, strength)
    expected = standin_reference.forward(tiny_wan.tiny_wan_state_dict(layers=LAYERS, seed=3), x, t, ctx, LAYERS,
                                         ref=ref, lora=lora, strength=strength)
    (_, _), (plain, _) = counted_calls(base, x, t, ctx)
    (first, y_first), (step, y) = counted_calls(patched, x, t, ctx)
    assert rel(y, expected) < 1e-5
    assert torch.equal(y, y_first)

    dim = base.model.diffusion_model.dim
    video = x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)
    n_ref = (ref.shape[3] // 2) * (ref.shape[4] // 2)
    video_kv = 2 * video * dim * 4
    # no operator concatenates anything video-sized; no host sync beyond the unpatched step's
    cats = lambda c: sorted(a[1] for a in c.allocations(min_bytes=video_kv // 4, op="aten.cat"))  # noqa: E731
    assert cats(step) == cats(plain)  # (the host's own RoPE table)
    assert step.syncs == plain.syncs
    # each block: the video pass (the host's own) and its reference pass, merged in place
    flash = "aten._scaled_dot_product_flash_attention_for_cpu"
    heads = base.model.diffusion_model.blocks[0].self_attn.num_heads
    assert step.ops[flash] - plain.ops[flash] == LAYERS * math.ceil(heads / max(1, heads // 8))
    assert step.ops["aten.lerp_"] == LAYERS * math.ceil(heads / max(1, heads // 8))
    # what a step holds beyond the unpatched step: at most one reference pass of a head group and log-sum-exps
    assert step.peak_bytes - plain.peak_bytes <= video_kv // 8 + 4 * 2 * heads * video * 4
    # the run's cached reference K/V: exactly each block's keys and values (allocated in the first call)
    kv = LAYERS * 2 * n_ref * dim * 4
    assert first.peak_bytes - plain.peak_bytes >= kv


@pytest.mark.integration
def test_standin_precompute_adds_no_host_sync_and_casts_each_weight_once(pack, sdpa_host):
    import tiny_wan
    bf16 = tiny_wan.load_tiny_wan_patcher(torch.bfloat16, layers=LAYERS, seed=3)
    patched, lora, (x, t, ctx, _) = standin(bf16)
    x, ctx = x.bfloat16(), ctx.bfloat16()
    (first, _), (step, _) = counted_calls(patched, x, t, ctx)
    # one sync in the run: its check that the model input is finite (nodes/hooks.py); none per block, none per step
    assert first.syncs <= step.syncs + 1
    # the fp32 LoRA runs in bf16: each of its weights is cast once in the run (never per step)
    lora_casts = [a for a in first.allocations(op="aten._to_copy")
                  if a[2] == torch.bfloat16 and a[1] in {tuple(v.shape) for v in lora.values()}]
    assert len(lora_casts) <= len(lora)
    assert not [a for a in step.allocations(op="aten._to_copy")
                if a[1] in {tuple(v.shape) for v in lora.values()}], "the LoRA is not touched by a step"


@pytest.mark.integration
def test_lynx_full_first_call_is_one_reference_pass_and_one_cast_per_weight(pack, base, sdpa_host):
    import lynx_files
    from wanid_pack.nodes import lynx_patch
    from wanid_pack.wanid.lynx import checkpoint
    steps, emb, ref, ref_ctx = lynx_files.case(seed=3)
    resampler, ip, ref_w = lynx_files.lynx_tensors("full", dim=128, layers=LAYERS)
    bf = [{k: v.bfloat16() for k, v in part.items()} for part in (resampler, ip, ref_w)]  # the release is bf16
    weights = checkpoint.parse(*bf, "lynx_full bf16")
    patched = lynx_patch.apply_lynx(base, weights, emb, ref, ref_ctx, 1.0, 1.0)
    x, t, pos, neg = steps[0]
    x2, t2, ctx = torch.cat([x, x]), torch.cat([t, t]), torch.cat([pos, neg])
    (_, _), (plain, _) = counted_calls(base, x2, t2, ctx)
    (first, _), (step, _) = counted_calls(patched, x2, t2, ctx)
    assert first.syncs <= plain.syncs + 1 and step.syncs == plain.syncs  # the run's one input check
    # adapter weights (bf16 file) meet the fp32 model: each cast at most once per run, none in a step
    shapes = {tuple(v.shape) for part in (ip, ref_w) for k, v in part.items() if k.endswith("weight")}
    adapter_weights = sum(1 for part in (ip, ref_w) for k in part if k.endswith("weight"))
    casts = [a for a in first.allocations(op="aten._to_copy") if a[1] in shapes]
    assert len(casts) <= adapter_weights
    assert not [a for a in step.allocations(op="aten._to_copy") if a[1] in shapes]
    # the reference pass runs the frozen blocks once per reference (the positive and the official negative), each
    # block's self- and cross-attention, all but the last block (its output is never used); nothing else is extra
    flash = "aten._scaled_dot_product_flash_attention_for_cpu"
    assert first.ops[flash] - step.ops[flash] == 2 * 2 * (LAYERS - 1)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["standin", "lynx"])
def test_handing_a_side_model_back_copies_no_weight(pack, method):
    """After the run's first call the side model is handed back to the CPU (hooks.offload_side_model). ComfyUI's unload
    copies every loaded weight back; with the host copies kept, the device copies are dropped instead. A meta device
    stands in for the GPU: a copy out of it is impossible, so the plain unload fails where the hand-back succeeds."""
    from wanid_pack.nodes import hooks
    if method == "standin":
        from standin_files import standin_state_dict
        from wanid_pack.nodes.standin_patch import lora_patcher
        from wanid_pack.wanid.standin.checkpoint import parse_state_dict
        side = lora_patcher(parse_state_dict(standin_state_dict(layers=LAYERS)), disable_dynamic=True)
    else:
        import lynx_files
        from wanid_pack.nodes.lynx_patch import adapters_patcher
        from wanid_pack.wanid.lynx import checkpoint
        side = adapters_patcher(lynx_files.weights_of(checkpoint, "full"), disable_dynamic=True)
    before = {name: t.detach().clone() for name, t in side.model.state_dict().items()}
    side.load_device = torch.device("meta")
    for _ in range(2):  # two runs
        side.load(side.load_device, full_load=True)
        assert all(t.device.type == "meta" for t in side.model.parameters())
        with op_counts.OpCounts() as c:
            hooks.offload_side_model(side)
        assert c.copies_between_devices == 0 and c.count("aten._to_copy") == 0 and c.count("aten.copy_") == 0
        # every layer that casts per call is handed back (what stays is what ComfyUI keeps loaded either way)
        assert all(t.device.type == "cpu" for m in side.model.modules() if hasattr(m, "comfy_cast_weights")
                   for t in m.parameters(recurse=False))
        assert side.loaded_size() < side.model_size() / 100
        after = side.model.state_dict()
        assert all(torch.equal(after[name].cpu(), t) for name, t in before.items() if after[name].device.type != "meta")
    side.load(side.load_device, full_load=True)
    with pytest.raises(NotImplementedError, match="meta"):  # what the hand-back avoids: copying every weight back
        side.partially_unload(side.offload_device, memory_to_free=side.model_size())
