"""No attention override of the pack can be skipped silently (issue 18): Stand-In and Lynx against the attention
patterns of newer ComfyUI (0.34-0.38), each emulated on the ComfyUI under test the way the published code does it
(read from Comfy-Org/ComfyUI: comfy_extras/nodes_sparse_attention.py, comfy/ldm/modules/attention.py wrap_attn,
comfy/ldm/wan/model.py, ModelPatcher.set_model_optimized_attention), in both node orders:

- Model Sparse Attention (an override that runs its own kernel on q/k/v of one shape and does not call the previous
  one, installed on top of the model's override);
- q/k/v handed to attention as single-use AttentionTensorContainers;
- a per-module preferred attention (ComfyAttention.function, bypassed by the host under an override);
- the Model Attention Backend node (set_model_optimized_attention);
- overrides carrying `container_function` (called by wrap_attn with the containers, instead of the override);
- an independent per-block override (another pack's block replace) installed before or after the pack's.

The identity must be kept (the output equal to the patch alone, the emulated kernels being exact), or, where another
node's per-block override takes the call without passing it on, the run must fail naming the cause and the fix."""
import logging
import types

import pytest

import lynx_files
import standin_files
import tiny_wan
from wanid_testing import rel_err

pytestmark = pytest.mark.integration

DIM, LAYERS, FFN = lynx_files.DIM, lynx_files.LAYERS, lynx_files.FFN  # head_dim 128: Model Sparse Attention's size


@pytest.fixture(scope="module")
def base(comfy_pack):
    return tiny_wan.load_tiny_wan_patcher("fp32", dim=DIM, layers=LAYERS, ffn=FFN, seed=3)


class StandIn:
    name, node = "Stand-In", "Stand-In Restricted Attention"

    def __init__(self):
        from wanid_pack.nodes import standin_patch
        from wanid_pack.wanid.standin.checkpoint import parse_state_dict
        self.module = standin_patch
        self.weights = parse_state_dict(standin_files.standin_state_dict(layers=LAYERS, dim=DIM))
        self.ref = standin_files.inputs(seed=4)[3]

    def apply(self, patcher):
        return self.module.apply_standin(patcher, self.weights, self.ref, 1.0)


class Lynx:
    name, node = "Lynx", "Lynx Apply"

    def __init__(self):
        from wanid_pack.nodes import lynx_patch
        from wanid_pack.wanid.lynx import checkpoint
        self.module = lynx_patch
        self.weights = lynx_files.weights_of(checkpoint, "full")
        _, self.emb, self.ref, self.ref_ctx = lynx_files.case(seed=6)

    def apply(self, patcher):
        return self.module.apply_lynx(patcher, self.weights, self.emb, self.ref, self.ref_ctx, 1.0, 1.0)


@pytest.fixture(scope="module", params=["standin", "lynx"])
def patch(request, comfy_pack):
    return StandIn() if request.param == "standin" else Lynx()


def model_inputs(seed=2):
    steps = lynx_files.case(seed=seed)[0]
    x, t, pos, _ = steps[0]
    return x, t, pos


def run(patcher):
    x, t, ctx = model_inputs()
    return tiny_wan.diffusion_call(patcher, x, t, ctx)


# --- emulations of the newer host ----------------------------------------------------------------------------------

def exact_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                    **kwargs):
    from comfy.ldm.modules import attention
    return attention.attention_pytorch(q, k, v, heads, mask=mask, skip_reshape=skip_reshape,
                                       skip_output_reshape=skip_output_reshape)


def sparse_override(previous, calls):
    """Model Sparse Attention's override (make_attention_override): a masked call, or q/k/v whose shapes differ or
    whose head is not 128 wide, runs `previous` (else func) dense; every other call runs its own kernel (here exact
    attention) and never calls `previous`."""
    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                 **kwargs):
        def dense():
            kw = dict(mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                      skip_output_reshape=skip_output_reshape, **kwargs)
            calls.append(("dense", q.shape[1], k.shape[1]))
            return func(q, k, v, heads, **kw) if previous is None else previous(func, q, k, v, heads, **kw)

        if mask is not None or q.shape[-1] // heads != 128 or q.shape != k.shape or q.shape != v.shape:
            return dense()
        calls.append(("sparse", q.shape[1], k.shape[1]))
        return exact_attention(q, k, v, heads, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)

    override.__module__ = "comfy_extras.nodes_sparse_attention"  # the node's module, as ComfyUI imports it
    return override


def with_sparse_attention(patcher, calls):
    """The Model Sparse Attention node: its override on top of the model's current one (install_override)."""
    out = patcher.clone()
    options = out.model_options["transformer_options"]
    options["optimized_attention_override"] = sparse_override(options.get("optimized_attention_override"), calls)
    return out


def with_backend(patcher, calls, container_function=False):
    """The Model Attention Backend node (ModelPatcher.set_model_optimized_attention, which replaces any override);
    container_function: its function takes containers too (a kernel that consumes them), as the published node
    copies onto its override."""
    import comfy.model_patcher
    if not hasattr(comfy.model_patcher.ModelPatcher, "set_model_optimized_attention"):
        pytest.skip("this ComfyUI has no set_model_optimized_attention (ModelAttentionBackend)")

    def backend(q, k, v, *args, **kwargs):
        calls.append(("backend", q.shape[1], k.shape[1]))
        return exact_attention(q, k, v, *args, **kwargs)

    if container_function:
        def takes_containers(q, k, v, *args, **kwargs):
            calls.append(("containers", q.peek().shape[1], k.peek().shape[1]))
            return exact_attention(q.take(), k.take(), v.take(), *args, **kwargs)
        backend.container_function = takes_containers
    out = patcher.clone()
    out.set_model_optimized_attention(backend)
    return out


def other_pack(patcher, make_override, blocks=LAYERS):
    """Another pack's per-block attention override: a block replace (chained to what was there, as the pack's own)
    that puts make_override(previous) on top of the call's override."""
    out = patcher.clone()
    existing = out.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for i in range(blocks):
        def replace(args, extra, previous=existing.get(("double_block", i))):
            options = args["transformer_options"]
            override = make_override(options.get("optimized_attention_override"))
            args = {**args, "transformer_options": {**options, "optimized_attention_override": override}}
            return previous(args, extra) if previous else extra["original_block"](args)
        out.set_model_patch_replace(replace, "dit", "double_block", i)
    return out


def carrier_override(previous, calls):
    """An override carrying `container_function`: wrap_attn hands it the containers directly, so it is the last
    override that sees the call (it does not know the one below it)."""
    def override(func, q, k, v, *args, **kwargs):
        calls.append(("carrier", q.shape[1], k.shape[1]))
        return previous(func, q, k, v, *args, **kwargs) if previous else func(q, k, v, *args, **kwargs)

    def container_function(q, k, v, *args, **kwargs):
        calls.append(("carrier containers", q.peek().shape[1], k.peek().shape[1]))
        kwargs.pop("transformer_options", None)
        return exact_attention(q.take(), k.take(), v.take(), *args, **kwargs)

    override.container_function = container_function
    return override


@pytest.fixture
def containers(monkeypatch):
    """Wan's attention modules hand q/k/v to attention as AttentionTensorContainers (0.34+ comfy/ldm/wan/model.py)."""
    from comfy.ldm.modules import attention
    import comfy.ldm.wan.model as wan
    if not hasattr(attention, "AttentionTensorContainer"):
        pytest.skip("this ComfyUI has no AttentionTensorContainer")
    real = wan.optimized_attention

    def boxed(q, k, v, *args, **kwargs):
        return real(*(attention.AttentionTensorContainer(t) for t in (q, k, v)), *args, **kwargs)

    monkeypatch.setattr(wan, "optimized_attention", boxed)


def video_tokens():
    x = model_inputs()[0]
    return x.shape[2] * (x.shape[3] // 2) * (x.shape[4] // 2)


# --- the tests -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["sparse first", "patch first"])
def test_model_sparse_attention(base, patch, order, caplog):
    expected = run(patch.apply(base))
    calls = []
    if order == "sparse first":
        patched = patch.apply(with_sparse_attention(base, calls))
    else:
        patched = with_sparse_attention(patch.apply(base), calls)
    with caplog.at_level(logging.WARNING):
        got = run(patched)
        run(patched)
    assert rel_err(got, expected) < 1e-5
    n = video_tokens()
    said = [r.getMessage() for r in caplog.records if "Model Sparse Attention does not engage" in r.getMessage()]
    if isinstance(patch, StandIn):
        # the reference keys make the self-attention ineligible: dense, and said once
        assert ("sparse", n, n) not in calls and any(c[0] == "dense" and c[2] > n for c in calls)
        assert len(said) == 1 and "Stand-In's self-attention" in said[0]
    else:
        assert calls.count(("sparse", n, n)) == 2 * LAYERS  # Lynx leaves the self-attention's shape alone
        assert not said


def test_attention_tensor_containers(base, patch, containers):
    expected = run(patch.apply(base))
    assert rel_err(run(patch.apply(base)), expected) < 1e-6


def test_a_modules_preferred_attention(patch):
    own = tiny_wan.load_tiny_wan_patcher("fp32", dim=DIM, layers=LAYERS, ffn=FFN, seed=3)  # modified: its own
    expected = run(patch.apply(own))
    calls = []

    def counting(name):
        def fn(q, k, v, *args, **kwargs):
            calls.append((name, q.shape[1], k.shape[1]))
            return exact_attention(q, k, v, *args, **kwargs)
        return fn

    for i, block in enumerate(own.model.diffusion_model.blocks):
        block.self_attn.comfy_attention = types.SimpleNamespace(function=counting(f"self{i}"))
        block.cross_attn.comfy_attention = types.SimpleNamespace(function=counting(f"cross{i}"))
    got = run(patch.apply(own))
    assert rel_err(got, expected) < 1e-5
    n, text = video_tokens(), model_inputs()[2].shape[1]
    for i in range(LAYERS):
        assert any(name == f"self{i}" and k >= n for name, q, k in calls), "the self-attention"
        assert (f"cross{i}", n, text) in calls, "the cross-attention"


@pytest.mark.parametrize("order", ["backend first", "patch first"])
@pytest.mark.parametrize("carrier", [False, True], ids=["plain", "container_function"])
def test_model_attention_backend(base, patch, order, carrier, request):
    if carrier:
        request.getfixturevalue("containers")
    expected = run(patch.apply(base))
    calls = []
    if order == "backend first":
        patched = patch.apply(with_backend(base, calls, carrier))
    else:
        patched = with_backend(patch.apply(base), calls, carrier)
    assert rel_err(run(patched), expected) < 1e-5
    n, text = video_tokens(), model_inputs()[2].shape[1]
    # every attention call of every block reached the backend, through the patch's override (given tensors)
    assert all(name == "backend" for name, _, _ in calls)
    assert sum(1 for _, q, k in calls if q == n and k == text) == LAYERS
    assert sum(1 for _, q, k in calls if q == n and n <= k != text) == LAYERS


@pytest.mark.parametrize("style", ["sparse", "container_function"])
def test_a_per_block_override_applied_before_the_patch_is_an_error(base, patch, style, request):
    """The other pack's node applied BEFORE this one puts its per-block override on top of the pack's at run time;
    if it takes the self-attention without passing it on, the patch would silently do nothing there (and Lynx, which
    once told its calls apart by their order, would have put its Ref attention into the cross-attention)."""
    if style == "container_function":
        request.getfixturevalue("containers")
    calls = []
    make = (lambda previous: sparse_override(previous, calls)) if style == "sparse" else \
        (lambda previous: carrier_override(previous, calls))
    patched = patch.apply(other_pack(base, make))
    with pytest.raises(RuntimeError, match=rf"never reached {patch.name}'s attention override: another node "
                                           rf"installed its own per-block attention override.*apply {patch.node} "
                                           "first"):
        run(patched)
    # the order the message asks for: this node first, the other pack's after it -> the identity is kept
    calls.clear()
    fixed = other_pack(patch.apply(base), make)
    assert rel_err(run(fixed), run(patch.apply(base))) < 1e-5
    assert calls, "the other pack's override still runs"


def test_lynx_tells_its_attentions_apart_by_their_keys(base):
    """A per-block override on top of Lynx's that passes the cross-attention on first and never the self-attention:
    Lynx adds its ID attention to the cross-attention only (by the keys' length: the text's), never its Ref
    attention, and then says the self-attention was skipped."""
    lynx = Lynx()
    patched = lynx.apply(base)
    patch = lynx.module.hooks.patch_of(patched, lynx.module.KEY)
    x, t, ctx = model_inputs()
    seen = []
    original = lynx.module._LynxOverride.attend

    def spy(self, kind, func, q, k, v, *args, **kwargs):
        seen.append((kind, k.shape[1]))
        return original(self, kind, func, q, k, v, *args, **kwargs)

    def swallow_self(previous):
        def override(func, q, k, v, *args, **kwargs):
            if q.shape[1] == k.shape[1]:
                return exact_attention(q, k, v, *args, **kwargs)  # the self-attention, never passed on
            return previous(func, q, k, v, *args, **kwargs)
        return override

    with pytest.MonkeyPatch.context() as m:
        m.setattr(lynx.module._LynxOverride, "attend", spy)
        with pytest.raises(RuntimeError, match="self-attention never reached Lynx's attention override"):
            tiny_wan.diffusion_call(lynx.apply(other_pack(base, swallow_self)), x, t, ctx)
    assert seen and all(kind == "cross" and n == ctx.shape[1] for kind, n in seen)
    assert patch is not None
