"""Shared fixtures: the tiny random checkpoints built on disk (Qwen2.5-VL, and one of every family for the tests
that run over all of them), real sample video clips, the pack as ComfyUI loads it.

A test module runs over every family by overriding `tiny_model_dir` and `qm` with `family_model_dir` and
`family_qm` (see test_engine.py): each of its tests then runs once per family, with the family's id in its name.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

PACK_DIR = Path(__file__).resolve().parent.parent

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir():
    from prunevid.testing import tiny_model_path
    return tiny_model_path()


FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")   # every supported family (prunevid.families.FAMILIES)


@pytest.fixture(scope="session", params=FAMILIES)
def family_model_dir(request):
    """The tiny checkpoint of each family in turn."""
    from prunevid.loader import resolve_model
    return Path(resolve_model(f"tiny:{request.param}"))


@pytest.fixture(scope="session")
def family_qm(family_model_dir):
    from prunevid import loader
    return loader.load(str(family_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def family_clip(family_qm, sample_video):
    """`clip` on the family's pixel grid (28 px per token; 32 on Qwen3-VL): the same frames as `clip` on 28."""
    from prunevid.video import load_video
    return load_video(sample_video, max_frames=8, max_pixels=224 * 224, factor=family_qm.token_factor())


@pytest.fixture(scope="session")
def qm(tiny_model_dir):
    from prunevid import loader
    return loader.load(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def sample_video():
    from prunevid.video import sample_video_path
    return sample_video_path("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def clip(sample_video):
    """8 frames (4 temporal groups) of 224x224-ish: small enough for fast tests, real content."""
    from prunevid.video import load_video
    return load_video(sample_video, max_frames=8, max_pixels=224 * 224)


def _load_workflow_generator():
    spec = importlib.util.spec_from_file_location("make_workflows", PACK_DIR / "workflows" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_workflows = _load_workflow_generator()
load_pack = make_workflows.load_pack     # imports the pack exactly as ComfyUI's load_custom_node does


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (each storage once, meta tensors hold none)."""
    import gc
    import warnings
    gc.collect()
    seen, total = set(), 0
    with warnings.catch_warnings():             # isinstance() on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if not obj.is_meta:
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), obj.device)
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total
