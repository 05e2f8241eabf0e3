"""The CLI with several videos in one prompt, and `prunevid batch` (progress, error isolation, resuming)."""
import json

import pytest

from prunevid import PruneVid, cli, get_paper_config
from prunevid.video import sample_video_path

Q = "What changed between the two clips?"


def test_ask_takes_several_videos_for_one_prompt(tiny_model_dir, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    common = ["--model", str(tiny_model_dir), "--max-frames", "4", "--max-new-tokens", "6"]
    assert cli.main(["ask", "sample:bigbuckbunny.mp4", "sample:bikes.mp4", Q, *common, "--json", str(out_json)]) == 0
    positional = capsys.readouterr()
    assert "on 2 video(s)" in positional.err
    data = json.loads(out_json.read_text())
    assert [v["source"] for v in data["stats"]["videos"]] == [str(sample_video_path(n)) for n in
                                                              ("bigbuckbunny.mp4", "bikes.mp4")]
    assert cli.main(["ask", "--video", "sample:bigbuckbunny.mp4", "--video", "sample:bikes.mp4", "--question", Q,
                     *common]) == 0
    assert capsys.readouterr().out == positional.out
    pv = PruneVid(str(tiny_model_dir), config=get_paper_config(max_frames=4), device="cpu", dtype="fp32")
    library = pv.generate(videos=[sample_video_path("bigbuckbunny.mp4"), sample_video_path("bikes.mp4")],
                          question=Q, max_new_tokens=6)
    assert positional.out.strip() == library == data["answer"]
    assert cli.main(["ask", "sample:bikes.mp4", *common]) == 2        # a video alone is not a question
    assert "give a VIDEO (one or more) and a QUESTION" in capsys.readouterr().err


def write_requests(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def requests(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 300)
    lines = [{"id": "rabbit", "video": "sample:bigbuckbunny.mp4", "question": "What is the rabbit doing?"},
             {"videos": ["sample:bikes.mp4", "sample:carphone_pristine.mp4"], "question": Q, "max_new_tokens": 3},
             {"id": "broken", "video": "clips/broken.mp4", "question": "What happens?"},
             {"id": 7, "video": "sample:carphone_pristine.mp4", "question": "Who is in the car?"},
             {"video": "sample:bikes.mp4", "question": "How many bikes?", "seed": 3, "do_sample": True}]
    write_requests(tmp_path / "questions.jsonl", lines)
    return tmp_path / "questions.jsonl"


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_resumes_after_an_interruption_without_redoing_answered_lines(tiny_model_dir, requests, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "answers.jsonl"
    run = ["batch", str(requests), "--out", str(out), "--model", str(tiny_model_dir), "--max-frames", "4",
           "--max-new-tokens", "4", "--batch-size", "2"]
    real = PruneVid.generate_batch
    asked = []

    def interrupted_on_the_second_batch(self, reqs, *args, **kwargs):
        asked.append([r["question"] for r in reqs])
        if len(asked) == 2:
            raise KeyboardInterrupt
        return real(self, reqs, *args, **kwargs)

    monkeypatch.setattr(PruneVid, "generate_batch", interrupted_on_the_second_batch)
    assert cli.main(run) == 130
    assert "interrupted" in capsys.readouterr().err
    first = answers(out)
    assert [a["id"] for a in first] == ["rabbit", 2]
    assert all(a["error"] is None and isinstance(a["answer"], str) for a in first)

    # a rerun asks only what is not answered; a line cut off by a crash is asked again too
    with out.open("a") as f:
        f.write('{"id": 7, "question": "Who is in the car?", "ans')
    asked.clear()
    monkeypatch.setattr(PruneVid, "generate_batch",
                        lambda self, reqs, *a, **k: asked.append([r["question"] for r in reqs]) or real(self, reqs,
                                                                                                     *a, **k))
    assert cli.main(run) == 1                                   # the broken video stays an error
    err = capsys.readouterr().err
    assert "2 request(s) already answered" in err and "batch [" in err and "3/3 (1 error(s))" in err
    assert asked == [["What happens?", "Who is in the car?"], ["How many bikes?"]]
    second = answers(out)
    assert [a["id"] for a in second] == ["rabbit", 2, "broken", 7, 5]
    assert second[:2] == first                                  # answered lines are kept as they were
    assert "cannot decode" in second[2]["error"] and "broken.mp4" in second[2]["error"]
    assert second[2]["answer"] is None and all(a["error"] is None for a in second[3:])

    # a third run asks only the failed request again, and keeps one line per id
    asked.clear()
    assert cli.main(run) == 1
    assert asked == [["What happens?"]]
    assert sorted(map(str, (a["id"] for a in answers(out)))) == sorted(["rabbit", "2", "broken", "7", "5"])


def test_batch_answers_equal_the_library_and_stats_are_optional(tiny_model_dir, requests, tmp_path):
    out = tmp_path / "answers.jsonl"
    assert cli.main(["batch", str(requests), "--out", str(out), "--model", str(tiny_model_dir), "--max-frames", "4",
                     "--max-new-tokens", "4", "--batch-size", "4", "--stats"]) == 1
    got = {a["id"]: a for a in answers(out)}
    assert got[7]["stats"]["batch"] == {"size": 3, "row": 2} and "stats" not in got["broken"]
    pv = PruneVid(str(tiny_model_dir), config=get_paper_config(max_frames=4), device="cpu", dtype="fp32")
    assert got[7]["answer"] == pv.generate(video_path=sample_video_path("carphone_pristine.mp4"),
                                           question="Who is in the car?", max_new_tokens=4)


def test_batch_file_errors_come_before_the_model_load(tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    run = ["batch", str(bad), "--out", str(tmp_path / "a.jsonl"), "--model", "/no/such/model"]
    bad.write_text('{"video": "a.mp4", "question": "x"}\n{"video": "b.mp4", "question": \n')
    assert cli.main(run) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"prunevid: error: {bad} line 2: not valid JSON") and err.count("\n") == 1
    write_requests(bad, [{"id": 1, "video": "a.mp4", "question": "x"}, {"id": 1, "video": "b.mp4", "question": "y"}])
    assert cli.main(run) == 1
    assert "line 2: id 1 is already used on line 1" in capsys.readouterr().err
    write_requests(bad, [["a.mp4", "x"]])
    assert cli.main(run) == 1
    assert "line 1: expected a JSON object" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "a.jsonl")]) == 1
    assert "cannot read" in capsys.readouterr().err
    write_requests(bad, [{"video": "a.mp4", "question": "x"}])
    assert cli.main(["batch", str(bad), "--out", str(tmp_path / "no" / "a.jsonl"), "--model", "/no/such/model"]) == 1
    assert "--out" in capsys.readouterr().err
