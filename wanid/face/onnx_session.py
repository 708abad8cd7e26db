"""ONNX Runtime sessions: the one place a session is made (face detection, ArcFace, Setup Check's session test),
with the user's provider choice and the CUDA arena options."""
import logging

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "CUDA", "CPU", "ROCm", "CoreML")
_ORT_NAMES = {
    "CUDA": "CUDAExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "CPU": "CPUExecutionProvider",
}
ACCELERATORS = tuple(_ORT_NAMES[k] for k in ("CUDA", "ROCm", "CoreML"))  # what 'auto' takes, in this order


def provider_list(choice="auto", available=None):
    """ONNX Runtime providers for a user choice. auto: the accelerators present, then the CPU."""
    import onnxruntime as ort
    available = list(ort.get_available_providers() if available is None else available)
    if choice not in PROVIDER_CHOICES:
        raise ValueError(f"provider: {choice!r} is not one of {', '.join(PROVIDER_CHOICES)}")
    if choice == "auto":
        wanted = [p for p in ACCELERATORS if p in available]
    else:
        name = _ORT_NAMES[choice]
        if name not in available:
            raise RuntimeError(
                f"provider: {choice} was asked for but this onnxruntime offers only {', '.join(available)}. "
                f"Pick 'auto' or 'CPU', or install the onnxruntime build for {choice} "
                f"(onnxruntime-gpu for CUDA, onnxruntime-rocm for ROCm).")
        wanted = [name]
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


def make_session(model, provider="auto"):
    """An InferenceSession on `model` (a path or the ONNX bytes). Returns (session, provider actually used):
    onnxruntime may fall back to the CPU (say CUDA libraries missing), so the session is asked, not the request."""
    import onnxruntime as ort
    providers = provider_list(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the fallback is reported by us, not as a wall of ORT warnings
    options.enable_mem_pattern = False
    # ORT's CUDA arena only grows by default; the sampler that follows in the same process needs that VRAM.
    cuda = {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
    requested = [(p, cuda) if p == "CUDAExecutionProvider" else p for p in providers]
    session = ort.InferenceSession(model, sess_options=options, providers=requested)
    used = session.get_providers()[0]
    if provider != "auto" and used != providers[0]:
        log.warning("[WanIdentity] asked for %s, but onnxruntime runs on %s (accelerator libraries missing?)",
                    providers[0], used)
    return session, used
