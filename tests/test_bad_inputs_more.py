"""More bad inputs through the REAL server (issue #15; the pattern of test_bad_inputs.py): errors name the input the
user set (Identity Score's `recognition`, not the Lynx Loader's `arcface_name`); a file holding pickled code is
refused in the pack's words (what it holds, that the pack will not run it, what to use instead), never with torch's
text on how to load it unsafely; a non-finite IMAGE into Face Crop / Parse or Identity Score is refused, naming the
input, instead of giving NaN crops or "no face" scores. After each case the server still serves and no file the
user made changed."""
import os
import shutil

import pytest
import torch

from comfy_server import comfy_server  # noqa: F401  (fixture)
from server_cases import (MARKER, EvilPickle, assert_worded, face_node, face_prompt, outcome, save_image,
                          still_serves, tensor_node, torch_bytes, user_files)

pytestmark = pytest.mark.integration

LYNX = "wanid_more_lynx_full"
ARCFACE_PICKLE = "bad_more_arcface_pickle.pth"
ARCFACE_LEGACY_PICKLE = "bad_more_arcface_legacy_pickle.pth"
ARCFACE_JUNK = "bad_more_arcface_junk.pth"
ARCFACE_TRUNCATED = "bad_more_arcface_truncated.pth"
ARCFACE_KEYS = "bad_more_arcface_keys.pth"
STANDIN_PICKLE = "bad_more_pickle.ckpt"
TORCH_ADVICE = ("weights_only", "Re-running", "torch.load", "trust")  # torch's text on loading a file unsafely


@pytest.fixture(scope="module")
def server(comfy_server):
    """The shared server with IR-SE50 files that the loader refuses, a Stand-In file with pickled code, a Lynx folder
    (official formats, random weights) and the face tests' antelopev2 pack; removed after."""
    import lynx_files
    from face_files import write_pack
    from standin_files import standin_state_dict
    from wanid.lynx.arcface import ArcFaceIRSE50

    s = comfy_server
    good = ArcFaceIRSE50().state_dict()
    s.add_model("facexlib", ARCFACE_PICKLE, torch_bytes({**good, "x": EvilPickle()}))
    legacy = s.models_dir / "facexlib" / ARCFACE_LEGACY_PICKLE  # torch's old (non-zip) format, read by pickle
    torch.save({"x": EvilPickle()}, legacy, _use_new_zipfile_serialization=False)
    s.add_model("facexlib", ARCFACE_JUNK, b"not a torch file at all")
    s.add_model("facexlib", ARCFACE_TRUNCATED, torch_bytes(good)[:4000])
    s.add_model("facexlib", ARCFACE_KEYS, torch_bytes({"input_layer.0.weight": torch.zeros(1)}))
    s.add_model("stand_in", STANDIN_PICKLE, torch_bytes({"state_dict": standin_state_dict(), "x": EvilPickle()}))
    lynx_files.write_lynx(s.models_dir / "lynx" / LYNX, "full")
    pack = s.models_dir / "insightface" / "models" / "antelopev2"
    made_pack = not pack.exists()
    if made_pack:
        write_pack(pack)
    if os.path.exists(f"/tmp/{MARKER}"):
        os.remove(f"/tmp/{MARKER}")
    yield s
    for name in (ARCFACE_PICKLE, ARCFACE_LEGACY_PICKLE, ARCFACE_JUNK, ARCFACE_TRUNCATED, ARCFACE_KEYS):
        (s.models_dir / "facexlib" / name).unlink(missing_ok=True)
    (s.models_dir / "stand_in" / STANDIN_PICKLE).unlink(missing_ok=True)
    shutil.rmtree(s.models_dir / "lynx" / LYNX, ignore_errors=True)
    if made_pack:
        shutil.rmtree(pack, ignore_errors=True)


def score_prompt(recognition="insightface (onnx)", images="rand", reference="rand", detector="retinaface_mobilenet"):
    return lambda s: {
        "img": tensor_node("2,64,64,3", images), "ref": tensor_node("1,64,64,3", reference, seed=1),
        "score": {"class_type": "WanIDIdentityScore", "inputs": {
            "images": ["img", 0], "reference": ["ref", 0], "detector": detector, "provider": "CPU",
            "recognition": recognition}}}


def lynx_loader_prompt(arcface_name):
    return lambda s: {
        "lynx": {"class_type": "WanIDLynxLoader", "inputs": {"lynx_name": LYNX, "arcface_name": arcface_name}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["lynx", 0]}}}


def setup_check_line(server, name):
    kind, etype, message, entry = outcome(server, {"check": {"class_type": "WanIDSetupCheck",
                                                             "inputs": {"test_providers": False}}})
    assert kind == "ok", message
    return next(ln for ln in entry["outputs"]["check"]["text"][0].splitlines() if name in ln)


REFUSED = r"is refused: it holds pickled code, not only tensors \(loading it would call posix\.system\), and this " \
          r"pack never runs code from a model file\. Use the official file \(or a \.safetensors version of it\)"

# (id, build(server) -> prompt, regex the message must match)
CASES = [
    # Identity Score's recognition input: its own name, whatever the file's problem
    ("score_recognition_pickle", score_prompt(ARCFACE_PICKLE), rf"^recognition: {ARCFACE_PICKLE} {REFUSED}"),
    ("score_recognition_legacy_pickle", score_prompt(ARCFACE_LEGACY_PICKLE),
     rf"^recognition: {ARCFACE_LEGACY_PICKLE} {REFUSED}.*Download recognition_arcface_ir_se50\.pth"),
    ("score_recognition_junk", score_prompt(ARCFACE_JUNK),
     rf"^recognition: {ARCFACE_JUNK} is unreadable \(UnpicklingError: Unsupported operand \d+\)\. Download "),
    ("score_recognition_truncated", score_prompt(ARCFACE_TRUNCATED),
     rf"^recognition: {ARCFACE_TRUNCATED} is unreadable \(.*\)\. Download recognition_arcface_ir_se50\.pth"),
    ("score_recognition_wrong_keys", score_prompt(ARCFACE_KEYS),
     rf"^recognition: {ARCFACE_KEYS}: input_layer\.0\.weight has shape \[1\], IR-SE50 needs"),
    # the same file through the Lynx Loader: that node's input
    ("lynx_arcface_name_pickle", lynx_loader_prompt(ARCFACE_PICKLE), rf"^arcface_name: {ARCFACE_PICKLE} {REFUSED}"),
    # non-finite frames
    ("face_all_nan_image", face_prompt(tensor_node("2,64,64,3", "nan"), detector="retinaface_mobilenet"),
     r"^images: holds 24576 NaN of 24576 values \(not finite numbers\); an image holds colours in 0\.\.1"),
    ("face_inf_image", face_prompt(tensor_node("1,64,64,3", "inf"), detector="retinaface_mobilenet"),
     r"^images: holds 12288 inf of 12288 values"),
    ("face_one_nan_pixel", face_prompt(tensor_node("1,64,64,3", "one_nan"), detector="retinaface_mobilenet",
                                       on_no_face="whole_frame"),
     r"^images: holds 1 NaN of 12288 values"),
    ("face_similar_to_nan", lambda s: {
        "img": tensor_node("1,64,64,3", "rand"), "photo": tensor_node("1,64,64,3", "nan"),
        "face": face_node(["img", 0], face_choice="most_similar", similar_to=["photo", 0]),
        "save": save_image(["face", 0])},
     r"^similar_to: holds 12288 NaN of 12288 values"),
    ("score_nan_frames", score_prompt(images="nan"),
     r"^images: holds 24576 NaN of 24576 values.*score a video that decoded to real colours"),
    ("score_nan_reference_photo", score_prompt(reference="one_nan"), r"^reference: holds 1 NaN of 12288 values"),
]


@pytest.mark.parametrize("case_id, build, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_worded_and_harmless(server, case_id, build, pattern):
    before = user_files(server)
    kind, etype, message, _ = outcome(server, build(server))
    assert_worded(kind, etype, message, pattern)
    assert not any(t in message for t in TORCH_ADVICE), f"torch's advice quoted: {message}"
    if case_id.startswith("score_recognition"):
        assert "arcface_name" not in message
    after = user_files(server)
    assert not [str(p) for p, h in before.items() if after.get(p) != h], "files changed by a bad prompt"
    assert not os.path.exists(f"/tmp/{MARKER}"), "the pickle's code ran"
    still_serves(server)


def test_setup_check_words_the_refused_files_the_same_way(server):
    """Setup Check reads each file through the node's loader: the same refusal, without the node input's name."""
    line = setup_check_line(server, STANDIN_PICKLE)
    assert line.startswith("WARN") and "is refused: it holds pickled code" in line and "never runs code" in line
    assert not any(t in line for t in TORCH_ADVICE), line
    line = setup_check_line(server, ARCFACE_JUNK)
    assert line.startswith("WARN") and "Unsupported operand" in line and "arcface_name" not in line
    assert not any(t in line for t in TORCH_ADVICE), line
    assert not os.path.exists(f"/tmp/{MARKER}")
