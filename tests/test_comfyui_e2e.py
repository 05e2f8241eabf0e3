"""End to end on a real ComfyUI: the pack loads, the shipped workflows are listed, `prunevid submit` runs one.

The ComfyUI source tree is COMFYUI_DIR, or else ../shared/comfyui/ComfyUI beside this checkout (a ComfyUI 0.3.64 kept
there for the tests: ComfyUI is not on PyPI). Its Python is COMFYUI_PYTHON, or else .cache/venv-comfyui, which
tests/run.sh builds from ComfyUI's requirements and the install commands of docs/comfyui.md (tests/comfyui_venv.py),
or else this Python. Without a tree the tests skip, saying why; tests/run.sh runs them with
PRUNEVID_REQUIRE_COMFYUI=1 when it found one, so there a Python that cannot run it fails instead of skipping.

The server runs with `--base-directory` set to a temporary folder, so nothing is written into the tree (which may be
read-only): the pack is linked into that folder's custom_nodes/, and the tiny random Qwen2.5-VL is written into its
models/LLM/ by `prunevid make-tiny-model`, as docs/comfyui.md's quick start says.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PACK_DIR

SHARED_TREE = PACK_DIR.parent / "shared" / "comfyui" / "ComfyUI"
COMFYUI_DIR = os.environ.get("COMFYUI_DIR") or str(SHARED_TREE)
VENV_PYTHON = PACK_DIR / ".cache" / "venv-comfyui" / "bin" / "python"
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or (
    str(VENV_PYTHON) if (VENV_PYTHON.parent.parent / ".complete").is_file() else sys.executable)
if os.sep in COMFYUI_PYTHON:            # a relative path: the server runs in COMFYUI_DIR, not here
    COMFYUI_PYTHON = os.path.abspath(COMFYUI_PYTHON)
REQUIRED = os.environ.get("PRUNEVID_REQUIRE_COMFYUI") == "1"
PACK_NAME = "prunevid-qwen25vl"
TINY = "tiny-qwen2.5-vl"
FAST = ["--set", f"PruneVidModelLoader.model={TINY}", "--set", "PruneVidModelLoader.dtype=fp32",
        "--set", "PruneVidModelLoader.device=cpu", "--set", "PruneVidLoadVideo.max_frames=4",
        "--set", f"PruneVidLoadVideo.max_pixels={224 * 224}", "--set", "PruneVidGenerate.max_new_tokens=8"]
READY_S = 180


def _skip_reason():
    if not os.environ.get("COMFYUI_DIR") and not (SHARED_TREE / "main.py").is_file():
        return (f"no ComfyUI source tree at ../shared/comfyui/ComfyUI ({SHARED_TREE}) and COMFYUI_DIR is not set: "
                "set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its Python) to run the ComfyUI e2e test")
    if not (Path(COMFYUI_DIR) / "main.py").is_file():
        return f"COMFYUI_DIR={COMFYUI_DIR} has no main.py: not a ComfyUI checkout"
    cli_args = Path(COMFYUI_DIR) / "comfy" / "cli_args.py"
    if "--base-directory" not in (cli_args.read_text() if cli_args.is_file() else ""):
        return f"the ComfyUI in {COMFYUI_DIR} is too old for this test (no --base-directory flag)"
    probe = subprocess.run([COMFYUI_PYTHON, "-c", "import torch, aiohttp, transformers, prunevid"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return (f"COMFYUI_PYTHON={COMFYUI_PYTHON} cannot run ComfyUI with this package ({last}); install ComfyUI's "
                f"requirements, this pack's and `pip install --no-deps -e {PACK_DIR}` into it (docs/comfyui.md)")
    return None


_reason = _skip_reason()
if _reason is not None and REQUIRED and "no ComfyUI source tree" not in _reason:
    pytest.fail(f"PRUNEVID_REQUIRE_COMFYUI=1: {_reason}", pytrace=False)
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(address: str, path: str, timeout: float = 10):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}{path}", timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
    # docs/comfyui.md's offline quick start, with the command its install put next to ComfyUI's Python
    script = Path(COMFYUI_PYTHON).parent / "prunevid"
    cmd = [str(script)] if script.is_file() else [COMFYUI_PYTHON, "-m", "prunevid"]
    made = subprocess.run([*cmd, "make-tiny-model", str(base / "models" / "LLM" / TINY)], capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log_path = base / "comfyui.log"
    cmd = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--disable-auto-launch"]
    if "--database-url" in (Path(COMFYUI_DIR) / "comfy" / "cli_args.py").read_text():
        cmd += ["--database-url", "sqlite:///:memory:"]     # not the checkout's user/comfyui.db
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {proc.returncode} while starting:\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                _get(address, "/system_stats", timeout=2)
                break
            except OSError:
                if time.monotonic() - t0 > READY_S:
                    pytest.fail(f"ComfyUI not ready after {READY_S} s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"address": address, "base": base, "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def submit(comfy, *args, timeout=600):
    """`prunevid submit` as a user runs it; returns (returncode, stdout, stderr)."""
    cmd = [sys.executable, "-m", "prunevid.cli", "submit", *map(str, args), "--server", comfy["address"],
           "--timeout", str(timeout)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, cwd=PACK_DIR)
    return p.returncode, p.stdout, p.stderr


def test_pack_nodes_are_registered(comfy):
    from conftest import load_pack
    info = _get(comfy["address"], "/object_info")
    missing = sorted(set(load_pack().NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not in /object_info (see {comfy['log']}): {missing}"
    loader = info["PruneVidModelLoader"]["input"]["required"]["model"]
    assert TINY in loader[0], "the tiny model under models/LLM is not offered by the model loader"


def test_workflows_are_listed_as_templates(comfy):
    templates = _get(comfy["address"], "/api/workflow_templates")
    shipped = {p.stem for p in (PACK_DIR / "workflows").glob("*.json")}
    assert set(templates.get(PACK_NAME, [])) == shipped
    paper = _get(comfy["address"], f"/api/workflow_templates/{PACK_NAME}/paper.json")
    assert {n["type"] for n in paper["nodes"]} >= {"PruneVidGenerate", "PruneVidStage2Select"}


def test_submit_paper_workflow(comfy, sample_video, tmp_path):
    out_json = tmp_path / "run1.json"
    rc, out, err = submit(comfy, "paper", "--video", sample_video, "--question", "What is the animal doing?",
                          "--json", out_json, *FAST)
    assert rc == 0, f"{err}\n--- server log ---\n{comfy['log'].read_text()[-3000:]}"
    report = json.loads(out_json.read_text())
    assert report["answer"] and out.strip() == report["answer"].strip()
    stats = report["stats"]
    assert stats["stage1"]["compressed_tokens"] < stats["stage1"]["original_tokens"]
    assert stats["stage2"]["compressed_tokens"] < stats["stage2"]["original_tokens"]
    assert "Stage 1:" in err and "Stage 2:" in err                      # the stats summary
    events = report["events"]
    assert events.get("progress", 0) > 0 and events.get("execution_success") == 1
    assert events.get("text", 0) > 0 and report["streamed"].get("6")    # the Generate node streamed its text

    history = _get(comfy["address"], f"/history/{report['prompt_id']}")[report["prompt_id"]]
    assert history["status"]["status_str"] == "success"
    outputs = history["outputs"]
    assert outputs["6"]["text"] == [report["answer"]]                   # Generate's own UI output
    assert outputs["7"]["text"] == [report["answer"]]                   # PreviewAny of the answer
    assert json.loads(outputs["8"]["text"][0]) == stats                 # PreviewAny of the stats
    assert outputs["9"]["images"] and outputs["10"]["images"]           # Stage 1 / Stage 2 token maps

    # a second question about the same video: the model, the video and Stage 1 come from ComfyUI's cache
    rc, out2, err2 = submit(comfy, "paper", "--video", sample_video, "--question", "What colour is the sky?",
                            "--json", tmp_path / "run2.json", *FAST)
    assert rc == 0, err2
    report2 = json.loads((tmp_path / "run2.json").read_text())
    assert {"1", "2", "3"} <= set(report2["cached_nodes"])
    assert report2["stats"]["stage1"] == stats["stage1"]


def test_core_load_video_workflow(comfy, sample_video, tmp_path):
    rc, out, err = submit(comfy, "core_loadvideo_interop", "--video", sample_video, "--json", tmp_path / "r.json",
                          *FAST)
    assert rc == 0, f"{err}\n--- server log ---\n{comfy['log'].read_text()[-3000:]}"
    assert json.loads((tmp_path / "r.json").read_text())["answer"]


def test_validation_error_names_the_node(comfy):
    rc, out, err = submit(comfy, "paper", "--set", "PruneVidModelLoader.model=no-such-model")
    assert rc == 1 and "Traceback" not in err
    assert "ComfyUI rejected the workflow" in err and "node 1 (PruneVidModelLoader" in err, err


def test_partly_invalid_workflow_fails_and_is_cancelled(comfy):
    # keep_ratio 0 invalidates Stage 2 and everything after it; ComfyUI still queues the Stage 1 preview branch
    rc, out, err = submit(comfy, "paper", "--set", "PruneVidStage2Select.keep_ratio=0", *FAST)
    assert rc == 1 and "Traceback" not in err
    assert "rejected part of the workflow" in err and "node 4 (PruneVidStage2Select" in err, err
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        queue = _get(comfy["address"], "/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the partial prompt is still queued: {queue}")


def test_execution_error_names_the_node_and_message(comfy, tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("this is text, not a video\n")
    rc, out, err = submit(comfy, "paper", "--video", bad, *FAST)
    assert rc == 1 and "Traceback" not in err
    assert "ComfyUI failed at node 2 (PruneVidLoadVideo" in err and "not_a_video" in err, err
    # the error's type is named as the library's, not by the path ComfyUI imported the pack's copy from
    failed = [entry for entry in _get(comfy["address"], "/history").values()
              if any("not_a_video" in json.dumps(m) for m in entry["status"]["messages"])]
    assert len(failed) == 1, failed
    errors = [m[1] for m in failed[0]["status"]["messages"] if m[0] == "execution_error"]
    assert [e["exception_type"] for e in errors] == ["prunevid.errors.VideoError"], errors
    log = comfy["log"].read_text()
    assert any(line.startswith("prunevid.errors.VideoError: ") and "not_a_video" in line
               for line in log.splitlines()), log[-3000:]
