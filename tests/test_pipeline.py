"""The seed-compatible high-level API and the CLI, end to end on real sample videos."""
import json

import pytest

from prunevid import PruneVidQwen25VL, cli, get_baseline_config, get_paper_config
from prunevid.errors import InputError, VideoError

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
    for key in ("vision_s", "stage1_s", "prefill_s", "time_to_first_token_s", "tokens_per_s", "end_to_end_s"):
        assert key in s["timings"]
    assert 0 < s["flops"]["Qwen2.5-VL-7B_ratio"] < 1


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


def test_cli_ask_streams_the_answer_and_writes_stats(tiny_model_dir, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    code = cli.main(["ask", "sample:carphone_pristine.mp4", Q, "--model", str(tiny_model_dir), "--stats",
                     "--max-new-tokens", "6", "--max-frames", "8", "--json", str(out_json)])
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(out_json.read_text())
    assert captured.out.strip() == data["answer"]
    assert "Stage 1:" in captured.err and "Stage 2:" in captured.err
    assert data["stats"]["stage1"]["original_tokens"] > 0


def test_cli_seed_flags_and_errors(tiny_model_dir, capsys):
    code = cli.main(["ask", "--video_path", "sample:bikes.mp4", "--question", Q, "--config", "baseline",
                     "--model", str(tiny_model_dir), "--max-new-tokens", "2", "--max-frames", "4"])
    assert code == 0
    assert cli.main(["ask", "/no/such/video.mp4", Q, "--model", str(tiny_model_dir)]) == 1
    assert "video file not found: /no/such/video.mp4" in capsys.readouterr().err
    assert cli.main(["ask", "sample:bikes.mp4", Q, "--model", "/no/such/model"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_make_tiny_model_command(tmp_path, capsys):
    assert cli.main(["make-tiny-model", str(tmp_path / "m"), "--overwrite"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
