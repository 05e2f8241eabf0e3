"""PruneVid in lmms-eval: the `prunevid_qwen2_5_vl` model, its local test tasks, and `prunevid eval-report`.

    manifest.py   the ModelManifest that the `lmms_eval.models` entry point hands to lmms-eval (no torch import)
    model.py      the lmms-eval model class (imports lmms_eval: only lmms-eval loads it)
    args.py       model_args -> checked settings (no lmms-eval, no model)
    inputs.py     a request's messages -> system prompt, question, video Clip or images
    report.py     lmms-eval result folders of several presets -> one table, Markdown and a PNG plot
    tasks/        lmms-eval task folders (pass with --include_path): a small VideoMME-format task on local clips

Nothing here is imported by the rest of the library, so prunevid works without lmms-eval installed.
"""
