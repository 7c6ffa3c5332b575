"""Prefill that computes a prompt prefix once for all the requests of a batch that start with it.

An evaluation asks several questions about one image (POPE 6, MME 2), and every prompt of a template
starts with the same system prompt. Prompts are ~190 tokens of which the question is ~30, so a
plain batched prefill spends most of its compute on copies of the same prefix. The plan here builds
the batch's KV cache in up to three forwards (`runner.PrefillStep`):

  1. batch prefix:   the tokens every prompt starts with (BOS, system prompt, "USER: "), one row;
  2. group prefixes: requests with the same images at the same places (and the same tokens up to the
                     last of them) form a group; its common tokens after the batch prefix, one row
                     per group (the image is encoded once per group);
  3. own tokens:     the rest of each prompt, at least its last token, one row per request.

Between steps the cache rows are repeated to the next step's rows. A prefix covers whole images
only: an image's features are scattered over its token run in one forward. A step with no tokens is
skipped, and a step with as many rows as the one before is merged into it.

Why this is the same computation: a token attends to the tokens of its own prompt before it, at the
positions it has alone (explicit position ids; padding inside a row masked out), so logits equal the
plain prefill's up to the order of floating-point sums — greedy answers are those of one-at-a-time
decoding (tests/infer/test_prefix_sharing.py).

`plan_shared_prefill` returns None when the plan would not compute clearly fewer positions than one
plain left-padded forward (`PAYS_BELOW`), e.g. a batch of unrelated prompts without a system prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crystalvlm.infer.prompts import PreparedPrompt, stack_images
from crystalvlm.infer.runner import PrefillStep

# Use the plan only when it computes at most this fraction of the plain prefill's positions: each
# step is another forward (fixed cost) and padding inside rows lengthens every later attention.
PAYS_BELOW = 0.85

ImageKey = tuple[bytes, int]  # (digest of the image's pixel values, index of the token in the image's run)
TokenKey = int | ImageKey  # a text token's id, or which image and which of its tokens


@dataclass
class PromptKeys:
    """A prompt as one comparable key per token: two prompts agree on a prefix iff their keys do."""

    keys: list[TokenKey]
    image_spans: list[tuple[int, int]]  # [start, end) token run of each image, in order

    @property
    def length(self) -> int:
        return len(self.keys)

    @property
    def images_end(self) -> int:
        """Where the last image's token run ends (0 without images)."""
        return self.image_spans[-1][1] if self.image_spans else 0

    def cuts_an_image(self, split: int) -> bool:
        """Whether a split before token `split` would cut an image's token run in two."""
        return split < self.length and isinstance(self.keys[split], tuple) and self.keys[split][1] > 0

    def boundary_at_or_before(self, split: int) -> int:
        """The nearest split <= `split` that cuts no image."""
        while split > 0 and self.cuts_an_image(split):
            split -= 1
        return split


def prompt_keys(prompt: PreparedPrompt, image_token_id: int) -> PromptKeys:
    """Keys of a prompt: image tokens are keyed by their image's pixel values, so equal keys mean the
    same images at the same places (requests of an evaluation open the same file separately)."""
    image_positions = [index for index, token in enumerate(prompt.input_ids) if token == image_token_id]
    count = prompt.image_count
    if count == 0 and not image_positions:
        return PromptKeys(list(prompt.input_ids), [])
    if count == 0 or not image_positions or len(image_positions) % count:
        raise ValueError(f"a prompt has {len(image_positions)} image tokens for {count} image(s)")
    # Each image's run: equal for all images, or (anyres) its own length from its size.
    runs = list(prompt.image_runs) if prompt.image_runs is not None else [len(image_positions) // count] * count
    if sum(runs) != len(image_positions) or len(runs) != count:
        raise ValueError(f"a prompt has {len(image_positions)} image tokens for image runs {runs}")
    digests = prompt.image_digests
    keys: list[TokenKey] = list(prompt.input_ids)
    spans = []
    first = 0
    for image, run in enumerate(runs):
        positions = image_positions[first : first + run]
        for index, position in enumerate(positions):
            keys[position] = (digests[image], index)
        spans.append((positions[0], positions[-1] + 1))
        if positions[-1] + 1 - positions[0] != run:
            raise ValueError("an image's tokens are not one contiguous run in the prompt")
        first += run
    return PromptKeys(keys, spans)


def sharing_key(keys: PromptKeys) -> tuple:
    """Requests with equal sharing keys can share a prefix covering their images: the prompt up to the
    end of its last image (empty for text-only prompts)."""
    return tuple(keys.keys[: keys.images_end])


def _common_length(first: list[TokenKey], second: list[TokenKey]) -> int:
    limit = min(len(first), len(second))
    for index in range(limit):
        if first[index] != second[index]:
            return index
    return limit


def _shared_split(members: list[PromptKeys], floor: int) -> int:
    """The longest prefix all `members` share, leaving each at least one own token, cutting no image."""
    split = min(member.length for member in members) - 1
    for member in members[1:]:
        split = min(split, _common_length(members[0].keys, member.keys))
    return max(floor, members[0].boundary_at_or_before(split))


@dataclass
class _Row:
    """One row of a step: tokens [start, end) of prompt `prompt`, continuing row `parent` of the step before."""

    prompt: int
    start: int
    end: int
    parent: int | None


def _levels(keys: list[PromptKeys]) -> list[list[_Row]]:
    """Batch prefix, group prefixes, own tokens — before skipping empty steps and merging 1:1 steps."""
    everyone = _shared_split(keys, 0)
    groups: dict[tuple, list[int]] = {}
    for index, prompt in enumerate(keys):
        groups.setdefault(sharing_key(prompt), []).append(index)
    batch_level = [_Row(0, 0, everyone, None)]
    group_level: list[_Row] = []
    own_level: list[_Row | None] = [None] * len(keys)
    for group, members in enumerate(groups.values()):
        split = _shared_split([keys[index] for index in members], everyone)
        group_level.append(_Row(members[0], everyone, split, 0))
        for index in members:
            own_level[index] = _Row(index, split, keys[index].length, group)
    return [batch_level, group_level, own_level]  # type: ignore[list-item]


def _simplify(levels: list[list[_Row]]) -> list[list[_Row]]:
    """Skip steps without tokens and merge a step into the next when their rows correspond one to one."""
    kept: list[list[_Row]] = []
    for level in levels:
        if kept and len(level) == len(kept[-1]):
            # One child per row: extend each row of the step before by its child's tokens.
            before = kept[-1]
            kept[-1] = [_Row(row.prompt, before[row.parent].start, row.end, before[row.parent].parent)  # type: ignore[index]
                        for row in level]
            continue
        if kept and not any(row.end > row.start for row in kept[-1]):
            # The step before computes nothing: its rows' children continue its rows' parents.
            empty = kept.pop()
            level = [_Row(row.prompt, row.start, row.end, empty[row.parent].parent) for row in level]  # type: ignore[index]
        kept.append(level)
    return kept


def _step(level: list[_Row], prompts: list[PreparedPrompt], keys: list[PromptKeys], pad_token_id: int) -> PrefillStep:
    width = max(row.end - row.start for row in level)
    input_ids = torch.full((len(level), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(level), width), dtype=torch.long)
    position_ids = torch.ones((len(level), width), dtype=torch.long)
    images: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    for index, row in enumerate(level):
        count = row.end - row.start
        if count:
            prompt = prompts[row.prompt]
            input_ids[index, width - count :] = torch.tensor(prompt.input_ids[row.start : row.end], dtype=torch.long)
            attention_mask[index, width - count :] = 1
            position_ids[index, width - count :] = torch.arange(row.start, row.end)
        for image, (start, end) in enumerate(keys[row.prompt].image_spans):
            if row.start <= start and end <= row.end:  # a row holds whole images only (see _shared_split)
                images.append(prompts[row.prompt].pixel_values[image : image + 1])  # type: ignore[index]
                if prompts[row.prompt].image_sizes is not None:
                    sizes.append(prompts[row.prompt].image_sizes[image : image + 1])  # type: ignore[index]
    parents = None if level[0].parent is None else [row.parent for row in level]
    return PrefillStep(parents, input_ids, attention_mask, position_ids, stack_images(images) if images else None,  # type: ignore[arg-type]
                       torch.cat(sizes) if sizes else None)


def plan_shared_prefill(prompts: list[PreparedPrompt], image_token_id: int, pad_token_id: int,
                        pays_below: float = PAYS_BELOW) -> list[PrefillStep] | None:
    """Prefill steps for `prompts` (in this order) sharing common prefixes; None when there is nothing to
    share or the steps would compute more than `pays_below` of a plain prefill's positions."""
    if len(prompts) < 2:
        return None
    keys = [prompt_keys(prompt, image_token_id) for prompt in prompts]
    levels = _simplify(_levels(keys))
    if len(levels) < 2:
        return None
    steps = [_step(level, prompts, keys, pad_token_id) for level in levels]
    plain = len(prompts) * max(prompt.length for prompt in prompts)
    if sum(step.positions_computed for step in steps) > pays_below * plain:
        return None
    return steps
