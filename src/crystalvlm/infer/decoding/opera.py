"""OPERA: Over-trust Penalty and Retrospection-Allocation (Huang et al., CVPR 2024).

Beam search in which every beam's next token is chosen among its top `num_candidates` tokens, and
each candidate's score is lowered by how much the continuation would "over-trust" a summary token:

* For each candidate the model is run one token further and the last layer's self-attention is read
  (maximum over heads, rows renormalised to sum to 1). Restricted to the generated tokens (the
  local window) this is a lower-triangular matrix w; column j of w scaled by `scale_factor`,
  multiplied from row j down to the candidate's row,

      phi_j = 1e-7 * prod_{i >= j} (scale_factor * w[i, j]),

  is large when every later token keeps attending strongly to token j — the knowledge-aggregation
  pattern the paper links to hallucination. The penalty is max_j phi_j.
* For the first `warmup` (10) tokens the window is too short to show that pattern; instead the
  candidate is rewarded by its attention to the image tokens (penalty = -attention mass on the image).
* Scores: candidate logits minus `penalty_weight` * penalty, renormalised over the candidates (as the
  paper's softmax over candidates), then scaled by the probability mass the model gave the
  candidates. That last factor is the one deviation from the reference code: it keeps the scores of
  different beams comparable as in beam search, so that with penalty weight 0 and rollback off the
  search is exactly beam search (tokens outside the candidates are excluded only when a penalty is
  applied, since only candidates have one).
* Retrospection-allocation: each step records, per beam, the most frequent argmax_j over its
  candidates. When, in every beam, one position was that argmax more than `threshold` (15) times,
  the search rolls back to just after that position (at most `max_rollbacks` times per position,
  else one position earlier), restores the beams as they were there, and chooses again with the
  tokens chosen before excluded — at that step from the plain model distribution, as the reference does.
  (The reference caps rollbacks per position at num_attn_candidates; here that cap is `max_rollbacks`,
  5 by default like the candidates.) Rollback needs a real summary token: when tokens attend mostly to
  the prompt, as in a random model, the newest column has the largest phi, the argmax moves every step
  and no position ever repeats often enough.

Defaults and constants follow the reference implementation (shikiw/OPERA, transformers-4.29.2
generation/utils.py): 5 beams, 5 candidates, scale 50, weight 1, threshold 15, 1e-7, window 512.
The reference stores phi in float16, which saturates at 65504; phi is clamped there rather than left
to overflow to inf (computed in log space, float32).

Each request is decoded alone (its B beams are the batch): rollbacks move a request back by a
request-specific number of tokens, which a shared batch cannot follow. The language model runs
with eager attention while OPERA runs, because only that path returns attention weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from crystalvlm.infer.decoding.beam import BeamSearchState, best_answers, new_beam_states
from crystalvlm.infer.decoding.greedy_sampling import RowControl
from crystalvlm.infer.decoding.settings import setting
from crystalvlm.infer.decoding.strategy import BEAMS, LENGTH, DecodingStrategy
from crystalvlm.infer.runner import ModelRunner, PromptBatch

PHI_SCALE = 1e-7  # the reference's constant factor in front of the column product
PHI_CEILING = 65504.0  # float16's largest finite value: the reference's phi saturates here


@dataclass(frozen=True)
class OperaParams:
    """OPERA's own settings (`opera:key=value`). Server caps bound the work one request can cause: every
    candidate is one more forward per step, and each rollback rebuilds the cache over up to `history` tokens."""

    num_candidates: int = setting(5, low=1, server_cap=10)  # tokens per beam whose attention is probed (num_attn_candidates)
    scale_factor: float = setting(50.0, above=0)  # attention weights are scaled by this before the column product
    penalty_weight: float = setting(1.0, low=0)  # weight of the over-trust penalty subtracted from candidate scores
    threshold: int = setting(15, low=1)  # roll back once one summary position was the maximum more often than this
    max_rollbacks: int = setting(5, low=0, server_cap=10)  # rollbacks allowed to one position
    rollback: bool = True  # retrospection-allocation on/off
    warmup: int = setting(10, low=1)  # first tokens use the image-attention reward; no rollback to positions before it
    history: int = setting(512, low=1, server_cap=1024)  # steps kept for rollback (OPERA's window_size)


class OperaDecoding(DecodingStrategy):
    name = "opera"
    params_type = OperaParams
    uses = LENGTH | BEAMS
    one_request_at_a_time = True  # a rollback moves one request back by its own number of tokens

    def decode(self, context, batch, controls):
        config = self.config
        (state,) = new_beam_states(context, controls, config.num_beams, config.length_penalty)
        image_columns = (batch.input_ids[0] == context.image_token_id).to(context.runner.device)  # (L,) bool
        search = OperaSearch(context.runner, config.params, state, image_columns, config.max_new_tokens, controls[0])
        return best_answers(context, [search.run(batch)], controls)


def normalised_last_row(attention: torch.Tensor) -> torch.Tensor:
    """(R, heads, q, T) attention -> (R, T): last query row, max over heads, renormalised to sum 1."""
    row = attention[:, :, -1, :].float().amax(dim=1)
    return row / row.sum(dim=-1, keepdim=True).clamp_min(1e-30)


def column_log_products(window: torch.Tensor, scale: float) -> torch.Tensor:
    """sum_{i >= j} log(scale * w[i, j]) for each column j of (R, k, k) lower-triangular windows -> (R, k)."""
    size = window.shape[-1]
    if size == 0:
        return window.new_zeros(window.shape[0], 0)
    lower = torch.ones(size, size, dtype=torch.bool, device=window.device).tril()
    logs = torch.log(scale * window)  # log 0 = -inf: a zero anywhere in the column makes the product 0
    return torch.where(lower, logs, torch.zeros_like(logs)).sum(dim=-2)


def over_trust_scores(window: torch.Tensor, candidate_rows: torch.Tensor, scale: float) -> torch.Tensor:
    """phi_j for every beam, candidate and window column.

    window: (B, k, k) normalised attention among the k generated tokens (row i: token i's attention);
    candidate_rows: (B, C, k + 1) each candidate's normalised attention to the generated tokens and itself.
    Returns (B, C, k + 1), clamped to PHI_CEILING.
    """
    previous = column_log_products(window, scale)  # (B, k)
    previous = torch.cat([previous, previous.new_zeros(previous.shape[0], 1)], dim=-1)  # the candidate's own column
    log_phi = math.log(PHI_SCALE) + previous[:, None, :] + torch.log(scale * candidate_rows)
    # Clamped after exp: exp(log(65504)) is 65504.0117 in float32, so clamping the log would not cap phi exactly.
    return torch.exp(log_phi).clamp(max=PHI_CEILING)


def candidate_scores(candidate_log_probs: torch.Tensor, penalty: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, C) scores: softmax over candidates of (log p - weight * penalty), times the candidates' mass.

    With weight 0 these are exactly the model's log-probabilities.
    """
    adjusted = candidate_log_probs - weight * penalty
    return adjusted - torch.logsumexp(adjusted, dim=-1, keepdim=True) + torch.logsumexp(
        candidate_log_probs, dim=-1, keepdim=True
    )


@dataclass
class StepRecord:
    """What OPERA remembers of the step that chose generated token number `len(beams.running[0])`."""

    beams: BeamSearchState  # before the choice
    row_ids: list[list[int]]  # per beam: ids (into the row store) of its tokens' attention rows
    summary_positions: torch.Tensor | None = None  # (B,) per beam, the most frequent argmax_j of its candidates
    chosen: tuple[list[int], list[int]] | None = None  # (parents, tokens) chosen at this step


@dataclass
class OperaSearch:
    runner: ModelRunner
    params: OperaParams
    state: BeamSearchState
    image_columns: torch.Tensor  # (L,) bool: which prompt positions are image tokens
    max_new_tokens: int
    control: RowControl
    rollbacks_done: int = 0
    _rows: list[torch.Tensor] = field(default_factory=list)  # attention row store: row of token i has i + 1 entries
    _row_ids: list[list[int]] = field(default_factory=list)
    _window: torch.Tensor | None = None  # (B, k, k)
    _history: list[StepRecord] = field(default_factory=list)
    _rejected: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # position -> (beam, token) excluded
    _rollbacks_at: dict[int, int] = field(default_factory=dict)

    def run(self, batch: PromptBatch) -> BeamSearchState:
        if batch.rows != 1:
            raise ValueError(f"OPERA decodes one request at a time, got a batch of {batch.rows}")
        beams = self.state.num_beams
        prompt_length = batch.input_ids.shape[1]
        device = self.runner.device
        with self.runner.capture_last_layer_attention():
            logits = self.runner.prefill(batch)
            prompt_state = self.runner.snapshot()
            self.runner.select_rows([0] * beams)
            logits = logits.expand(beams, -1)
            self._row_ids = [[] for _ in range(beams)]
            self._window = torch.zeros(beams, 0, 0, device=device)
            parents: list[int] | None = None
            while True:
                generated = self.state.generated
                if parents is not None:
                    self._append_rows(parents, normalised_last_row(self.runner.last_attention)[:, prompt_length:])
                record = StepRecord(self.state.copy(), [list(ids) for ids in self._row_ids])
                self._history.append(record)
                step_scores, record.summary_positions = self._penalised_scores(logits, prompt_length)
                target = self._rollback_target(generated) if self.params.rollback else None
                if target is not None:
                    step_scores = self._roll_back(target, prompt_state)
                    record = self._history[target]
                    generated = target
                parents, tokens = self.state.advance(step_scores, last_step=generated + 1 >= self.max_new_tokens)
                record.chosen = (parents, tokens)
                cancelled = self.control.cancelled
                if self.state.done or (cancelled is not None and cancelled()):
                    return self.state
                self.runner.select_rows(parents)
                logits = self.runner.step(torch.tensor(tokens))

    # ------------------------------------------------------------------ over-trust penalty
    def _penalised_scores(self, logits: torch.Tensor, prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V) step scores and (B,) per-beam summary positions for this step."""
        params = self.params
        log_probs = torch.log_softmax(logits, dim=-1)
        candidate_log_probs, candidates = torch.topk(log_probs, params.num_candidates, dim=-1)  # (B, C)
        image_attention, candidate_rows = [], []
        for column in range(params.num_candidates):
            self.runner.step(candidates[:, column])
            row = normalised_last_row(self.runner.last_attention)  # (B, T + 1)
            self.runner.drop_last_tokens(1)
            image_attention.append(row[:, :prompt_length][:, self.image_columns].sum(dim=-1))
            candidate_rows.append(row[:, prompt_length:])
        image_attention = torch.stack(image_attention, dim=1)  # (B, C)
        phi = over_trust_scores(self._window, torch.stack(candidate_rows, dim=1), params.scale_factor)  # (B, C, k+1)
        over_trust, positions = phi.max(dim=-1)  # (B, C)
        in_warmup = phi.shape[-1] <= params.warmup
        penalty = -image_attention if in_warmup else over_trust
        scores = candidate_scores(candidate_log_probs, penalty, params.penalty_weight)
        if params.penalty_weight > 0:
            step_scores = torch.full_like(log_probs, float("-inf")).scatter(1, candidates, scores)
        else:
            step_scores = log_probs
        return step_scores, positions.mode(dim=-1).values

    # ------------------------------------------------------------------ retrospection-allocation
    def _rollback_target(self, generated: int) -> int | None:
        """The position to choose again, or None. Follows the reference's rules (see module doc)."""
        params = self.params
        summaries = torch.stack([record.summary_positions for record in self._history], dim=1)  # (B, steps)
        position = int(summaries[:, -1].mode().values)
        if position < params.warmup:
            return None
        if not bool(((summaries == position).sum(dim=1) > params.threshold).all()):
            return None
        target = position + 1
        if self._rollbacks_at.get(target, 0) >= params.max_rollbacks:
            target -= 1
            if self._rollbacks_at.get(target, 0) >= params.max_rollbacks:
                return None
        counted = target
        if (generated + 1) - target > params.history + 1:
            target = max(1, generated - params.history)
        if target >= generated:  # nothing chosen there yet: nothing to take back (and nothing counted)
            return None
        self._rollbacks_at[counted] = self._rollbacks_at.get(counted, 0) + 1
        return target

    def _roll_back(self, target: int, prompt_state) -> torch.Tensor:
        """Return to the step that chose token `target`; its (B, V) scores without the earlier choices."""
        record = self._history[target]
        del self._history[target + 1 :]
        parents, tokens = record.chosen
        self._rejected[target] = self._rejected.get(target, []) + list(zip(parents, tokens))
        for position in [p for p in self._rejected if p > target]:
            del self._rejected[position]
        self.state = record.beams.copy()
        self._row_ids = [list(ids) for ids in record.row_ids]
        self._window = self._build_window(self._row_ids, target)
        self.rollbacks_done += 1

        # Rebuild the cache: the prompt once more, then each restored beam's tokens.
        beams = self.state.num_beams
        self.runner.restore(prompt_state)
        self.runner.select_rows([0] * beams)
        logits = self.runner.extend(torch.tensor(self.state.running))
        step_scores = torch.log_softmax(logits, dim=-1)
        beam_index = torch.tensor([beam for beam, _ in self._rejected[target]])
        token_index = torch.tensor([token for _, token in self._rejected[target]])
        step_scores[beam_index.to(step_scores.device), token_index.to(step_scores.device)] = float("-inf")
        return step_scores

    # ------------------------------------------------------------------ local attention window
    def _append_rows(self, parents: list[int], new_rows: torch.Tensor) -> None:
        """Reorder the window to the chosen parents and add each beam's newest token's row (B, k + 1)."""
        index = torch.tensor(parents, device=self._window.device)
        window = self._window.index_select(0, index)
        size = window.shape[-1]
        grown = torch.zeros(window.shape[0], size + 1, size + 1, device=window.device)
        grown[:, :size, :size] = window
        grown[:, size, :] = new_rows
        self._window = grown
        new_ids = []
        for beam, parent in enumerate(parents):
            self._rows.append(new_rows[beam].clone())
            new_ids.append(self._row_ids[parent] + [len(self._rows) - 1])
        self._row_ids = new_ids

    def _build_window(self, row_ids: list[list[int]], size: int) -> torch.Tensor:
        window = torch.zeros(len(row_ids), size, size, device=self.runner.device)
        for beam, ids in enumerate(row_ids):
            for position, row_id in enumerate(ids):
                window[beam, position, : position + 1] = self._rows[row_id]
        return window
