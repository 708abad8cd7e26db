"""Command line tools that talk to a running ComfyUI over HTTP (standard library only; never imports ComfyUI).

    python -m wanid queue WORKFLOW --server URL --reference clip.mp4 --prompt "..."   (queue.py)
    python -m wanid workflows --server URL                                           (templates.py)

queue.py builds, checks and queues the prompt; client.py talks to the server (requests, upload, cancel, following
a prompt); progress.py shows it; workflow.py edits and converts workflows; the model inputs they check are the
table of wanid/model_inputs.py.
"""
