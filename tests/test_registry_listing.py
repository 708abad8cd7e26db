"""What the Comfy registry shows (pyproject.toml, [tool.comfy]; docs.comfy.org/registry/specifications): a name and
description that name every method, an icon that is in this repository and fits the registry's limits, and a
CHANGELOG entry for the version being published."""
import re
import struct
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("Stand-In", "Slot-ID", "Lynx", "face swap", "VACE")


def project():
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_display_name_and_description_name_every_method():
    p = project()
    for text in (p["tool"]["comfy"]["DisplayName"], p["project"]["description"]):
        missing = [m for m in METHODS if m.lower() not in text.lower()]
        assert not missing, f"{text!r} does not name {missing}"


def test_icon_is_a_png_in_this_repository_within_the_registry_limits():
    p = project()
    repo_url = p["project"]["urls"]["Repository"]
    m = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repo_url)
    assert m, repo_url
    icon = p["tool"]["comfy"]["Icon"]
    prefix = f"https://raw.githubusercontent.com/{m.group(1)}/main/"
    assert icon.startswith(prefix), f"Icon {icon!r} should be a raw URL of this repository's main branch"
    path = REPO / icon[len(prefix):]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert width == height and width <= 400 and height <= 400, (width, height)  # registry: at most 800 x 400
    assert len(data) < 100_000


def test_changelog_has_one_entry_per_release_newest_first_ending_at_this_version():
    version = project()["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    entries = re.findall(r"^## (\d+\.\d+\.\d+) \((\d{4}-\d{2}-\d{2})\)$",
                         (REPO / "CHANGELOG.md").read_text(encoding="utf-8"), flags=re.M)
    versions = [tuple(map(int, v.split("."))) for v, _ in entries]
    assert entries and entries[0][0] == version, "CHANGELOG.md's newest entry must be pyproject's version"
    assert versions == sorted(set(versions), reverse=True), "one entry per release, newest first"
    assert [d for _, d in entries] == sorted((d for _, d in entries), reverse=True)
