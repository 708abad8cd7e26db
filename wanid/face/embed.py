"""ArcFace identity embeddings (glintr100.onnx of antelopev2, w600k_r50.onnx of buffalo_l) via onnxruntime:
faces aligned to 112x112 with the 5 landmarks, RGB, (x - 127.5) / 127.5, L2-normalised 512-d output."""
import numpy as np

from .align import norm_crop
from .onnx_session import make_session


def _is_mxnet_style(model):
    """insightface's rule: models converted from mxnet normalise inside the graph (Sub and Mul in the
    first nodes) and take raw 0..255 pixels."""
    import onnx
    graph = onnx.load(model, load_external_data=False).graph if isinstance(model, str) else \
        onnx.load_from_string(model).graph
    names = [n.name for n in graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return sub and mul


class ArcFaceEmbedder:
    def __init__(self, model, provider="auto", name="arcface"):
        self.session, self.provider = make_session(model, provider)
        self.name = name
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 112
        self.batched = not isinstance(inp.shape[0], int) or inp.shape[0] <= 0
        out = self.session.get_outputs()
        if len(out) != 1:
            raise ValueError(f"{name}: {len(out)} outputs; an ArcFace recognition model has one")
        self.mean, self.std = (0.0, 1.0) if _is_mxnet_style(model) else (127.5, 127.5)

    def embed_aligned(self, faces, batch_size=32):
        """faces: uint8 RGB [N, 112, 112, 3] already aligned. Returns float32 [N, D], unit length."""
        faces = np.asarray(faces)
        if len(faces) == 0:
            return np.zeros((0, 512), np.float32)
        blob = ((faces.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)
        step = batch_size if self.batched else 1
        feats = np.concatenate([self.session.run(None, {self.input_name: np.ascontiguousarray(blob[i:i + step])})[0]
                                for i in range(0, len(blob), step)])
        feats = feats.reshape(len(blob), -1).astype(np.float32)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)

    def embed(self, frames, landmarks):
        """Embeddings of one face per frame: frames uint8 RGB [H, W, 3] each, landmarks [N, 5, 2] in the frame."""
        aligned = [norm_crop(f, l, self.input_size)[0] for f, l in zip(frames, landmarks)]
        return self.embed_aligned(np.stack(aligned)) if aligned else np.zeros((0, 512), np.float32)
