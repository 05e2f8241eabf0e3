"""PruneVid's ComfyUI nodes (V1 classes). Node ids are stored in users' workflows: never rename one."""
from .generate import PruneVidGenerate
from .model import PruneVidModelLoader, PruneVidUnloadModel
from .stages import PruneVidKVCompress, PruneVidStage1Merge, PruneVidStage2Select
from .video import PruneVidLoadVideo

NODE_CLASS_MAPPINGS = {
    "PruneVidModelLoader": PruneVidModelLoader,
    "PruneVidLoadVideo": PruneVidLoadVideo,
    "PruneVidStage1Merge": PruneVidStage1Merge,
    "PruneVidStage2Select": PruneVidStage2Select,
    "PruneVidKVCompress": PruneVidKVCompress,
    "PruneVidGenerate": PruneVidGenerate,
    "PruneVidUnloadModel": PruneVidUnloadModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "PruneVidModelLoader": "PruneVid Model Loader (Qwen2.5-VL)",
    "PruneVidLoadVideo": "PruneVid Load Video",
    "PruneVidStage1Merge": "PruneVid Stage 1 Merge",
    "PruneVidStage2Select": "PruneVid Stage 2 Select",
    "PruneVidKVCompress": "PruneVid Stage 3 KV Compress",
    "PruneVidGenerate": "PruneVid Generate",
    "PruneVidUnloadModel": "PruneVid Unload Model",
}
