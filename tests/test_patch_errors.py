"""The patches' bad inputs through the REAL server (issue 15; the pattern of test_bad_inputs.py): an inf in the latent
under Stand-In (was: an all-NaN "success"), a lynx_full folder without ref_layers.safetensors (was: Lynx silently
without its Ref adapter), a Lynx file holding int64 tensors (was: a raw torch error in Lynx Apply). Each ends in a
worded error naming the input and the fix; after each the server still serves and no file the user made changed.
The cases that need a face pipeline or another pack's node are tested in-process (tests/test_patch_run.py)."""
import shutil

import pytest

from comfy_server import comfy_server, wan_t2v_prompt  # noqa: F401  (fixture)
from server_cases import assert_worded, outcome, still_serves, tensor_node, user_files

pytestmark = pytest.mark.integration

STANDIN = "patch_errors_standin.safetensors"
NO_REF = "wanid_patch_errors_full_no_ref"
INT64 = "wanid_patch_errors_int64"
ARCFACE = "patch_errors_arcface_ir_se50.pth"  # the loader lists files named like an IR-SE50


@pytest.fixture(scope="module")
def server(comfy_server):
    import lynx_files
    from face_files import write_ir_se50
    from standin_files import standin_state_dict

    s = comfy_server
    s.add_model("stand_in", STANDIN, standin_state_dict())
    write_ir_se50(s.models_dir / "facexlib" / ARCFACE)
    folder = lynx_files.write_lynx(s.models_dir / "lynx" / NO_REF, "full", dim=128, layers=2)
    (folder / "ref_layers.safetensors").unlink()  # an interrupted download of the lynx_full folder
    folder = lynx_files.write_lynx(s.models_dir / "lynx" / INT64, "full", dim=128, layers=2)
    _, ip, _ = lynx_files.lynx_tensors("full", dim=128, layers=2)
    s.add_model("lynx", f"{INT64}/ip_layers.safetensors", {**ip, "1.to_k_ip.weight": ip["1.to_k_ip.weight"].long()})
    yield s
    (s.models_dir / "stand_in" / STANDIN).unlink(missing_ok=True)
    (s.models_dir / "facexlib" / ARCFACE).unlink(missing_ok=True)
    for name in (NO_REF, INT64):
        shutil.rmtree(s.models_dir / "lynx" / name, ignore_errors=True)


def standin_inf_latent(s):
    p = wan_t2v_prompt(seed=5)
    p["ref"] = tensor_node("1,16,1,8,8")
    p["bad"] = tensor_node("1,16,2,8,8", "inf")
    p["standin"] = {"class_type": "WanIDRestrictedAttnPatch", "inputs": {
        "model": ["unet", 0], "standin_name": STANDIN, "strength": 1.0, "reference_latent": ["ref", 1]}}
    p["sampler"]["inputs"].update(model=["standin", 0], latent_image=["bad", 1])
    return p


def lynx_loader(folder):
    return lambda s: {
        "lynx": {"class_type": "WanIDLynxLoader", "inputs": {"lynx_name": folder, "arcface_name": ARCFACE}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["lynx", 0]}}}


CASES = [
    ("standin_inf_latent", standin_inf_latent,
     r"^latent: the sampler's input to this Stand-In-patched model: holds \d+ (NaN|inf).*re-create it"),
    ("lynx_full_without_ref_layers", lynx_loader(NO_REF),
     rf"^lynx_name: {NO_REF} holds lynx_full's ID layers but no ref_layers\.safetensors.*Download "
     r"ref_layers\.safetensors of lynx_full from ByteDance/lynx into this folder, or use lynx_lite"),
    ("lynx_int64_tensor", lynx_loader(INT64),
     rf"^lynx_name: Lynx file {INT64}/ip_layers\.safetensors: 1\.to_k_ip\.weight holds int64 values.*Download it "
     "again"),
]


@pytest.mark.parametrize("case_id, build, pattern", CASES, ids=[c[0] for c in CASES])
def test_patch_input_is_worded_and_harmless(server, case_id, build, pattern):
    before = user_files(server)
    kind, etype, message, _ = outcome(server, build(server))
    assert_worded(kind, etype, message, pattern)
    after = user_files(server)
    assert not [str(p) for p, h in before.items() if after.get(p) != h], "files changed by a bad prompt"
    still_serves(server)
