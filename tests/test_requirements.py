"""What users install: requirements.txt must not put the CPU onnxruntime next to onnxruntime-gpu (the two
overwrite each other and face detection silently falls back to the CPU), and install.py adds the bundled
detector without its dependencies."""
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"),
                    reason="onnxruntime-gpu is chosen on Linux/Windows x86_64 only")
def test_requirements_resolve_to_onnxruntime_gpu_alone(tmp_path):
    report = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                          "--report", str(report), "-r", str(REPO / "requirements.txt")],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"pip could not resolve requirements.txt here (no package index?): {out.stderr[-300:]}")
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names, "a runtime requirement pulls the CPU onnxruntime in beside onnxruntime-gpu"


def test_install_py_is_a_no_op_when_the_detector_is_installed():
    pytest.importorskip("retinaface")
    out = subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "pip install" not in out.stdout
