"""The entry point lmms-eval reads (pyproject: [project.entry-points."lmms_eval.models"]).

Kept apart from model.py so that listing models stays cheap and a broken install of the model's own imports
shows up as an error when the model is used, not as lmms-eval silently dropping every plugin manifest.
"""
from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="prunevid_qwen2_5_vl",
                         chat_class_path="prunevid.evaluation.model.PruneVidQwen25VLEval")

QWEN2_VL = ModelManifest(model_id="prunevid_qwen2_vl",
                         chat_class_path="prunevid.evaluation.model.PruneVidQwen2VLEval")

QWEN3_VL = ModelManifest(model_id="prunevid_qwen3_vl",
                         chat_class_path="prunevid.evaluation.model.PruneVidQwen3VLEval")
