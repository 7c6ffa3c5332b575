"""From generated token ids to text: incremental detokenizing, stop strings, streamable pieces.

Decoding a growing id list from scratch every step costs O(n^2). `AnswerText` decodes only a short
window: the ids since the last emitted boundary, decoded once without and once with the new ids, and
keeps the difference (the scheme vLLM uses). A window that ends inside a multi-byte character decodes
to U+FFFD and is held until the character completes.

Special tokens are kept in the decoded text so that stop strings that are special tokens
(`</s>`, `<|eot_id|>`, `<|im_end|>`) are seen. The answer ends *before* the first stop string or
end-of-sequence id; text that might still become a stop string is held back from streaming.
What users read — the streamed pieces and the final answer — has the remaining special tokens
removed, as `decode(..., skip_special_tokens=True)` gives it (LLaVA's scripts and HF `generate`
users read answers that way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

REPLACEMENT_CHARACTER = "\ufffd"


@dataclass
class StopRule:
    """When an answer ends: an end-of-sequence id, or a stop string anywhere in the text."""

    eos_ids: frozenset[int]
    stop_strings: tuple[str, ...]

    def with_extra(self, stop_strings: tuple[str, ...] | list[str]) -> "StopRule":
        extra = tuple(stop for stop in stop_strings if stop and stop not in self.stop_strings)
        return StopRule(self.eos_ids, self.stop_strings + extra) if extra else self

    def longest_stop(self) -> int:
        return max((len(stop) for stop in self.stop_strings), default=0)

    def find_stop(self, text: str, search_from: int = 0) -> int:
        """Index of the earliest stop string starting at or after `search_from`, or -1."""
        found = -1
        for stop in self.stop_strings:
            index = text.find(stop, max(0, search_from))
            if index != -1 and (found == -1 or index < found):
                found = index
        return found

    def held_back(self, text: str) -> int:
        """Length of the longest end of `text` that is the start of a stop string (may still grow into one)."""
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest


@dataclass
class AnswerText:
    """The answer of one request, fed one token at a time."""

    tokenizer: object
    rule: StopRule
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far, cut at a stop string once one appears
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" once finished
    _prefix_offset: int = 0
    _read_offset: int = 0
    _streamed: int = 0  # characters of `text` already handed out by `take_stream_piece`
    _special_tokens: tuple[str, ...] | None = None  # None: read off the tokenizer (`answers_for` reads it once for many)
    _backend_decode: object = None  # the Rust tokenizer's decode, when it gives what `tokenizer.decode` gives

    def __post_init__(self) -> None:
        if self._special_tokens is None:
            self._special_tokens = special_token_strings(self.tokenizer)
            self._backend_decode = _backend_decode(self.tokenizer)

    @property
    def visible_text(self) -> str:
        """The answer as users read it: `text` without special tokens."""
        return remove_special(self.text, self._special_tokens)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add(self, token_id: int) -> None:
        if self.finished:
            raise RuntimeError("token added to a finished answer")
        self.token_ids.append(token_id)
        if token_id in self.rule.eos_ids:
            self.finish_reason = "stop"
            return
        previous = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        current = self._decode(self.token_ids[self._prefix_offset :])
        if len(current) <= len(previous) or current.endswith(REPLACEMENT_CHARACTER):
            return  # an incomplete character: wait for the next token
        new_text = current[len(previous) :]
        search_from = len(self.text) - self.rule.longest_stop() + 1
        self.text += new_text
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        stop_at = self.rule.find_stop(self.text, search_from)
        if stop_at != -1:
            self.text = self.text[:stop_at]
            self.finish_reason = "stop"

    def finish(self, reason: str) -> None:
        """End without a stop: flush any characters still waiting for their last byte."""
        if self.finished:
            return
        pending = self.token_ids[self._read_offset :]
        if pending:
            previous = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
            current = self._decode(self.token_ids[self._prefix_offset :])
            self.text += current[len(previous) :]
        self.finish_reason = reason

    def take_stream_piece(self) -> str:
        """Visible text not handed out yet, minus an ending that may still turn into a stop string
        or that may be the start of a special token (so no piece boundary splits one, and the pieces
        joined equal `visible_text`)."""
        if self.finished:
            end = len(self.text)
        else:
            end = len(self.text) - max(self.rule.held_back(self.text), _partial_special(self.text, self._special_tokens))
        if end <= self._streamed:
            return ""
        piece = self.text[self._streamed : end]
        self._streamed = end
        return remove_special(piece, self._special_tokens)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self._backend_decode is not None:
            return self._backend_decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _backend_decode(tokenizer):
    """The `tokenizers` decode behind a fast tokenizer whose own decode adds nothing to it without
    clean-up: the same text without transformers' per-call argument conversion (two decodes per
    token and row make that conversion a tenth of a small model's decoding time). None otherwise."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(tokenizer, PreTrainedTokenizerFast) or type(tokenizer)._decode is not PreTrainedTokenizerFast._decode:
        return None
    return getattr(backend, "decode", None)


def answers_for(tokenizer, rules: list[StopRule]) -> list[AnswerText]:
    """A fresh answer per stop rule, the tokenizer's special tokens and decode read once for all of them
    (per answer, that reading costs as much as a short answer's decoding)."""
    special, backend = special_token_strings(tokenizer), _backend_decode(tokenizer)
    return [AnswerText(tokenizer, rule, _special_tokens=special, _backend_decode=backend) for rule in rules]


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens as strings, longest first (so a longer one is removed whole)."""
    return tuple(sorted({token for token in tokenizer.all_special_tokens if token}, key=len, reverse=True))


def remove_special(text: str, special_tokens: tuple[str, ...]) -> str:
    """`text` without the special tokens the model emitted mid-answer (e.g. `<|im_end|>` under a
    template that does not stop on it). Assumes, as `skip_special_tokens` decoding does, that these
    strings are produced only as the special tokens themselves."""
    for special in special_tokens:
        text = text.replace(special, "")
    return text


def _partial_special(text: str, special_tokens: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper start of a special token."""
    longest = 0
    for special in special_tokens:
        for size in range(min(len(special) - 1, len(text)), longest, -1):
            if text.endswith(special[:size]):
                longest = size
                break
    return longest


def final_answer(tokenizer, rule: StopRule, token_ids: list[int], finish_reason: str) -> AnswerText:
    """The answer of a finished id list (beam search picks its winner only at the end)."""
    answer = AnswerText(tokenizer, rule)
    for token in token_ids:
        answer.add(token)
        if answer.finished:
            break
    answer.finish(finish_reason)
    return answer


def hits_stop(tokenizer, rule: StopRule, token_ids: list[int]) -> bool:
    """Whether the last token of `token_ids` ends the answer (eos id, or completes a stop string).

    Only the tail is decoded: a stop string of n characters spans at most 4n byte-level tokens.
    """
    if not token_ids:
        return False
    if token_ids[-1] in rule.eos_ids:
        return True
    if not rule.stop_strings:
        return False
    span = 4 * rule.longest_stop() + 2
    tail = tokenizer.decode(token_ids[-span:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return rule.find_stop(tail) != -1
