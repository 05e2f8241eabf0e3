"""Shared fixtures: the tiny random checkpoints built on disk (Qwen2.5-VL, and one of every family for the tests
that run over all of them), real sample video clips, the pack as ComfyUI loads it.

A test module runs over every family by setting EVERY_FAMILY = True: each of its tests that uses `qm` or
`tiny_model_dir` then runs once per family in FAMILIES, with the family's model_type in its name.
"""
import importlib.util
from pathlib import Path

import pytest
import torch

PACK_DIR = Path(__file__).resolve().parent.parent

torch.set_num_threads(2)


FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5")   # every supported family (prunevid.families.FAMILIES)


def pytest_generate_tests(metafunc):
    if getattr(metafunc.module, "EVERY_FAMILY", False) and {"qm", "tiny_model_dir"} & set(metafunc.fixturenames):
        metafunc.parametrize("family", FAMILIES, indirect=True, scope="module")


@pytest.fixture(scope="session")
def family(request):
    """The model_type of the tiny checkpoint under test: Qwen2.5-VL, or each family in turn (EVERY_FAMILY). A family
    the installed transformers cannot run (Qwen3.5 on 4.57) skips its tests, saying which version it needs."""
    from prunevid import families
    model_type = getattr(request, "param", "qwen2_5_vl")
    missing = families.unavailable(families.FAMILIES[model_type])
    if missing:
        pytest.skip(missing)
    return model_type


@pytest.fixture(scope="session")
def tiny_model_dir(family):
    from prunevid.loader import resolve_model
    return Path(resolve_model(f"tiny:{family}"))


@pytest.fixture(scope="session")
def qm(tiny_model_dir):
    from prunevid import loader
    return loader.load(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def sample_video():
    from prunevid.video import sample_video_path
    return sample_video_path("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def clip(sample_video, family):
    """8 frames (4 temporal groups) of 224x224-ish on the family's pixel grid (28 px per token, 32 on Qwen3-VL):
    small enough for fast tests, real content."""
    from prunevid.families import family as family_class
    from prunevid.video import load_video
    return load_video(sample_video, max_frames=8, max_pixels=224 * 224, factor=family_class(family).token_factor())


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
