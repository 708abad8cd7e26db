"""The pack's own socket types, declared once (a typo in a second declaration would silently split a type)."""
from .v3 import io

FaceClipType = io.Custom("FACE_CLIP")  # wanid.face_clip.FaceClip
FrameTimes = io.Custom("FRAME_TIMES")  # 1-D float32 tensor, seconds from the source's first frame
SlotIDModelType = io.Custom("SLOT_ID_MODEL")
IdentityTokensType = io.Custom("IDENTITY_TOKENS")
LynxModelType = io.Custom("LYNX_MODEL")  # nodes.lynx.LynxModel
