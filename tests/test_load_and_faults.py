"""Load and fault checks through the real server (issue #10): many queued prompts keep the server's memory bounded,
an interrupted run leaves nothing behind, a patch never changes the shared model, and one Stand-In reference
never leaks into the next. No timing assertions."""
import json
import uuid

import pytest
import requests
import torch

from comfy_server import comfy_server, wan_t2v_prompt  # noqa: F401  (fixture)
from standin_files import standin_state_dict

pytestmark = pytest.mark.integration

CKPT = "load_faults_standin.safetensors"


@pytest.fixture(scope="module")
def server(comfy_server):
    comfy_server.add_model("stand_in", CKPT, standin_state_dict(seed=3))
    return comfy_server


def ref_node(seed):
    return {"class_type": "WanIDTestTensor", "inputs": {"shape": "1,16,1,8,8", "fill": "randn", "dtype": "float32",
                                                        "seed": seed}}


def patched(seed=1, ref_seed=0, steps=2, prefix="wanid_test/lf", strength=1.0):
    p = wan_t2v_prompt(seed=seed, steps=steps, filename_prefix=prefix)
    p["ref"] = ref_node(ref_seed)
    p["standin"] = {"class_type": "WanIDRestrictedAttnPatch", "inputs": {
        "model": ["unet", 0], "standin_name": CKPT, "strength": strength, "reference_latent": ["ref", 1]}}
    p["sampler"]["inputs"]["model"] = ["standin", 0]
    return p


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_fifty_queued_prompts_keep_memory_bounded(server):
    """50 prompts queued at once (patched and plain, a few bad ones among them: error paths must not keep tensors
    alive either), all executed (distinct seeds). The server's RSS (VmRSS in /proc) grows by less than 300 MB in
    all, and the second 25 prompts add no more than the first 25 did (or 150 MB): a leak (each run's model clone,
    LoRA side model, reference K/V or an error's traceback frames kept alive) shows as steady growth."""
    pid = server.proc.pid
    for i in range(5):  # warm-up: first-time allocations, imports, caches at their steady size
        server.queue(patched(seed=900 + i, ref_seed=i))
    base = rss_bytes(pid)
    ids, mid = [], None
    for i in range(50):
        if i % 10 == 9:
            p = patched(seed=1000 + i)
            p["ref"]["inputs"]["fill"] = "nan"  # refused while executing
        elif i % 2:
            p = wan_t2v_prompt(seed=1000 + i, filename_prefix="wanid_test/lf_plain")
        else:
            p = patched(seed=1000 + i, ref_seed=i)
        status, data = server.post_prompt_raw(p)
        assert status == 200, data
        ids.append(data["prompt_id"])
    for k, pid_ in enumerate(ids):
        entry = server.wait(pid_)
        assert entry["status"]["status_str"] == ("error" if k % 10 == 9 else "success"), entry["status"]
        if k == 24:
            mid = rss_bytes(pid)
    end = rss_bytes(pid)
    growth = end - base
    assert growth < 300 * 2 ** 20, f"RSS grew {growth / 2 ** 20:.0f} MB over 50 prompts"
    assert end - mid < max(150 * 2 ** 20, 2 * (mid - base)), \
        f"RSS keeps growing: {(mid - base) / 2 ** 20:.0f} MB in the first half, {(end - mid) / 2 ** 20:.0f} MB after"
    server.queue({"ping": {"class_type": "WanIDTestPing", "inputs": {}}})


def test_interrupt_then_a_bit_identical_next_run(server):
    want = server.output_latent(server.queue(patched(seed=77, ref_seed=7, prefix="wanid_test/lf_int_ref")))
    server.reset_cache()
    ws_id = uuid.uuid4().hex
    import websocket
    ws = websocket.WebSocket()
    ws.connect(f"ws://127.0.0.1:{server.port}/ws?clientId={ws_id}", timeout=60)
    try:
        status, data = server.post_prompt_raw(patched(seed=78, ref_seed=7, steps=400), ws_id)
        assert status == 200, data
        while True:  # interrupt once sampling has really started
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "progress" and m["data"].get("node") == "sampler":
                    requests.post(server.url + "/interrupt", timeout=30).raise_for_status()
                    break
    finally:
        ws.close()
    entry = server.wait(data["prompt_id"])
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    again = server.output_latent(server.queue(patched(seed=77, ref_seed=7, prefix="wanid_test/lf_int_again")))
    assert torch.equal(again, want), "a run after an interrupt must not see the interrupted run's state"


def test_unpatched_is_bit_identical_after_patched_runs(server):
    plain = wan_t2v_prompt(seed=88, filename_prefix="wanid_test/lf_plain_before")
    before = server.output_latent(server.queue(plain))
    for i in range(3):
        server.queue(patched(seed=88, ref_seed=20 + i, strength=0.5 + i * 0.5))
    # the sampler's entry for `plain` left the cache with the patched prompts, UNETLoader's stayed: the shared model
    # is reused and must be exactly as before
    after = server.output_latent(server.queue(wan_t2v_prompt(seed=88, filename_prefix="wanid_test/lf_plain_after")))
    assert torch.equal(after, before)


def test_back_to_back_references_are_isolated(server):
    first = server.output_latent(server.queue(patched(seed=99, ref_seed=31, prefix="wanid_test/lf_ref1")))
    second = server.output_latent(server.queue(patched(seed=99, ref_seed=32, prefix="wanid_test/lf_ref2")))
    assert not torch.equal(first, second), "the two references should give different videos"
    server.reset_cache()
    fresh = server.output_latent(server.queue(patched(seed=99, ref_seed=32, prefix="wanid_test/lf_ref2_fresh")))
    assert torch.equal(second, fresh), "the second reference's run must equal a fresh run with only it"
