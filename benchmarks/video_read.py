"""Video reading speed against video length: the sequential OpenCV reader (before issue 23) vs the seeking PyAV
reader (prunevid/video.py), in the same run. Not a test.

    python -m benchmarks.video_read                       # table on stdout; --readme refreshes docs/performance.md
    python -m benchmarks.video_read --minutes 1,10 --heights 720 --reps 3

The clips are made here (cached in .cache/video-bench/): one 10-s GOP of 1280x720 or 1920x1080 H.264 (libx264
through PyAV, preset veryfast, 3 B-frames, a keyframe every 250 frames = 10 s at 25 fps, moving gradients and
blocks) is encoded once, and its packets are muxed again and again with shifted timestamps into an mp4 of 1, 10
or 60 minutes. That takes seconds where encoding an hour of 1080p would take an hour on 2 CPU cores; the decoder
still decodes every frame it is given (the copies are not skipped), but this content is cheaper to decode than
camera footage, so absolute times of both readers are lower than for real video (the ratio is what to read).
The old reader is prunevid/video.py as of commit OLD_REF, loaded from git.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "video-bench"
OLD_REF = "f391010"          # the last commit with the sequential OpenCV reader
FPS, GOP = 25, 250
SIZES = {720: (1280, 720), 1080: (1920, 1080)}
MARK = "<!-- video-read-bench -->"


def _gop(width, height):
    """Encoded packets of one 10-s closed GOP: [(pts, dts, keyframe, bytes)] in decode order, time base 1/FPS."""
    import av
    path = CACHE / f"gop-{height}.mp4"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.mp4")
        with av.open(str(tmp), "w") as c:
            s = c.add_stream("libx264", rate=FPS, options={
                "preset": "veryfast", "crf": "23",
                "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=3:open-gop=0"})
            s.width, s.height, s.pix_fmt = width, height, "yuv420p"
            y, x = np.mgrid[0:height, 0:width]
            for i in range(GOP):
                img = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, ((x + y) // 4 + 3 * i) % 256], -1)
                bx, by = (37 * i) % (width - 160), (23 * i) % (height - 160)
                img[by:by + 160, bx:bx + 160] = 255 - img[by:by + 160, bx:bx + 160]
                frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), "rgb24")
                frame.pts = i
                c.mux(s.encode(frame))
            c.mux(s.encode(None))
        tmp.rename(path)
    return path


def make_clip(minutes: int, height: int) -> Path:
    """An mp4 of `minutes` minutes: the GOP's packets repeated with shifted timestamps (no re-encoding)."""
    import av
    path = CACHE / f"h264-{height}p-{minutes}min.mp4"
    if path.exists():
        return path
    gop = _gop(*SIZES[height])
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(gop)) as src, av.open(str(tmp), "w") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        packets = [(p.pts, p.dts, p.is_keyframe, bytes(p)) for p in src.demux(s_in) if p.size]
        tb = s_in.time_base
        step = int(round(GOP / FPS / tb))          # one GOP in the stream's time base
        for k in range(minutes * 60 * FPS // GOP):
            for pts, dts, key, data in packets:
                p = av.Packet(data)
                p.pts, p.dts, p.time_base, p.stream = pts + k * step, dts + k * step, tb, s_out
                p.is_keyframe = key
                dst.mux(p)
    tmp.rename(path)
    return path


def old_reader():
    """prunevid/video.py at OLD_REF, imported as prunevid._video_old (its relative imports resolve in prunevid)."""
    source = subprocess.run(["git", "show", f"{OLD_REF}:prunevid/video.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    import prunevid
    spec = importlib.util.spec_from_loader("prunevid._video_old", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "prunevid"
    sys.modules[spec.name] = module
    exec(compile(source, f"{OLD_REF}:prunevid/video.py", "exec"), module.__dict__)
    assert prunevid
    return module


def timed(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        clip = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), clip


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="1,10,60")
    ap.add_argument("--heights", default="720,1080")
    ap.add_argument("--frames", default="16,64")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the new reader (median)")
    ap.add_argument("--old-reps", type=int, default=1, help="repetitions of the old reader (median)")
    ap.add_argument("--old-max-minutes", type=int, default=60,
                    help="run the old reader only on clips up to this length (it decodes every frame)")
    ap.add_argument("--old-once-from", type=int, default=10 ** 9, metavar="MINUTES",
                    help="on clips this long or longer, run the old reader at the first frame count only (its cost "
                         "is one pass over every frame whatever the count)")
    ap.add_argument("--readme", nargs="?", const=str(ROOT / "docs" / "performance.md"), default=None)
    args = ap.parse_args(argv)
    from prunevid import video
    old = old_reader()
    rows = []
    for height in [int(h) for h in args.heights.split(",")]:
        for minutes in [int(m) for m in args.minutes.split(",")]:
            t = time.perf_counter()
            path = make_clip(minutes, height)
            made = time.perf_counter() - t
            size = path.stat().st_size / 2 ** 20
            print(f"{path.name}: {size:.0f} MiB (made in {made:.1f} s)", file=sys.stderr, flush=True)
            for k in [int(f) for f in args.frames.split(",")]:
                video.load_video(path, max_frames=k)          # page cache warm for both readers alike
                new_s, new = timed(lambda: video.load_video(path, max_frames=k), args.reps)
                first = k == int(args.frames.split(",")[0])
                if minutes <= args.old_max_minutes and (first or minutes < args.old_once_from):
                    old_s, ref = timed(lambda: old.load_video(path, max_frames=k), args.old_reps)
                    same = ref.timestamps == new.timestamps
                else:
                    old_s, same = None, None
                rows.append(dict(height=height, minutes=minutes, frames=k, mib=size, new_s=new_s, old_s=old_s,
                                 same=same))
                print(rows[-1], file=sys.stderr, flush=True)
    table = render(rows, args)
    print(table)
    if args.readme:
        doc = Path(args.readme)
        text = doc.read_text()
        a, b = text.index(MARK), text.rindex(MARK)
        doc.write_text(text[:a + len(MARK)] + "\n" + table + "\n" + text[b:])


def render(rows, args):
    import platform

    import av
    import cv2
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    head = [f"- Command: `python -m benchmarks.video_read --reps {args.reps} --old-reps {args.old_reps}"
            + (f" --old-max-minutes {args.old_max_minutes}" if args.old_max_minutes < 60 else "")
            + (f" --old-once-from {args.old_once_from}" if args.old_once_from < 10 ** 9 else "") + "`",
            f"- Machine: {cpu}, {os.cpu_count()} logical CPUs (shared with other jobs); Python "
            f"{platform.python_version()}, PyAV {av.__version__} (FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} "
            f"libavcodec), OpenCV {cv2.__version__}, torch {torch.__version__}",
            f"- Old = prunevid/video.py at {OLD_REF} (OpenCV, one sequential pass); new = this reader (PyAV, "
            f"seeking). New: median of {args.reps} after one warm-up; old: median of {args.old_reps}. Same "
            "file, page cache warm for both. frames/s = sampled frames / wall time. `same` = both readers "
            "returned the same timestamps.",
            "",
            "| clip | MiB | frames | old s | new s | old frames/s | new frames/s | new ÷ old time | same |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        old = f"{r['old_s']:.2f}" if r["old_s"] is not None else "not run"
        old_fps = f"{r['frames'] / r['old_s']:.2f}" if r["old_s"] is not None else "–"
        ratio = f"{r['new_s'] / r['old_s']:.4f}" if r["old_s"] is not None else "–"
        same = {True: "yes", False: "no", None: "–"}[r["same"]]
        head.append(f"| {r['height']}p {r['minutes']} min | {r['mib']:.0f} | {r['frames']} | {old} | "
                    f"{r['new_s']:.2f} | {old_fps} | {r['frames'] / r['new_s']:.1f} | {ratio} | {same} |")
    return "\n".join(head)


if __name__ == "__main__":
    main()
