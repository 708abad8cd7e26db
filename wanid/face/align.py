"""ArcFace alignment: the similarity transform (Umeyama, no reflection) that maps the 5 landmarks onto
insightface's 112x112 template, and the warp. Same result as insightface.utils.face_align.norm_crop."""
import cv2
import numpy as np

# insightface's arcface_dst: eyes, nose tip, mouth corners of an aligned 112x112 face
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def umeyama(src, dst):
    """2x3 similarity (rotation, uniform scale, translation) minimising sum |M src - dst|^2 (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    var_s = (s ** 2).sum() / n
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def estimate_norm(landmarks, image_size=112):
    """The 2x3 matrix taking frame pixels to an aligned image_size crop (image_size multiple of 112)."""
    if image_size % 112:
        raise ValueError(f"image_size {image_size}: ArcFace alignment uses multiples of 112")
    return umeyama(landmarks, ARCFACE_TEMPLATE * (image_size / 112.0))


def transform_points(m, points):
    p = np.asarray(points, np.float64)
    return p @ m[:, :2].T + m[:, 2]


def norm_crop(image, landmarks, image_size=112):
    """Aligned face (cv2.warpAffine, black outside the frame) and the matrix used."""
    m = estimate_norm(landmarks, image_size)
    return cv2.warpAffine(image, m, (image_size, image_size), borderValue=0.0), m


def alignment_residual(landmarks):
    """RMS distance (template pixels, 112 scale) between the aligned landmarks and the ArcFace template:
    small for a frontal neutral face, larger when turned, tilted up/down or grimacing."""
    m = estimate_norm(landmarks)
    return float(np.sqrt(((transform_points(m, landmarks) - ARCFACE_TEMPLATE) ** 2).sum(1).mean()))
