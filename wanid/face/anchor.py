"""The anchor frame: the best reference face of a clip, by detection score x frontality x sharpness.

frontality: exp(-r / 4) with r the RMS distance (112-px template units) between the face's 5 landmarks,
    aligned by the best similarity, and the ArcFace template: about 0.6-0.8 for a frontal face, falls as
    the head turns or tilts (the landmarks no longer fit a similarity of the frontal layout).
sharpness: variance of the Laplacian of the aligned 112x112 grey face (same scale whatever the face size),
    divided by the clip's largest, so it lies in (0, 1] and blurred frames lose.
"""
import cv2
import numpy as np

from .align import alignment_residual, norm_crop

FRONTALITY_SCALE = 4.0


def frontality(landmarks):
    return float(np.exp(-alignment_residual(landmarks) / FRONTALITY_SCALE))


def laplacian_variance(frame, landmarks):
    aligned, _ = norm_crop(frame, landmarks, 112)
    grey = cv2.cvtColor(np.ascontiguousarray(aligned), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def anchor_scores(frames, landmarks, scores, valid):
    """Per-frame (total, frontality, sharpness); invalid frames score 0."""
    n = len(frames)
    front = np.zeros(n)
    sharp = np.zeros(n)
    for i in range(n):
        if valid[i]:
            front[i] = frontality(landmarks[i])
            sharp[i] = laplacian_variance(frames[i], landmarks[i])
    if sharp.max() > 0:
        sharp = sharp / sharp.max()
    total = np.asarray(scores, np.float64) * front * sharp * np.asarray(valid, bool)
    return total, front, sharp


def choose_anchor(frames, landmarks, scores, valid):
    """Index of the best frame (the first frame when none is valid) and the per-frame totals."""
    total, _, _ = anchor_scores(frames, landmarks, scores, valid)
    return (int(np.argmax(total)) if np.any(valid) else 0), total
