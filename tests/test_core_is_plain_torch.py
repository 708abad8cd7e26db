"""The core package `wanid` must import nothing from ComfyUI: it is imported here in a fresh interpreter that
cannot see ComfyUI, module by module, and nothing named comfy*/folder_paths may end up loaded."""
import pkgutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The trainer's host adapter loads Wan/VAE/umT5 with ComfyUI's own loaders, inside functions, when the training
# command runs; importing it must still not pull ComfyUI in.
HOST_ADAPTERS = {"wanid.train.comfy_host"}


def test_every_core_module_imports_without_comfyui():
    import wanid
    names = sorted(m.name for m in pkgutil.walk_packages(wanid.__path__, "wanid.") if not m.name.endswith("__main__"))
    assert len(names) > 20
    code = (
        "import sys, importlib\n"
        "HOST = ('comfy', 'comfy_api', 'comfy_extras', 'comfy_execution', 'folder_paths', 'nodes')\n"
        "tried = []\n"
        "class Refuse:  # any attempt to import the host, even one guarded by try/except, is recorded\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HOST:\n"
        "            tried.append(name)\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('LOADED', sorted(set(tried)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
    assert HOST_ADAPTERS <= set(names)
