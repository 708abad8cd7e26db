"""Command line tools that talk to a running ComfyUI over HTTP (standard library only; never imports ComfyUI).

    python -m wanid queue WORKFLOW --server URL --reference clip.mp4 --prompt "..."   (queue.py)
    python -m wanid workflows --server URL                                           (templates.py)
"""
