"""The original 3-D position rule of every family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE), on every
transformers version."""
import types

import pytest
import torch
import transformers

from prunevid import positions as P
from prunevid.families import FAMILIES


def family_positions(model_type: str, pieces: list):
    """Our unpruned layout through the family's own hook (it needs no weights)."""
    cls = FAMILIES[model_type]
    fake = cls.__new__(cls)                      # the positions hook reads only the vision config
    fake.model = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(tokens_per_second=2)))
    return cls.positions(fake, pieces)


def reference_457(model_type: str, ids, image_grid_thw, video_grid_thw, seconds):
    """transformers 4.57's get_rope_index of the family: the rule Qwen's own code uses."""
    if model_type == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig as Config
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel as Model
        timing = {}
    elif model_type in ("qwen3_vl", "qwen3_5"):  # the time is text: get_rope_index takes no seconds (Qwen3.5, which
        # 4.57 does not have, lays out positions as Qwen3-VL: 5.x's get_rope_index of both is the same code)
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig as Config
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel as Model
        timing = {}
    elif model_type == "qwen3_vl_moe":           # its own copy of Qwen3-VL's get_rope_index
        from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig as Config
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeModel as Model
        timing = {}
    else:
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig as Config
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel as Model
        timing = {"second_per_grid_ts": torch.tensor(seconds)}
    cfg = Config(vision_start_token_id=90, image_token_id=91, video_token_id=92)
    cfg.vision_config.tokens_per_second = 2
    return Model.get_rope_index(types.SimpleNamespace(config=cfg), ids, image_grid_thw=image_grid_thw,
                                video_grid_thw=video_grid_thw, **timing)


def video_block(model_type: str, t: int, h: int, w: int, sec: float) -> list:
    """A video block of t groups of h x w patches as the family's prompt has it: ("ids", [...]) runs of text ids and
    ("vision", (t, h/2, w/2), sec) blocks of video pads (92) between <|vision_start|> (90) and <|vision_end|> (93);
    Qwen3-VL has one block per group, each after a timestamp (three text tokens, 1 here)."""
    if not model_type.startswith("qwen3_vl") and model_type != "qwen3_5":
        return [("ids", [90]), ("vision", (t, h // 2, w // 2), sec), ("ids", [93])]
    out = []
    for _ in range(t):
        out += [("ids", [1, 1, 1, 90]), ("vision", (1, h // 2, w // 2), sec), ("ids", [93])]
    return out


def ids_and_pieces(parts: list) -> tuple:
    """(ids, our layout pieces) of ("ids", [...]) / ("vision", grid, sec) / ("image", grid) parts."""
    ids, pieces = [], []
    for part in parts:
        if part[0] == "ids":
            ids += part[1]
            if pieces and pieces[-1][0] == "text":
                pieces[-1] = ("text", pieces[-1][1] + len(part[1]))
            else:
                pieces.append(("text", len(part[1])))
        else:
            (t, h, w), pad = part[1], 92 if part[0] == "vision" else 91
            ids += [pad] * (t * h * w)
            pieces.append(("vision", (t, h, w), part[2] if part[0] == "vision" else 0.0))
    return torch.tensor([ids]), pieces


def test_hand_computed_video_layout():
    # 3 text tokens, a video of 3 groups x 2 x 2 at 0.5 s per group (4 fps sampled), 2 text tokens
    pos, delta = P.layout([("text", 3), ("vision", (3, 2, 2), 0.5, 2), ("text", 2)])
    t = pos[0, 3:15].view(3, 4)[:, 0].tolist()
    assert t == [3, 4, 5]                               # floor(g * 0.5 * 2) = g
    assert pos[1, 3:15].view(3, 4).tolist() == [[3, 3, 4, 4]] * 3
    assert pos[2, 3:15].view(3, 4).tolist() == [[3, 4, 3, 4]] * 3
    assert pos[:, 15].tolist() == [6, 6, 6]             # max(video positions) + 1, not start + max(h, w)
    assert delta == 7 + 1 - 17


def test_fractional_seconds_per_group_stay_fractional_until_the_floor():
    # 0.75 s per group, 2 tokens per second: 1.5 per group -> floor gives 0, 1, 3, 4, 6
    pos = P.vision_positions(0, (5, 1, 1), 0.75, 2)
    assert pos[0].tolist() == [0, 1, 3, 4, 6]


def test_text_after_long_video_starts_after_its_timeline():
    # the transformers 5.x bug: 16 groups of 4x4 at 1 s per group -> temporal ids to 30 + start
    pos, _ = P.layout([("text", 5), ("vision", (16, 4, 4), 1.0, 2), ("text", 3)])
    video = pos[:, 5:5 + 256]
    assert int(video[0].max()) == 5 + 30
    assert pos[:, 5 + 256].tolist() == [36, 36, 36]


def test_images_use_one_temporal_position_and_chain():
    pos, _ = P.layout([("text", 2), ("vision", (1, 2, 3), 0.0, 2), ("text", 2), ("vision", (1, 2, 2), 0.0, 2)])
    assert pos[0, 2:8].unique().tolist() == [2]
    assert pos[:, 8].tolist() == [5, 5, 5]              # after the first image: max(2 + 2) + 1
    assert pos[0, 10:14].unique().tolist() == [7]


def test_mrope_tables_match_per_axis_rope():
    inv = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    section = [2, 3, 3]
    positions = torch.tensor([[5, 6], [7, 8], [9, 10]])
    cos, sin = P.mrope_cos_sin(positions, inv, section, torch.float32)
    axis = [0, 0, 1, 1, 1, 2, 2, 2]                      # which axis drives each frequency
    for j, a in enumerate(axis):
        assert torch.allclose(cos[:, j], torch.cos(positions[a].float() * inv[j]))
        assert torch.allclose(sin[:, j + 8], torch.sin(positions[a].float() * inv[j]))


def test_qwen2_vl_temporal_position_is_the_group_index():
    # Qwen2-VL ignores the seconds per group: 3 text tokens, 5 groups of 1 x 2 at any fps, then text
    for seconds in (0.25, 2.0):
        pos, delta = family_positions("qwen2_vl", [("text", 3), ("vision", (5, 1, 2), seconds), ("text", 2)])
        assert pos[0, 3:13].view(5, 2)[:, 0].tolist() == [3, 4, 5, 6, 7]
        assert pos[:, 13].tolist() == [8, 8, 8]         # max(video positions) + 1, not start + max(h, w) = 5
        assert delta == 9 + 1 - 15
    # Qwen2.5-VL with the same pieces spaces its groups by seconds x tokens_per_second (2 per second here)
    pos, _ = family_positions("qwen2_5_vl", [("text", 3), ("vision", (5, 1, 2), 2.0), ("text", 2)])
    assert pos[0, 3:13].view(5, 2)[:, 0].tolist() == [3, 7, 11, 15, 19]


@pytest.mark.skipif(not transformers.__version__.startswith("4."),
                    reason="transformers 4.57's get_rope_index is the reference; 5.x misplaces text after video")
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_matches_transformers_457_get_rope_index(model_type):
    for sec in (1.0, 2.0):                               # 4.57 truncates fractional seconds: compare integers
        t, h, w = 6, 4, 6
        ids, pieces = ids_and_pieces([("ids", [1] * 7), *video_block(model_type, t, h, w, sec), ("ids", [1] * 9 + [90]),
                                      ("image", (1, h // 2, w // 2)), ("ids", [93, 1, 1])])
        ref, ref_delta = reference_457(model_type, ids, torch.tensor([[1, h, w]]), torch.tensor([[t, h, w]]), [sec])
        ours, delta = family_positions(model_type, pieces)
        assert torch.equal(ours, ref[:, 0])
        assert delta == int(ref_delta)


@pytest.mark.skipif(not transformers.__version__.startswith("4."),
                    reason="transformers 4.57's get_rope_index is the reference; 5.x misplaces text after video")
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_several_videos_and_an_image_match_transformers_457_get_rope_index(model_type):
    """Each block at its own positions, the text between and after continuing from the previous block's max + 1;
    here the second video's timeline is longer than its width (for Qwen2-VL too: 10 groups), where 5.x would go
    wrong."""
    ids, pieces, videos, image = two_videos_and_an_image(model_type)
    ref, ref_delta = reference_457(model_type, ids, torch.tensor([image]),
                                   torch.tensor([v[:3] for v in videos]), [v[3] for v in videos])
    ours, delta = family_positions(model_type, pieces)
    assert torch.equal(ours, ref[:, 0])
    assert delta == int(ref_delta)
    # every vision block's first token: the text before it ends at the previous block's max + 1
    starts = (ids[0] == 92).nonzero().squeeze(1)
    starts = starts[torch.cat([torch.tensor([True]), starts[1:] - starts[:-1] > 1])]
    for s in starts[1:].tolist():
        assert int(ours[0, s - 1]) == int(ours[:, :s - 1].max()) + 1


def two_videos_and_an_image(model_type: str) -> tuple:
    """(ids, pieces, videos, image): two videos whose timelines are longer than their width (for Qwen2-VL too: 10
    groups), then an image, in the family's layout."""
    videos, image = [(4, 6, 8, 1.0), (10, 4, 4, 2.0)], (1, 6, 4)
    parts = [("ids", [1] * 5)]
    for t, h, w, sec in videos:
        parts += [*video_block(model_type, t, h, w, sec), ("ids", [1, 1])]
    parts += [("ids", [1, 90]), ("image", (1, image[1] // 2, image[2] // 2)), ("ids", [93] + [1] * 6)]
    ids, pieces = ids_and_pieces(parts)
    return ids, pieces, videos, image


@pytest.mark.skipif(transformers.__version__.startswith("4."), reason="the 5.x rule is what differs")
@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl"])
def test_transformers_5_places_text_after_a_long_video_inside_its_timeline(model_type):
    """What the engine does not inherit: 5.x starts the text after a video at start + max(h, w), whatever the
    temporal extent, so on a clip with more groups than rows the question lands among the video's positions."""
    import inspect

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    config = AutoConfig.for_model(model_type, vision_start_token_id=90, image_token_id=91, video_token_id=92)
    config.vision_config.tokens_per_second = 2
    model_cls = getattr(transformers, MODEL_MAPPING_NAMES[model_type])
    fake = types.SimpleNamespace(config=config)
    fake.get_vision_position_ids = types.MethodType(model_cls.get_vision_position_ids, fake)
    t, h, w = 12, 4, 4                                   # 12 groups of 2 x 2 LLM tokens
    ids = torch.tensor([[1] * 4 + [90] + [92] * (t * h * w // 4) + [93] + [1] * 5])
    types_ = (ids == 92).long() * 2
    kwargs = {"second_per_grid_ts": torch.tensor([1.0])} if model_type == "qwen2_5_vl" else {}
    assert "mm_token_type_ids" in inspect.signature(model_cls.get_rope_index).parameters
    theirs, _ = model_cls.get_rope_index(fake, ids, types_,
                                         video_grid_thw=torch.tensor([[t, h, w]]), **kwargs)
    ours, _ = family_positions(model_type, [("text", 5), ("vision", (t, h // 2, w // 2), 1.0), ("text", 6)])
    after = 5 + t * h * w // 4                           # <|vision_end|>, the first token after the video
    video_max = int(ours[:, 5:after].max())
    assert int(ours[0, after]) == video_max + 1          # ours: after the whole timeline
    assert int(theirs[0, 0, after]) == 5 + max(h, w) // 2 < video_max   # 5.x: inside it


@pytest.mark.skipif(transformers.__version__.startswith("4."), reason="5.x's own get_rope_index")
@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5"])
def test_qwen3_vl_transformers_5_agrees_with_the_original_rule(model_type):
    """Qwen3-VL lays every group out as its own one-group block (temporal = start), which ends at start + max(h, w)
    - 1: 5.x's "advance by max(h, w)" is then the original "max + 1", so 4.57, 5.x and ours agree (the Qwen2-VL
    difference above cannot arise). Qwen3.5 (5.x only) has the same layout and get_rope_index."""
    import importlib

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    model_cls = getattr(transformers, MODEL_MAPPING_NAMES[model_type])          # Qwen3VLModel, Qwen3VLMoeModel
    config = AutoConfig.for_model(model_type, vision_start_token_id=90, image_token_id=91, video_token_id=92)
    fake = types.SimpleNamespace(config=config)
    fake.get_vision_position_ids = types.MethodType(model_cls.get_vision_position_ids, fake)
    ids, pieces, videos, image = two_videos_and_an_image(model_type)
    types_ = (ids == 92).long() * 2 + (ids == 91).long()
    theirs, their_delta = model_cls.get_rope_index(fake, ids, types_, image_grid_thw=torch.tensor([image]),
                                                   video_grid_thw=torch.tensor([v[:3] for v in videos]))
    ours, delta = family_positions(model_type, pieces)
    assert torch.equal(ours, theirs[:, 0]) and delta == int(their_delta)
    video = (ids[0] == 92).nonzero().squeeze(1)
    assert ours[0, video[:12]].unique().numel() == 1          # a group's tokens share one temporal position


def test_qwen3_vl_interleaved_mrope_tables_match_its_rotary_module():
    """Stage 2's tables with RoPE equal what Qwen3-VL's rotary module gives its attention (T H W T H W ... T T)."""
    from transformers import AutoConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding
    section = [4, 2, 2]
    rope = {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True, "rope_theta": 5e6}
    kw = {"rope_parameters": rope} if not transformers.__version__.startswith("4.") else {
        "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"}, "rope_theta": 5e6}
    cfg = AutoConfig.for_model("qwen3_vl", text_config={"hidden_size": 64, "num_attention_heads": 4,
                                                        "head_dim": 16, **kw}).text_config
    module = Qwen3VLTextRotaryEmbedding(cfg)
    positions = torch.tensor([[5, 6, 40], [7, 8, 3], [9, 10, 1]])
    cos, sin = module(torch.zeros(1, 3, 16), positions[:, None, :])
    ours = P.mrope_cos_sin_interleaved(positions, module.inv_freq, section, torch.float32)
    assert torch.allclose(ours[0], cos[0], atol=1e-6) and torch.allclose(ours[1], sin[0], atol=1e-6)
    chunked = P.mrope_cos_sin(positions, module.inv_freq, section, torch.float32)
    assert not torch.allclose(chunked[0], cos[0], atol=1e-3)   # the chunked layout would score the wrong thing
