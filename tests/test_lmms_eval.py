"""The lmms-eval model prunevid_qwen2_5_vl through the real lmms-eval (0.7.3) on the local tasks: tiny random
Qwen2.5-VL, CPU, offline. The accuracies here are of a random model: they test the wiring, they are no result.

Needs the [eval] extra. tests/run.sh runs this file in its own venv (.cache/venv-eval, see there) with
PRUNEVID_REQUIRE_LMMS_EVAL=1, so in CI a missing lmms-eval fails instead of skipping.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PRUNEVID_REQUIRE_LMMS_EVAL") == "1":
    import lmms_eval  # noqa: F401  (must be installed: tests/run.sh's eval phase)
else:
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install -e '.[eval]'); tests/run.sh "
                                            "runs these in .cache/venv-eval")

import prunevid.evaluation  # noqa: E402
from prunevid import engine  # noqa: E402
from prunevid.evaluation import args as eval_args  # noqa: E402
from prunevid.evaluation import clips, records  # noqa: E402
from prunevid.evaluation.inputs import read_video  # noqa: E402

TASKS = Path(prunevid.evaluation.__file__).parent / "tasks"
# 4 frames of at most 112x112 (16 tokens per 2 frames) on the tiny model: small enough for 2 shared CPU cores
SMALL = "max_frames=4,max_pixels=12544,min_pixels=3136"
LIMIT = 4
ACC = "videomme_perception_score,none"


@pytest.fixture(scope="session")
def eval_env(tmp_path_factory):
    """Offline, with the drawn clips, the datasets cache and lmms-eval's files in this session's temp folder."""
    base = tmp_path_factory.mktemp("lmms-eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(base / "hf"),
           "PRUNEVID_EVAL_CLIPS": str(base / "clips"), "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    os.environ["PRUNEVID_EVAL_CLIPS"] = env["PRUNEVID_EVAL_CLIPS"]       # the same clips for in-process checks
    return env, base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One lmms-eval command line and what it wrote."""

    def __init__(self, proc: subprocess.CompletedProcess, out: Path):
        self.proc, self.out = proc, out
        found = sorted(out.rglob("*_results.json"))
        self.results = json.loads(found[-1].read_text()) if found else None
        self.samples = {}
        for f in out.rglob("*_samples_*.jsonl"):
            task = f.name.split("_samples_", 1)[1][: -len(".jsonl")]
            self.samples[task] = {d["doc_id"]: d for d in map(json.loads, f.read_text().splitlines())}

    def record(self, task: str, doc_id: int) -> dict:
        return self.samples[task][doc_id]["token_counts"][0]["prunevid"]


@pytest.fixture(scope="session")
def lmms(eval_env):
    """lmms(name, model, model_args, tasks, limit=None, launcher=None) -> Run, each command line run once."""
    env, base = eval_env
    done = {}

    def run(name, model, model_args, tasks, limit=LIMIT, launcher=None, check=True):
        if name not in done:
            out = base / name
            cmd = [*(launcher or [sys.executable]), "-m", "lmms_eval", "--model", model, "--model_args", model_args,
                   "--tasks", tasks, "--include_path", str(TASKS), "--batch_size", "1", "--output_path", str(out),
                   "--log_samples", *(["--limit", str(limit)] if limit else [])]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            (base / f"{name}.log").write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
            done[name] = Run(proc, out)
            if check:
                assert proc.returncode == 0 and done[name].results, \
                    f"lmms-eval {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        return done[name]
    return run


def accelerate(*flags):
    """`accelerate launch FLAGS` on a free local port, by module: the eval venv sees accelerate through the main
    environment (tests/run.sh), whose console scripts it does not have."""
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *flags, "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]


def paper_run(lmms):
    return lmms("paper", "prunevid_qwen2_5_vl", f"pretrained=tiny,preset=paper,dtype=fp32,device=cpu,{SMALL}",
                "prunevid_local,prunevid_local_image")


def baseline_run(lmms):
    return lmms("baseline", "prunevid_qwen2_5_vl", f"pretrained=tiny,preset=baseline,dtype=bf16,device=cpu,{SMALL}",
                "prunevid_local", limit=None)


def reference_run(lmms):
    """lmms-eval's own qwen2_5_vl (it loads bf16; device_map=cpu keeps it off CUDA) with the same frames and pixels."""
    from prunevid.testing import tiny_model_path
    return lmms("qwen2_5_vl", "qwen2_5_vl", f"pretrained={tiny_model_path()},device=cpu,device_map=cpu,"
                "max_num_frames=4,max_pixels=12544,min_pixels=3136", "prunevid_local", limit=None)


def docs_by_id(run, task):
    return {i: s["filtered_resps"] for i, s in run.samples[task].items()}


# ---------------------------------------------------------------- one run, its files and its stats

def test_paper_run_writes_accuracy_and_per_sample_pruning_stats(lmms):
    run = paper_run(lmms)
    for task, n in (("prunevid_local", LIMIT), ("prunevid_local_image", 2)):
        assert isinstance(run.results["results"][task][ACC], float)
        assert len(run.samples[task]) == n
        for doc_id in run.samples[task]:
            r = run.record(task, doc_id)
            assert set(r) >= {"video_tokens", "after_stage1", "after_stage2", "retention", "kv_bytes", "prefill_s",
                              "ttft_s", "flops_ratio_7b", "rank", "preset"}
            assert r["preset"] == "paper max_frames=4 max_pixels=12544" and r["rank"] == 0
            assert 0 < r["after_stage2"] < r["after_stage1"] <= r["video_tokens"]   # a picture has one frame:
            if task == "prunevid_local":                                            # nothing to merge in time
                assert r["after_stage1"] < r["video_tokens"]
            assert r["kv_bytes"] < r["kv_bytes_unpruned"] and r["flops_ratio_7b"] < 1
    # the means are in lmms-eval's results JSON and printed after its table
    thr = run.results["throughput"]
    all_records = [run.record(t, i) for t in run.samples for i in run.samples[t]]
    assert thr["avg_prunevid_retention"] == pytest.approx(records.aggregate(all_records)["retention"])
    out = run.proc.stdout
    assert out.index("videomme_perception_score") < out.index("PruneVid (prunevid_qwen2_5_vl, paper max_frames=4")
    line = next(x for x in out.splitlines() if x.startswith("| prunevid_local "))
    mean = records.aggregate([run.record("prunevid_local", i) for i in run.samples["prunevid_local"]])
    assert f"| {LIMIT}       | {mean['retention']:.4f}" in line


def test_paper_run_prunes_as_the_library_does_with_that_config(lmms, eval_env):
    """Each logged sample's answer and token counts equal the library's own on the same frames and config."""
    from prunevid.pipeline import PruneVidQwen25VL
    from prunevid.testing import tiny_model_path
    run = paper_run(lmms)
    settings = eval_args.parse({"pretrained": "tiny", "preset": "paper", "dtype": "fp32", "max_frames": 4,
                                "max_pixels": 12544, "min_pixels": 3136})
    pv = PruneVidQwen25VL(str(tiny_model_path()), config=settings.config, device="cpu", dtype="fp32")
    docs = json.loads((TASKS / "prunevid_local" / "prunevid_local.json").read_text())
    for doc_id, sample in run.samples["prunevid_local"].items():
        clip = read_video(str(clips.resolve(docs[doc_id]["video"])), settings)
        enc = engine.encode(pv.model, clip, settings.config)
        out = pv.answer(enc, sample["input"], 16)
        r = run.record("prunevid_local", doc_id)
        tok = out["stats"]["tokens"]
        assert (r["video_tokens"], r["after_stage1"], r["after_stage2"]) == \
            (tok["video_original"], tok["video_after_stage1"], tok["video_after_stage2"])
        assert r["retention"] == pytest.approx(tok["retention"])
        assert r["after_stage2"] <= settings.config.keep_ratio * r["after_stage1"]   # per-block floor(n * alpha)
        assert sample["filtered_resps"] == pv.model.tokenizer.decode(
            out["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def test_image_documents_are_answered_from_the_picture(lmms):
    run = paper_run(lmms)
    for doc_id in run.samples["prunevid_local_image"]:
        r = run.record("prunevid_local_image", doc_id)
        assert r["frames"] == 1 and r["video_tokens"] == (r["frame_hw"][0] // 28) * (r["frame_hw"][1] // 28)


# ---------------------------------------------------------------- baseline parity with lmms-eval's qwen2_5_vl

def test_baseline_equals_lmms_eval_qwen2_5_vl_sample_by_sample(lmms):
    """Same frames (qwen_vl_utils), pixels, prompt and bf16 (what qwen2_5_vl loads): the same greedy answers."""
    ours, ref = baseline_run(lmms), reference_run(lmms)
    assert sorted(ours.samples["prunevid_local"]) == list(range(8))
    for doc_id, theirs in ref.samples["prunevid_local"].items():
        mine = ours.samples["prunevid_local"][doc_id]
        assert mine["input"] == theirs["input"]
        assert mine.get("resps") == theirs.get("resps") and mine["filtered_resps"] == theirs["filtered_resps"], doc_id
        assert mine["token_counts"][0]["output_tokens"] == theirs["token_counts"][0]["output_tokens"]
        assert ours.record("prunevid_local", doc_id)["retention"] == 1.0
    assert ours.results["results"]["prunevid_local"][ACC] == ref.results["results"]["prunevid_local"][ACC]


@pytest.mark.parametrize("video", ["sample:bikes.mp4", "generated:blue_ball_down"])
def test_the_default_reader_gives_the_pixels_and_times_qwen2_5_vl_gives(video, eval_env):
    """What lmms-eval's qwen2_5_vl (chat) hands transformers for a video, built the way it builds it: the plugin's
    frames make the same pixel_values, grid and second_per_grid_ts (so identical answers are no coincidence)."""
    from qwen_vl_utils import process_vision_info
    from transformers import AutoProcessor

    from prunevid.testing import tiny_model_path
    from prunevid.video import to_patches
    processor = AutoProcessor.from_pretrained(str(tiny_model_path()), max_pixels=12544, min_pixels=3136)
    path = str(clips.resolve(video))
    messages = [{"role": "user", "content": [{"type": "video", "video": path, "max_pixels": 12544, "min_pixels": 3136,
                                              "nframes": 4}, {"type": "text", "text": "What happens?"}]}]
    text = processor.apply_chat_template([messages], tokenize=False, add_generation_prompt=True)
    _, videos, _ = process_vision_info([messages], return_video_kwargs=True, return_video_metadata=True)
    videos, metas = zip(*videos)
    ref = processor(text=text, videos=list(videos), video_metadata=list(metas), return_tensors="pt")

    settings = eval_args.parse({"max_frames": 4, "max_pixels": 12544, "min_pixels": 3136})
    clip = read_video(path, settings)
    vp = processor.video_processor
    pixels, thw = to_patches(clip.frames, vp.image_mean, vp.image_std)
    assert thw == tuple(ref["video_grid_thw"][0].tolist())
    assert (pixels - ref["pixel_values_videos"]).abs().max() <= 1e-5
    assert ref["second_per_grid_ts"][0] == pytest.approx(2 / clip.fps)


# ---------------------------------------------------------------- data parallel

def test_two_processes_answer_the_union_of_the_one_process_run(lmms):
    one = paper_run(lmms)
    two = lmms("paper-2proc", "prunevid_qwen2_5_vl", f"pretrained=tiny,preset=paper,dtype=fp32,{SMALL}",
               "prunevid_local,prunevid_local_image", launcher=accelerate("--multi_gpu", "--num_processes", "2"))
    for task in ("prunevid_local", "prunevid_local_image"):
        assert docs_by_id(two, task) == docs_by_id(one, task)
        ranks = {two.record(task, i)["rank"] for i in two.samples[task]}
        assert ranks == {0, 1}                                   # both processes answered
        for i in one.samples[task]:
            a, b = one.record(task, i), two.record(task, i)
            assert {k: a[k] for k in ("video_tokens", "after_stage1", "after_stage2", "kv_bytes")} == \
                {k: b[k] for k in ("video_tokens", "after_stage1", "after_stage2", "kv_bytes")}
        assert two.results["results"][task][ACC] == one.results["results"][task][ACC]
    assert "| prunevid_local " in two.proc.stdout                 # rank 0 printed the means of both ranks
    line = next(x for x in two.proc.stdout.splitlines() if x.startswith("| prunevid_local "))
    assert f"| {LIMIT}       |" in line


def test_accelerate_cpu_flag_runs_and_gives_the_one_process_answers(lmms):
    """`accelerate launch --cpu --num_processes 2` runs (accelerate 1.x starts ONE process for --cpu without MPI;
    docs/evaluation.md says so and gives --multi_gpu for several CPU processes)."""
    one = paper_run(lmms)
    cpu = lmms("paper-cpu", "prunevid_qwen2_5_vl", f"pretrained=tiny,preset=paper,dtype=fp32,{SMALL}",
               "prunevid_local", launcher=accelerate("--cpu", "--num_processes", "2"))
    assert docs_by_id(cpu, "prunevid_local") == docs_by_id(one, "prunevid_local")
    assert {cpu.record("prunevid_local", i)["rank"] for i in cpu.samples["prunevid_local"]} == {0}


# ---------------------------------------------------------------- errors

def test_a_bad_model_arg_is_one_line_naming_it(lmms):
    run = lmms("bad-arg", "prunevid_qwen2_5_vl", "pretrained=tiny,keep_ratoi=0.3", "prunevid_local", check=False)
    assert run.proc.returncode == 1 and run.results is None
    last = run.proc.stderr.strip().splitlines()[-1]
    assert last.startswith("prunevid_qwen2_5_vl: error: unknown model_arg 'keep_ratoi' for prunevid_qwen2_5_vl "
                           "(did you mean keep_ratio?); valid: pretrained, preset,")
    assert "Traceback" not in run.proc.stderr


# ---------------------------------------------------------------- the model object: generation kwargs

@pytest.fixture(scope="module")
def model(eval_env):
    from prunevid.evaluation.model import PruneVidQwen25VLEval
    m = PruneVidQwen25VLEval(pretrained="tiny", preset="paper", dtype="fp32", device="cpu", max_frames=4,
                             max_pixels=12544, min_pixels=3136, batch_size="1")
    video = str(clips.resolve("generated:red_square_right"))
    m.task_dict = {"t": {"test": [{"video": video, "q": "Where does the square go?"}]}}
    yield m
    # the per-task means are printed at exit, after lmms-eval's table; here they would come after pytest's summary
    from prunevid.evaluation import model as model_module
    model_module._SUMMARIES.clear()


def request(gen_kwargs, padding=False):
    from lmms_eval.api.instance import Instance

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["q"]}]}]
    meta = {"task": "t", "doc_id": 0, "repeats": 1, **({"__padding_only__": True} if padding else {})}
    return Instance(request_type="generate_until", arguments=("ctx", doc_to_messages, gen_kwargs, 0, "t", "test"),
                    idx=0, metadata=meta)


def answer(model, **gen_kwargs):
    res = model.generate_until([request(gen_kwargs)])[0]
    return res.text, res.token_counts


def test_greedy_answer_and_max_new_tokens(model):
    text, tc = answer(model, max_new_tokens=6, temperature=0)
    assert tc.output_tokens <= 6 and tc.to_dict()["prunevid"]["new_tokens"] == tc.output_tokens
    assert answer(model, max_new_tokens=6)[0] == text                   # deterministic
    longer, tc2 = answer(model, max_new_tokens=10)
    assert longer.startswith(text) and tc2.output_tokens >= tc.output_tokens


def test_until_stops_at_the_task_stop_string(model):
    text, _ = answer(model, max_new_tokens=10)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop and answer(model, max_new_tokens=10, until=[stop])[0] == text.split(stop)[0]
    assert answer(model, max_new_tokens=10, until="\n\n")[0] == text                # dropped, as qwen2_5_vl does


def test_temperature_samples_with_the_seed_and_do_sample_false_wins(model):
    greedy, _ = answer(model, max_new_tokens=8)
    sampled, _ = answer(model, max_new_tokens=8, temperature=1.5)
    settings = model.settings
    clip = read_video(str(clips.resolve("generated:red_square_right")), settings)
    enc = engine.encode(model.pv.model, clip, settings.config)
    ref = model.pv.answer(enc, "Where does the square go?", 8, do_sample=True, temperature=1.5, seed=settings.seed)
    assert sampled == model.tokenizer.decode(ref["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert answer(model, max_new_tokens=8, temperature=1.5, do_sample=False)[0] == greedy


def test_padding_requests_are_not_answered(model):
    assert model.generate_until([request({}, padding=True)])[0].text == ""


def test_a_batch_answers_each_request_as_alone(model, eval_env, monkeypatch):
    """--batch_size 3: requests with the same decoding settings go through the LLM together (prunevid.batch), each
    pruned on its own, and every answer and pruning record equals the one-at-a-time run's, in request order; a
    request with other settings is answered beside them, a padding request is skipped."""
    from lmms_eval.api.instance import Instance

    from prunevid.evaluation.model import PruneVidQwen25VLEval
    docs = [{"video": str(clips.resolve(f"generated:{name}")), "q": q} for name, q in
            [("red_square_right", "Where does the square go?"), ("yellow_square_still", "What colour is it?"),
             ("red_square_left", "Describe the video in detail."), ("red_square_right", "Is it moving?")]]
    limits = [8, 8, 4, 8]                   # the third asks for fewer tokens: another group of the first batch

    def doc_to_messages(doc):
        return [{"role": "user", "content": [{"type": "video", "url": doc["video"]}, {"type": "text", "text": doc["q"]}]}]

    def requests():
        reqs = [Instance(request_type="generate_until", idx=0, metadata={"task": "b", "doc_id": i, "repeats": 1},
                         arguments=("ctx", doc_to_messages, {"max_new_tokens": n}, i, "b", "test"))
                for i, n in enumerate(limits)]
        padding = Instance(request_type="generate_until", idx=0,
                           metadata={"task": "b", "doc_id": 0, "repeats": 1, "__padding_only__": True},
                           arguments=("ctx", doc_to_messages, {"max_new_tokens": 8}, 0, "b", "test"))
        return reqs[:1] + [padding] + reqs[1:]
    batched = PruneVidQwen25VLEval(pretrained="tiny", preset="paper", dtype="fp32", device="cpu", max_frames=4,
                                   max_pixels=12544, min_pixels=3136, batch_size="3")
    batched.task_dict = {"b": {"test": docs}}
    monkeypatch.setattr(model, "task_dict", {"b": {"test": docs}})
    calls = []
    answer_batch = batched.pv.answer_batch
    batched.pv.answer_batch = lambda enc, *a, **k: calls.append(len(enc)) or answer_batch(enc, *a, **k)
    alone, together = model.generate_until(requests()), batched.generate_until(requests())
    # chunks of 3 real requests: [0, 1, 2] (0 and 1 batched, 2 alone: another max_new_tokens), then [3] alone
    assert calls == [2]
    assert together[1].text == "" and together[1].token_counts is None        # the padding request, in its place
    for i in (0, 2, 3, 4):
        a, b = alone[i], together[i]
        assert a.text == b.text and a.token_counts.output_tokens == b.token_counts.output_tokens <= limits[i - (i > 0)]
        ra, rb = a.token_counts.prunevid, b.token_counts.prunevid
        for key in ("new_tokens", "video_tokens", "after_stage1", "after_stage2", "kv_bytes", "flops_ratio"):
            assert ra[key] == rb[key], key


def test_other_request_types_are_not_supported(model):
    with pytest.raises(NotImplementedError, match="Loglikelihood is not implemented for prunevid_qwen2_5_vl"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="Multi-round generation is not implemented"):
        model.generate_until_multi_round([])
    with pytest.raises(eval_args.ConfigError, match="num_beams=2"):
        answer(model, num_beams=2)


# ---------------------------------------------------------------- the report over real result folders

def test_eval_report_over_the_runs(lmms, eval_env, tmp_path):
    from PIL import Image
    paper, base, ref = paper_run(lmms), baseline_run(lmms), reference_run(lmms)
    proc = subprocess.run([sys.executable, "-m", "prunevid", "eval-report", str(paper.out), str(base.out), str(ref.out),
                           "--out", str(tmp_path)], capture_output=True, text=True, env=eval_env[0], timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    mean = records.aggregate([paper.record("prunevid_local", i) for i in paper.samples["prunevid_local"]])
    row = next(x for x in lines if x.startswith("paper max_frames=4 max_pixels=12544 ") and " prunevid_local " in x)
    acc = paper.results["results"]["prunevid_local"][ACC]
    assert f" {acc:.2f} " in row and f" {mean['retention']:.3f} " in row and f" {mean['flops_ratio_7b']:.3f} " in row
    assert any(x.startswith("baseline max_frames=4 max_pixels=12544 ") and " 1.000 " in x for x in lines)
    assert any(x.startswith("qwen2_5_vl ") and " n/a " in x for x in lines)
    assert any(x.startswith("paper max_frames=4 max_pixels=12544 ") and " prunevid_local_image " in x for x in lines)
    md = (tmp_path / "eval-report.md").read_text()
    assert "| preset | task | accuracy | retention | FLOPs ratio (7B) | TTFT (s) | samples |" in md
    with Image.open(tmp_path / "eval-report.png") as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 300
