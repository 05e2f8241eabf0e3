"""What ComfyUI-Manager and the Comfy Registry read: LICENSE, pyproject's license and urls, requirements.txt."""
from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from conftest import PACK_DIR

tomllib = pytest.importorskip("tomllib")      # Python 3.11+


def pyproject() -> dict:
    return tomllib.loads((PACK_DIR / "pyproject.toml").read_text())


def requirement_names(lines) -> list:
    return [re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.strip().startswith("#")]


def test_license_file_is_the_one_pyproject_names():
    text = (PACK_DIR / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert pyproject()["project"]["license"] == {"file": "LICENSE"}     # the form the Registry specification takes


def test_pyproject_has_the_repository_url_the_registry_requires():
    url = pyproject()["project"]["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url


def test_every_sub_package_goes_into_the_wheel():
    """setuptools takes only the packages pyproject lists: a new sub-package of prunevid/ must be listed too."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(PACK_DIR).parts) for init in (PACK_DIR / "prunevid").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"


def test_comfyui_requirements_share_videohelpersuites_cv2():
    """opencv-python and opencv-python-headless both install cv2: ComfyUI gets the one video packs already use,
    a library install the one that needs no OpenGL."""
    comfy = requirement_names((PACK_DIR / "requirements.txt").read_text().splitlines())
    library = requirement_names(pyproject()["project"]["dependencies"])
    assert [n for n in comfy if n.startswith("opencv")] == ["opencv-python"]
    assert [n for n in library if n.startswith("opencv")] == ["opencv-python-headless"]
    assert not {"torch", "torchvision", "torchaudio"} & set(comfy), "ComfyUI brings its own torch"
    assert set(comfy) - {"opencv-python"} == set(library) - {"opencv-python-headless", "torch"}


def test_the_documented_comfyui_install_brings_no_second_opencv():
    """The install into ComfyUI's Python in docs/comfyui.md (which tests/run.sh runs as written in a fresh venv and
    checks with pip list, tests/comfyui_venv.py) and in README.md are the same commands, and they install this project
    only with --no-deps: its dependencies would add opencv-python-headless next to requirements.txt's opencv-python."""
    from comfyui_venv import PACK_NAME, documented_commands
    docs = documented_commands()
    assert documented_commands(PACK_DIR / "README.md") == docs
    assert ["pip", "install", "-r", f"{PACK_NAME}/requirements.txt"] in docs
    project = [c for c in docs if PACK_NAME in c and f"{PACK_NAME}/requirements.txt" not in c]
    assert project and all("--no-deps" in c for c in project), project


def test_a_missing_libgl_is_named_with_its_fix(monkeypatch):
    """opencv-python without the system's OpenGL fails at `import cv2`: the pack says what to install."""
    class NoOpenGL:
        def find_spec(self, name, path=None, target=None):
            if name == "cv2":
                raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
            return None

    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoOpenGL(), *sys.meta_path])
    name = "prunevid_pack_without_opengl"
    spec = importlib.util.spec_from_file_location(name, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module                  # as ComfyUI does: the pack's relative imports need it
    try:
        with pytest.raises(ImportError, match=r"libGL\.so\.1.*apt install libgl1.*opencv-python-headless"):
            spec.loader.exec_module(module)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
