"""Generate the shipped workflows from the node definitions, so widget order always matches INPUT_TYPES.

    python workflows/make_workflows.py          # rewrite workflows/*.json and workflows/api/*.json
    python workflows/make_workflows.py --check  # exit 1 if a committed file differs from what would be written

One UI-format workflow per preset (the same graph, different widget values), the same graphs in API format
(for POST /prompt), core_loadvideo_interop: core Load Video feeding PruneVid Load Video's VIDEO input,
compare_two_clips: two Load Video nodes feeding one Stage 1 Merge (video, video_2), one question about both, and
one paper-preset workflow per further model family (FAMILY_WORKFLOWS: the same graph with that family's model).

UI-format rules the frontend follows (and these files therefore follow):
- widgets_values lists the widget inputs in order: required, then optional; socket-only inputs (custom types,
  forceInput) have no value;
- a required combo with video_upload/image_upload gets an upload button whose value ("image") is saved after the
  last required input (the frontend appends an `upload` input to the required ones);
- an INT named seed (or with control_after_generate) is followed by its control value ("fixed").
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACK_DIR = HERE.parent
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_FLAGS = ("video_upload", "image_upload", "animated_image_upload")

SAMPLE_VIDEO = "bigbuckbunny.mp4"
SECOND_VIDEO = "bikes.mp4"
QUESTION = "What happens in this video? Describe the main events in order."
COMPARE_QUESTION = ("What changed between the two clips? Describe the first clip, then the second, then how they "
                    "differ.")

PRESET_ORDER = ("paper", "baseline", "conservative", "aggressive", "stage1_only", "stage2_only",
                "no_cache_compression")
PRESET_NOTES = {
    "paper": "PAPER preset: the setting recommended by the PruneVid paper (ACL 2025 Findings). Stage 1 merges "
             "static tokens over time (tau 0.8) and clusters the rest (cluster_ratio 0.5); Stage 2 keeps the 40% "
             "of video tokens the question attends to most at layer 10; Stage 3 drops the pruned tokens from the "
             "KV cache of layers 0-10.",
    "baseline": "BASELINE preset: no pruning at all (all three stages off). Every video token goes through every "
                "layer: the reference the other presets are compared with (slowest, most memory).",
    "conservative": "CONSERVATIVE preset. Careful: the name comes from the original code base and means HIGH "
                    "compression: fewer tokens (tau 0.75, cluster_ratio 0.4, keep_ratio 0.3), faster, accuracy "
                    "slightly lower than the paper preset.",
    "aggressive": "AGGRESSIVE preset. Careful: the name comes from the original code base and means LOW "
                  "compression: more tokens kept (tau 0.9, cluster_ratio 0.7, keep_ratio 0.6), more accurate, "
                  "medium speed.",
    "stage1_only": "STAGE1_ONLY ablation: only the spatial-temporal merging (Stage 1). Stage 2 selection and "
                   "Stage 3 cache compression are off.",
    "stage2_only": "STAGE2_ONLY ablation: no merging (Stage 1 off); Stage 2 keeps 40% of the unmerged video tokens "
                   "after layer 10 and Stage 3 compresses the cache accordingly.",
    "no_cache_compression": "NO_CACHE_COMPRESSION ablation: Stages 1 and 2 as in the paper preset, but layers 0-10 "
                            "keep their full KV cache (Stage 3 off): same answer path, more decoding memory.",
    "core_loadvideo_interop": "CORE LOAD VIDEO interop (paper preset): the core Load Video node's VIDEO output "
                              "feeds PruneVid Load Video's optional video input, which then samples its frames "
                              "(the file widget of PruneVid Load Video is ignored).",
    "compare_two_clips": "COMPARE TWO CLIPS (paper preset): two PruneVid Load Video nodes feed Stage 1 Merge's "
                         "`video` and its optional `video_2` input, so one prompt holds both clips, in that order, "
                         "for one question. Each clip keeps its own time positions (Qwen2.5-VL's multi-video "
                         "layout) and is merged by Stage 1 on its own; Stage 2 keeps the tokens the question "
                         "attends to most across both. Stage 1 Merge also has video_3 and video_4 for more clips.",
    "qwen3_vl_paper": "QWEN3-VL, PAPER preset: the paper preset's graph and values on Qwen/Qwen3-VL-8B-Instruct "
                      "(any Qwen3-VL folder or hub id works in the loader). Qwen3-VL writes each pair of frames as "
                      "its own block after a `<t seconds>` timestamp and adds DeepStack features after its first "
                      "LLM layers: Stage 1 merges those features with the same clusters as the tokens, and every "
                      "kept token keeps its own position. Stage 2 selects after layer 10 of the 8B's 36 (the same "
                      "layer index on every model; set pruning_layer to about 11 to keep the paper's relative "
                      "depth). Load Video reads frames on a 28-px grid; they are resized to Qwen3-VL's 32-px grid.",
}
# further families' paper-preset workflows: name -> the model the loader starts with
FAMILY_WORKFLOWS = {"qwen3_vl_paper": "Qwen/Qwen3-VL-8B-Instruct"}
USAGE_NOTE = ("\n\nHow to run: upload a video with the upload button of PruneVid Load Video (or type a server path), "
              "pick the model (a hub id downloads on first use unless a copy is in models/LLM), type your question "
              "in Stage 2 Select, press Run. The answer and the per-stage token counts appear on the right; the two "
              "image previews show the Stage 1 segments / static tokens and the tokens Stage 2 kept.")


# ------------------------------------------------------------------ loading the pack the way ComfyUI does

def load_pack(pack_dir: Path = PACK_DIR):
    """Import the pack as a package named after its folder path (ComfyUI's way), return the module."""
    name = str(pack_dir).replace(".", "_x_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"),
                                                  submodule_search_locations=[str(pack_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# ------------------------------------------------------------------ node definitions (pack + core stand-ins)

def core_definitions() -> dict:
    """The core nodes the workflows use, as far as the files need them (inputs as INPUT_TYPES, outputs)."""
    return {
        "PreviewAny": {"input": {"required": {"source": ("*", {})}}, "output": [("STRING", "STRING")]},
        "PreviewImage": {"input": {"required": {"images": ("IMAGE", {})}}, "output": []},
        "LoadVideo": {"input": {"required": {"file": ([SAMPLE_VIDEO], {"video_upload": True})}},
                      "output": [("VIDEO", "VIDEO")]},
    }


def definitions(pack) -> dict:
    out = core_definitions()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        outputs = list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES, strict=True))
        out[node_id] = {"input": cls.INPUT_TYPES(), "output": outputs}
    return out


def input_kind(spec) -> str:
    """'widget' or 'socket' for an INPUT_TYPES entry."""
    typ, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    if isinstance(typ, (list, tuple)):
        return "widget"
    if typ in WIDGET_TYPES and not opts.get("forceInput"):
        return "widget"
    return "socket"


def input_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def widget_slots(definition) -> list:
    """The UI widgets_values layout: [(input name or None, kind)] with kind 'value', 'upload' or 'control'."""
    slots, req, opt = [], definition["input"].get("required", {}), definition["input"].get("optional", {})
    has_upload = any(input_kind(s) == "widget" and any((s[1] or {}).get(f) for f in UPLOAD_FLAGS)
                     for s in req.values() if len(s) > 1)
    for group, specs in (("required", req), ("optional", opt)):
        for name, spec in specs.items():
            if input_kind(spec) != "widget":
                continue
            slots.append((name, "value"))
            opts = spec[1] if len(spec) > 1 else {}
            if input_type(spec) == "INT" and (name in SEED_NAMES or opts.get("control_after_generate")):
                slots.append((name, "control"))
        if group == "required" and has_upload:
            slots.append((None, "upload"))
    return slots


def socket_inputs(definition) -> list:
    """[(name, type)] of the inputs that take links, required then optional."""
    out = []
    for group in ("required", "optional"):
        for name, spec in definition["input"].get(group, {}).items():
            if input_kind(spec) == "socket":
                out.append((name, input_type(spec)))
    return out


# ------------------------------------------------------------------ the graph

class Graph:
    def __init__(self, defs):
        self.defs, self.nodes, self.links = defs, [], []

    def add(self, node_id: int, type_: str, pos, size, values: dict | None = None, title: str | None = None):
        self.nodes.append({"id": node_id, "type": type_, "pos": list(pos), "size": list(size), "values": values or {},
                           "title": title, "links_in": {}})
        return node_id

    def connect(self, src: int, slot: int, dst: int, input_name: str):
        self.node(dst)["links_in"][input_name] = (src, slot)

    def node(self, node_id):
        return next(n for n in self.nodes if n["id"] == node_id)

    def order(self) -> list:
        """Node ids in a topological order (ties by id)."""
        done, out = set(), []
        while len(out) < len(self.nodes):
            for n in sorted(self.nodes, key=lambda n: n["id"]):
                if n["id"] not in done and all(s in done for s, _ in n["links_in"].values()):
                    done.add(n["id"])
                    out.append(n["id"])
                    break
        return out

    # -- UI format
    def ui(self, note: str | None = None, note_pos=(0, 820)) -> dict:
        order = {nid: i for i, nid in enumerate(self.order())}
        links, link_id = [], 0
        ui_nodes = {}
        for n in self.nodes:
            d = self.defs[n["type"]]
            inputs = [{"name": name, "type": typ, "link": None} for name, typ in socket_inputs(d)]
            outputs = [{"name": name, "type": typ, "links": None, "slot_index": i}
                       for i, (name, typ) in enumerate(d["output"])]
            values = []
            for name, kind in widget_slots(d):
                values.append("image" if kind == "upload" else "fixed" if kind == "control" else n["values"][name])
            node = {"id": n["id"], "type": n["type"], "pos": n["pos"], "size": n["size"], "flags": {},
                    "order": order[n["id"]], "mode": 0, "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": n["type"]}, "widgets_values": values}
            if n["title"]:
                node["title"] = n["title"]
            ui_nodes[n["id"]] = node
        for n in sorted(self.nodes, key=lambda n: n["id"]):
            for name, (src, slot) in n["links_in"].items():
                link_id += 1
                dst_inputs = ui_nodes[n["id"]]["inputs"]
                to_slot = next(i for i, inp in enumerate(dst_inputs) if inp["name"] == name)
                typ = ui_nodes[src]["outputs"][slot]["type"]
                dst_inputs[to_slot]["link"] = link_id
                out = ui_nodes[src]["outputs"][slot]
                out["links"] = (out["links"] or []) + [link_id]
                links.append([link_id, src, slot, n["id"], to_slot, typ])
        nodes = [ui_nodes[n["id"]] for n in self.nodes]
        last_id = max(n["id"] for n in self.nodes)
        if note is not None:
            last_id += 1
            nodes.append({"id": last_id, "type": "Note", "pos": list(note_pos), "size": [400, 260], "flags": {},
                          "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                          "properties": {"text": ""}, "widgets_values": [note], "title": "About this workflow",
                          "color": "#432", "bgcolor": "#653"})
        return {"last_node_id": last_id, "last_link_id": link_id, "nodes": nodes, "links": links, "groups": [],
                "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [80, 120]}}, "version": 0.4}

    # -- API format
    def api(self) -> dict:
        out = {}
        for nid in self.order():
            n = self.node(nid)
            d = self.defs[n["type"]]
            inputs = {}
            for name, kind in widget_slots(d):
                if kind == "value" and name not in n["links_in"]:
                    inputs[name] = n["values"][name]
            for name, _ in socket_inputs(d):
                if name in n["links_in"]:
                    src, slot = n["links_in"][name]
                    inputs[name] = [str(src), slot]
            out[str(nid)] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n["title"] or n["type"]}}
        return out


def preset_graph(defs, cfg, model_name: str | None = None, with_core_loadvideo: bool = False) -> Graph:
    """The one graph every preset shares, with cfg's values in the widgets."""
    from_pack = defs["PruneVidModelLoader"]["input"]["required"]["model"][1]["default"]
    g = Graph(defs)
    g.add(1, "PruneVidModelLoader", (0, 0), (380, 180), {
        "model": model_name or from_pack, "dtype": "auto", "device": "auto", "attention": "sdpa",
        "keep_loaded": True, "quantization": "none", "device_map": "none"}, "Model")
    g.add(2, "PruneVidLoadVideo", (0, 230), (380, 540), {
        "path": "", "max_frames": cfg.max_frames, "sampling": cfg.video_sampling, "sampling_fps": cfg.sampling_fps,
        "max_pixels": cfg.max_pixels, "file": SAMPLE_VIDEO}, "Video")
    g.add(3, "PruneVidStage1Merge", (430, 0), (360, 230), {
        "enable": cfg.enable_stage1, "tau": cfg.tau, "cluster_ratio": cfg.cluster_ratio,
        "temporal_segment_ratio": cfg.temporal_segment_ratio, "dpc_knn_k": cfg.dpc_knn_k}, "Stage 1: merge")
    g.add(4, "PruneVidStage2Select", (840, 0), (380, 380), {
        "question": QUESTION, "system_prompt": defs["PruneVidStage2Select"]["input"]["required"]["system_prompt"][1]
        ["default"], "enable": cfg.enable_stage2, "keep_ratio": cfg.keep_ratio, "pruning_layer": cfg.pruning_layer,
        "attention_aggregation": cfg.attention_aggregation, "retention": cfg.retention}, "Stage 2: select (question)")
    g.add(5, "PruneVidKVCompress", (1270, 0), (300, 80), {"enable": cfg.enable_cache_compression},
          "Stage 3: KV compress")
    g.add(6, "PruneVidGenerate", (1270, 130), (300, 230), {
        "max_new_tokens": 128, "do_sample": False, "temperature": 0.7, "top_p": 0.9, "seed": 0}, "Generate")
    g.add(7, "PreviewAny", (1620, 0), (420, 220), title="Answer")
    g.add(8, "PreviewAny", (1620, 270), (420, 420), title="Pruning stats")
    g.add(9, "PreviewImage", (430, 280), (360, 380), title="Stage 1: segments (bar), static tokens (grey)")
    g.add(10, "PreviewImage", (840, 430), (380, 380), title="Stage 2: kept tokens (pruned dimmed red)")
    g.connect(1, 0, 3, "model")
    g.connect(2, 0, 3, "video")
    g.connect(3, 0, 4, "tokens")
    g.connect(4, 0, 5, "prefill")
    g.connect(5, 0, 6, "prefill")
    g.connect(6, 0, 7, "source")
    g.connect(6, 1, 8, "source")
    g.connect(3, 1, 9, "images")
    g.connect(4, 1, 10, "images")
    if with_core_loadvideo:
        g.node(2)["pos"] = [0, 690]
        g.add(11, "LoadVideo", (0, 230), (380, 410), {"file": SAMPLE_VIDEO}, "Load Video (core)")
        g.connect(11, 0, 2, "video")
    return g

COMPARE_USAGE_NOTE = ("\n\nHow to run: upload one clip in each PruneVid Load Video (Video 1, Video 2), pick the "
                      "model, adjust the question in Stage 2 Select, press Run. The answer and the stats (with one "
                      "entry per video under `videos`) appear on the right; the previews show both clips' frames "
                      "one after the other.")


def compare_graph(defs, cfg) -> Graph:
    """The preset graph with a second Load Video wired into Stage 1 Merge's video_2 input."""
    g = preset_graph(defs, cfg)
    first = g.node(2)
    first["title"] = "Video 1"
    g.add(11, "PruneVidLoadVideo", (0, 820), tuple(first["size"]), {**first["values"], "file": SECOND_VIDEO},
          "Video 2")
    g.connect(11, 0, 3, "video_2")
    g.node(4)["values"]["question"] = COMPARE_QUESTION
    return g


def build_all(pack=None) -> dict:
    """{relative path: JSON object} of every workflow file."""
    pack = pack or load_pack()
    config = sys.modules[pack.__name__ + ".prunevid.config"]
    defs = definitions(pack)
    files = {}
    for name in PRESET_ORDER:
        g = preset_graph(defs, config.get_preset(name))
        files[f"{name}.json"] = g.ui(PRESET_NOTES[name] + USAGE_NOTE)
        files[f"api/{name}.json"] = g.api()
    g = preset_graph(defs, config.get_preset("paper"), with_core_loadvideo=True)
    files["core_loadvideo_interop.json"] = g.ui(PRESET_NOTES["core_loadvideo_interop"] + USAGE_NOTE, (0, 1280))
    files["api/core_loadvideo_interop.json"] = g.api()
    g = compare_graph(defs, config.get_preset("paper"))
    files["compare_two_clips.json"] = g.ui(PRESET_NOTES["compare_two_clips"] + COMPARE_USAGE_NOTE, (0, 1410))
    files["api/compare_two_clips.json"] = g.api()
    for name, model_name in FAMILY_WORKFLOWS.items():
        g = preset_graph(defs, config.get_preset("paper"), model_name=model_name)
        files[f"{name}.json"] = g.ui(PRESET_NOTES[name] + USAGE_NOTE)
        files[f"api/{name}.json"] = g.api()
    return files


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = ap.parse_args(argv)
    stale = []
    for rel, obj in build_all().items():
        path = HERE / rel
        text = dumps(obj)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run python workflows/make_workflows.py):", ", ".join(stale))
        return 1
    print(("would rewrite " if args.check else "wrote ") + (", ".join(stale) if stale else "nothing (up to date)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
