"""Stand-In core without ComfyUI: checkpoint formats, reference positions, strength-weighted joint attention."""
import functools
import math
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from standin_files import standin_state_dict
from wanid.standin.checkpoint import StandInCheckpointError, load_standin
from wanid.standin.lora import StandInLoRA
from wanid.standin.positions import reference_position_ids
from wanid.standin.reference_branch import attend_with_reference


# small unscaled files: these tests read and check the formats
lora_sd = functools.partial(standin_state_dict, layers=3, dim=32, rank=4, seed=0, scaled=False)


@pytest.mark.parametrize("fmt", ["ckpt", "wrapped", "prefixed", "safetensors"])
def test_formats_load_to_the_same_tensors(tmp_path, fmt):
    sd = lora_sd()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.ckpt")
    if fmt == "ckpt":
        torch.save(sd, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": sd}, path)
    elif fmt == "prefixed":
        torch.save({"diffusion_model." + k: v for k, v in sd.items()}, path)
    else:
        save_file(sd, str(path))
    w = load_standin(str(path))
    assert (w.num_blocks, w.dim, w.rank) == (3, 32, 4)
    assert w.state_dict.keys() == sd.keys()
    assert all(torch.equal(w.state_dict[k], sd[k]) for k in sd)
    module = StandInLoRA.from_weights(w)
    x = torch.randn(2, 5, 32)
    expected = x @ sd["blocks.1.self_attn.k_loras.down.weight"].T @ sd["blocks.1.self_attn.k_loras.up.weight"].T
    assert torch.allclose(module.blocks[1].self_attn.k_loras(x), expected, atol=1e-5)


def test_rank_is_read_from_the_file(tmp_path):
    path = tmp_path / "r.safetensors"
    save_file(lora_sd(rank=16), str(path))
    assert load_standin(str(path)).rank == 16


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused_not_run(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    sd = lora_sd()
    sd["blocks.0.self_attn.q_loras.down.weight"] = Evil()
    torch.save(sd, path)
    with pytest.raises(StandInCheckpointError, match="pickled code"):
        load_standin(str(path))
    assert "pickled code ran" not in capsys.readouterr().out


def test_truncated_missing_and_foreign_files(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save(lora_sd(), good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(StandInCheckpointError, match="cut.ckpt is unreadable.*Download it again"):
        load_standin(str(cut))
    with pytest.raises(StandInCheckpointError, match="not found.*models/stand_in"):
        load_standin(str(tmp_path / "nope.ckpt"))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"model.layer.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(StandInCheckpointError, match="unexpected key 'model.layer.weight'"):
        load_standin(str(foreign))
    incomplete = lora_sd()
    del incomplete["blocks.1.self_attn.v_loras.up.weight"]
    torch.save(incomplete, tmp_path / "inc.ckpt")
    with pytest.raises(StandInCheckpointError, match="blocks.1.self_attn.v_loras.up.weight is missing"):
        load_standin(str(tmp_path / "inc.ckpt"))
    assert zipfile.is_zipfile(good)


def test_shape_mismatch_names_the_first_tensor(tmp_path):
    sd = lora_sd()
    sd["blocks.2.self_attn.k_loras.up.weight"] = torch.zeros(32, 5)
    torch.save(sd, tmp_path / "bad.ckpt")
    with pytest.raises(StandInCheckpointError, match=r"blocks.2.self_attn.k_loras.up.weight has shape \[32, 5\]"):
        load_standin(str(tmp_path / "bad.ckpt"))


def test_reference_positions_sit_outside_the_video_grid():
    ids = reference_position_ids(30, 52, 32, 32)
    assert ids.shape == (1, 1024, 3)
    assert (ids[0, :, 0] == -1).all()
    assert ids[0, 0, 1:].tolist() == [30, 52] and ids[0, -1, 1:].tolist() == [61, 83]
    assert ids[0, 1, 1:].tolist() == [30, 53]  # row-major, like the video tokens


def explicit_attention(q, k, v, heads, bias):
    b, lq, dim = q.shape
    d = dim // heads
    q, k, v = (t.double().reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, -1)
    return (w @ v).transpose(1, 2).reshape(b, lq, dim)


def sdpa(q, k, v, heads):
    b, lq, dim = q.shape
    d = dim // heads
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, lq, dim)


@pytest.mark.parametrize("strength", [1.0, 0.3, 1.7, 0.0])
def test_strength_is_a_weight_on_reference_keys(strength):
    g = torch.Generator().manual_seed(int(strength * 10))
    heads, d, lv, lr = 2, 16, 11, 5
    q, k, v = (torch.randn(2, lv, heads * d, generator=g) for _ in range(3))
    kr, vr = (torch.randn(1, lr, heads * d, generator=g) for _ in range(2))
    got = attend_with_reference(sdpa, q, k, v, kr, vr, heads, strength)
    if strength == 0:
        expected = explicit_attention(q, k, v, heads, torch.zeros(lv, dtype=torch.float64))
    else:
        bias = torch.zeros(lv + lr, dtype=torch.float64)
        bias[lv:] = math.log(strength)
        expected = explicit_attention(q, torch.cat([k, kr.expand(2, -1, -1)], 1),
                                      torch.cat([v, vr.expand(2, -1, -1)], 1), heads, bias)
    assert torch.allclose(got.double(), expected, atol=1e-5, rtol=1e-5)
