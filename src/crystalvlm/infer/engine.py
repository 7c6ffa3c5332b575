"""Batched generation over a `transformers` Llava checkpoint.

    engine = GenerationEngine.from_checkpoint("runs/tiny/finetune")
    results = engine.generate([GenerationRequest([Turn("user", "<image>\\nWhat colour?")], [image])],
                              DecodingConfig.parse("greedy"))
    for piece in engine.stream(request, DecodingConfig.parse("sample:temperature=0.7,seed=1")): ...

Requests are sorted by prompt length and cut into batches of `batch_size` (less padding), run with
left padding and a KV cache, and returned in request order. A batch computes, row for row, what
each request computes alone, so batched greedy answers equal one-at-a-time answers (and
`model.generate(do_sample=False)`). Strategies live in `decoding/`, registered by name
(decoding/registry.py); the engine asks a strategy what it declares (requests per batch, prefix
sharing, randomness) and calls its `decode`, never branching on its name. The model only computes
(`runner.ModelRunner`). One generation runs at a time per engine (a lock): the model is shared and
OPERA switches its attention implementation while it runs.

Prefix sharing (`share_prefixes`, on by default): requests about the same image are kept next to
each other when batches are cut (then by length), and a batch whose prompts share prefixes (the
system prompt; an image and the tokens up to and just after it) computes each shared prefix once
(shared_prefix.py) when that computes clearly fewer positions: in up to three forwards, or in two when
the prefixes are short (`pack_up_to` tokens) and packed into one row with a tree-shaped mask.
Strategies say whether they can use it (`DecodingStrategy.shares_prefixes`): greedy, sampling and
beam search do; VCD (its own paired batch) and OPERA (one request at a time) prefill plainly.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from crystalvlm.data.sample_encoder import SampleEncoder
from crystalvlm.data.templates import Turn, get_template
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.decoding.greedy_sampling import RowControl, request_generator
from crystalvlm.infer.decoding.registry import build_strategy
from crystalvlm.infer.decoding.strategy import DecodingContext, DecodingStrategy
from crystalvlm.infer.prompts import ImageMemo, PreparedPrompt, PromptBuilder, RequestError, collate
from crystalvlm.infer.runner import ModelRunner
from crystalvlm.infer.shared_prefix import (PACK_UP_TO, PromptKeys, pack_shared_prefill, plan_shared_prefill, prompt_keys,
                                            sharing_key)
from crystalvlm.infer.text_stream import AnswerText, StopRule

__all__ = ["DecodingConfig", "GenerationEngine", "GenerationRequest", "GenerationResult", "RequestError"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class GenerationRequest:
    turns: list[Turn]
    images: list[Image.Image] = field(default_factory=list)
    cancel: threading.Event | None = None  # set it to stop this request early (finish_reason "cancelled")
    stop_strings: tuple[str, ...] = ()  # extra stop strings besides the template's
    # The answer starts with this text and the model continues it (the result holds the continuation
    # only): VIGC's correction regenerates an answer's continuation after the part kept so far.
    answer_prefix: str = ""
    seed: int | None = None  # sampling: this request's own seed instead of the config's (distinct streams in one batch)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # everything generated, the final eos / stop token included
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0


class GenerationEngine:
    def __init__(self, model, processor, template_name: str | None, image_mode: str, batch_size: int = 8,
                 share_prefixes: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.template = get_template(template_name) if template_name else None
        self.batch_size = batch_size
        self.share_prefixes = share_prefixes  # compute prompt prefixes shared in a batch once (module docstring)
        # The batch and group prefixes packed into one forward while they hold at most this many tokens
        # together (0: never); shared_prefix.pack_shared_prefill.
        self.pack_up_to = PACK_UP_TO
        config = model.config
        self.image_token_id = int(getattr(config, "image_token_id", None) or config.image_token_index)
        self.prompts = PromptBuilder(SampleEncoder.from_processor(processor, config, self.template, image_mode))
        self.stop_rule = StopRule(frozenset(_eos_ids(model, self.tokenizer)), self.template.stop_strings if self.template else ())
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else next(iter(self.stop_rule.eos_ids), 0))
        self.max_positions = int(getattr(config.text_config, "max_position_embeddings", 0) or 0)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", dtype: str | torch.dtype | None = None, batch_size: int = 8,
                        share_prefixes: bool = True) -> "GenerationEngine":
        from crystalvlm.models.checkpoint import load_checkpoint

        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
            dtype = DTYPES[dtype]
        model, processor, info = load_checkpoint(path, dtype=dtype, device=device)
        return cls(model, processor, info.template, info.image_mode, batch_size=batch_size, share_prefixes=share_prefixes)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ requests
    def prepare(self, request: GenerationRequest, max_new_tokens: int = 0, memo: ImageMemo | None = None,
                input_ids: list[int] | None = None) -> PreparedPrompt:
        """The model inputs of a request; RequestError when it cannot run (names the problem). With a
        `memo`, an image object already seen in it is not preprocessed again; `input_ids`: the prompt's
        ids, already encoded with others (`PromptBuilder.ids_of_many`)."""
        prepared = self.prompts.build(request.turns, request.images, memo, input_ids)
        if request.answer_prefix:
            # Tokenised as training tokenises an answer: the template's text before the content, then the content.
            lead = self.template.assistant_format.split("{content}")[0] if self.template else ""
            extra = self.tokenizer(lead + request.answer_prefix, add_special_tokens=False)["input_ids"]
            prepared = replace(prepared, input_ids=prepared.input_ids + list(extra))
        if self.max_positions and prepared.length + max_new_tokens > self.max_positions:
            raise RequestError(
                f"the prompt has {prepared.length} tokens (images expanded) and {max_new_tokens} new tokens were "
                f"asked for; the model handles at most {self.max_positions} positions"
            )
        return prepared

    def generate(
        self,
        requests: list[GenerationRequest],
        config: DecodingConfig,
        progress: bool = False,
        listeners: list[Callable[[str], None] | None] | None = None,
    ) -> list[GenerationResult]:
        """Answers in request order. `listeners[i]`, if given, receives request i's text as it is produced."""
        prepared = []
        # Requests about one image object (an evaluation's questions about one picture) share its
        # preprocessing; every image of the call goes through the image processor in one call.
        memo = ImageMemo(self.prompts.encoder)
        try:
            if not self.prompts.encoder.anyres:  # anyres prompts preprocess their own images (PromptBuilder.build)
                memo.preprocess([image for request in requests for image in request.images])
        except Exception:
            # Then each request's images are preprocessed on their own below, and the failing one raises there as before.
            memo = ImageMemo(self.prompts.encoder)
        # Every prompt tokenised in one call (a bad one makes this None: each is then encoded alone).
        ids = self.prompts.ids_of_many([request.turns for request in requests],
                                      [[image.size for image in request.images] for request in requests])
        for index, request in enumerate(requests):
            try:
                prepared.append(self.prepare(request, config.max_new_tokens, memo, ids[index] if ids else None))
            except RequestError as error:
                raise RequestError(f"request {index}: {error}") from None
        listeners = listeners or [None] * len(requests)
        strategy = build_strategy(config)
        controls = [
            RowControl(
                listener=listeners[index],
                cancelled=request.cancel.is_set if request.cancel is not None else None,
                generator=(request_generator(request.seed if request.seed is not None else config.seed, self.device)
                           if strategy.samples else None),
                stop_rule=self.stop_rule.with_extra(request.stop_strings),
            )
            for index, request in enumerate(requests)
        ]
        group_size = 1 if strategy.one_request_at_a_time else self.batch_size
        sharing = self.share_prefixes and strategy.shares_prefixes and group_size > 1
        # Each prompt's keys, found once: they order the batches and plan each batch's shared prefill.
        keys = [prompt_keys(prompt, self.image_token_id) for prompt in prepared] if sharing else None
        order = self._batch_order(prepared, keys) if keys is not None else sorted(range(len(requests)), key=lambda i: -prepared[i].length)
        results: list[GenerationResult | None] = [None] * len(requests)
        bar = _progress_bar(len(requests), config.strategy) if progress else None
        with self._lock, torch.no_grad():
            for start in range(0, len(order), group_size):
                group = order[start : start + group_size]
                answers = self._run_group([prepared[i] for i in group], [controls[i] for i in group], strategy,
                                          [keys[i] for i in group] if keys is not None else None)
                for index, answer in zip(group, answers):
                    results[index] = GenerationResult(answer.visible_text, answer.token_ids, answer.finish_reason, prepared[index].length)
                if bar is not None:
                    bar.update(len(group))
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]

    def stream(self, request: GenerationRequest, config: DecodingConfig) -> Iterator[str]:
        """Text pieces as they are produced (beam search and OPERA produce theirs at the end).

        Closing the iterator early cancels the generation.
        """
        pieces: queue.Queue = queue.Queue()
        finished = object()
        cancel = request.cancel or threading.Event()
        request = replace(request, cancel=cancel)

        def work() -> None:
            try:
                self.generate([request], config, listeners=[pieces.put])
            except BaseException as error:  # handed to the consumer, raised there
                pieces.put(error)
            finally:
                pieces.put(finished)

        worker = threading.Thread(target=work, name="crystalvlm-stream", daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not finished:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            worker.join()

    @staticmethod
    def _batch_order(prepared: list[PreparedPrompt], keys: list[PromptKeys]) -> list[int]:
        """Request indices in batch order: requests that can share a prefix covering their images stay
        next to each other (so they land in one batch), groups longest first, longest first within.
        `keys`: the prompts' `prompt_keys`."""
        groups: dict[tuple, list[int]] = {}
        for index, prompt_key in enumerate(keys):
            groups.setdefault(sharing_key(prompt_key), []).append(index)
        ordered = sorted(groups.values(), key=lambda members: -max(prepared[i].length for i in members))
        return [index for members in ordered for index in sorted(members, key=lambda i: -prepared[i].length)]

    # ------------------------------------------------------------------ one batch
    def _run_group(self, prompts: list[PreparedPrompt], controls: list[RowControl], strategy: DecodingStrategy,
                   keys: list[PromptKeys] | None = None) -> list[AnswerText]:
        """`keys`: the prompts' `prompt_keys` to share their common prefixes; None: no sharing."""
        batch = collate(prompts, self.pad_token_id)
        runner = ModelRunner(self.model)
        if keys is not None:
            # Two forwards while the packed prefixes are short (small prompts: the forwards' fixed cost
            # dominates), else up to three (long prefixes: the packed row's P x P attention would cost more).
            if self.pack_up_to and runner.can_pack:
                batch.packed_prefill = pack_shared_prefill(prompts, self.image_token_id, self.pad_token_id,
                                                           pack_up_to=self.pack_up_to, keys=keys)
            if batch.packed_prefill is None:
                batch.prefill_steps = plan_shared_prefill(prompts, self.image_token_id, self.pad_token_id, keys=keys)
        context = DecodingContext(runner, self.tokenizer, self.image_token_id, len(self.stop_rule.eos_ids))
        return strategy.decode(context, batch, controls)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(token) for token in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _progress_bar(total: int, strategy: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"generate ({strategy})", unit="request")
