"""The shipped workflows: generated from the node definitions, valid for ComfyUI, UI and API formats agree.

The checks re-derive ComfyUI's rules here (they do not trust the generator): widget order = required then
optional widget inputs, an upload button value after the required inputs when a combo has video_upload, a control
value after an INT named seed; links join equal types; values within min/max and combo lists.
"""
from __future__ import annotations

import json
import sys

import pytest

from conftest import PACK_DIR, load_pack, make_workflows
WORKFLOWS = PACK_DIR / "workflows"
CORE_IDS = PACK_DIR.parent / "shared" / "data" / "comfyui-core-node-ids.txt"
PRESETS = ("paper", "baseline", "conservative", "aggressive", "stage1_only", "stage2_only", "no_cache_compression")
FAMILY_WORKFLOWS = {"qwen3_vl_paper": ("paper", "Qwen/Qwen3-VL-8B-Instruct")}   # name -> (preset, loader's model)
NAMES = PRESETS + ("core_loadvideo_interop", "compare_two_clips") + tuple(FAMILY_WORKFLOWS)
VIRTUAL = {"Note", "MarkdownNote"}          # frontend-only nodes: in the UI file, never in the API prompt
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}

# the core nodes the workflows use, as ComfyUI declares them (checked against ComfyUI 0.33+)
CORE = {
    "PreviewAny": {"input": {"required": {"source": ("*", {})}}, "output": ["STRING"], "output_node": True},
    "PreviewImage": {"input": {"required": {"images": ("IMAGE", {})}}, "output": [], "output_node": True},
    "LoadVideo": {"input": {"required": {"file": (None, {"video_upload": True})}}, "output": ["VIDEO"],
                  "output_node": False},
}


@pytest.fixture(scope="module")
def pack():
    return load_pack()


@pytest.fixture(scope="module")
def defs(pack):
    out = dict(CORE)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        out[node_id] = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)), "cls": cls}
    return out


def ui(name):
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def api(name):
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def is_widget(spec):
    typ, opts = spec[0], spec[1] if len(spec) > 1 else {}
    return typ is None or isinstance(typ, (list, tuple)) or (typ in ("INT", "FLOAT", "STRING", "BOOLEAN")
                                                             and not opts.get("forceInput"))


def widgets(d):
    """[(name, spec, kind)] in the order widgets_values stores them."""
    out = []
    req, opt = d["input"].get("required", {}), d["input"].get("optional", {})
    for group in (req, opt):
        for name, spec in group.items():
            if is_widget(spec):
                out.append((name, spec, "value"))
                if spec[0] == "INT" and name == "seed":
                    out.append((name, spec, "control"))
        if group is req and any(len(s) > 1 and (s[1] or {}).get("video_upload") for s in req.values()):
            out.append(("upload", None, "upload"))
    return out


def sockets(d):
    out = {}
    for group in ("required", "optional"):
        for name, spec in d["input"].get(group, {}).items():
            if not is_widget(spec):
                out[name] = spec[0]
    return out


def skips_list_check(d, name):
    """VALIDATE_INPUTS naming an input switches off ComfyUI's own list/range check for it."""
    cls = d.get("cls")
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    return fn is not None and name in fn.__code__.co_varnames[:fn.__code__.co_argcount]


def check_value(node_type, d, name, spec, value):
    typ, opts = spec[0], spec[1] if len(spec) > 1 else {}
    where = f"{node_type}.{name}={value!r}"
    if isinstance(typ, (list, tuple)):
        assert isinstance(value, str), where
        if not skips_list_check(d, name):
            assert value in typ, where
    elif typ is None:
        assert isinstance(value, str), where
    elif typ == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", -2**63) <= value <= opts.get("max", 2**64), where
    elif typ == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts.get("min", float("-inf")) <= value <= opts.get("max", float("inf")), where
    elif typ == "BOOLEAN":
        assert isinstance(value, bool), where
    elif typ == "STRING":
        assert isinstance(value, str), where


def test_workflows_are_up_to_date_with_the_generator(pack):
    gen = make_workflows
    files = gen.build_all(pack)
    expected = {f"{n}.json" for n in NAMES} | {f"api/{n}.json" for n in NAMES}
    assert set(files) == expected
    for rel, obj in files.items():
        assert (WORKFLOWS / rel).read_text() == gen.dumps(obj), f"{rel} is stale: run workflows/make_workflows.py"
    on_disk = {p.name for p in WORKFLOWS.glob("*.json")}
    assert on_disk == {f"{n}.json" for n in NAMES}, "only generated workflows in workflows/ (ComfyUI lists them)"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_is_valid(defs, name):
    wf = ui(name)
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    core = set(CORE_IDS.read_text().split("\n")) if CORE_IDS.exists() else None
    for n in wf["nodes"]:
        t = n["type"]
        if t in VIRTUAL:
            assert n["widgets_values"] and isinstance(n["widgets_values"][0], str)
            continue
        assert t in defs, f"unknown node type {t}"
        if core is not None and t in CORE:
            assert t in core, f"{t} is not a core node"
        d = defs[t]
        slots = widgets(d)
        assert len(n["widgets_values"]) == len(slots), f"{name}: {t} has {len(n['widgets_values'])} widget values"
        for (wname, spec, kind), value in zip(slots, n["widgets_values"], strict=True):
            if kind == "control":
                assert value in CONTROL_VALUES
            elif kind == "upload":
                assert value == "image"
            else:
                check_value(t, d, wname, spec, value)
        assert [i["name"] for i in n["inputs"]] == list(sockets(d)), f"{t} socket inputs"
        assert [o["type"] for o in n["outputs"]] == list(d["output"])
    ids = set()
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        ids.add(link_id)
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert out["type"] == typ and link_id in out["links"]
        assert inp["link"] == link_id
        assert inp["type"] in (typ, "*"), f"{name}: link {link_id} joins {typ} to {inp['type']}"
    assert len(ids) == len(wf["links"]) and wf["last_link_id"] >= max(ids)
    for n in wf["nodes"]:
        for i in n.get("inputs", []):
            assert i["link"] is None or i["link"] in ids
    assert sum(n["type"] in VIRTUAL for n in wf["nodes"]) == 1, "one Note per workflow"


@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_is_valid(defs, name):
    prompt = api(name)
    assert any(defs[n["class_type"]]["output_node"] for n in prompt.values())
    for n in prompt.values():
        t = n["class_type"]
        assert t in defs and t not in VIRTUAL
        d = defs[t]
        wmap = {w: spec for w, spec, kind in widgets(d) if kind == "value"}
        smap = sockets(d)
        for req_name in d["input"]["required"]:
            assert req_name in n["inputs"], f"{name}: {t} lacks required input {req_name}"
        for key, value in n["inputs"].items():
            if isinstance(value, list):
                src, slot = value
                assert src in prompt, f"dangling link {value}"
                out_type = defs[prompt[src]["class_type"]]["output"][slot]
                want = smap.get(key) or (wmap[key][0] if key in wmap else None)
                assert want in (out_type, "*"), f"{name}: {t}.{key} ({want}) fed by {out_type}"
            else:
                assert key in wmap, f"{t}.{key} is not a widget"
                check_value(t, d, key, wmap[key], value)


@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_describe_the_same_graph(defs, name):
    wf, prompt = ui(name), api(name)
    nodes = {str(n["id"]): n for n in wf["nodes"] if n["type"] not in VIRTUAL}
    assert set(nodes) == set(prompt)
    links = {lnk[0]: lnk for lnk in wf["links"]}
    for nid, n in nodes.items():
        assert prompt[nid]["class_type"] == n["type"]
        d = defs[n["type"]]
        api_widgets = {k: v for k, v in prompt[nid]["inputs"].items() if not isinstance(v, list)}
        ui_widgets = {w: v for (w, _, kind), v in zip(widgets(d), n["widgets_values"], strict=True) if kind == "value"}
        assert api_widgets == ui_widgets, n["type"]
        api_links = {k: tuple(v) for k, v in prompt[nid]["inputs"].items() if isinstance(v, list)}
        ui_links = {i["name"]: (str(links[i["link"]][1]), links[i["link"]][2]) for i in n["inputs"]
                    if i["link"] is not None}
        assert api_links == ui_links, n["type"]


def _values(prompt, class_type):
    return next(n["inputs"] for n in prompt.values() if n["class_type"] == class_type)


@pytest.mark.parametrize("name", PRESETS + tuple(FAMILY_WORKFLOWS))
def test_presets_carry_their_config_values(pack, name):
    preset, model = FAMILY_WORKFLOWS.get(name, (name, None))
    cfg = sys.modules[pack.__name__ + ".prunevid.config"].get_preset(preset)
    prompt = api(name)
    if model is not None:       # a family's workflow: the preset's graph, that family's model in the loader
        assert _values(prompt, "PruneVidModelLoader")["model"] == model
        assert {n["class_type"] for n in prompt.values()} == {n["class_type"] for n in api(preset).values()}
    s1, s2 = _values(prompt, "PruneVidStage1Merge"), _values(prompt, "PruneVidStage2Select")
    s3, video = _values(prompt, "PruneVidKVCompress"), _values(prompt, "PruneVidLoadVideo")
    assert s1["enable"] == cfg.enable_stage1 and s1["tau"] == cfg.tau and s1["cluster_ratio"] == cfg.cluster_ratio
    assert s1["temporal_segment_ratio"] == cfg.temporal_segment_ratio and s1["dpc_knn_k"] == cfg.dpc_knn_k
    assert s2["enable"] == cfg.enable_stage2 and s2["keep_ratio"] == cfg.keep_ratio
    assert s2["pruning_layer"] == cfg.pruning_layer and s2["attention_aggregation"] == cfg.attention_aggregation
    assert s3["enable"] == cfg.enable_cache_compression
    assert video["max_frames"] == cfg.max_frames and video["max_pixels"] == cfg.max_pixels
    assert video["sampling"] == cfg.video_sampling


def test_presets_share_one_graph():
    def shape(prompt):
        return sorted((nid, n["class_type"], tuple(sorted((k, tuple(v)) for k, v in n["inputs"].items()
                                                          if isinstance(v, list)))) for nid, n in prompt.items())
    first = shape(api(PRESETS[0]))
    for name in PRESETS[1:]:
        assert shape(api(name)) == first, name


def test_seed_naming_is_explained_in_the_notes():
    def note(name):
        return next(n for n in ui(name)["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "HIGH compression" in note("conservative")
    assert "LOW compression" in note("aggressive")
    for name in NAMES:
        assert len(note(name)) > 100


def test_interop_workflow_feeds_core_video_into_prunevid(defs):
    prompt = api("core_loadvideo_interop")
    core = next(i for i, n in prompt.items() if n["class_type"] == "LoadVideo")
    loader = next(n for n in prompt.values() if n["class_type"] == "PruneVidLoadVideo")
    assert loader["inputs"]["video"] == [core, 0]


def test_compare_workflow_puts_two_loaded_videos_into_one_prompt(defs):
    prompt = api("compare_two_clips")
    loaders = sorted(i for i, n in prompt.items() if n["class_type"] == "PruneVidLoadVideo")
    assert len(loaders) == 2
    stage1 = next(n for n in prompt.values() if n["class_type"] == "PruneVidStage1Merge")
    assert {stage1["inputs"]["video"][0], stage1["inputs"]["video_2"][0]} == set(loaders)
    files = {prompt[i]["inputs"]["file"] for i in loaders}
    assert len(files) == 2, "two different clips"
    assert "two clips" in _values(prompt, "PruneVidStage2Select")["question"]
    # the same settings as the paper preset otherwise
    paper = api("paper")
    for t in ("PruneVidStage1Merge", "PruneVidKVCompress", "PruneVidGenerate"):
        assert {k: v for k, v in _values(prompt, t).items() if not isinstance(v, list)} == \
            {k: v for k, v in _values(paper, t).items() if not isinstance(v, list)}
    # shipped workflows never use the optional extra video inputs otherwise
    for name in NAMES:
        if name != "compare_two_clips":
            assert "video_2" not in _values(api(name), "PruneVidStage1Merge")
