"""The lmms-eval models `prunevid_qwen2_5_vl`, `prunevid_qwen2_vl` and `prunevid_qwen3_vl`: a checkpoint of any
supported family through the PruneVid engine, --batch_size requests at a time.

lmms-eval finds it through the `lmms_eval.models` entry point (manifest.py) and builds it from --model_args
(args.py). It is a chat model: each request carries the task's messages (video paths, PIL images, text).
Data-parallel runs (`accelerate launch --num_processes N -m lmms_eval ...`) load one model per process on that
process's device; lmms-eval gives each process its share of the documents and gathers the results on rank 0.
"""
from __future__ import annotations

import atexit
import time

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.protocol import ChatMessages
from tqdm import tqdm

from .. import engine
from ..errors import ConfigError, PruneVidError
from ..pipeline import PruneVidQwen25VL
from . import args as eval_args
from . import records
from .inputs import turn_from_messages, visual_input


class PruneVidTokenCounts(TokenCounts):
    """lmms-eval's per-sample token counts, plus the PruneVid record: logged with the sample as token_counts[0]."""

    def __init__(self, input_tokens: int, output_tokens: int, prunevid: dict):
        super().__init__(input_tokens=input_tokens, output_tokens=output_tokens)
        self.prunevid = prunevid

    def to_dict(self) -> dict:
        return {**super().to_dict(), "prunevid": self.prunevid}


# title -> {task: {doc_id: record}} of this process's runs (rank 0 gathers every rank's): printed at exit, after
# lmms-eval's own results table, as one table per model
_SUMMARIES: dict = {}


def _print_summaries() -> None:
    for title, by_task in _SUMMARIES.items():
        if not by_task:
            continue
        rows = [(task, records.aggregate(list(docs.values()))) for task, docs in sorted(by_task.items())]
        print(records.format_aggregates(rows, title), flush=True)


def _fail(e: Exception, model_id: str):
    """A bad model_arg or model: one line and exit status 1, as a bad command-line argument would."""
    raise SystemExit(f"{model_id}: error: {e}") from None


class PruneVidQwen25VLEval(lmms):
    is_simple = False
    MODEL_ID = eval_args.MODEL_ID            # lmms-eval's --model name (its default `pretrained`)

    def __init__(self, **kwargs) -> None:
        super().__init__()
        try:
            self.settings = s = eval_args.parse(kwargs, self.MODEL_ID)
        except PruneVidError as e:
            _fail(e, self.MODEL_ID)
        self.accelerator = Accelerator()
        device = s.device
        if self.accelerator.num_processes > 1:
            # one model per process, on the device accelerate gives it (cuda:LOCAL_RANK; cpu on a machine without GPUs)
            if device not in ("auto", str(self.accelerator.device)):
                _fail(ConfigError(f"model_arg device={device} with {self.accelerator.num_processes} processes: each "
                                  "process must use its own device; leave device unset (auto)"), self.MODEL_ID)
            device = str(self.accelerator.device)
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        try:
            self.pv = PruneVidQwen25VL(s.pretrained, config=s.config, device=device, dtype=s.dtype,
                                       attention=s.attention, quantization=s.quantization,
                                       device_map=s.device_map or None)
        except PruneVidError as e:
            _fail(e, self.MODEL_ID)
        self._device = self.pv.model.device
        self.batch_size_per_gpu = s.batch_size

    # lmms-eval reads these
    @property
    def device(self):
        return self._device

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def model(self):
        return self.pv.model.model

    @property
    def tokenizer(self):
        return self.pv.model.tokenizer

    def loglikelihood(self, requests):
        raise NotImplementedError(f"Loglikelihood is not implemented for {self.MODEL_ID}")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"Multi-round generation is not implemented for {self.MODEL_ID}")

    # ------------------------------------------------------------------ generation

    def _messages(self, req: Instance) -> list:
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
        chat = ChatMessages(messages=doc_to_messages(self.task_dict[task][split][doc_id]))
        out = []
        for m in chat.messages:
            parts = []
            for c in m.content:
                if c.type == "video" and (c.start_time is not None or c.end_time is not None):
                    raise ConfigError(f"{task} doc {doc_id}: a video with start/end times; the PruneVid engine reads "
                                      "whole videos")
                parts.append((c.type, c.text if c.type == "text" else c.url))
            out.append((m.role, parts))
        return out

    def _prepare(self, req: Instance):
        """A request's turn, its encoded visual input and its decoding settings (max_new_tokens, sampling, until)."""
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
        s = self.settings
        decoding = eval_args.decoding(gen_kwargs, s.seed)
        turn = turn_from_messages(self._messages(req), s.system_prompt)
        # read on the loaded checkpoint's grid (28 px per token, 32 on Qwen3-VL), as lmms-eval's model of its family
        encoded = engine.encode(self.pv.model, visual_input(turn, s, self.pv.family.token_factor()), s.config)
        return turn, encoded, decoding

    def _result(self, req: Instance, out: dict, encoded, until) -> GenerationResult:
        ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
        # the decoded answer as lmms-eval's qwen2_5_vl returns it (not stripped, no clean-up of spaces)
        text = self.tokenizer.decode(out["ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        text = eval_args.cut(text, until)
        st = out["stats"]
        frames = [it.frames for it in encoded.items]
        record = records.sample_record(st, self.settings.label(), sum(f.shape[0] for f in frames),
                                       tuple(frames[0].shape[1:3]), self.rank)
        self.cache_hook.add_partial("generate_until", (ctx, gen_kwargs), text)
        return GenerationResult(text=text, token_counts=PruneVidTokenCounts(
            input_tokens=st["tokens"]["sequence_after_stage1"], output_tokens=st["timings"]["new_tokens"],
            prunevid=record))

    def _answer_group(self, reqs: list) -> list:
        """Answers of several requests: one at a time for a group of one, else batched through the LLM
        (prunevid.batch; per request the same answer as alone), requests with the same decoding settings together."""
        prepared = []
        for req in reqs:
            try:
                prepared.append(self._prepare(req))
            except PruneVidError as e:
                raise type(e)(f"{req.task_name} doc {req.doc_id}: {e}") from e
        outs = [None] * len(reqs)
        groups: dict = {}
        for i, (turn, _, (max_new_tokens, sampling, _)) in enumerate(prepared):
            key = (turn.system_prompt, max_new_tokens, tuple(sorted(sampling.items())))
            groups.setdefault(key, []).append(i)
        for (system_prompt, max_new_tokens, sampling), rows in groups.items():
            if len(rows) == 1:
                turn, encoded, _ = prepared[rows[0]]
                try:
                    outs[rows[0]] = self.pv.answer(encoded, turn.question, max_new_tokens,
                                                   system_prompt=system_prompt, **dict(sampling))
                except PruneVidError as e:
                    raise type(e)(f"{reqs[rows[0]].task_name} doc {reqs[rows[0]].doc_id}: {e}") from e
                continue
            try:
                answers = self.pv.answer_batch([prepared[i][1] for i in rows],
                                               [prepared[i][0].question for i in rows], max_new_tokens,
                                               system_prompt=system_prompt, **dict(sampling))
            except PruneVidError as e:
                docs = ", ".join(str(reqs[i].doc_id) for i in rows)
                raise type(e)(f"{reqs[rows[0]].task_name} docs {docs} (answered as one batch): {e}") from e
            for i, a in zip(rows, answers):
                if a["error"]:
                    raise PruneVidError(f"{reqs[i].task_name} doc {reqs[i].doc_id}: {a['error']}")
                outs[i] = a
        return [self._result(req, out, enc, dec[2]) for req, out, (_, enc, dec) in zip(reqs, outs, prepared)]

    def generate_until(self, requests: list) -> list:
        results, mine = [None] * len(requests), []
        t0 = time.perf_counter()
        todo = []
        for i, req in enumerate(requests):
            if req.metadata.get("__padding_only__"):
                # lmms-eval evens out the ranks with copies of a request whose answers it throws away
                results[i] = GenerationResult(text="")
            else:
                todo.append(i)
        bar = tqdm(total=len(todo), disable=self.rank != 0, desc="PruneVid responding")
        for start in range(0, len(todo), self.batch_size_per_gpu):
            chunk = todo[start:start + self.batch_size_per_gpu]
            with torch.inference_mode():
                answered = self._answer_group([requests[i] for i in chunk])
            for i, res in zip(chunk, answered):
                results[i] = res
                mine.append((requests[i].task_name, requests[i].doc_id, res.token_counts.prunevid))
            bar.update(len(chunk))
        bar.close()
        self._summarise(mine, time.perf_counter() - t0)
        return results

    def _summarise(self, mine: list, elapsed: float) -> None:
        """Gather every rank's records, then on rank 0 log the means (results JSON) and print them at exit."""
        everyone = [mine]
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            everyone = [None] * self.world_size
            torch.distributed.all_gather_object(everyone, mine)
        if self.rank != 0:
            return
        title = (f"\nPruneVid ({self.MODEL_ID}, {self.settings.label()}; {self.settings.pretrained}): "
                 "pruning per task")
        if not _SUMMARIES:
            atexit.register(_print_summaries)
        by_task = _SUMMARIES.setdefault(title, {})
        now = []
        for task, doc_id, record in (x for part in everyone for x in part):
            by_task.setdefault(task, {})[doc_id] = record
            now.append(record)
        if not now:
            return
        overall = records.aggregate(now)
        log_metrics(total_elapsed_time=elapsed, total_gen_tokens=sum(r["new_tokens"] for r in now), avg_speed=0.0,
                    additional_metrics={f"prunevid_{k}": overall[k] for k, _ in records.AGGREGATES})


class PruneVidQwen2VLEval(PruneVidQwen25VLEval):
    """`prunevid_qwen2_vl`: the same model with Qwen2-VL-7B-Instruct as its default `pretrained`."""
    MODEL_ID = "prunevid_qwen2_vl"


class PruneVidQwen3VLEval(PruneVidQwen25VLEval):
    """`prunevid_qwen3_vl`: the same model with Qwen3-VL-8B-Instruct as its default `pretrained`, and the frame count
    of lmms-eval's qwen3_vl in the default reader (inputs.py)."""
    MODEL_ID = "prunevid_qwen3_vl"
