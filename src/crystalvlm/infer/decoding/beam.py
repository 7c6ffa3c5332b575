"""Beam search, batched over requests, with the semantics of `transformers`' beam search.

Per request and step (B beams, V tokens, K = max(2, 1 + number of eos ids) * B):

1. accumulated = running score of the beam + log p(token | beam), over all B * V continuations;
2. the K best continuations are taken; those that end the answer (eos id, a stop string, or the
   last allowed token) are *finished* and the best B others keep *running*;
3. a finished continuation among the first B is stored with score / generated_length ** length_penalty,
   the B best finished hypotheses are kept;
4. the request is done when no running beam can still beat the worst kept hypothesis (the same
   heuristic as transformers with early_stopping=False), or when every continuation ended.

The answer is the best finished hypothesis. `BeamSearchState` holds one request's beams and is reused
by OPERA, which changes the per-step scores but keeps this bookkeeping (`new_beam_states` and
`best_answers` too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from crystalvlm.infer.decoding.greedy_sampling import RowControl
from crystalvlm.infer.decoding.strategy import BEAMS, LENGTH, DecodingContext, DecodingStrategy
from crystalvlm.infer.runner import ModelRunner, PromptBatch
from crystalvlm.infer.text_stream import AnswerText, final_answer, hits_stop

NEGATIVE = -1.0e9  # transformers' "impossible" score: finite, so sums stay well defined


@dataclass
class Hypothesis:
    token_ids: list[int]
    score: float
    ended: bool  # by eos / stop string (False: cut by the length limit)


class BeamSearchState:
    """One request's running beams and best finished hypotheses."""

    def __init__(self, num_beams: int, length_penalty: float, eos_count: int, ends: Callable[[list[int]], bool]) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.ends = ends  # whether a token list ends the answer (its last token is eos / completes a stop)
        self.candidates = max(2, 1 + eos_count) * num_beams
        self.running: list[list[int]] = [[] for _ in range(num_beams)]
        # Only the first beam is live at the start: all beams hold the same prompt.
        self.running_scores = torch.full((num_beams,), NEGATIVE)
        self.running_scores[0] = 0.0
        self.finished_scores = torch.full((num_beams,), NEGATIVE)
        self.finished: list[Hypothesis | None] = [None] * num_beams
        self.improvable = True
        self.all_ended = False

    @property
    def done(self) -> bool:
        return not self.improvable or self.all_ended

    @property
    def generated(self) -> int:
        return len(self.running[0])

    def copy(self) -> "BeamSearchState":
        twin = BeamSearchState.__new__(BeamSearchState)
        twin.__dict__.update(self.__dict__)
        twin.running = [list(tokens) for tokens in self.running]
        twin.running_scores = self.running_scores.clone()
        twin.finished_scores = self.finished_scores.clone()
        twin.finished = list(self.finished)
        return twin

    def advance(self, step_log_probs: torch.Tensor, last_step: bool) -> tuple[list[int], list[int]]:
        """Choose the next beams from (B, V) per-token log-probabilities (-inf: not allowed).

        Returns, for each new running beam, the index of the beam it extends and its new token.
        """
        vocab = step_log_probs.shape[-1]
        accumulated = step_log_probs.float() + self.running_scores.to(step_log_probs.device)[:, None]
        top_scores, top_index = torch.topk(accumulated.view(-1), self.candidates)
        top_scores, top_index = top_scores.cpu(), top_index.cpu()
        parents = (top_index // vocab).tolist()
        tokens = (top_index % vocab).tolist()
        sequences = [self.running[parent] + [token] for parent, token in zip(parents, tokens)]
        ended = torch.tensor([last_step or self.ends(sequence) for sequence in sequences])
        generated = self.generated + 1

        # Running beams: the best B continuations that did not end.
        running_order = torch.topk(top_scores + ended.float() * NEGATIVE, self.num_beams).indices.tolist()
        chosen_parents = [parents[i] for i in running_order]
        chosen_tokens = [tokens[i] for i in running_order]
        self.running = [sequences[i] for i in running_order]
        self.running_scores = (top_scores + ended.float() * NEGATIVE)[running_order]

        # Finished hypotheses: an ending continuation among the first B, scored per generated token.
        normalised = top_scores / (generated**self.length_penalty)
        eligible = ended.clone()
        eligible[self.num_beams :] = False
        if not self.improvable:
            eligible[:] = False
        normalised = normalised + (~eligible).float() * NEGATIVE
        merged_scores = torch.cat([self.finished_scores, normalised])
        merged = self.finished + [
            Hypothesis(sequence, float(score), ended_by_token)
            for sequence, score, ended_by_token in zip(
                sequences, normalised.tolist(), [not last_step or self.ends(s) for s in sequences]
            )
        ]
        merged_finished = torch.cat([self._finished_flags(), eligible])
        keep = torch.topk(merged_scores, self.num_beams).indices.tolist()
        self.finished_scores = merged_scores[keep]
        self.finished = [merged[i] if merged_finished[i] else None for i in keep]

        self.all_ended = bool(ended.all())
        # Could the best running beam still beat the worst kept hypothesis?
        best_possible = self.running_scores[0] / (generated**self.length_penalty)
        flags = self._finished_flags()
        worst_kept = torch.where(flags, self.finished_scores.min(), torch.tensor(NEGATIVE))
        self.improvable = self.improvable and bool((best_possible > worst_kept).any())
        return chosen_parents, chosen_tokens

    def best(self) -> Hypothesis:
        for hypothesis in self.finished:
            if hypothesis is not None:
                return hypothesis
        return Hypothesis(self.running[0], float(self.running_scores[0]), False)

    def _finished_flags(self) -> torch.Tensor:
        return torch.tensor([hypothesis is not None for hypothesis in self.finished])


def beam_search(
    runner: ModelRunner,
    batch: PromptBatch,
    states: list[BeamSearchState],
    controls: list[RowControl],
    max_new_tokens: int,
) -> None:
    """Beam search for every row of `batch` at once; each request's result is `states[i].best()`."""
    num_beams = states[0].num_beams
    logits = runner.prefill(batch)  # (N, V): every beam of a request starts from the same prompt
    runner.select_rows(torch.arange(batch.rows).repeat_interleave(num_beams))
    logits = logits.repeat_interleave(num_beams, dim=0)  # (N * B, V)
    active = list(range(batch.rows))
    for generated in range(1, max_new_tokens + 1):
        log_probs = torch.log_softmax(logits, dim=-1)
        keep_rows: list[int] = []
        next_tokens: list[int] = []
        still_running: list[int] = []
        for slot, request in enumerate(active):
            state = states[request]
            rows = slice(slot * num_beams, (slot + 1) * num_beams)
            parents, tokens = state.advance(log_probs[rows], last_step=generated == max_new_tokens)
            cancelled = controls[request].cancelled
            if state.done or (cancelled is not None and cancelled()):
                continue
            still_running.append(request)
            keep_rows += [slot * num_beams + parent for parent in parents]
            next_tokens += tokens
        if not still_running:
            return
        runner.select_rows(keep_rows)
        logits = runner.step(torch.tensor(next_tokens))
        active = still_running


class BeamDecoding(DecodingStrategy):
    name = "beam"
    uses = LENGTH | BEAMS

    def decode(self, context, batch, controls):
        states = new_beam_states(context, controls, self.config.num_beams, self.config.length_penalty)
        beam_search(context.runner, batch, states, controls, self.config.max_new_tokens)
        return best_answers(context, states, controls)


def new_beam_states(context: DecodingContext, controls: list[RowControl], num_beams: int,
                    length_penalty: float) -> list[BeamSearchState]:
    """One empty search per request; a beam ends by an eos id or its request's stop strings."""

    def ends_for(control: RowControl) -> Callable[[list[int]], bool]:
        return lambda token_ids: hits_stop(context.tokenizer, control.stop_rule, token_ids)

    return [BeamSearchState(num_beams, length_penalty, context.eos_count, ends_for(control)) for control in controls]


def best_answers(context: DecodingContext, states: list[BeamSearchState], controls: list[RowControl]) -> list[AnswerText]:
    """Each request's best hypothesis as its answer; a listener gets the whole text at once (beams
    change their earlier tokens until the search ends, so nothing can be streamed before)."""
    answers = []
    for state, control in zip(states, controls):
        best = state.best()
        cancelled = control.cancelled is not None and control.cancelled()
        reason = "cancelled" if cancelled and not best.ended else ("stop" if best.ended else "length")
        answer = final_answer(context.tokenizer, control.stop_rule, best.token_ids, reason)
        piece = answer.take_stream_piece() if control.listener is not None else ""
        if piece:
            control.listener(piece)
        answers.append(answer)
    return answers
