"""Every identity patch (Stand-In, Lynx lite, Lynx full) against the host paths it shares with the others: the
dynamic VRAM side model (comfy-aimdo's branch, taken on the CPU by monkeypatching the host where the real branch
needs CUDA; benchmarks/gpu_host_check.py runs the real one on a GPU) and native multi-GPU clones. One test each,
parametrised over the patches; a feature the running ComfyUI lacks skips with the reason. What is particular to
one patch is in tests/test_standin_host.py and tests/test_lynx_host.py."""
import pytest
import torch

import lynx_files
import standin_files
import tiny_wan
from tiny_wan import diffusion_call

pytestmark = pytest.mark.integration


class StandIn:
    """Stand-In on its tests' tiny Wan: the LoRA's side model, each block's reference K/V built once per run."""

    def __init__(self):
        from wanid_pack.nodes import standin_patch
        from wanid_pack.wanid.standin.checkpoint import parse_state_dict

        self.module = standin_patch
        self.weights = parse_state_dict(standin_files.standin_state_dict())
        self.side_files = self.weights.state_dict  # the loaded tensors the side model is built from
        self.one_run = {"reference": standin_files.LAYERS}

    def load(self, folder=None):
        kw = dict(layers=standin_files.LAYERS, seed=3)
        return tiny_wan.load_tiny_wan_file(folder, **kw) if folder else tiny_wan.load_tiny_wan_patcher("fp32", **kw)

    def prepare(self, seed):
        """(apply(base) -> patched model, run(model) -> one model call's output) on fresh inputs."""
        x, t, ctx, ref = standin_files.inputs(seed=seed)
        return (lambda base: self.module.apply_standin(base, self.weights, ref, 1.0),
                lambda patcher: diffusion_call(patcher, x, t, ctx))


class Lynx:
    """Lynx on its tests' tiny Wan: the adapters' side model; per run the resampler's tokens once, each adapted
    block's ID K/V once, and (full) the reference pass (positive and negative) and each block's Ref K/V once."""

    def __init__(self, variant):
        from wanid_pack.nodes import lynx_patch
        from wanid_pack.wanid.lynx import checkpoint

        self.module = lynx_patch
        self.weights = lynx_files.weights_of(checkpoint, variant)
        self.side_files = lynx_patch.LynxAdapters.state_dict_of(self.weights)
        layers = lynx_files.LAYERS
        if variant == "full":
            self.one_run = {"tokens": 1, "ip": layers, "reference": 2, "ref": layers}
        else:  # lite: every second block, no Ref adapter
            self.one_run = {"tokens": 1, "ip": len(range(0, layers, 2))}

    def load(self, folder=None):
        kw = dict(dim=lynx_files.DIM, layers=lynx_files.LAYERS, ffn=lynx_files.FFN, seed=3)
        return tiny_wan.load_tiny_wan_file(folder, **kw) if folder else tiny_wan.load_tiny_wan_patcher("fp32", **kw)

    def prepare(self, seed):
        steps, emb, ref, ref_ctx = lynx_files.case(seed=seed)
        x, t, pos, _ = steps[0]
        return (lambda base: self.module.apply_lynx(base, self.weights, emb, ref, ref_ctx, 1.0, 1.0),
                lambda patcher: diffusion_call(patcher, x, t, pos))


PATCHES = {"standin": StandIn, "lynx_lite": lambda: Lynx("lite"), "lynx_full": lambda: Lynx("full")}


@pytest.fixture(scope="module", params=list(PATCHES))
def patch(request, comfy_pack):
    return PATCHES[request.param]()


@pytest.fixture(scope="module")
def base(patch):
    return patch.load()


@pytest.fixture(scope="module")
def file_base(patch, tmp_path_factory):
    """The tiny Wan loaded from a file, as multi-GPU clones need (they reload the model's weights)."""
    return patch.load(tmp_path_factory.mktemp("patch_host_mgpu"))


def the_patch(patcher, module):
    """The run state of the patch `module` installed on `patcher` (its DIFFUSION_MODEL wrapper's object)."""
    import comfy.patcher_extension
    return patcher.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, module.KEY)[0].__self__


def side_of(patcher, module):
    return patcher.get_additional_models_with_key(module.KEY)[0]


def builds(patch):
    """What the patch built since its run began, nothing counted twice: {what: count}, zero counts left out."""
    return dict(+patch.builds)


# --- dynamic VRAM: the side model is built the way core builds side models ---------------------------------------

def test_dynamic_vram_side_model_assigns_weights_and_matches(patch, base, monkeypatch):
    """The GPU branch (ModelPatcherDynamic, comfy-aimdo) on the CPU: a CoreModelPatcher that says is_dynamic() and
    comfy.ops layers created without weights, as under dynamic VRAM. The side model takes the loaded tensors
    themselves (no copy; reading a weight before load_state_dict assigns it would fail here) and gives the same
    output as the ordinary side model."""
    import comfy.model_patcher
    memory_management = pytest.importorskip("comfy.memory_management",
                                            reason="this ComfyUI has no dynamic VRAM (comfy.memory_management)")
    if not hasattr(memory_management, "aimdo_enabled"):
        pytest.skip("this ComfyUI has no dynamic VRAM switch (comfy.memory_management.aimdo_enabled)")
    apply, run = patch.prepare(seed=21)
    expected = run(apply(base))

    class DynamicOnCpu(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", DynamicOnCpu, raising=False)
    monkeypatch.setattr(memory_management, "aimdo_enabled", True)
    import comfy.ops
    assert comfy.ops.manual_cast.Linear(4, 4).weight is None, "the host's dynamic layers should start without weights"
    patched = apply(base)
    side = side_of(patched, patch.module)
    assert type(side) is DynamicOnCpu
    names = dict(side.model.named_parameters())
    assert set(names) == set(patch.side_files)
    for name, p in names.items():
        assert p.data_ptr() == patch.side_files[name].data_ptr(), f"{name} was copied, not assigned"
    monkeypatch.setattr(memory_management, "aimdo_enabled", False)
    assert torch.equal(run(patched), expected)


# --- native multi-GPU ----------------------------------------------------------------------------------------------

def test_multigpu_deepclone_gets_its_own_patch_and_side_model(patch, file_base):
    apply, run = patch.prepare(seed=8)
    patched = apply(file_base)
    expected = run(patched)
    clone = patched.deepclone_multigpu(new_load_device=torch.device("cpu"))
    assert clone.model is not patched.model
    mine, theirs = the_patch(patched, patch.module), the_patch(clone, patch.module)
    assert theirs is not mine, "two devices must not share one run state"
    assert theirs.side is side_of(clone, patch.module)
    assert theirs.side is not mine.side and theirs.side.model is not mine.side.model
    before = builds(mine)
    assert before == patch.one_run and builds(theirs) == {}
    assert torch.equal(run(clone), expected)
    # the clone's hooks build with the clone's patch, once per block (no stacked patch), not the original's
    assert builds(theirs) == patch.one_run
    assert builds(mine) == before


def test_multigpu_match_clones_rebinds(patch, file_base):
    apply, run = patch.prepare(seed=9)
    patched = apply(file_base)
    expected = run(patched)
    deep = patched.deepclone_multigpu(new_load_device=torch.device("cpu"))
    holder = patched.clone()
    holder.set_additional_models("multigpu", [deep])
    holder.match_multigpu_clones()
    matched = holder.get_additional_models_with_key("multigpu")[0]
    mine = the_patch(matched, patch.module)
    assert mine is not the_patch(holder, patch.module)
    assert mine.side is side_of(matched, patch.module)
    assert torch.equal(run(matched), expected)
