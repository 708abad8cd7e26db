"""The ComfyUI versions this pack is tested on, defined once (Setup Check and the docs use them). Plain Python."""

MIN_SUPPORTED = "0.3.59"   # the oldest with the hooks Stand-In needs (DIFFUSION_MODEL wrappers, attention override)
OLDEST_TESTED = "0.3.64"
NEWEST_TESTED = "0.33.0"
# Newer hosts cannot be installed here: what their published code does differently is emulated on NEWEST_TESTED.
NEWER_EMULATED = "0.34-0.38"
EMULATED = ("Model Sparse Attention", "single-use attention containers", "per-module preferred attention",
            "Model Attention Backend", "container_function overrides", "per-block overrides placed before the pack",
            "the .json-only template route")

OK, WARN = "OK", "WARN"
UPDATE = "update ComfyUI (git pull, or the Manager's Update ComfyUI)"


def version_tuple(v):
    """'0.3.64' -> (0, 3, 64); a non-numeric part (a '-dev' or '+abc' tail) keeps only its digits."""
    out = []
    for part in str(v).strip().lstrip("v").split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out + [0] * (3 - len(out)))


def classify(version, min_version=MIN_SUPPORTED):
    """(status, what, fix) for a ComfyUI version string, for the Setup Check's ComfyUI line."""
    tested = f"tested {OLDEST_TESTED} to {NEWEST_TESTED}"
    if not version or version == "unknown":
        return WARN, "ComfyUI version unknown (no comfyui_version module: a very old ComfyUI?)", \
            f"update ComfyUI to {OLDEST_TESTED} or newer"
    v = version_tuple(version)
    if min_version and v < version_tuple(min_version):
        return WARN, f"ComfyUI {version} (this pack needs {min_version} or newer; {tested})", UPDATE
    if v < version_tuple(OLDEST_TESTED):
        return WARN, f"ComfyUI {version} is untested (older than {OLDEST_TESTED}; {tested})", \
            f"if a Wan Identity node fails, {UPDATE}"
    if v > version_tuple(NEWEST_TESTED):
        return WARN, (f"ComfyUI {version} is newer than the newest tested ({NEWEST_TESTED}; {tested}; "
                      f"{NEWER_EMULATED}'s {', '.join(EMULATED)} emulated on {NEWEST_TESTED})"), \
            (f"it should work; if a Wan Identity node fails, report it with this version and the error, and use "
             f"ComfyUI {NEWEST_TESTED} meanwhile")
    return OK, f"ComfyUI {version} ({tested})", ""
