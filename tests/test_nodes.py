"""The ComfyUI node pack, loaded the way ComfyUI loads it, run on the tiny random Qwen2.5-VL and a real clip.

ComfyUI itself is not installed here (nor in CI): small stand-ins for comfy.utils, comfy.model_management,
folder_paths and server are put in sys.modules for this module only, and a small executor runs the shipped
API-format workflows in ComfyUI's order with stand-ins for the core nodes they use.
"""
from __future__ import annotations

import copy
import fractions
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import PACK_DIR, load_pack
from fake_hub import FakeHub
WORKFLOWS = PACK_DIR / "workflows"
CORE_IDS = PACK_DIR.parent / "shared" / "data" / "comfyui-core-node-ids.txt"
CORE_TYPES = {"IMAGE", "MASK", "LATENT", "VIDEO", "AUDIO", "STRING", "INT", "FLOAT", "BOOLEAN", "COMBO", "*"}
FOREIGN_TYPES = {"VHS_VIDEOINFO"}    # VideoHelperSuite's video_info, accepted for its fps
PRESETS = ("paper", "baseline", "conservative", "aggressive", "stage1_only", "stage2_only", "no_cache_compression",
           "attention_coverage")
FAST = {"max_frames": 8, "max_pixels": 224 * 224}   # patched into the workflows to keep the tests fast
TINY = "tiny-qwen25vl"                               # the tiny model's folder name under models/LLM
FAMILY_WORKFLOWS = {"qwen3_vl_paper": ("qwen3_vl", "paper")}   # a family's workflow -> (its tiny model, preset)


# ------------------------------------------------------------------ ComfyUI stand-ins

class Interrupted(BaseException):
    """Stand-in for comfy.model_management.InterruptProcessingException (never to be caught by the pack)."""


class Recorder:
    def __init__(self):
        self.reset()

    def reset(self):
        self.progress = []          # (value, total) of every ProgressBar update
        self.texts = []             # (node_id, text) of every send_progress_text
        self.interrupt_after = None  # raise Interrupted once this many progress updates happened
        self.interrupt_checks = 0


def make_stand_ins(rec: Recorder, models_dir: Path, input_dir: Path) -> dict:
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    utils = types.ModuleType("comfy.utils")
    mm = types.ModuleType("comfy.model_management")

    def throw_exception_if_processing_interrupted():
        rec.interrupt_checks += 1
        if rec.interrupt_after is not None and len(rec.progress) >= rec.interrupt_after:
            raise Interrupted("Processing interrupted")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update_absolute(self, value, total=None, preview=None):
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            throw_exception_if_processing_interrupted()     # the real hook checks here too
            rec.progress.append((self.current, self.total))

        def update(self, value):
            self.update_absolute(self.current + value)

    mm.InterruptProcessingException = Interrupted
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.unloaded_core = 0

    def unload_all_models():
        mm.unloaded_core += 1

    mm.unload_all_models = unload_all_models
    mm.free_requests = []           # (bytes, device) of every free_memory call

    def free_memory(memory_required, device, keep_loaded=()):
        mm.free_requests.append((memory_required, device))

    mm.free_memory = free_memory
    mm.soft_empty_cache = lambda *args, **kwargs: None
    utils.ProgressBar = ProgressBar
    comfy.utils, comfy.model_management = utils, mm

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.folder_names_and_paths = {}

    def add_model_folder_path(name, path, is_default=False):
        paths = fp.folder_names_and_paths.setdefault(name, ([], set()))[0]
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    def get_folder_paths(name):
        return list(fp.folder_names_and_paths[name][0])

    def get_annotated_filepath(name, default_dir=None):
        for tag, folder in ((" [input]", input_dir), (" [output]", input_dir.parent / "output")):
            if name.endswith(tag):
                return str(Path(folder) / name[:-len(tag)])
        return str(Path(default_dir or input_dir) / name)

    fp.add_model_folder_path, fp.get_folder_paths = add_model_folder_path, get_folder_paths
    fp.get_input_directory = lambda: str(input_dir)
    fp.get_annotated_filepath = get_annotated_filepath

    server = types.ModuleType("server")

    class PromptServer:
        instance = None

        def send_progress_text(self, text, node_id, sid=None):
            rec.texts.append((node_id, text))

    PromptServer.instance = PromptServer()
    server.PromptServer = PromptServer
    return {"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm, "folder_paths": fp,
            "server": server}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_dir, sample_video):
    root = tmp_path_factory.mktemp("comfyui")
    models, inputs = root / "models", root / "input"
    (models / "LLM").mkdir(parents=True)
    inputs.mkdir()
    os.symlink(tiny_model_dir, models / "LLM" / TINY)
    from prunevid.loader import resolve_model
    for family, _ in FAMILY_WORKFLOWS.values():
        os.symlink(resolve_model(f"tiny:{family}"), models / "LLM" / f"tiny-{family}")
    not_qwen = models / "LLM" / "not-qwen"
    not_qwen.mkdir()
    (not_qwen / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shutil.copy(sample_video, inputs / "bigbuckbunny.mp4")
    shutil.copy(sample_video.parent / "bikes.mp4", inputs / "bikes.mp4")
    (inputs / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    rec = Recorder()
    stand_ins = make_stand_ins(rec, models, inputs)
    saved = {k: sys.modules.get(k) for k in stand_ins}
    sys.modules.update(stand_ins)
    try:
        pack = load_pack()
        yield types.SimpleNamespace(pack=pack, rec=rec, models=models, inputs=inputs, mm=stand_ins[
            "comfy.model_management"], lib=lambda m: sys.modules[f"{pack.__name__}.prunevid.{m}"],
            nodes=lambda m: sys.modules[f"{pack.__name__}.nodes.{m}"])
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(autouse=True)
def rec(env):
    env.rec.reset()
    yield env.rec
    env.rec.reset()


def node(env, node_id):
    return env.pack.NODE_CLASS_MAPPINGS[node_id]()


def call(env, node_id, **kwargs):
    cls = env.pack.NODE_CLASS_MAPPINGS[node_id]
    out = getattr(cls(), cls.FUNCTION)(**kwargs)
    return out["result"] if isinstance(out, dict) else out


# ------------------------------------------------------------------ a small ComfyUI-order executor

class CoreVideo:
    """Stand-in for core VIDEO (VideoFromFile): get_components() -> images float [T,H,W,3] 0..1, frame_rate.

    Decodes at a reduced size (a full-size 1280x720 float decode would need 1.5 GB; the real node does that)."""

    def __init__(self, path):
        self.path = path

    def get_components(self):
        import cv2
        cap = cv2.VideoCapture(self.path)
        rate = cap.get(cv2.CAP_PROP_FPS)
        frames = []
        ok, frame = cap.read()
        while ok:
            frames.append(torch.from_numpy(cv2.cvtColor(cv2.resize(frame, (160, 90)), cv2.COLOR_BGR2RGB)))
            ok, frame = cap.read()
        cap.release()
        return types.SimpleNamespace(images=torch.stack(frames).float() / 255.0, audio=None,
                                     frame_rate=fractions.Fraction(rate).limit_denominator(1001))


def core_nodes(env):
    class PreviewAny:
        FUNCTION, OUTPUT_NODE, RETURN_TYPES = "main", True, ("STRING",)

        def main(self, source=None):
            value = source if isinstance(source, str) else json.dumps(source)
            return {"ui": {"text": (value,)}, "result": (value,)}

    class PreviewImage:
        FUNCTION, OUTPUT_NODE, RETURN_TYPES = "save_images", True, ()

        def save_images(self, images):
            assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == torch.float32
            assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
            return {"ui": {"images": [{"shape": list(images.shape)}]}}

    class LoadVideo:
        FUNCTION, RETURN_TYPES = "load", ("VIDEO",)

        def load(self, file):
            return (CoreVideo(str(env.inputs / file)),)

    return {"PreviewAny": PreviewAny, "PreviewImage": PreviewImage, "LoadVideo": LoadVideo}


def execute(env, prompt: dict, cache: dict | None = None) -> dict:
    """Run an API-format prompt: topological order, one output per node id, links as ["id", index].

    Returns {node id: {"result": tuple, "ui": dict | None}}. `cache` (node id -> (signature, output)) reuses a
    node's output when its inputs and its ancestors did not change, as ComfyUI's output cache does.
    """
    classes = {**core_nodes(env), **env.pack.NODE_CLASS_MAPPINGS}
    outputs, done, signatures = {}, set(), {}
    while len(done) < len(prompt):
        ready = [i for i, n in prompt.items() if i not in done and all(
            v[0] in done for v in n["inputs"].values() if isinstance(v, list))]
        assert ready, "the prompt has a cycle or a dangling link"
        nid = min(ready, key=int)
        spec = prompt[nid]
        cls = classes[spec["class_type"]]
        kwargs, sig = {}, [spec["class_type"]]
        for name, value in spec["inputs"].items():
            if isinstance(value, list):
                kwargs[name] = outputs[value[0]]["result"][value[1]]
                sig.append((name, signatures[value[0]], value[1]))
            else:
                kwargs[name] = value
                sig.append((name, json.dumps(value)))
        if hasattr(cls, "IS_CHANGED"):
            sig.append(("is_changed", str(cls.IS_CHANGED(**{k: v for k, v in spec["inputs"].items()
                                                             if not isinstance(v, list)}))))
        hidden = getattr(cls, "INPUT_TYPES", dict)().get("hidden", {})
        for name, kind in hidden.items():
            if kind == "UNIQUE_ID":
                kwargs[name] = nid
        signatures[nid] = tuple(sig)
        if cache is not None and nid in cache and cache[nid][0] == signatures[nid]:
            outputs[nid] = cache[nid][1]
        else:
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(out, dict):
                outputs[nid] = {"result": tuple(out.get("result", ())), "ui": out.get("ui")}
            else:
                outputs[nid] = {"result": tuple(out), "ui": None}
            if cache is not None:
                cache[nid] = (signatures[nid], outputs[nid])
        done.add(nid)
    return outputs


def api_workflow(name: str, **changes) -> dict:
    """A shipped API workflow on the tiny model with the fast video settings (and any other widget changes)."""
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    for n in prompt.values():
        if n["class_type"] == "PruneVidModelLoader":
            n["inputs"].update(model=TINY, dtype="fp32", device="cpu")
        if n["class_type"] == "PruneVidLoadVideo":
            n["inputs"].update(FAST)
        if n["class_type"] == "PruneVidGenerate":
            n["inputs"].update(max_new_tokens=6)
        for key, value in changes.items():
            if key in n["inputs"] and not isinstance(n["inputs"][key], list):
                n["inputs"][key] = value
    return prompt


def find(prompt, class_type):
    return next(i for i, n in prompt.items() if n["class_type"] == class_type)


# ------------------------------------------------------------------ contract

def test_pack_exports_prefixed_ids_not_in_core(env):
    ids = set(env.pack.NODE_CLASS_MAPPINGS)
    assert {"PruneVidModelLoader", "PruneVidLoadVideo", "PruneVidStage1Merge", "PruneVidStage2Select",
            "PruneVidKVCompress", "PruneVidGenerate"} <= ids
    assert set(env.pack.NODE_DISPLAY_NAME_MAPPINGS) == ids
    assert all(i.startswith("PruneVid") for i in ids)
    if CORE_IDS.exists():
        core = set(CORE_IDS.read_text().split("\n"))
        assert not ids & core


@pytest.mark.parametrize("node_id", ["PruneVidModelLoader", "PruneVidLoadVideo", "PruneVidStage1Merge",
                                     "PruneVidStage2Select", "PruneVidKVCompress", "PruneVidGenerate",
                                     "PruneVidUnloadModel"])
def test_node_contract(env, node_id):
    cls = env.pack.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for group in ("required", "optional"):
        for name, inp in spec.get(group, {}).items():
            assert isinstance(inp, tuple) and 1 <= len(inp) <= 2, (name, inp)
            typ, opts = inp[0], inp[1] if len(inp) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(typ, list):
                assert "default" not in opts or opts["default"] in typ or opts.get("video_upload")
                continue
            if typ in ("INT", "FLOAT") and not opts.get("forceInput"):
                assert opts["min"] <= opts["default"] <= opts["max"], name
            if typ == "BOOLEAN":
                assert isinstance(opts["default"], bool)
            if typ not in CORE_TYPES:
                assert typ.startswith("PRUNEVID_") or typ in FOREIGN_TYPES, typ
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    for typ in cls.RETURN_TYPES:
        assert typ in CORE_TYPES or typ.startswith("PRUNEVID_"), typ
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY == "PruneVid"
    assert len(cls.DESCRIPTION) > 40
    assert cls.__module__.startswith(env.pack.__name__ + ".nodes"), "loaded through the pack, relative imports"


def test_pack_imports_no_comfyui_at_import_time():
    """The library and node modules never import comfy/folder_paths/server at module level."""
    import re
    top_level = re.compile(r"^(from|import)\s+(comfy|folder_paths|server)\b")
    for path in list((PACK_DIR / "nodes").glob("*.py")) + list((PACK_DIR / "prunevid").glob("*.py")):
        for line in path.read_text().splitlines():
            assert not top_level.match(line), f"{path.name}: {line}"


def test_model_combo_lists_llm_folders_and_hub_ids(env):
    choices = env.pack.NODE_CLASS_MAPPINGS["PruneVidModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert TINY in choices and "not-qwen" in choices
    for size in ("3B", "7B", "32B", "72B"):
        assert f"Qwen/Qwen2.5-VL-{size}-Instruct" in choices
    for size in ("2B", "4B", "8B", "32B"):
        assert f"Qwen/Qwen3-VL-{size}-Instruct" in choices
    for size in ("9B", "27B"):                     # listed on 4.57 too: loading refuses there with the version needed
        assert f"Qwen/Qwen3.5-{size}" in choices
    for size in ("30B-A3B", "235B-A22B"):
        assert {f"Qwen/Qwen3-VL-{size}-Instruct", f"Qwen/Qwen3-VL-{size}-Thinking"} <= set(choices)
    tooltip = env.pack.NODE_CLASS_MAPPINGS["PruneVidModelLoader"].INPUT_TYPES()["required"]["model"][1]["tooltip"]
    assert "Qwen2.5-VL 3B ~7.5 GB, 7B ~16.6 GB" in tooltip
    assert "Qwen3-VL-MoE 30B-A3B ~62.1 GB, 30B-A3B-Thinking ~62.1 GB, 235B-A22B ~471 GB" in tooltip
    fp = sys.modules["folder_paths"]
    assert str(env.models / "LLM") in fp.get_folder_paths("LLM")


def test_video_combo_lists_input_videos_with_upload(env):
    combo = env.pack.NODE_CLASS_MAPPINGS["PruneVidLoadVideo"].INPUT_TYPES()["required"]["file"]
    assert "bigbuckbunny.mp4" in combo[0] and combo[1]["video_upload"] is True


# ------------------------------------------------------------------ shared state: one model, one clip, one prefill

@pytest.fixture(scope="module")
def model(env):
    return call(env, "PruneVidModelLoader", model=TINY, dtype="fp32", device="cpu", attention="sdpa",
                keep_loaded=True)[0]


@pytest.fixture(scope="module")
def video(env):
    return call(env, "PruneVidLoadVideo", path="", file="bigbuckbunny.mp4", sampling="uniform", sampling_fps=2.0,
                **FAST)


@pytest.fixture(scope="module")
def tokens(env, model, video):
    return call(env, "PruneVidStage1Merge", model=model, video=video[0], enable=True, tau=0.8, cluster_ratio=0.5,
                temporal_segment_ratio=0.25, dpc_knn_k=7)


@pytest.fixture(scope="module")
def prefill(env, tokens):
    pf, kept_map = call(env, "PruneVidStage2Select", tokens=tokens[0], question="What is the rabbit doing?",
                        system_prompt="You are a helpful assistant.", enable=True, keep_ratio=0.4, pruning_layer=10,
                        attention_aggregation="max")
    return call(env, "PruneVidKVCompress", prefill=pf, enable=True)[0], pf, kept_map


GEN = dict(max_new_tokens=6, do_sample=False, temperature=0.7, top_p=0.9, seed=0)


def test_loader_caches_the_model(env, model):
    again = call(env, "PruneVidModelLoader", model=TINY, dtype="fp32", device="cpu", attention="sdpa",
                 keep_loaded=True)[0]
    assert again is model
    assert model.num_layers == 28


def test_load_video_outputs_clip_and_frames(env, video):
    clip, frames = video
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.float32
    assert frames.shape[0] == clip.frames.shape[0] <= FAST["max_frames"]
    assert frames.shape[1] * frames.shape[2] <= FAST["max_pixels"]
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    assert float(frames.std()) > 0.01, "real content, not a blank image"


def test_load_video_from_path_equals_file(env, video):
    clip = call(env, "PruneVidLoadVideo", path=str(env.inputs / "bigbuckbunny.mp4"), file="", sampling="uniform",
                sampling_fps=2.0, **FAST)[0]
    assert torch.equal(torch.as_tensor(clip.frames), torch.as_tensor(video[0].frames))


def test_load_video_from_core_video_keeps_frame_rate(env):
    core = CoreVideo(str(env.inputs / "bigbuckbunny.mp4"))
    clip, frames = call(env, "PruneVidLoadVideo", path="", file="", sampling="uniform", sampling_fps=2.0,
                        video=core, **FAST)
    assert frames.shape[0] == FAST["max_frames"]
    # 8 frames spread over 132 frames at 25 fps: the sampled rate is far below 25 and carried into Qwen's positions
    assert 0 < clip.fps < 25


def test_load_video_from_images_and_fps(env):
    images = torch.rand(12, 90, 160, 3)
    clip, frames = call(env, "PruneVidLoadVideo", path="", file="", sampling="uniform", sampling_fps=2.0,
                        images=images, fps=12.0, **FAST)
    assert frames.shape[0] == FAST["max_frames"]
    clip_info, _ = call(env, "PruneVidLoadVideo", path="", file="", sampling="uniform", sampling_fps=2.0,
                        images=images, video_info={"loaded_fps": 12.0}, **FAST)
    assert clip_info.fps == pytest.approx(clip.fps)


def test_stage1_output_and_segment_map(env, tokens, video):
    encoded, seg_map = tokens
    assert encoded.merged_tokens < encoded.original_tokens
    assert seg_map.shape == video[1].shape and seg_map.dtype == torch.float32
    assert not torch.equal(seg_map, video[1]), "the map draws over the frames"


def test_stage2_keeps_about_keep_ratio_and_kept_map(env, prefill, tokens):
    _, pf, kept_map = prefill
    s2 = pf.stats["stage2"]
    assert s2["enabled"] and s2["original_tokens"] == tokens[0].merged_tokens
    assert 0 < s2["compressed_tokens"] / s2["original_tokens"] <= 0.4 + 1e-9
    assert kept_map.shape[0] == tokens[1].shape[0]
    # pruned tokens are drawn dimmed: the kept map is darker than the frames overall
    assert float(kept_map.mean()) < float(env.lib("visualize").as_image(tokens[0].items[0].frames).mean())


def test_stage2_retention_widget_is_last_and_zero_means_keep_ratio(env, tokens, prefill):
    """retention is appended after every older widget (saved workflows keep their widget order) and its default 0
    leaves keep_ratio in charge; set, the kept count is the budget's target over both stages."""
    spec = env.pack.NODE_CLASS_MAPPINGS["PruneVidStage2Select"].INPUT_TYPES()
    assert list(spec["optional"]) == ["retention", "coverage"] and spec["optional"]["retention"][1]["default"] == 0.0
    args = dict(tokens=tokens[0], question="What is the rabbit doing?", system_prompt="You are a helpful assistant.",
                enable=True, keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")
    old = prefill[1]
    zero = call(env, "PruneVidStage2Select", **args, retention=0.0)[0]
    assert torch.equal(zero.kept_visual, old.kept_visual)
    budget = call(env, "PruneVidStage2Select", **args, retention=0.05)[0]
    target = max(1, round(0.05 * tokens[0].original_tokens))
    assert budget.kept_visual.numel() == target != old.kept_visual.numel()
    assert budget.stats["stage2"]["target_tokens"] == target


def test_stage2_coverage_widget_comes_after_retention_and_zero_means_attention_only(env, tokens, prefill):
    """coverage is appended after retention (a workflow saved before it gets 0: attention picks every kept token);
    set, that share of the kept tokens is spread evenly over the video instead (1.0: evenly spaced, no attention)."""
    spec = env.pack.NODE_CLASS_MAPPINGS["PruneVidStage2Select"].INPUT_TYPES()
    assert list(spec["optional"])[-1] == "coverage" and spec["optional"]["coverage"][1]["default"] == 0.0
    assert "spread evenly" in spec["optional"]["coverage"][1]["tooltip"]
    args = dict(tokens=tokens[0], question="What is the rabbit doing?", system_prompt="You are a helpful assistant.",
                enable=True, keep_ratio=0.4, pruning_layer=10, attention_aggregation="max", retention=0.05)
    attention = call(env, "PruneVidStage2Select", **args)[0]
    assert torch.equal(call(env, "PruneVidStage2Select", **args, coverage=0.0)[0].kept_visual,
                       attention.kept_visual)
    half = call(env, "PruneVidStage2Select", **args, coverage=0.5)[0]
    T = attention.kept_visual.numel()
    assert half.kept_visual.numel() == T and not torch.equal(half.kept_visual, attention.kept_visual)
    even = call(env, "PruneVidStage2Select", **args, coverage=1.0)[0]
    N = tokens[0].merged_tokens
    assert even.kept_visual.tolist() == env.lib("stage2").spread(torch.arange(N), T).tolist()


def test_kv_compress_returns_new_prefill_and_leaves_input(env, prefill):
    compressed, pf, _ = prefill
    assert compressed is not pf and not pf.compressed and compressed.compressed
    M = pf.pruning_layer
    assert pf.cache.lengths[0] > compressed.cache.lengths[0] == compressed.cache.lengths[M + 1]
    assert compressed.stats["stage3"]["kv_bytes_after"] < compressed.stats["stage3"]["kv_bytes_before"]
    off = call(env, "PruneVidKVCompress", prefill=pf, enable=False)[0]
    assert off is pf


def test_generate_twice_from_one_prefill_is_identical_and_streams(env, rec, prefill):
    pf = prefill[0]
    lengths = list(pf.cache.lengths)
    first = call(env, "PruneVidGenerate", prefill=pf, unique_id="6", **GEN)
    texts, progress = list(rec.texts), list(rec.progress)
    second = call(env, "PruneVidGenerate", prefill=pf, unique_id="6", **GEN)
    assert first[0] == second[0] and first[0].strip()
    assert pf.cache.lengths == lengths, "the prefill's cache is not decoded into"
    assert texts and all(nid == "6" for nid, _ in texts)
    assert texts[-1][1].strip() == first[0]
    assert progress and progress[-1][1] == GEN["max_new_tokens"]
    stats = json.loads(first[1])
    assert stats["stage1"]["enabled"] and stats["stage2"]["enabled"] and stats["stage3"]["enabled"]
    assert stats["timings"]["new_tokens"] >= 1 and stats["timings"]["prefill_s"] > 0
    assert stats["tokens"]["video_after_stage2"] == pf.stats["stage2"]["compressed_tokens"]


def test_generate_shows_answer_on_node(env, prefill):
    cls = env.pack.NODE_CLASS_MAPPINGS["PruneVidGenerate"]
    out = cls().generate(prefill=prefill[0], unique_id="6", **GEN)
    assert out["ui"]["text"] == [out["result"][0]]
    assert out["ui"]["stats"] == [out["result"][1]]          # so /history carries the stats of any workflow


def test_sampling_is_deterministic_per_seed(env, prefill):
    args = dict(GEN, do_sample=True, temperature=1.5, top_p=1.0, max_new_tokens=8)
    a = call(env, "PruneVidGenerate", prefill=prefill[0], **dict(args, seed=1))[0]
    b = call(env, "PruneVidGenerate", prefill=prefill[0], **dict(args, seed=1))[0]
    assert a == b


def test_interrupt_stops_generation(env, rec, prefill):
    pf = prefill[0]
    lengths = list(pf.cache.lengths)
    rec.interrupt_after = 2
    with pytest.raises(Interrupted):
        call(env, "PruneVidGenerate", prefill=pf, unique_id="6", **dict(GEN, max_new_tokens=50))
    assert len(rec.progress) == 2, "stopped at the first check after the flag was raised"
    rec.interrupt_after = None
    assert pf.cache.lengths == lengths
    assert call(env, "PruneVidGenerate", prefill=pf, **GEN)[0], "still usable after an interrupt"


def test_interrupt_stops_prefill(env, rec, tokens):
    rec.interrupt_after = 3
    with pytest.raises(Interrupted):
        call(env, "PruneVidStage2Select", tokens=tokens[0], question="Why?", system_prompt="x", enable=True,
             keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")
    assert len(rec.progress) == 3


def test_stage1_output_is_reused_across_questions(env, tokens):
    """Stage 1 does not depend on the question: two questions from one cached Stage 1 output both work."""
    answers = []
    for q in ("What is the rabbit doing?", "What colour is the sky?"):
        pf = call(env, "PruneVidStage2Select", tokens=tokens[0], question=q, system_prompt="You are helpful.",
                  enable=True, keep_ratio=0.4, pruning_layer=10, attention_aggregation="mean")[0]
        answers.append(call(env, "PruneVidGenerate", prefill=pf, **GEN)[0])
    assert all(answers)


# ------------------------------------------------------------------ video timing: sampling, frame rate, stats

def test_fps_sampling_tooltip_says_what_sampling_does(env):
    tooltip = env.pack.NODE_CLASS_MAPPINGS["PruneVidLoadVideo"].INPUT_TYPES()["required"]["sampling"][1]["tooltip"]
    fps_clause = tooltip.split("fps:", 1)[1]
    assert "evenly" in fps_clause and "whole video" in fps_clause
    # 10 s at 10 fps sampled at 2 fps is 20 frames, over max_frames = 8: 8 of them spread over the whole 10 s,
    # not the first 8 (which would end at 3.5 s)
    clip = call(env, "PruneVidLoadVideo", path="", file="", max_frames=8, sampling="fps", sampling_fps=2.0,
                max_pixels=56 * 56, images=torch.rand(100, 56, 56, 3), fps=10.0)[0]
    assert clip.frames.shape[0] == 8
    assert clip.timestamps[0] == 0 and clip.timestamps[-1] >= 9.0


def test_images_without_a_frame_rate_warn_on_the_node(env, rec):
    images = torch.rand(12, 90, 160, 3)
    args = dict(path="", file="", sampling="uniform", sampling_fps=2.0, images=images, unique_id="4", **FAST)
    out = node(env, "PruneVidLoadVideo").load(**args)
    text, clip = out["ui"]["text"][0], out["result"][0]
    assert "25 fps was assumed" in text and "connect the fps or video_info input" in text
    assert rec.texts == [("4", text)], "shown on the node while the prompt runs, not only in /history"
    assert len(clip.notes) == 1 and "fps or video_info" in clip.notes[0]
    for wired in (dict(fps=12.0), dict(video_info={"loaded_fps": 12.0})):
        out = node(env, "PruneVidLoadVideo").load(**args, **wired)
        assert "warning" not in out["ui"]["text"][0] and not out["result"][0].notes
        assert out["ui"]["text"][0].startswith("8 frames ")


def test_stats_show_the_video_timing_and_notes(env, model):
    clip = call(env, "PruneVidLoadVideo", path="", file="", sampling="uniform", sampling_fps=2.0,
                images=torch.rand(12, 90, 160, 3), **FAST)[0]          # no fps: 25 is assumed, with a note
    enc = call(env, "PruneVidStage1Merge", model=model, video=clip, enable=True, tau=0.8, cluster_ratio=0.5,
               temporal_segment_ratio=0.25, dpc_knn_k=7)[0]
    pf = call(env, "PruneVidStage2Select", tokens=enc, question="What?", system_prompt="x", enable=True,
              keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")[0]
    video = json.loads(call(env, "PruneVidGenerate", prefill=pf, **GEN)[1])["video"]
    assert video["frames"] == clip.frames.shape[0] == FAST["max_frames"]
    assert video["fps"] == pytest.approx(clip.fps) and clip.fps == pytest.approx(7 * 25 / 11)
    assert video["seconds_per_temporal_group"] == pytest.approx(2 / clip.fps)
    assert video["temporal_groups"] == FAST["max_frames"] // 2
    assert video["frame_size"] == [clip.frames.shape[2], clip.frames.shape[1]]
    assert video["notes"] == clip.notes and "fps or video_info" in video["notes"][0]


# ------------------------------------------------------------------ the shipped workflows, executed

def preset_config(env, name):
    return env.lib("config").get_preset(name)


@pytest.mark.parametrize("name", PRESETS)
def test_api_workflow_runs_and_stats_match_preset(env, rec, name):
    prompt = api_workflow(name)
    out = execute(env, prompt)
    gen = find(prompt, "PruneVidGenerate")
    answer, stats_json = out[gen]["result"]
    assert isinstance(answer, str) and answer.strip()
    stats = json.loads(stats_json)
    cfg = preset_config(env, name)
    assert stats["stage1"]["enabled"] == cfg.enable_stage1
    assert stats["stage2"]["enabled"] == cfg.prunes_in_llm
    assert stats["stage3"]["enabled"] == (cfg.enable_cache_compression and cfg.prunes_in_llm)
    n0, n1, n2 = (stats["tokens"][k] for k in ("video_original", "video_after_stage1", "video_after_stage2"))
    assert (n1 < n0) == cfg.enable_stage1
    if cfg.prunes_in_llm and cfg.has_budget:        # the budget sets the count (keep_ratio is not used)
        target = max(1, round(cfg.retention * n0))
        assert n1 > target and n2 == stats["stage2"]["target_tokens"] == target
        assert stats["stage2"]["pruning_layer"] == cfg.pruning_layer
    elif cfg.prunes_in_llm:
        assert 0 < n2 / n1 <= cfg.keep_ratio + 1e-9
        assert n2 / n1 > cfg.keep_ratio - 0.2
        assert stats["stage2"]["pruning_layer"] == cfg.pruning_layer
    else:
        assert n2 == n1
    if stats["stage3"]["enabled"]:
        assert stats["stage3"]["kv_bytes_after"] < stats["stage3"]["kv_bytes_before"]
    else:
        assert stats["stage3"]["kv_bytes_after"] == stats["stage3"]["kv_bytes_before"]
    assert stats["tokens"]["retention"] == pytest.approx(n2 / n0)
    # the preview nodes got their values
    previews = [i for i, n in prompt.items() if n["class_type"] == "PreviewAny"]
    assert {out[i]["ui"]["text"][0] for i in previews} == {answer, stats_json}
    images = [i for i, n in prompt.items() if n["class_type"] == "PreviewImage"]
    assert len(images) == 2 and all(out[i]["ui"]["images"] for i in images)
    assert any(nid == gen for nid, _ in rec.texts), "the answer was streamed to the Generate node"


@pytest.mark.parametrize("name", FAMILY_WORKFLOWS)
def test_a_family_workflow_runs_on_that_family(env, name):
    """The family's workflow on its tiny checkpoint: the answer comes from that family, pruned as its preset says."""
    family, preset = FAMILY_WORKFLOWS[name]
    prompt = api_workflow(name)
    prompt[find(prompt, "PruneVidModelLoader")]["inputs"]["model"] = f"tiny-{family}"
    out = execute(env, prompt)
    answer, stats_json = out[find(prompt, "PruneVidGenerate")]["result"]
    stats, cfg = json.loads(stats_json), preset_config(env, preset)
    from prunevid.families import family as family_class
    assert answer.strip() and stats["family"] == family_class(family).display_name
    assert stats["stage1"]["enabled"] == cfg.enable_stage1 and stats["stage3"]["enabled"]
    assert stats["stage2"]["pruning_layer"] == cfg.pruning_layer
    assert stats["tokens"]["video_after_stage2"] < stats["tokens"]["video_after_stage1"] < stats["tokens"][
        "video_original"]


def test_core_loadvideo_interop_workflow_runs(env):
    prompt = api_workflow("core_loadvideo_interop")
    assert prompt[find(prompt, "PruneVidLoadVideo")]["inputs"]["video"][0] == find(prompt, "LoadVideo")
    out = execute(env, prompt)
    assert out[find(prompt, "PruneVidGenerate")]["result"][0].strip()
    frames = out[find(prompt, "PruneVidLoadVideo")]["result"][1]
    assert frames.shape[0] == FAST["max_frames"]


def test_compare_two_clips_workflow_answers_about_both_videos_in_one_prompt(env):
    prompt = api_workflow("compare_two_clips")
    out = execute(env, prompt)
    gen, s1 = find(prompt, "PruneVidGenerate"), find(prompt, "PruneVidStage1Merge")
    answer, stats_json = out[gen]["result"]
    stats = json.loads(stats_json)
    assert [os.path.basename(v["source"]) for v in stats["videos"]] == ["bigbuckbunny.mp4", "bikes.mp4"]
    encoded = out[s1]["result"][0]
    assert [it.kind for it in encoded.items] == ["video", "video"]
    assert stats["stage2"]["enabled"] and stats["stage3"]["enabled"]
    # the library gives the same answer for the same two clips in one prompt
    lib = env.lib
    clips = [out[i]["result"][0] for i in sorted((i for i, n in prompt.items()
                                                  if n["class_type"] == "PruneVidLoadVideo"), key=int)]
    cfg = lib("config").get_paper_config()
    q = prompt[find(prompt, "PruneVidStage2Select")]["inputs"]["question"]
    pf = lib("stage3").compress(lib("engine").prefill(lib("engine").encode(encoded.model, clips, cfg), q, cfg))
    ref = lib("engine").generate(pf, lib("engine").SamplingParams(max_new_tokens=6))
    assert answer == ref["text"] and answer.strip()
    frames = out[s1]["result"][1]
    assert frames.shape[0] == sum(c.frames.shape[0] for c in clips), "the segment map shows both clips"


def test_cached_rerun_gives_identical_output_and_new_question_reuses_stage1(env):
    cache = {}
    prompt = api_workflow("paper")
    first = execute(env, prompt, cache)
    again = execute(env, prompt, cache)
    s1, gen = find(prompt, "PruneVidStage1Merge"), find(prompt, "PruneVidGenerate")
    assert again[gen]["result"] == first[gen]["result"]
    other = copy.deepcopy(prompt)
    other[find(other, "PruneVidStage2Select")]["inputs"]["question"] = "Is it day or night?"
    third = execute(env, other, cache)
    assert third[s1] is first[s1], "Stage 1's output is reused when only the question changes"
    assert third[gen]["result"][0].strip()


# ------------------------------------------------------------------ bad inputs surface as clear errors

def errors(env):
    return env.lib("errors")


def test_missing_video_path(env):
    with pytest.raises(errors(env).VideoError, match="nope.mp4"):
        call(env, "PruneVidLoadVideo", path="/no/such/dir/nope.mp4", file="", sampling="uniform", sampling_fps=2.0,
             **FAST)
    with pytest.raises(errors(env).VideoError, match="missing.mp4"):
        call(env, "PruneVidLoadVideo", path="", file="missing.mp4", sampling="uniform", sampling_fps=2.0, **FAST)


def test_errors_carry_the_library_name_not_the_pack_folder(env):
    """ComfyUI names an error by its class's module and qualname (/history's exception_type, the log's traceback):
    the pack's copy of the library lives under the folder's path, the name must not."""
    import traceback
    with pytest.raises(errors(env).VideoError) as e:
        call(env, "PruneVidLoadVideo", path="/no/such/dir/nope.mp4", file="", sampling="uniform", sampling_fps=2.0,
             **FAST)
    assert errors(env).__name__ == f"{env.pack.__name__}.prunevid.errors"     # loaded by path, as ComfyUI does
    assert f"{type(e.value).__module__}.{type(e.value).__qualname__}" == "prunevid.errors.VideoError"
    assert traceback.format_exception_only(e.value)[-1].startswith("prunevid.errors.VideoError: ")
    hub = env.lib("hub")
    assert hub.HubUnreachable.__module__ == "prunevid.hub" and issubclass(hub.HubUnreachable, errors(env).ModelError)
    for name in ("PruneVidError", "ConfigError", "ModelError", "BudgetError", "InputError"):
        assert getattr(errors(env), name).__module__ == "prunevid.errors", name


def test_over_budget_file_fails_before_it_is_decoded(env, monkeypatch):
    decoded = []
    video_mod = env.lib("video")
    real_decode = video_mod._decode

    def spy(*a):
        for frame in real_decode(*a):
            decoded.append(frame.pts)
            yield frame
    monkeypatch.setattr(video_mod, "_decode", spy)
    with pytest.raises(errors(env).BudgetError, match="max_video_tokens=16384"):
        call(env, "PruneVidLoadVideo", path="", file="bigbuckbunny.mp4", sampling="uniform", sampling_fps=2.0,
             max_frames=1024, max_pixels=1280 * 720)
    assert decoded == []                                  # not one frame decoded


def test_corrupt_video_file(env):
    with pytest.raises(errors(env).VideoError, match="corrupt.mp4"):
        call(env, "PruneVidLoadVideo", path="", file="corrupt.mp4", sampling="uniform", sampling_fps=2.0, **FAST)


def test_model_folder_that_is_not_qwen(env):
    with pytest.raises(errors(env).ModelError, match="not a checkpoint of a supported family.*llama"):
        call(env, "PruneVidModelLoader", model="not-qwen", dtype="auto", device="cpu", attention="sdpa",
             keep_loaded=True)
    with pytest.raises(errors(env).ModelError, match="does not exist"):
        call(env, "PruneVidModelLoader", model="no-such-model", dtype="auto", device="cpu", attention="sdpa",
             keep_loaded=True)


def test_empty_question(env, tokens):
    with pytest.raises(errors(env).InputError, match="question is empty"):
        call(env, "PruneVidStage2Select", tokens=tokens[0], question="  \n", system_prompt="x", enable=True,
             keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")


@pytest.mark.parametrize("node_id, bad, field", [
    ("PruneVidStage1Merge", {"tau": 1.5}, "tau"),
    ("PruneVidStage1Merge", {"cluster_ratio": 0.0}, "cluster_ratio"),
    ("PruneVidStage2Select", {"keep_ratio": 1.5}, "keep_ratio"),
    ("PruneVidStage2Select", {"pruning_layer": 28}, "pruning_layer"),
    ("PruneVidStage2Select", {"attention_aggregation": "median"}, "attention_aggregation"),
    ("PruneVidStage2Select", {"retention": 1.5}, "retention"),
    ("PruneVidStage2Select", {"coverage": -0.5}, "coverage"),
    ("PruneVidGenerate", {"top_p": 0.0}, "top_p"),
    ("PruneVidGenerate", {"max_new_tokens": 0}, "max_new_tokens"),
    ("PruneVidLoadVideo", {"max_frames": 1}, "max_frames"),
    ("PruneVidLoadVideo", {"sampling": "random"}, "sampling"),
])
def test_out_of_range_parameter_names_the_field(env, model, video, tokens, prefill, node_id, bad, field):
    base = {
        "PruneVidStage1Merge": dict(model=model, video=video[0], enable=True, tau=0.8, cluster_ratio=0.5,
                                    temporal_segment_ratio=0.25, dpc_knn_k=7),
        "PruneVidStage2Select": dict(tokens=tokens[0], question="What?", system_prompt="x", enable=True,
                                     keep_ratio=0.4, pruning_layer=10, attention_aggregation="max"),
        "PruneVidGenerate": dict(prefill=prefill[0], **GEN),
        "PruneVidLoadVideo": dict(path="", file="bigbuckbunny.mp4", sampling="uniform", sampling_fps=2.0, **FAST),
    }[node_id]
    with pytest.raises(errors(env).PruneVidError, match=field):
        call(env, node_id, **{**base, **bad})


def test_model_tooltip_gives_each_hub_download_size(env):
    tooltip = env.pack.NODE_CLASS_MAPPINGS["PruneVidModelLoader"].INPUT_TYPES()["required"]["model"][1]["tooltip"]
    assert "approximate" in tooltip
    for size, gb in (("3B", "7.5"), ("7B", "16.6"), ("32B", "67"), ("72B", "147")):
        assert f"{size} ~{gb} GB" in tooltip
    assert "Qwen3-VL 2B ~4.3 GB, 4B ~8.9 GB, 8B ~17.5 GB, 32B ~66.8 GB" in tooltip


def test_offline_hub_model_error_says_where_to_put_the_model(env, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))          # nothing cached
    with pytest.raises(errors(env).ModelError) as e:
        call(env, "PruneVidModelLoader", model="Qwen/Qwen2.5-VL-3B-Instruct", dtype="auto", device="cpu",
             attention="sdpa", keep_loaded=True)
    message = str(e.value)
    assert str(env.models / "LLM" / "Qwen2.5-VL-3B-Instruct") in message and "pick it in the model list" in message
    assert "model_path" not in message and "\n" not in message


def test_loader_downloads_a_hub_model_with_bytes_on_its_progress_bar(env, rec, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    with FakeHub(tiny_model_dir) as hub:
        hub.use(monkeypatch, tmp_path / "hf")
        qm = call(env, "PruneVidModelLoader", model=hub.repo_id, dtype="fp32", device="cpu", attention="eager",
                  keep_loaded=True)[0]
    try:
        assert qm.name == hub.repo_id and qm.num_layers == 28
        assert rec.progress and {total for _, total in rec.progress} == {hub.total_bytes}
        assert rec.progress[-1] == (hub.total_bytes, hub.total_bytes)
        assert [p for _, p in hub.served if p.endswith("/model.safetensors")], "the weights came from the hub"
    finally:
        env.nodes("model").unload(qm)


# ------------------------------------------------------------------ model lifetime (last: these unload models)

def test_keep_loaded_off_unloads_after_generate_and_reloads(env, video):
    loader = env.pack.NODE_CLASS_MAPPINGS["PruneVidModelLoader"]
    args = dict(model=TINY, dtype="fp32", device="cpu", attention="eager", keep_loaded=False)
    before = loader.IS_CHANGED(**args)
    qm = call(env, "PruneVidModelLoader", **args)[0]
    enc = call(env, "PruneVidStage1Merge", model=qm, video=video[0], enable=True, tau=0.8, cluster_ratio=0.5,
               temporal_segment_ratio=0.25, dpc_knn_k=7)[0]
    pf = call(env, "PruneVidStage2Select", tokens=enc, question="What?", system_prompt="x", enable=True,
              keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")[0]
    assert call(env, "PruneVidGenerate", prefill=pf, **GEN)[0]
    assert all(p.is_meta for p in qm.model.parameters()), "weights freed even though the prefill still refers to it"
    assert loader.IS_CHANGED(**args) != before, "ComfyUI will run the loader again"
    with pytest.raises(env.lib("errors").ModelError, match="unloaded"):
        call(env, "PruneVidGenerate", prefill=pf, **GEN)
    fresh = call(env, "PruneVidModelLoader", **args)[0]
    assert fresh is not qm and not any(p.is_meta for p in fresh.model.parameters())
    env.nodes("model").unload(fresh)


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_loader_makes_room_shows_its_size_and_free_releases_it(env, video, tiny_model_dir, quantization):
    pytest.importorskip("bitsandbytes")
    from conftest import live_tensor_bytes
    quantize = env.lib("quantize")
    args = dict(model=TINY, dtype="fp32", device="cpu", attention="sdpa", keep_loaded=True, quantization=quantization)
    before = live_tensor_bytes()
    env.mm.free_requests.clear()
    out = node(env, "PruneVidModelLoader").load(**args)
    qm = out["result"][0]
    expected = quantize.estimate_weight_bytes(json.loads((tiny_model_dir / "config.json").read_text()), quantization,
                                              torch.float32)
    assert env.mm.free_requests == [(expected, torch.device("cpu"))], "ComfyUI was asked for room first"
    assert expected == sum(qm.weight_bytes.values())
    assert f"({quantization}) on cpu" in out["ui"]["text"][0] and "Weights: 1." in out["ui"]["text"][0]
    assert qm.quantization == quantization and call(env, "PruneVidModelLoader", **args)[0] is qm
    enc = call(env, "PruneVidStage1Merge", model=qm, video=video[0], enable=True, tau=0.8, cluster_ratio=0.5,
               temporal_segment_ratio=0.25, dpc_knn_k=7)[0]
    pf = call(env, "PruneVidStage2Select", tokens=enc, question="What?", system_prompt="x", enable=True,
              keep_ratio=0.4, pruning_layer=10, attention_aggregation="max")[0]
    report = json.loads(call(env, "PruneVidGenerate", prefill=pf, **GEN)[1])
    assert report["weights"] == {"quantization": quantization, "bytes": expected, "by_device": {"cpu": expected}}
    del enc, pf                      # their KV cache and frames are not the model's
    loaded = live_tensor_bytes()
    env.mm.unload_all_models()       # what POST /free {"unload_models": true} calls
    assert all(p.is_meta for p in qm.model.parameters())
    assert live_tensor_bytes() - before <= 0.1 * (loaded - before), "the quantised weights are really freed"


def test_unload_node_and_comfyui_free_release_the_model(env):
    args = dict(model=TINY, dtype="fp32", device="cpu", attention="eager", keep_loaded=True)
    qm = call(env, "PruneVidModelLoader", **args)[0]
    unload = env.pack.NODE_CLASS_MAPPINGS["PruneVidUnloadModel"]
    out = unload().unload(model=qm, after="an answer")
    assert "unloaded" in out["ui"]["text"][0]
    assert all(p.is_meta for p in qm.model.parameters())
    qm2 = call(env, "PruneVidModelLoader", **args)[0]
    assert qm2 is not qm
    env.mm.unload_all_models()       # what POST /free {"unload_models": true} calls
    assert env.mm.unloaded_core >= 1, "ComfyUI's own unload still runs"
    assert all(p.is_meta for p in qm2.model.parameters())
    assert all(v is not qm2 for v in env.nodes("model")._LOADED.values())
