"""The seed-compatible high-level API and the CLI, end to end on real sample videos."""
import json

import pytest

from prunevid import PruneVidQwen25VL, cli, engine, get_baseline_config, get_paper_config, loader, pipeline
from prunevid.errors import ConfigError, InputError, VideoError
from prunevid.video import sample_video_path

from conftest import FAMILIES

Q = "What happens in this video?"


@pytest.fixture(scope="module")
def paper_model(tiny_model_dir):
    return PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_paper_config(), device="cpu", dtype="fp32")


def test_paper_preset_on_bigbuckbunny_reports_consistent_stats(paper_model, sample_video):
    out = paper_model.generate(video_path=str(sample_video), question=Q, max_new_tokens=8, return_stats=True)
    assert isinstance(out["answer"], str)
    s = out["stats"]
    s1, s2, s3 = s["stage1"], s["stage2"], s["stage3"]
    assert s1["original_tokens"] > s1["compressed_tokens"] == s2["original_tokens"]
    assert s1["reduction_percentage"] == pytest.approx(100 * (1 - s1["compressed_tokens"] / s1["original_tokens"]))
    assert 0.0 <= s1["static_ratio"] <= 1.0 and s1["segments"] >= 1
    # Stage 2 keeps floor(0.4 n) per block: at most 40 %, and close to it
    assert 0.3 * s2["original_tokens"] <= s2["compressed_tokens"] <= 0.4 * s2["original_tokens"]
    assert s3["enabled"] and s3["kv_bytes_after"] < s3["kv_bytes_before"] < s3["kv_bytes_unpruned"]
    t = s["timings"]
    for key in ("vision_s", "stage1_s", "prefill_s", "time_to_first_token_s", "decode_first_token_s",
                "tokens_per_s", "end_to_end_s"):
        assert key in t
    assert "first_token_s" not in t          # the decode-only part has a name nobody mixes up with the full TTFT
    assert t["time_to_first_token_s"] == pytest.approx(
        t["vision_s"] + t["stage1_s"] + t["prefill_s"] + t["decode_first_token_s"])
    assert 0 < s["flops"]["Qwen2.5-VL-7B_ratio"] < 1
    # every released shape prunes after the same layer M, whatever its depth (docs/method.md, presets across depths)
    tok = s["tokens"]
    seq = (tok["sequence_unpruned"], tok["sequence_after_stage1"], tok["sequence_after_stage2"])
    from prunevid import stats
    from prunevid.families import Qwen25VL
    M = s["stage2"]["pruning_layer"]
    assert {Qwen25VL.flops_shapes[n][0] for n in Qwen25VL.flops_shapes} != {28}        # depths other than 28 exist
    for name, (layers, d, d_kv, d_ff) in Qwen25VL.flops_shapes.items():
        assert s["flops"][f"{name}_ratio"] == pytest.approx(stats.flops_ratio(layers, d, d_kv, d_ff, *seq, M))


def test_baseline_keeps_every_token(tiny_model_dir, sample_video):
    pv = PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_baseline_config(), device="cpu", dtype="fp32")
    s = pv.generate(video_path=str(sample_video), question=Q, max_new_tokens=2, return_stats=True)["stats"]
    assert s["stage1"]["compressed_tokens"] == s["stage1"]["original_tokens"] == s["stage2"]["compressed_tokens"]
    assert s["flops"]["this_model_ratio"] == pytest.approx(1.0)
    assert s["stage3"]["kv_bytes_after"] == s["stage3"]["kv_bytes_unpruned"]


def test_images_are_answered_too(paper_model, sample_video):
    from prunevid.video import load_video
    frames = load_video(sample_video, max_frames=2).frames
    out = paper_model.generate(images=[frames[0].numpy(), frames[1].numpy()], question="Describe the images.",
                               max_new_tokens=3, return_stats=True)
    assert out["stats"]["stage1"]["segments"] == 2        # one per image: images get only the spatial merge


def test_a_second_question_reuses_the_encoding(paper_model, sample_video):
    enc = paper_model.encode(video_path=str(sample_video))
    a = paper_model.answer(enc, "Is it day or night?", max_new_tokens=4)
    b = paper_model.answer(enc, "Is it day or night?", max_new_tokens=4)
    assert a["ids"] == b["ids"]
    assert a["stats"]["timings"]["time_to_first_token_reused_s"] < a["stats"]["timings"]["time_to_first_token_s"]


def test_api_errors(paper_model, sample_video, tmp_path):
    with pytest.raises(InputError, match="question is empty"):
        paper_model.generate(video_path=str(sample_video), question="")
    with pytest.raises(VideoError, match="not found"):
        paper_model.generate(video_path=str(tmp_path / "missing.mp4"), question=Q)
    (tmp_path / "broken.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoError, match="cannot decode"):
        paper_model.generate(video_path=str(tmp_path / "broken.mp4"), question=Q)


def test_generation_parameters_fail_before_the_video_is_read(paper_model, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("the video was read or encoded before the parameters were checked")
    monkeypatch.setattr(pipeline, "read_video", never)
    monkeypatch.setattr(engine, "encode", never)
    ask = lambda **kw: paper_model.generate(video_path="clip.mp4", question=Q, **kw)
    for kw, field in [({"max_new_tokens": 0}, "max_new_tokens"),
                      ({"do_sample": True, "temperature": 0.0}, "temperature"),
                      ({"do_sample": True, "top_p": 1.5}, "top_p"),
                      ({"do_sample": True, "top_k": -1}, "top_k"),
                      ({"repetition_penalty": 0.0}, "repetition_penalty"),
                      ({"seed": "42"}, "seed"),
                      ({"temperature": "hot"}, "temperature"),
                      ({"do_sample": "yes"}, "do_sample")]:
        with pytest.raises(ConfigError, match=f"^{field} must be"):
            ask(**kw)
    with pytest.raises(ConfigError, match=r"unknown keyword argument\(s\) 'temprature'; the sampling arguments are "
                                          "do_sample, temperature, top_p, top_k, repetition_penalty, seed"):
        ask(temprature=0.5)
    with pytest.raises(ConfigError, match="'temprature'"):          # answer() checks before the prefill
        paper_model.answer(None, Q, temprature=0.5)


def test_pruning_layer_is_checked_right_after_the_model_load(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"^pruning_layer must be below the layer count of .* \(28\), got 28; "
                                          r"use 0\.\.27$"):
        PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_paper_config(pruning_layer=28), device="cpu",
                         dtype="fp32")
    # Stage 2 off: the pruning layer is never used, so it is not an error
    PruneVidQwen25VL(model_path=str(tiny_model_dir), config=get_paper_config(pruning_layer=28, enable_stage2=False),
                     device="cpu", dtype="fp32")


def test_cli_ask_streams_the_answer_and_writes_stats(tiny_model_dir, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    code = cli.main(["ask", "sample:carphone_pristine.mp4", Q, "--model", str(tiny_model_dir), "--stats",
                     "--max-new-tokens", "6", "--max-frames", "8", "--json", str(out_json)])
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(out_json.read_text())
    assert captured.out.strip() == data["answer"]
    assert "Stage 1:" in captured.err and "Stage 2:" in captured.err and "time to first token" in captured.err
    assert data["stats"]["stage1"]["original_tokens"] > 0
    assert "decode_first_token_s" in data["stats"]["timings"] and "first_token_s" not in data["stats"]["timings"]


def test_cli_seed_flags_and_errors(tiny_model_dir, capsys):
    ask = lambda *extra: cli.main(["ask", "--video_path", "sample:bikes.mp4", "--question", Q, "--config", "baseline",
                                   "--model", str(tiny_model_dir), "--max-new-tokens", "3", "--max-frames", "4",
                                   *extra])
    assert ask() == 0
    greedy, err = capsys.readouterr()
    assert "vision tower on 4 frames" in err and "Stage 1" not in err      # the baseline has Stage 1 off
    # the sampling flags only apply with --do-sample: greedy accepts out-of-range ones and answers the same
    assert ask("--temperature", "0", "--top-p", "0") == 0
    assert capsys.readouterr().out == greedy
    assert cli.main(["ask", "/no/such/video.mp4", Q, "--model", str(tiny_model_dir)]) == 1
    assert "video file not found: /no/such/video.mp4" in capsys.readouterr().err
    assert cli.main(["ask", "sample:bikes.mp4", Q, "--model", "/no/such/model"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_make_tiny_model_command(tmp_path, capsys):
    assert cli.main(["make-tiny-model", str(tmp_path / "m"), "--overwrite"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    capsys.readouterr()
    assert cli.main(["make-tiny-model", str(tmp_path / "m")]) == 1
    assert "already holds a tiny model: pass overwrite=True (--overwrite)" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert cli.main(["make-tiny-model", str(tmp_path / "f" / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prunevid: error: cannot build a tiny model in") and err.count("\n") == 1


@pytest.mark.parametrize("model_type", [f for f in FAMILIES if f != "qwen2_5_vl"])
def test_every_family_from_the_cli_and_the_api(model_type, tmp_path, capsys):
    """--model takes a checkpoint of any family (the family read from config.json); make-tiny-model builds each;
    an unknown family is one line naming the supported ones."""
    from prunevid.families import FAMILIES as CLASSES, family, unavailable
    if unavailable(CLASSES[model_type]):
        pytest.skip(unavailable(CLASSES[model_type]))          # Qwen3.5 on transformers 4.57
    cls = family(model_type)
    assert cli.main(["make-tiny-model", str(tmp_path / "m"), "--family", model_type]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == model_type
    capsys.readouterr()
    assert cli.main(["ask", "sample:carphone_pristine.mp4", Q, "--model", str(tmp_path / "m"), "--stats",
                     "--max-new-tokens", "3", "--max-frames", "4"]) == 0
    err = capsys.readouterr().err
    assert f"Model family: {cls.display_name}" in err and f"{next(iter(cls.flops_shapes))} shape" in err
    pv = pipeline.PruneVid(f"tiny:{model_type}", config=get_paper_config(max_frames=4), device="cpu", dtype="fp32",
                           lazy=True)
    assert pv._model is None and pv.family is cls                     # known from config.json, not loaded
    out = pv.generate(video_path=sample_video_path("bikes.mp4"), question=Q, max_new_tokens=2, return_stats=True)
    assert out["stats"]["family"] == cls.display_name and type(pv.model) is cls
    capsys.readouterr()
    assert cli.main(["ask", "sample:bikes.mp4", Q, "--model", "tiny:llama"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model_type 'llama'" in err and f"{model_type} ({cls.display_name})" in err


def test_cli_fails_fast_before_loading_the_model(tmp_path, capsys):
    """Errors a user can fix come as one line, before the (minutes long) model load: the model path is bogus."""
    ask = lambda *extra: cli.main(["ask", "sample:bigbuckbunny.mp4", *extra, "--model", "/no/such/model"])
    assert ask("") == 1
    assert capsys.readouterr().err.strip() == "prunevid: error: question is empty: ask something about the video"
    assert ask(Q, "--json", str(tmp_path / "missing-dir" / "out.json")) == 1
    assert "--json" in capsys.readouterr().err
    assert ask(Q, "--max-frames", "32", "--max-pixels", "1000000") == 1
    err = capsys.readouterr().err
    assert "visual tokens, over max_video_tokens=16384" in err and "does not exist" not in err
    assert ask(Q, "--preset", "stage1_only", "--keep-ratio", "0.3") == 1
    assert "has Stage 2 off, so --keep-ratio and --pruning-layer change nothing" in capsys.readouterr().err


def test_cli_checks_generation_parameters_before_the_video_and_the_model(monkeypatch, capsys):
    def never(*a, **kw):
        raise AssertionError("the video was read or the model loaded before the parameters were checked")
    monkeypatch.setattr(pipeline, "read_video", never)
    monkeypatch.setattr(loader, "load", never)
    for flags, message in [(["--max-new-tokens", "0"], "max_new_tokens must be an integer in [1, 8192], got 0"),
                           (["--do-sample", "--temperature", "0"], "temperature must be in (0, 10], got 0.0"),
                           (["--do-sample", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
                           (["--do-sample", "--seed", str(2 ** 64)], "seed must be an integer in [-2**63, 2**64)")]:
        assert cli.main(["ask", "clip.mp4", Q, "--model", "/no/such/model", *flags]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"prunevid: error: {message}") and err.count("\n") == 1, err


def test_cli_checks_the_pruning_layer_before_the_vision_tower(tiny_model_dir, monkeypatch, capsys):
    def never(*a, **kw):
        raise AssertionError("the vision tower ran before the pruning layer was checked")
    monkeypatch.setattr(engine, "encode", never)
    assert cli.main(["ask", "sample:bikes.mp4", Q, "--model", str(tiny_model_dir), "--max-frames", "4",
                     "--pruning-layer", "28"]) == 1
    assert "prunevid: error: pruning_layer must be below the layer count of" in capsys.readouterr().err


def test_cli_status_line_gives_way_to_the_answer_on_a_terminal(tiny_model_dir, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    assert cli.main(["ask", "sample:bikes.mp4", Q, "--model", str(tiny_model_dir), "--max-frames", "4",
                     "--max-new-tokens", "4"]) == 0
    shown = term.getvalue()
    after_prefill = shown.rsplit("prefill: layer 28/28", 1)[1]
    # one clear, then the answer, and nothing that would wipe the answer's line again
    assert after_prefill.startswith("\r\033[K") and after_prefill.count("\r") == 1
    assert len(after_prefill.strip()) > len("\033[K")


HUB_LOAD = """
import socket, sys
from prunevid import loader
from prunevid.errors import ModelError
attempts = []                      # every TCP connection the process tries (the hub is the only server around)
connect = socket.socket.connect
def counting_connect(sock, address):
    attempts.append(address)
    return connect(sock, address)
socket.socket.connect = counting_connect
try:
    qm = loader.load(sys.argv[1], dtype="fp32", device="cpu")
    print("loaded", qm.model.config.model_type, qm.num_layers)
except ModelError as e:
    print("ModelError", e)
print("connection attempts", len(attempts))
"""


def test_hub_id_loads_from_the_hf_cache_when_the_hub_is_unreachable(tiny_model_dir, tmp_path):
    """A hub id works offline from the Hugging Face cache, and an uncached one fails with a clear message, after
    one connection attempt (the reachability probe): no request to the hub, so no retries to wait out."""
    import os
    import shutil
    import subprocess
    import sys
    repo = tmp_path / "hub" / "models--someone--tiny-qwen"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    # port 9 (discard) is closed: the hub is unreachable. Telemetry off: huggingface_hub >= 2 otherwise fetches an
    # agent registry from the endpoint once per process (one attempt, not about the model), which would be counted
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    run = lambda repo_id: subprocess.run([sys.executable, "-c", HUB_LOAD, repo_id], env=env, capture_output=True,
                                         text=True, timeout=300).stdout
    out = run("someone/tiny-qwen")
    assert "loaded qwen2_5_vl 28" in out, out
    assert "connection attempts 1\n" in out, out
    out = run("someone/not-cached")
    assert "ModelError cannot download 'someone/not-cached'" in out and "not in the Hugging Face cache" in out, out
    assert "connection attempts 1\n" in out, out


def test_hub_probe_goes_through_the_proxy_the_hub_client_would_use(monkeypatch):
    import socket
    from prunevid import hub, loader
    from prunevid.errors import ModelError
    with socket.socket() as proxy:                 # a listening "proxy"; the hub host itself does not resolve
        proxy.bind(("127.0.0.1", 0))
        proxy.listen()
        for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(var, raising=False)
        assert not hub._reachable("https://hub.invalid")
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert hub._reachable("https://hub.invalid")
        monkeypatch.setenv("NO_PROXY", "hub.invalid")
        assert not hub._reachable("https://hub.invalid")
    with pytest.raises(ModelError, match="neither a local folder nor a valid hub id"):
        loader.load("someone/bad..name")
