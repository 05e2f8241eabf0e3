"""The parts of the lmms-eval plugin that need neither lmms-eval nor a model: model_args, generation kwargs, the
request layout, the local task's clips and data, and the report's table (tests/test_lmms_eval.py runs the real
lmms-eval CLI)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from prunevid.config import get_paper_config
from prunevid.errors import ConfigError, InputError, VideoError
from prunevid.evaluation import args as eval_args
from prunevid.evaluation import clips, records, report
from prunevid.evaluation.inputs import qwen_vl_utils_nframes, read_video, turn_from_messages
from prunevid.video import MIN_PIXELS, load_video

TASKS = Path(eval_args.__file__).parent / "tasks" / "prunevid_local"


@pytest.fixture(autouse=True)
def clip_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PRUNEVID_EVAL_CLIPS", str(tmp_path_factory.getbasetemp() / "eval-clips"))


# ---------------------------------------------------------------- model_args

def test_defaults_are_the_paper_preset_on_the_7b_with_qwen_frames():
    s = eval_args.parse({"batch_size": "1"})
    assert s.pretrained == "Qwen/Qwen2.5-VL-7B-Instruct" and s.preset == "paper"
    assert s.config == get_paper_config() and s.overrides == {}
    assert (s.video_reader, s.min_pixels, s.dtype, s.device, s.attention) == ("qwen_vl_utils", MIN_PIXELS, "auto",
                                                                             "auto", "sdpa")
    assert s.system_prompt == "You are a helpful assistant." and s.batch_size == 1


def test_every_config_field_is_an_override_with_its_type():
    s = eval_args.parse({"preset": "paper", "keep_ratio": 0.3, "pruning_layer": 5, "tau": 1, "cluster_ratio": 0.4,
                         "temporal_segment_ratio": 0.5, "dpc_knn_k": 3, "attention_aggregation": "mean",
                         "selection_granularity": "global", "score_with_rope": True, "enable_stage1": False,
                         "max_frames": 8, "max_pixels": 50176.0, "max_video_tokens": 4096})
    c = s.config
    assert (c.keep_ratio, c.pruning_layer, c.tau, c.cluster_ratio, c.temporal_segment_ratio, c.dpc_knn_k) == \
        (0.3, 5, 1.0, 0.4, 0.5, 3)
    assert (c.attention_aggregation, c.selection_granularity, c.score_with_rope, c.enable_stage1) == \
        ("mean", "global", True, False)
    assert (c.max_frames, c.max_pixels, c.max_video_tokens) == (8, 50176, 4096)
    assert isinstance(c.max_pixels, int)
    assert s.label() == ("paper attention_aggregation=mean cluster_ratio=0.4 dpc_knn_k=3 enable_stage1=False "
                         "keep_ratio=0.3 max_frames=8 max_pixels=50176 max_video_tokens=4096 pruning_layer=5 "
                         "score_with_rope=True selection_granularity=global tau=1.0 temporal_segment_ratio=0.5")
    # what the model_arg left alone stays the preset's
    assert eval_args.parse({"preset": "conservative", "max_frames": 8}).config.keep_ratio == 0.3


def test_qwen2_5_vl_names_and_short_names_carry_over():
    s = eval_args.parse({"max_num_frames": 6, "attn_implementation": "eager", "fps": 1})
    assert (s.config.max_frames, s.attention, s.config.video_sampling, s.config.sampling_fps) == (6, "eager", "fps", 1.0)
    assert eval_args.parse({"sampling": "fps"}).config.video_sampling == "fps"
    # an explicit sampling wins over the one fps implies
    assert eval_args.parse({"fps": 1, "sampling": "uniform"}).config.video_sampling == "uniform"


@pytest.mark.parametrize("model_id, pretrained", [("prunevid_qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
                                                   ("prunevid_qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct"),
                                                   ("prunevid_qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct")])
def test_one_model_name_per_family_each_defaulting_to_its_7b_or_8b(model_id, pretrained):
    """lmms-eval names its models per family (qwen2_5_vl, qwen2_vl, qwen3_vl); so do ours, each registered as an entry
    point, each taking any supported checkpoint through pretrained=."""
    from importlib.metadata import entry_points
    registered = {e.name: e for e in entry_points(group="lmms_eval.models")}
    assert set(eval_args.MODEL_IDS) == {"prunevid_qwen2_5_vl", "prunevid_qwen2_vl", "prunevid_qwen3_vl"}
    assert model_id in registered, f"{model_id} is not an installed entry point: reinstall (pip install -e .)"
    assert eval_args.parse({}, model_id).pretrained == pretrained
    assert eval_args.parse({}, model_id).model_id == model_id
    for other in ("tiny", "tiny:qwen2_vl", "tiny:qwen3_vl"):
        assert eval_args.parse({"pretrained": other}, model_id).pretrained == other
    with pytest.raises(ConfigError, match=f"unknown model_arg 'frames' for {model_id}"):
        eval_args.parse({"frames": 1}, model_id)
    assert report.run_label(model_id, "pretrained=x,preset=paper,keep_ratio=0.3") == "paper keep_ratio=0.3"


def test_qwen3_vl_frame_count_is_that_of_lmms_eval_qwen3_vl():
    """lmms-eval's qwen3_vl passes max_num_frames as given and qwen-vl-utils rounds it half to even; qwen2_5_vl
    floors min(max_num_frames, frames) to even. Each plugin name asks for its namesake's count (and never more than
    the video has, where lmms-eval's qwen3_vl fails)."""
    from qwen_vl_utils.vision_process import smart_nframes
    for max_frames in range(2, 20):
        want = smart_nframes({"nframes": max_frames}, total_frames=100, video_fps=10)
        assert qwen_vl_utils_nframes(max_frames, 100, "prunevid_qwen3_vl") == want
        assert qwen_vl_utils_nframes(max_frames, 100, "prunevid_qwen2_5_vl") == max_frames // 2 * 2
    assert qwen_vl_utils_nframes(7, 8, "prunevid_qwen3_vl") == 8
    assert qwen_vl_utils_nframes(7, 8, "prunevid_qwen2_vl") == 6
    for model_id in eval_args.MODEL_IDS:                        # a video with fewer frames than asked: all it has
        assert qwen_vl_utils_nframes(16, 7, model_id) == 6


@pytest.mark.parametrize("name", ["keep_ratoi", "frames", "temperature"])
def test_an_unknown_model_arg_is_a_one_line_error_naming_it(name):
    with pytest.raises(ConfigError) as e:
        eval_args.parse({name: 1})
    msg = str(e.value)
    assert "\n" not in msg and f"unknown model_arg {name!r} for prunevid_qwen2_5_vl" in msg
    assert "valid: pretrained, preset" in msg
    if name == "keep_ratoi":
        assert "(did you mean keep_ratio?)" in msg


@pytest.mark.parametrize("kwargs,needle", [
    ({"keep_ratio": "lots"}, "model_arg keep_ratio='lots': expected a number"),
    ({"dpc_knn_k": 2.5}, "model_arg dpc_knn_k=2.5: expected an integer"),
    ({"enable_stage2": "yes"}, "model_arg enable_stage2='yes': expected true or false"),
    ({"keep_ratio": 1.5}, "keep_ratio must be in (0, 1], got 1.5"),
    ({"preset": "fast"}, "model_arg preset='fast': choose one of aggressive, attention_coverage, baseline"),
    ({"video_reader": "decord"}, "model_arg video_reader='decord': choose one of qwen_vl_utils, prunevid"),
    ({"min_pixels": 10 ** 6}, "model_arg min_pixels=1000000: must be in [1, max_pixels=200704]"),
    ({"batch_size": "two"}, "batch_size='two': expected a positive integer or auto"),
])
def test_bad_values_name_the_model_arg(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        eval_args.parse(kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_batch_size_auto_and_device_none_are_what_lmms_eval_passes():
    s = eval_args.parse({"batch_size": "auto:4", "device": None})
    assert (s.batch_size, s.device) == (1, "auto")


def test_system_prompt_may_be_a_file(tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("Answer briefly.\n")
    assert eval_args.parse({"system_prompt": str(p)}).system_prompt == "Answer briefly."
    assert eval_args.parse({"system_prompt": "Be terse."}).system_prompt == "Be terse."


# ---------------------------------------------------------------- generation kwargs

def test_videomme_kwargs_decode_greedily():
    assert eval_args.decoding({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                               "do_sample": False, "until": ["\n\n"]}) == (16, {}, [])


def test_temperature_samples_unless_do_sample_is_false():
    n, sampling, until = eval_args.decoding({"temperature": 0.7, "top_p": 0.9, "top_k": 5, "until": "ANSWER"}, seed=3)
    assert (n, until) == (128, ["ANSWER"])
    assert sampling == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3}
    assert eval_args.decoding({"temperature": 0.7, "do_sample": False})[1] == {}
    assert eval_args.decoding({"temperature": 0.7, "do_sample": True, "top_p": None})[1]["top_p"] == 1.0


def test_beam_search_is_refused():
    with pytest.raises(ConfigError, match="num_beams=4: the PruneVid engine"):
        eval_args.decoding({"num_beams": 4})


def test_until_cuts_at_the_first_stop_string():
    assert eval_args.cut("B. the dog\nC. cat", ["\n", "C."]) == "B. the dog"
    assert eval_args.cut("A", []) == "A"


# ---------------------------------------------------------------- a request's messages

def test_one_user_turn_with_a_system_turn():
    t = turn_from_messages([("system", [("text", "Be brief.")]),
                            ("user", [("video", "/v.mp4"), ("text", "What "), ("text", "happens?")])], "default")
    assert (t.system_prompt, t.question, t.videos, t.images) == ("Be brief.", "What happens?", ["/v.mp4"], [])
    assert turn_from_messages([("user", [("image", "x.png"), ("text", "Q")])], "default").system_prompt == "default"


@pytest.mark.parametrize("messages,needle", [
    ([("user", [("text", "a")]), ("assistant", [("text", "b")])], "multi-turn prompts are not supported"),
    ([("user", [("video", "a.mp4"), ("video", "b.mp4"), ("text", "q")])], "2 video(s) and 0 image(s)"),
    ([("user", [("video", "a.mp4"), ("image", "b.png"), ("text", "q")])], "1 video(s) and 1 image(s)"),
    ([("user", [("audio", "a.wav"), ("text", "q")])], "the request has audio"),
    ([("user", [("video", "a.mp4")])], "no question text"),
    ([("system", [("text", "s")])], "no user turn"),
])
def test_requests_the_engine_cannot_answer_are_named(messages, needle):
    with pytest.raises(InputError) as e:
        turn_from_messages(messages, "default")
    assert needle in str(e.value)


def test_the_prunevid_reader_takes_max_frames_max_pixels_and_min_pixels(sample_video):
    s = eval_args.parse({"video_reader": "prunevid", "max_frames": 6, "max_pixels": 112 * 112, "min_pixels": 3136})
    clip = read_video(str(sample_video), s)
    assert clip.frames.shape[0] == 6 and clip.frames.shape[1] * clip.frames.shape[2] <= 112 * 112
    with pytest.raises(VideoError, match="video file not found: /no/such.mp4"):
        read_video("/no/such.mp4", s)


# ---------------------------------------------------------------- the local task's videos and documents

def test_generated_clips_show_what_their_questions_ask():
    def centre(name):
        clip = load_video(clips.generated_path(name), max_frames=clips.FRAMES)
        f = clip.frames.float()
        mask = (f - f[0, 0, 0]).abs().sum(-1) > 60               # pixels that differ from the background
        ys, xs = [torch_mean_index(mask, dim) for dim in (1, 2)]
        return xs, ys

    xs, ys = centre("red_square_right")
    assert xs[-1] - xs[0] > 0.5 * clips.WIDTH and abs(ys[-1] - ys[0]) < 4
    xs, _ = centre("red_square_left")
    assert xs[0] - xs[-1] > 0.5 * clips.WIDTH
    _, ys = centre("blue_ball_down")
    assert ys[-1] - ys[0] > 0.5 * clips.HEIGHT
    _, ys = centre("green_ball_up")
    assert ys[0] - ys[-1] > 0.5 * clips.HEIGHT
    frame = load_video(clips.generated_path("yellow_square_still"), max_frames=2).frames[0].numpy().astype(int)
    r, g, b = frame[frame.shape[0] // 2, frame.shape[1] // 2]
    assert r > 180 and g > 160 and b < 100                       # yellow in the middle


def torch_mean_index(mask, dim):
    """Per frame, the mean row (dim=1) or column (dim=2) index of the True pixels of mask [T, H, W]."""
    idx = np.arange(mask.shape[dim])
    m = mask.numpy()
    counts = m.sum(axis=(1, 2))
    s = (m.sum(axis=3 - dim) * idx).sum(axis=1)
    return s / np.maximum(counts, 1)


def test_generated_clips_are_drawn_once_and_the_same_every_time():
    a = clips.draw("blue_ball_down")
    assert a.shape == (clips.FRAMES, clips.HEIGHT, clips.WIDTH, 3) and (a == clips.draw("blue_ball_down")).all()
    p = clips.generated_path("blue_ball_down")
    mtime = p.stat().st_mtime_ns
    assert clips.generated_path("blue_ball_down") == p and p.stat().st_mtime_ns == mtime
    assert not [x for x in p.parent.iterdir() if x.name.startswith(".")]     # no temporary file left


def test_task_videos_are_named_sample_or_generated():
    assert clips.resolve("sample:bikes.mp4").name == "bikes.mp4"
    with pytest.raises(VideoError, match="'sample:NAME.mp4' or 'generated:NAME', got 'bikes.mp4'"):
        clips.resolve("bikes.mp4")
    with pytest.raises(VideoError, match="no generated clip 'purple_cow'"):
        clips.resolve("generated:purple_cow")


def test_the_local_tasks_are_in_videomme_format():
    videomme_keys = {"video_id", "duration", "domain", "sub_category", "url", "videoID", "question_id", "task_type",
                     "question", "options", "answer"}
    for name, media in (("prunevid_local.json", "video"), ("prunevid_local_image.json", "image")):
        docs = json.loads((TASKS / name).read_text())
        assert len(docs) >= 2
        for d in docs:
            assert videomme_keys | {media} == set(d)
            assert [o[:3] for o in d["options"]] == ["A. ", "B. ", "C. ", "D. "] and d["answer"] in "ABCD"
            assert d["duration"] == "short"
            clips.resolve(d[media])                               # every video exists or can be drawn
        assert len({d["answer"] for d in docs}) > 1 or len(docs) < 4  # not all the same letter


# ---------------------------------------------------------------- records and the report

def _record(retention, flops, ttft):
    return {"retention": retention, "flops_ratio_7b": flops, "ttft_s": ttft, "new_tokens": 3}


def test_aggregate_is_the_mean_per_key():
    a = records.aggregate([_record(0.2, 0.5, 1.0), _record(0.4, 0.7, 3.0)])
    assert a["samples"] == 2 and a["retention"] == pytest.approx(0.3) and a["flops_ratio_7b"] == pytest.approx(0.6)
    assert a["ttft_s"] == pytest.approx(2.0)
    assert math.isnan(records.aggregate([])["retention"])


def _fake_run(folder: Path, stem: str, model: str, model_args: str, tasks: dict, groups: dict | None = None):
    """An lmms-eval output folder: {stem}_results.json and {stem}_samples_{task}.jsonl for tasks {task: (acc, recs)}."""
    folder.mkdir(parents=True, exist_ok=True)
    res = {"results": {t: {"alias": t, "score,none": acc, "score_stderr,none": "N/A"} for t, (acc, _) in tasks.items()},
           "group_subtasks": groups or {t: [] for t in tasks},
           "config": {"model": model, "model_args": model_args}}
    if groups:
        res["groups"] = {g: {"alias": g, "score,none": 50.0} for g in groups}
    (folder / f"{stem}_results.json").write_text(json.dumps(res))
    for t, (_, recs) in tasks.items():
        with open(folder / f"{stem}_samples_{t}.jsonl", "w") as f:
            for i, r in enumerate(recs):
                tc = [{"output_tokens": 3, "prunevid": r}] if r is not None else [{"output_tokens": 3}]
                f.write(json.dumps({"doc_id": i, "token_counts": tc}) + "\n")


def test_report_has_one_row_per_run_and_task(tmp_path, capsys):
    _fake_run(tmp_path / "a" / "tiny", "20260101_000000", "prunevid_qwen2_5_vl", "pretrained=tiny,preset=paper",
              {"videomme": (40.0, [_record(0.2, 0.5, 1.0), _record(0.4, 0.7, 3.0)])})
    _fake_run(tmp_path / "b" / "tiny", "20260101_000001", "prunevid_qwen2_5_vl",
              "pretrained=tiny,preset=baseline,max_frames=8", {"videomme": (50.0, [_record(1.0, 1.0, 5.0)])})
    _fake_run(tmp_path / "c" / "m", "20260101_000002", "qwen2_5_vl", "pretrained=m",
              {"videomme": (51.0, [None])})
    _fake_run(tmp_path / "d" / "tiny", "20260101_000003", "prunevid_qwen2_5_vl", "pretrained=tiny",
              {"mvbench_a": (10.0, [_record(0.1, 0.2, 1.0)]), "mvbench_b": (20.0, [_record(0.3, 0.4, 3.0)])},
              groups={"mvbench": ["mvbench_a", "mvbench_b"]})
    written = report.main([str(tmp_path / x) for x in "abcd"], out=str(tmp_path / "out"), no_plot=True)
    table = capsys.readouterr().out
    rows = report.collect([str(tmp_path / x) for x in "abcd"])
    got = {(r.label, r.task): (r.accuracy, r.aggregate["retention"], r.aggregate["samples"]) for r in rows}
    assert got == {("paper", "videomme"): (40.0, pytest.approx(0.3), 2),
                   ("baseline max_frames=8", "videomme"): (50.0, 1.0, 1),
                   ("qwen2_5_vl", "videomme"): (51.0, 1.0, 0),
                   ("paper", "mvbench"): (50.0, pytest.approx(0.2), 2)}
    assert [r.metric for r in rows] == ["score"] * 4
    md = written["markdown"].read_text()
    assert "| paper | videomme | 40.00 | 0.300 | 0.600 | 2.000 | 2 |" in md
    assert "| qwen2_5_vl | videomme | 51.00 | 1.000 | 1.000 | n/a | 0 |" in md
    assert any(line.startswith("paper ") and " videomme " in line and " 40.00 " in line and " 0.300 " in line
               for line in table.splitlines())
    assert "plot" not in written


def test_report_without_results_says_what_to_do(tmp_path):
    with pytest.raises(InputError, match="no lmms-eval \\*_results.json under"):
        report.collect([str(tmp_path)])
    with pytest.raises(InputError, match="does not exist; give lmms-eval's --output_path"):
        report.collect([str(tmp_path / "missing")])


def test_eval_report_command(tmp_path, capsys):
    import importlib.util

    from prunevid import cli
    _fake_run(tmp_path / "r" / "tiny", "20260101_000000", "prunevid_qwen2_5_vl", "pretrained=tiny,preset=aggressive",
              {"prunevid_local": (12.5, [_record(0.5, 0.6, 1.0)])})
    assert cli.main(["eval-report", str(tmp_path / "r"), "--out", str(tmp_path / "o"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert any(x.startswith("aggressive ") and " 12.50 " in x and " 0.500 " in x for x in out.splitlines())
    assert (tmp_path / "o" / "eval-report.md").is_file() and not (tmp_path / "o" / "eval-report.png").exists()
    code = cli.main(["eval-report", str(tmp_path / "r"), "--out", str(tmp_path / "o2")])
    if importlib.util.find_spec("matplotlib") is None:     # the main environment: [eval] brings matplotlib
        assert code == 1 and not (tmp_path / "o2").exists()     # nothing written before the error
        assert capsys.readouterr().err.strip().endswith("the plot needs matplotlib: pip install matplotlib (it comes "
                                                         "with the [eval] extra), or pass --no-plot")
    else:
        assert code == 0 and (tmp_path / "o2" / "eval-report.png").stat().st_size > 0
    assert cli.main(["eval-report", str(tmp_path / "nothing")]) == 1
    assert "does not exist; give lmms-eval's --output_path folder(s)" in capsys.readouterr().err


def test_plot_labels_leave_out_what_every_run_shares():
    rows = [report.Row(label, "t", "score", 1.0, {}, Path("x")) for label in
            ("paper max_frames=4", "baseline max_frames=4", "paper keep_ratio=0.3 max_frames=4")]
    short, common = report.short_labels(rows)
    assert common == "max_frames=4"
    assert short == {"paper max_frames=4": "paper", "baseline max_frames=4": "baseline",
                     "paper keep_ratio=0.3 max_frames=4": "paper keep_ratio=0.3"}
    assert report.short_labels(rows[:1]) == ({"paper max_frames=4": "paper max_frames=4"}, "")


def test_quantization_and_device_map_are_model_args():
    s = eval_args.parse({"quantization": "4bit", "device_map": "auto"})
    assert (s.quantization, s.device_map) == ("4bit", "auto")
    s = eval_args.parse({})
    assert (s.quantization, s.device_map) == ("none", "")
