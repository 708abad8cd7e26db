"""Runs the OFFICIAL Stand-In VideoMaskGenerator (preprocessor/videomask_generator.py) and the official face swap
pipeline's latent mask in their own process, from the copy scripts/standin_oracle_env.py extracts.

    <oracle python> standin_faceswap_oracle.py <official repo> <inputs.pt> <outputs.pt>

Replaced in THIS process only, so both sides see the same detections and parsing (no insightface or BiSeNet
weights can be downloaded here):
- insightface's FaceAnalysis: .get(image) answers from the detections the pack's detector made, in the order the
  official code asks (reference first, then every frame), and checks it is asked about the same image;
- facexlib's init_parsing_model: the same 1x1 convolution the test gives the pack's FaceParser;
- cv2.VideoCapture: yields the test's frames (BGR) instead of decoding a file (the path given is the inputs file).
Everything else is the official code, unchanged.
"""
import random
import sys
import types

import numpy as np
import torch


def main(repo, inputs_path, outputs_path):
    sys.path.insert(0, repo)
    inp = torch.load(inputs_path, weights_only=False)
    queue = list(inp["detections"])  # [(rgb image it was asked about, [(bbox, kps, score), ...]), ...]

    class Face:
        def __init__(self, bbox, kps, score):
            self.bbox, self.kps, self.det_score = bbox, kps, np.float32(score)

    class FaceAnalysis:
        def __init__(self, *a, **k):
            pass

        def prepare(self, *a, **k):
            pass

        def get(self, bgr):
            image, faces = queue.pop(0)
            if not np.array_equal(bgr[..., ::-1], image):
                raise AssertionError("the official code asked about another image than the pack detected on")
            return [Face(b, k, s) for b, k, s in faces]

    conv = torch.nn.Conv2d(3, 19, 1)
    conv.load_state_dict(inp["parser"])

    class Parser(torch.nn.Module):
        def forward(self, x):
            return (conv(x),)

    insightface = types.ModuleType("insightface")
    insightface.app = types.ModuleType("insightface.app")
    insightface.app.FaceAnalysis = FaceAnalysis
    facexlib = types.ModuleType("facexlib")
    facexlib.parsing = types.ModuleType("facexlib.parsing")
    facexlib.parsing.init_parsing_model = lambda model_name="bisenet", device="cpu": Parser()
    sys.modules.update({"insightface": insightface, "insightface.app": insightface.app, "facexlib": facexlib,
                        "facexlib.parsing": facexlib.parsing})

    import cv2
    from PIL import Image
    from preprocessor import videomask_generator as vmg

    frames_rgb = inp["frames"]  # uint8 [n, H, W, 3]

    class Capture:
        def __init__(self, path):
            self.i = 0

        def isOpened(self):
            return True

        def read(self):
            if self.i >= len(frames_rgb):
                return False, None
            self.i += 1
            return True, np.ascontiguousarray(cv2.cvtColor(frames_rgb[self.i - 1], cv2.COLOR_RGB2BGR))

        def release(self):
            pass

    cv2.VideoCapture = Capture  # this process only

    gen = vmg.VideoMaskGenerator(device=torch.device("cpu"))
    face = Image.fromarray(inp["face_rgba"], "RGBA")
    random.seed(inp["seed"])
    video, masks, w, h, f = gen.process(inputs_path, face, **inp["kwargs"])
    if queue:
        raise AssertionError(f"{len(queue)} detections were not asked for")

    # The pipeline's latent mask (pipelines/wan_video_face_swap.py __call__ and NoiseInitializer), in its dtype.
    from utils import BasePipeline
    out = {"frames": video, "masks": masks[..., 0], "size": (w, h, f)}
    for name, dtype in (("latent_bf16", torch.bfloat16), ("latent_fp32", torch.float32)):
        pipe = BasePipeline.__new__(BasePipeline)
        pipe.torch_dtype, pipe.device = dtype, "cpu"
        length = (f - 1) // 4 + 1
        mask_processed = pipe.preprocess_video(masks)[:, 0:1, ...]
        latent_mask = torch.nn.functional.interpolate(mask_processed, size=(length, h // 8, w // 8),
                                                      mode="nearest-exact")
        out[name] = (latent_mask > 0.5)[0, 0].float()
    torch.save(out, outputs_path)


if __name__ == "__main__":
    main(*sys.argv[1:4])
