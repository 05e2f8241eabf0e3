"""Builds ComfyUI's Python for tests/test_comfyui_e2e.py the way a user installs it (run by tests/run.sh).

    python tests/comfyui_venv.py VENV COMFYUI_DIR      (with the main environment's Python; exit 0: VENV is ready)

1. A venv whose torch and torchvision are the main environment's (a second copy of the CUDA build is 5.5 GB): a
   folder in the venv holds links to the files of torch, torchvision and every distribution they need, listed by a
   .pth file after the venv's own site-packages. Nothing else of the main environment is seen (its
   opencv-python-headless would be a second OpenCV). A constraint holds torch and torchvision at the main versions,
   so pip fails rather than download another torch.
2. ComfyUI's requirements.txt, plus requests (ComfyUI imports it without listing it).
3. Every `pip install` line of the install block in docs/comfyui.md, as written there (`prunevid-qwen25vl` being
   this checkout).
4. `pip list` then shows exactly one OpenCV distribution (both install the same cv2 and break each other).

The marker VENV/.complete, written last, records what the venv was built from (the borrowed torch, ComfyUI's and
this project's requirements, the documented commands, this file); a different record, or a venv that cannot import what the
test needs, rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "prunevid-qwen25vl"          # the folder name docs/comfyui.md clones into
BORROWED = ("torch", "torchvision")
IMPORTS = "import torch, torchvision, torchaudio, aiohttp, requests, transformers, cv2, prunevid"


def documented_commands(doc: Path = ROOT / "docs" / "comfyui.md") -> list[list[str]]:
    """The `pip install` lines of the install into ComfyUI (the bash block under "## Install" that clones into
    custom_nodes/), comments dropped, split like a shell."""
    section = doc.read_text().split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "custom_nodes" in b)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["pip", "install"]:
            commands.append(words)
    return commands


def opencv_distributions(pip_list: list[dict]) -> list[str]:
    """Names of the distributions that install cv2 (opencv-python, -headless, -contrib-python, ...)."""
    return sorted(d["name"] for d in pip_list if d["name"].lower().replace("_", "-").startswith("opencv"))


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_closure() -> list:
    """The main environment's distributions of torch, torchvision and everything they need: markers evaluated,
    extras followed (torch's CUDA build asks for `cuda-toolkit[cublas,cufft,...]`)."""
    from packaging.requirements import Requirement
    seen, dists, todo = set(), {}, [(name, "") for name in BORROWED]
    while todo:
        name, extra = todo.pop()
        if (_key(name), extra) in seen:
            continue
        seen.add((_key(name), extra))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            if name in BORROWED:
                raise SystemExit(f"the main environment has no {name} to lend")
            continue                    # an optional dependency this platform does not install
        dists[_key(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ["", *req.extras]]
    return list(dists.values())


def link_closure(target: Path, dists) -> None:
    """Links every top-level file and folder of the distributions (package folders, .dist-info) into target."""
    target.mkdir(parents=True)
    for dist in dists:
        if dist.files is None:
            raise SystemExit(f"{dist.metadata['Name']} has no RECORD: cannot tell its files")
        for f in dist.files:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue                # console scripts, caches, and .pth files (only read in site folders)
            link = target / top
            source = Path(dist.locate_file(top))
            if not link.exists() and source.exists():
                link.symlink_to(source, target_is_directory=source.is_dir())


def record(comfy: Path) -> str:
    """What the venv is built from; a change rebuilds it."""
    import torch
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return json.dumps({"python": sys.version.split()[0], "torch": f"{torch.__version__} {torch.__file__}",
                       "comfyui_requirements": digest(comfy / "requirements.txt"),
                       "requirements": digest(ROOT / "requirements.txt"), "pyproject": digest(ROOT / "pyproject.toml"),
                       "builder": digest(Path(__file__)),
                       "documented": documented_commands()}, indent=1)


def ready(venv: Path, comfy: Path) -> bool:
    marker = venv / ".complete"
    if not marker.is_file() or marker.read_text() != record(comfy):
        return False
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", IMPORTS], capture_output=True)
    return probe.returncode == 0


def build(venv: Path, comfy: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    borrowed = venv / "main-torch"
    closure = torch_closure()
    link_closure(borrowed, closure)
    (purelib / "zz-main-torch.pth").write_text(f"{borrowed}\n")
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{name}=={distribution(name).version}\n" for name in BORROWED))
    pip = [python, "-m", "pip", "install", "-q", "-c", str(constraints)]

    def run(cmd, **kw):
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, **kw)

    run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([*pip, "-r", str(comfy / "requirements.txt"), "requests"])
    for words in documented_commands():        # pip install ... with prunevid-qwen25vl/ being this checkout
        args = [str(ROOT) + w[len(PACK_NAME):] if w == PACK_NAME or w.startswith(PACK_NAME + "/") else w
                for w in words[2:]]
        run([*pip, *args])
    listed = json.loads(subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True,
                                       capture_output=True, text=True).stdout)
    opencv = opencv_distributions(listed)
    if len(opencv) != 1:
        raise SystemExit(f"docs/comfyui.md's install leaves {len(opencv)} OpenCV distributions in ComfyUI's "
                         f"Python, not one: {opencv}")
    again = sorted({_key(d["name"]) for d in json.loads(subprocess.run(
        [python, "-m", "pip", "list", "--format", "json", "--path", str(purelib)], check=True, capture_output=True,
        text=True).stdout)} & {_key(d.metadata["Name"]) for d in closure} - {"pip", "setuptools"})  # venv's own
    if again:                           # e.g. CUDA libraries torch needs, missed by torch_closure: gigabytes
        raise SystemExit(f"pip installed again what the main environment lends: {again}")
    torch_file = subprocess.run([python, "-c", "import torch; print(torch.__file__)"], check=True,
                                capture_output=True, text=True).stdout.strip()
    if not torch_file.startswith(str(borrowed)):
        raise SystemExit(f"the venv's torch is not the main environment's: {torch_file}")
    probe = subprocess.run([python, "-c", IMPORTS], capture_output=True, text=True)
    if probe.returncode:
        raise SystemExit(f"the venv cannot import what ComfyUI and the test need:\n{probe.stderr[-2000:]}")
    (venv / ".complete").write_text(record(comfy))


def main(argv) -> int:
    venv, comfy = Path(argv[0]).absolute(), Path(argv[1]).absolute()
    if ready(venv, comfy):
        return 0
    print(f"building ComfyUI's Python in {venv} (ComfyUI's requirements + the install in docs/comfyui.md)",
          flush=True)
    try:
        build(venv, comfy)
    except subprocess.CalledProcessError as e:
        print(f"failed: {shlex.join(map(str, e.cmd))} (exit {e.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
