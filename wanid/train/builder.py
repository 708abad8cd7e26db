"""The dataset builder: a folder of videos -> manifest rows (reference segment, target segment, caption).

    python -m wanid.train.builder --videos data/clips --out data/rows.jsonl --insightface ~/ComfyUI/models/insightface

Each video is cut into consecutive segments of --segment seconds (default: one Wan clip, 81 frames at 16 fps).
Every segment is checked with FaceCrop/Parse's own code (wanid.face.pipeline.process_clip on --check-frames
frames): enough frames with a face, mostly one face. Each good segment becomes a TARGET once; its reference is
another good segment of the same video (the nearest one not adjacent when there is one, so the reference shows
the person at another moment, not the same shot), checked to be the same person by ArcFace cosine similarity when
a recognition model is available. Bad videos and segments are reported with the reason and skipped.

Captions: <video>.txt next to the video, else an entry of --captions (JSON {file name: caption}), else
--default-caption. The subject of a row is the video's file stem (override with --subject-from folder).
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


@dataclass
class BuilderSettings:
    segment: float = 81 / 16      # seconds per segment
    check_frames: int = 8         # frames per segment run through the face pipeline
    min_face_ratio: float = 0.75  # share of checked frames that must have a face
    max_faces: float = 1.0        # median faces per frame above this: several people, skipped
    same_person: float = 0.4      # minimum ArcFace cosine between a target and its reference (mean embeddings)
    default_caption: str = "a person"
    subject_from: str = "file"    # file | folder


@dataclass
class SegmentCheck:
    index: int
    start: float
    ok: bool
    reason: str = ""
    identity: Optional[np.ndarray] = None  # mean ArcFace embedding, unit length


@dataclass
class VideoReport:
    path: str
    rows: List[dict] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def text(self):
        name = os.path.basename(self.path)
        if not self.rows and self.problems:
            return f"{name}: skipped: {'; '.join(self.problems)}"
        extra = f" ({'; '.join(self.problems)})" if self.problems else ""
        return f"{name}: {len(self.rows)} rows{extra}"


def probe(path):
    """(duration seconds, fps) of a video file, or a VideoError-like ValueError saying why it is unusable."""
    import av
    from ..video import VideoError

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise VideoError(f"{os.path.basename(path)}: no video stream")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 0)
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif c.duration:
                duration = c.duration / 1e6
            else:
                duration = (s.frames / fps) if s.frames and fps else 0.0
    except VideoError:
        raise
    except Exception as e:  # av raises its own error types for unreadable files
        raise VideoError(f"{os.path.basename(path)}: unreadable video ({type(e).__name__}: {e})") from e
    if duration <= 0:
        raise VideoError(f"{os.path.basename(path)}: no duration (empty or damaged file)")
    return duration, fps


def check_segment(path, index, start, settings: BuilderSettings, detector, embedder=None, parser=None):
    """Run the face pipeline on one segment: ok when enough frames have a face and mostly one face."""
    from ..face.pipeline import NoFaceError, process_clip
    from ..video import sample_frames

    clip = sample_frames(path, num_frames=settings.check_frames, start_time=start, duration=settings.segment,
                         max_side=1024)
    try:
        face_clip, report = process_clip(clip.frames.float() / 255.0, detector, embedder=embedder, parser=parser,
                                         on_no_face="skip", times=clip.times.float())
    except NoFaceError:
        return SegmentCheck(index, start, False, "no face")
    n = clip.frames.shape[0]
    found = int(face_clip.valid.sum())
    if found < settings.min_face_ratio * n:
        return SegmentCheck(index, start, False, f"a face in {found} of {n} frames")
    if float(np.median(report.faces_per_frame)) > settings.max_faces:
        return SegmentCheck(index, start, False, f"{np.median(report.faces_per_frame):g} faces per frame "
                                                  f"(one person per clip)")
    identity = None
    if face_clip.embeddings is not None:
        e = face_clip.embeddings[face_clip.valid].numpy().mean(axis=0)
        identity = e / max(float(np.linalg.norm(e)), 1e-12)
    return SegmentCheck(index, start, True, identity=identity)


def pick_reference(target, good):
    """The reference segment for `target` among the good ones: the nearest that is not adjacent (another moment),
    else the nearest other one, else None."""
    others = [g for g in good if g.index != target.index]
    if not others:
        return None
    far = [g for g in others if abs(g.index - target.index) > 1]
    pool = far or others
    return min(pool, key=lambda g: (abs(g.index - target.index), g.index))


def caption_for(path, captions, default):
    side = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(side):
        with open(side, encoding="utf-8") as f:
            return f.read().strip()
    return captions.get(os.path.basename(path), default)


def build_rows(video, manifest_dir, settings: BuilderSettings, detector, embedder=None, parser=None, captions=None):
    """One video -> VideoReport (rows with paths relative to the manifest's folder, problems)."""
    from ..video import VideoError

    rep = VideoReport(video)
    try:
        duration, _fps = probe(video)
    except VideoError as e:
        rep.problems.append(str(e).split(": ", 1)[-1])
        return rep
    count = int(math.floor(duration / settings.segment + 1e-6))
    if count < 2:
        rep.problems.append(f"{duration:.2f} s is too short: a reference and a target need 2 segments of "
                            f"{settings.segment:g} s")
        return rep
    checks = []
    for i in range(count):
        try:
            checks.append(check_segment(video, i, i * settings.segment, settings, detector, embedder, parser))
        except (VideoError, ValueError, RuntimeError) as e:
            checks.append(SegmentCheck(i, i * settings.segment, False, f"{type(e).__name__}: {e}"))
    bad = [c for c in checks if not c.ok]
    for c in bad:
        rep.problems.append(f"segment {c.index} ({c.start:.2f} s): {c.reason}")
    good = [c for c in checks if c.ok]
    caption = caption_for(video, captions or {}, settings.default_caption)
    rel = os.path.relpath(os.path.abspath(video), os.path.abspath(manifest_dir))
    subject = os.path.basename(os.path.dirname(os.path.abspath(video))) if settings.subject_from == "folder" \
        else os.path.splitext(os.path.basename(video))[0]
    for target in good:
        ref = pick_reference(target, good)
        if ref is None:
            rep.problems.append(f"segment {target.index}: no other segment with a face to serve as reference")
            continue
        if ref.identity is not None and target.identity is not None:
            sim = float(ref.identity @ target.identity)
            if sim < settings.same_person:
                rep.problems.append(f"segment {target.index}: its reference (segment {ref.index}) looks like another "
                                    f"person (ArcFace cosine {sim:.2f} < {settings.same_person:g})")
                continue
        rep.rows.append({"reference": rel, "reference_start": round(ref.start, 4),
                         "reference_duration": round(settings.segment, 4), "target": rel,
                         "target_start": round(target.start, 4), "target_duration": round(settings.segment, 4),
                         "caption": caption, "subject": subject})
    return rep


def find_videos(folder):
    out = []
    for root, _dirs, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
    return sorted(out)


def build_manifest(videos_dir, out_path, settings: BuilderSettings, detector, embedder=None, parser=None,
                   captions=None, say=None):
    """Every video under videos_dir -> rows written to out_path. Returns the VideoReports."""
    from .dataset import write_manifest

    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    videos = find_videos(videos_dir)
    if not videos:
        raise FileNotFoundError(f"--videos {videos_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    if embedder is None:
        say("no ArcFace model: the reference and target segments are not checked to be the same person")
    reports, rows = [], []
    for v in videos:
        rep = build_rows(v, os.path.dirname(os.path.abspath(out_path)), settings, detector, embedder, parser,
                         captions)
        say(rep.text())
        reports.append(rep)
        rows += rep.rows
    write_manifest(out_path, rows)
    skipped = sum(1 for r in reports if not r.rows)
    say(f"{len(rows)} rows from {len(videos) - skipped} of {len(videos)} videos written to {out_path}")
    return reports


def main(argv=None):
    d = BuilderSettings()
    ap = argparse.ArgumentParser(prog="python -m wanid.train.builder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    ap.add_argument("--out", required=True, help="manifest to write (JSON lines)")
    ap.add_argument("--segment", type=float, default=d.segment, help="seconds per segment (default 81/16)")
    ap.add_argument("--check-frames", type=int, default=d.check_frames)
    ap.add_argument("--min-face-ratio", type=float, default=d.min_face_ratio)
    ap.add_argument("--same-person", type=float, default=d.same_person)
    ap.add_argument("--captions", default=None, help="JSON {video file name: caption}")
    ap.add_argument("--default-caption", default=d.default_caption)
    ap.add_argument("--subject-from", choices=["file", "folder"], default=d.subject_from)
    ap.add_argument("--insightface", default=None, help="insightface model folder (antelopev2 / buffalo_l)")
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--face-parsing", default=None, help="parsing_bisenet.pth (optional)")
    args = ap.parse_args(argv)
    from ..face.tools import load_face_tools

    tools = load_face_tools(args.detector, args.insightface, parser_path=args.face_parsing)
    detector, embedder, parser = tools.detector, tools.embedder, tools.parser
    captions = {}
    if args.captions:
        with open(args.captions, encoding="utf-8") as f:
            captions = json.load(f)
    settings = BuilderSettings(segment=args.segment, check_frames=args.check_frames,
                               min_face_ratio=args.min_face_ratio, same_person=args.same_person,
                               default_caption=args.default_caption, subject_from=args.subject_from)
    build_manifest(args.videos, args.out, settings, detector, embedder, parser, captions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
