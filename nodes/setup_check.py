"""Setup Check: one readable report of what the pack needs, what is installed and the fix for what is not.
The node only gathers ComfyUI's facts (version, Stand-In's hooks, model folders); wanid/setup_report.py probes
and formats. It never raises: a failing probe is a line in the report."""
import folder_paths
from .v3 import io

from ..wanid.model_inputs import pack_folders
from ..wanid.setup_report import HostFacts, build_report
from . import paths


def _comfyui_version():
    try:
        from comfyui_version import __version__
        return str(__version__)
    except Exception:  # noqa: BLE001 - very old ComfyUI, or run outside one
        return "unknown"


def _host_error():
    from . import hooks
    try:
        hooks.check_host()
    except Exception as e:  # noqa: BLE001 - the message says which hooks are missing and what to do
        return str(e)
    return ""


def _device():
    try:
        import comfy.model_management
        return str(comfy.model_management.get_torch_device())
    except Exception:  # noqa: BLE001
        return ""


def _folders():
    """name -> (registered folders, [(file name as the loaders list it, full path)]), extra_model_paths included."""
    names = pack_folders()
    if any(n not in folder_paths.folder_names_and_paths for n in names):
        paths.register_model_folders()
    out = {}
    for name in names:
        try:
            folders = list(folder_paths.get_folder_paths(name))
            files = [(f, folder_paths.get_full_path(name, f)) for f in folder_paths.get_filename_list(name)]
        except Exception:  # noqa: BLE001 - the report then says the folder is empty
            folders, files = [], []
        out[name] = (folders, [(f, p) for f, p in files if p])
    return out


def gather_host():
    from ..wanid.host_versions import MIN_SUPPORTED
    return HostFacts(comfyui_version=_comfyui_version(), min_version=MIN_SUPPORTED, host_error=_host_error(),
                     device=_device(), folders=_folders())


class WanIDSetupCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WanIDSetupCheck",
            display_name="Wan Identity Setup Check",
            category="WanIdentity",
            description="Queue it alone to see what the pack needs and what is missing: ComfyUI version and "
                        "Stand-In's hooks, Python packages (which onnxruntime build, the device it really runs "
                        "on), and every model folder with the files found and what they fit. Each line is OK, "
                        "MISSING or WARN with the exact fix.",
            inputs=[
                io.Boolean.Input("test_providers", default=True, optional=True,
                                 tooltip="Open a tiny onnxruntime session to see the device face detection really "
                                         "gets (onnxruntime quietly falls back to the CPU when CUDA libraries do "
                                         "not load). Takes a second or two."),
            ],
            outputs=[io.String.Output("report", tooltip="The report, also shown on the node.")],
            is_output_node=True,  # a check: it runs with nothing connected
        )

    @classmethod
    def fingerprint_inputs(cls, test_providers=True):
        return float("nan")  # always run again: the point is to see the install as it is now

    @classmethod
    def execute(cls, test_providers=True) -> io.NodeOutput:
        try:
            host = gather_host()
        except Exception as e:  # noqa: BLE001 - never fail: report what could not be gathered
            host = HostFacts(host_error=f"could not query ComfyUI ({type(e).__name__}: {e})")
        try:
            report = build_report(host, test_providers=bool(test_providers)).text()
        except Exception as e:  # noqa: BLE001
            report = f"Wan Identity setup check failed: {type(e).__name__}: {e}"
        return io.NodeOutput(report, ui={"text": [report]})


NODES = [WanIDSetupCheck]
