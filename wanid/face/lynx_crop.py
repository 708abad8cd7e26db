"""The reference face image of Lynx's Ref adapter: the 5-point similarity alignment onto an EXTENDED ArcFace
template, at 256 (modules/common/face_utils.py align_face with extend_face_crop=True): the template moves down
10 px and shrinks by 0.8 about the centre of the 112 square, and at 256 (a multiple of 128, not of 112) it is
scaled by 256/128 and shifted right by 16 px, as insightface's 128-based rule does. Black outside the frame."""
import cv2
import numpy as np

from .align import ARCFACE_TEMPLATE, umeyama

LYNX_REF_SIZE = 256


def extended_template(extend_ratio=0.8):
    t = ARCFACE_TEMPLATE.astype(np.float32).copy()  # float32, as the official template
    t[:, 1] += 10
    return (t - 112 / 2) * extend_ratio + 112 / 2


def template_at(template, size):
    if size % 112 == 0:
        return template * (size / 112.0)
    if size % 128 == 0:
        t = template * (size / 128.0)
        t[:, 0] += 8.0 * size / 128.0
        return t
    raise ValueError(f"size {size}: the ArcFace alignment rule needs a multiple of 112 or 128")


def lynx_reference_crop(frame, landmarks, size=LYNX_REF_SIZE):
    """uint8 RGB [size, size, 3] reference for the Ref adapter, from the frame and its 5 landmarks."""
    m = umeyama(np.asarray(landmarks, np.float64), template_at(extended_template(), size).astype(np.float64))
    return cv2.warpAffine(np.ascontiguousarray(frame), m, (size, size), borderValue=0.0)
