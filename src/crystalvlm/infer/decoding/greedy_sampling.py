"""Token-by-token decoding of a batch: greedy or sampling, over any source of next-token logits.

The loop shared by the strategies that choose one token per request and step (greedy.py, sample.py,
vcd.py); they differ in where the logits come from and how a token is chosen from them.

The loop feeds every unfinished row its chosen token, drops rows whose answers finished (their cache
rows too, so long answers do not pay for short ones) and reports each new text piece to the row's
listener. What produces the logits is a `LogitsSource`: the plain model here, the clean/distorted
pair for VCD (decoding/vcd.py).

Sampling warps logits as `transformers` does — temperature, then top-k, then top-p — and draws with a
`torch.Generator` per request, so a seeded request gets the same answer alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import torch

from crystalvlm.infer.runner import ModelRunner, PromptBatch
from crystalvlm.infer.text_stream import AnswerText, StopRule, answers_for

if TYPE_CHECKING:
    from crystalvlm.infer.decoding.config import DecodingConfig

Listener = Callable[[str], None]


class LogitsSource(Protocol):
    def prefill(self, batch: PromptBatch) -> torch.Tensor: ...  # (R, V)
    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...  # (R,) -> (R, V)
    def keep_rows(self, rows: list[int]) -> None: ...


class PlainLogits:
    """The model's own next-token logits."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    def prefill(self, batch: PromptBatch) -> torch.Tensor:
        return self.runner.prefill(batch)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner.step(tokens)

    def keep_rows(self, rows: list[int]) -> None:
        self.runner.select_rows(rows)


@dataclass
class RowControl:
    """Per-request extras of the loop: where text pieces go and whether the request was cancelled."""

    listener: Listener | None = None
    cancelled: Callable[[], bool] | None = None
    generator: torch.Generator | None = None  # sampling only
    stop_rule: StopRule | None = None  # when this request's answer ends


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k, top-p on (R, V) logits; removed tokens become -inf."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p < 1.0:
        # Remove the tokens whose cumulative probability, counted from the least likely, is <= 1 - top_p
        # (the most likely token always stays).
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[:, -1] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


class TokenChooser:
    """Greedy argmax, or a draw from the warped distribution with each row's own generator."""

    def __init__(self, config: DecodingConfig, sample: bool) -> None:
        self.config = config
        self.sample = sample

    def __call__(self, logits: torch.Tensor, controls: list[RowControl]) -> torch.Tensor:
        if not self.sample:
            return logits.argmax(dim=-1)
        warped = warp_logits(logits, self.config.temperature, self.config.top_k, self.config.top_p)
        probabilities = warped.softmax(dim=-1)
        chosen = [
            torch.multinomial(probabilities[row], 1, generator=control.generator)
            for row, control in enumerate(controls)
        ]
        return torch.cat(chosen)


def request_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def decode_token_by_token(
    source: LogitsSource,
    batch: PromptBatch,
    answers: list[AnswerText],
    controls: list[RowControl],
    choose: Callable[[torch.Tensor, list[RowControl]], torch.Tensor],
    max_new_tokens: int,
) -> None:
    """Run until every answer finished or has max_new_tokens tokens; fills `answers` in place."""
    logits = source.prefill(batch)
    active = list(range(batch.rows))  # request index of each live row
    for produced in range(1, max_new_tokens + 1):
        tokens = choose(logits, [controls[request] for request in active])
        chosen = tokens.tolist()  # one transfer per step, not one per row
        still_running: list[int] = []
        for row, request in enumerate(active):
            answer = answers[request]
            answer.add(chosen[row])
            cancelled = controls[request].cancelled
            if not answer.finished and cancelled is not None and cancelled():
                answer.finish("cancelled")
            if not answer.finished and produced == max_new_tokens:
                answer.finish("length")
            listener = controls[request].listener
            if listener is not None:
                piece = answer.take_stream_piece()
                if piece:
                    listener(piece)
            if not answer.finished:
                still_running.append(row)
        if not still_running:
            return
        if len(still_running) < len(active):
            source.keep_rows(still_running)
            tokens = tokens[still_running]
            active = [active[row] for row in still_running]
        logits = source.step(tokens)


def answer_token_by_token(
    source: LogitsSource,
    batch: PromptBatch,
    controls: list[RowControl],
    choose: Callable[[torch.Tensor, list[RowControl]], torch.Tensor],
    tokenizer,
    max_new_tokens: int,
) -> list[AnswerText]:
    """`decode_token_by_token` into fresh answers, one per row, each ending by its row's stop rule."""
    answers = answers_for(tokenizer, [control.stop_rule for control in controls])
    decode_token_by_token(source, batch, answers, controls, choose, max_new_tokens)
    return answers
