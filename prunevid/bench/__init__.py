"""Benchmarks: speed-up, memory saving and overhead of PruneVid against the unpruned baseline, side by side.

    python -m benchmarks            (or: prunevid bench)         the default table, ~14 min on 2 CPU cores
    python -m benchmarks --full                                  every video x 16/32/64 frames x every preset
    python -m benchmarks --throughput                            answers/s at batch 1 / 4 / 8, baseline vs paper
    python -m prunevid.bench.memory                              weights and peak memory, none / 8bit / 4bit

A benchmark measures and reports; it never fails on a timing. Results go to benchmarks/results/<name>.json and
<name>.md (the Markdown is rendered from the JSON); --readme also puts the tables into docs/performance.md.

    command.py   the command: options, the plan, the worker process that measures it and writes the results
    model.py     the bench model: its shape, built once, described in the results
    measure.py   one measured run (a question, or a list of requests in batches)
    process.py   process memory: glibc's allocator policy, pre-faulting, peak resident memory
    flops.py     the analytic FLOPs model (vision tower + LLM; the bench model and the released shapes)
    summary.py   medians, ratios against the baseline, scaling, targets, throughput speed-ups
    report.py    the machine, Markdown tables, JSON and Markdown files, the tables in docs/performance.md
    memory.py    the memory benchmark (quantization none / 8bit / 4bit) and the released models' weight bytes

The bench model (random weights, built once under benchmarks/models/ and loaded through from_pretrained like any
checkpoint) keeps what sets the ratios of Qwen2.5-VL-7B:
- 28 decoder layers, pruning layer 10, grouped-query attention (4 query heads per KV head);
- the 7B's per-layer balance between attention and the rest: a layer costs 4 d n (d + d_kv + 1.5 d_ff + n) FLOPs
  for n tokens, and d + d_kv + 1.5 d_ff = 32 512 as in the 7B (3584 + 512 + 1.5 * 18944). With d = 128 the bench
  LLM is the 7B divided by 28 at every sequence length, so its pruned / unpruned FLOPs ratio for given token counts
  IS the 7B's. (Shrinking d alone would leave the n^2 attention term relatively 8-30x heavier and flatter every
  speed-up.)
- a vision tower (32 blocks, window attention with full attention in blocks 7/15/23/31, like the 7B's) whose FLOPs
  per merged token are the 7B tower's divided by the same 28, so its share of baseline prefill FLOPs is the 7B's
  (about 27 %); the benchmark prints that share, and the measured time share.

Measurement rules:
- everything runs in one worker process, a child of the command (the allocator settings below must not leak into a
  caller such as a test runner or a notebook, and the caller's memory must not count); fp32, SDPA, torch threads 2;
- presets are interleaved inside every repetition (baseline, paper, ..., baseline, paper, ...) so drift hits all
  alike; every number is the median of the repetitions, with min and max;
- timed runs use glibc malloc with mmap off and no trimming (GLIBC_TUNABLES given to the worker), i.e. freed
  memory is reused as a GPU caching allocator reuses it, from a heap pool pre-faulted before the warm-up. With the
  default policy every tensor above 32 MiB is a fresh mmap, page-faulted in and unmapped again: on a 2-core VM
  that kernel work was more than half of the baseline prefill (the bench model's wide MLP makes 350 MB
  temporaries), which says nothing about the method. --default-allocator times with the default policy;
- peak memory comes from one extra, untimed run per configuration (first question, 2 new tokens) with the default
  allocator policy restored and the heap trimmed first: the kernel's resident-set high-water mark (VmHWM), reset
  through /proc/self/clear_refs just before the run, so one process measures every configuration (ru_maxrss
  only grows) and the number is everything the process holds (weights, frames, activations, KV cache), not just
  torch tensors, without the caching policy's fragmentation. Where clear_refs is unavailable a 2 ms RSS sampler
  is used; where mallopt is unavailable (not glibc) the timed runs measure memory themselves;
- decoding ignores end-of-sequence so every run generates exactly --new-tokens tokens (random weights).

--throughput measures batched answering instead (prunevid.batch, what model.generate_batch runs): the same
--requests requests (the sample clips and questions, cycled) answered batch_size at a time, for every batch size
and preset, interleaved inside every repetition; answers per second = requests / wall time from reading the video
files to the last token of the last answer. Peak memory as above: one untimed run per configuration.
"""
from .command import main  # noqa: F401  (python -m benchmarks, prunevid bench)
from .model import BENCH_MODEL  # noqa: F401
