"""benchmarks/gpu_report.py rehearsed on the CPU: a cell cut off by its time limit loses only its own rows (the next
cell still runs and prints its table), and the lowvram cell's rows for Slot-ID and Lynx full come out with the output
equal to full load. The whole rehearsal (every cell, every method) is `gpu_report.py --cpu --size tiny`."""
import os
import subprocess
import sys

import pytest

import wanid_testing

pytestmark = pytest.mark.integration

REPORT = wanid_testing.REPO / "benchmarks" / "gpu_report.py"


def rows(text):
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip().strip("|").split("|")]
                                             for line in text.splitlines() if line.startswith("| "))}


def test_a_cut_off_cell_leaves_the_next_one_its_table():
    if wanid_testing.COMFYUI is None:
        pytest.skip(wanid_testing.NO_COMFY_REASON)
    cmd = [sys.executable, str(REPORT), "--cpu", "--size", "tiny", "--cells", "host", "fp8-lowvram",
           "--limit", "host=0.5", "--methods", "Slot-ID tokens + LoRA", "Lynx full"]
    env = {**os.environ, "COMFYUI_PATH": str(wanid_testing.COMFYUI)}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out = done.stdout
    assert done.returncode == 1, out[-3000:] + done.stderr[-3000:]  # a cell was cut off: the report says so
    table = rows(out)
    assert table["host"][0].startswith("CUT OFF"), out[-3000:]
    assert table["fp8-lowvram"][0] == "ok", out[-3000:]
    for method in ("unpatched", "Slot-ID tokens + LoRA", "Lynx full"):
        assert method in table, f"no row for {method}:\n{out[-3000:]}"
    # the lowvram columns: output against full load, 0 where ComfyUI casts the same weights the same way
    assert float(table["Lynx full"][-2]) == 0.0
    assert float(table["unpatched"][-2]) == 0.0
    assert "FAILED" not in out
