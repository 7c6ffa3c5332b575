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

`pack_shared_prefill` runs a three-step plan in two forwards (`runner.PackedPrefill`): the batch
prefix and the group prefixes side by side in one row with a tree-shaped mask (a token sees the
earlier tokens of its own segment and of its ancestors: the group rows see the batch prefix, not each
other), the row's cache gathered into one row per group, then the own-tokens step as before. Each
forward has a fixed cost that dominates at small sizes; the packed row's attention is P x P, so it is
used while the prefixes are at most `PACK_UP_TO` tokens together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crystalvlm.infer.prompts import PreparedPrompt, left_padded, left_padded_mask, stack_images
from crystalvlm.infer.runner import PackedPrefill, PrefillStep

# Use the plan only when it computes at most this fraction of the plain prefill's positions: each
# step is another forward (fixed cost) and padding inside rows lengthens every later attention.
PAYS_BELOW = 0.85
# Pack the batch and group prefixes into one forward while they hold at most this many tokens together:
# the packed row's (P, P) attention is then small beside the rest of the forward.
PACK_UP_TO = 2048

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
    """How many leading keys the two share. Found by halving with list comparisons, which run in C: the
    prompts of a batch share most of their keys, and a key-by-key Python loop was the slow part."""
    limit = min(len(first), len(second))
    if first[:limit] == second[:limit]:
        return limit
    equal, differs = 0, limit  # first[:equal] == second[:equal]; they differ within first[:differs]
    while differs - equal > 1:
        middle = (equal + differs) // 2
        if first[equal:middle] == second[equal:middle]:
            equal = middle
        else:
            differs = middle
    return equal


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
    id_rows, position_rows = [], []
    images: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    for row in level:
        prompt = prompts[row.prompt]
        id_rows.append(prompt.input_ids[row.start : row.end])
        position_rows.append(range(row.start, row.end))
        for image, (start, end) in enumerate(keys[row.prompt].image_spans):
            if row.start <= start and end <= row.end:  # a row holds whole images only (see _shared_split)
                images.append(prompt.pixel_values[image : image + 1])  # type: ignore[index]
                if prompt.image_sizes is not None:
                    sizes.append(prompt.image_sizes[image : image + 1])  # type: ignore[index]
    parents = None if level[0].parent is None else [row.parent for row in level]
    return PrefillStep(parents, left_padded(id_rows, pad_token_id, width),
                       left_padded_mask([len(row) for row in id_rows], width),
                       left_padded(position_rows, 1, width),  # type: ignore[arg-type]
                       stack_images(images) if images else None, torch.cat(sizes) if sizes else None)


def _shared_levels(prompts: list[PreparedPrompt], image_token_id: int,
                   keys: list[PromptKeys] | None) -> tuple[list[PromptKeys], list[list[_Row]]]:
    """The prompts' keys (computed unless given) and their simplified sharing levels; no levels for
    fewer than two prompts (nothing to share)."""
    if len(prompts) < 2:
        return [], []
    keys = keys if keys is not None else [prompt_keys(prompt, image_token_id) for prompt in prompts]
    return keys, _simplify(_levels(keys))


def plan_shared_prefill(prompts: list[PreparedPrompt], image_token_id: int, pad_token_id: int,
                        pays_below: float = PAYS_BELOW, keys: list[PromptKeys] | None = None) -> list[PrefillStep] | None:
    """Prefill steps for `prompts` (in this order) sharing common prefixes; None when there is nothing to
    share or the steps would compute more than `pays_below` of a plain prefill's positions. `keys`: the
    prompts' `prompt_keys`, when the caller has them already."""
    keys, levels = _shared_levels(prompts, image_token_id, keys)
    if len(levels) < 2:
        return None
    steps = [_step(level, prompts, keys, pad_token_id) for level in levels]
    plain = len(prompts) * max(prompt.length for prompt in prompts)
    if sum(step.positions_computed for step in steps) > pays_below * plain:
        return None
    return steps


def pack_shared_prefill(prompts: list[PreparedPrompt], image_token_id: int, pad_token_id: int,
                        pays_below: float = PAYS_BELOW, pack_up_to: int = PACK_UP_TO,
                        keys: list[PromptKeys] | None = None) -> PackedPrefill | None:
    """The shared-prefix plan of `prompts` in two forwards instead of three (module docstring); None when
    there is nothing to share, sharing would not pay, the plan has fewer than three steps, or the
    packed row would be longer than `pack_up_to`. `keys`: the prompts' `prompt_keys`, when the caller
    has them already."""
    keys, levels = _shared_levels(prompts, image_token_id, keys)
    if len(levels) < 3:
        return None
    *prefix_levels, own_level = levels
    packed_length = sum(row.end - row.start for level in prefix_levels for row in level)
    then = _step(own_level, prompts, keys, pad_token_id)
    plain = len(prompts) * max(prompt.length for prompt in prompts)
    if packed_length + then.positions_computed > pays_below * plain or packed_length > pack_up_to:
        return None
    # Lay the prefix segments out level by level, numbered in that order.
    ids: list[int] = []
    positions: list[int] = []
    segment_of_token: list[int] = []
    first_token: list[int] = []  # per segment: where its tokens start in the row
    parent_segment: list[int | None] = []
    images: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []  # anyres only: (1, 2) per image
    segment_length: list[int] = []
    for depth, level in enumerate(prefix_levels):
        before = sum(len(earlier) for earlier in prefix_levels[:depth - 1]) if depth else 0
        for row in level:
            parent_segment.append(None if row.parent is None else before + row.parent)
            first_token.append(len(ids))
            segment_length.append(row.end - row.start)
            segment_of_token += [len(parent_segment) - 1] * (row.end - row.start)
            ids += prompts[row.prompt].input_ids[row.start : row.end]
            positions += range(row.start, row.end)
            for image, (start, end) in enumerate(keys[row.prompt].image_spans):
                if row.start <= start and end <= row.end:  # a row holds whole images only (see _shared_split)
                    images.append(prompts[row.prompt].pixel_values[image : image + 1])  # type: ignore[index]
                    if prompts[row.prompt].image_sizes is not None:
                        sizes.append(prompts[row.prompt].image_sizes[image : image + 1])  # type: ignore[index]
    # A segment sees itself and its ancestors; a token sees the earlier tokens of the segments it sees.
    sees = torch.zeros((len(parent_segment), len(parent_segment)), dtype=torch.bool)
    for segment, parent in enumerate(parent_segment):
        sees[segment, segment] = True
        if parent is not None:
            sees[segment] |= sees[parent]
    owner = torch.tensor(segment_of_token, dtype=torch.long)
    visible = sees[owner][:, owner] & torch.ones((len(ids), len(ids)), dtype=torch.bool).tril()

    # The cache rows the own-tokens step continues: one per segment of the last prefix level, holding
    # the tokens of its chain of segments, left padded.
    last = len(parent_segment) - len(prefix_levels[-1])
    chains = []
    for segment in range(last, len(parent_segment)):
        chain: list[int] = []
        walk: int | None = segment
        while walk is not None:
            chain = list(range(first_token[walk], first_token[walk] + segment_length[walk])) + chain
            walk = parent_segment[walk]
        chains.append(chain)
    width = max(len(chain) for chain in chains)
    gather = left_padded(chains, 0, width)
    attention_mask = left_padded_mask([len(chain) for chain in chains], width)
    return PackedPrefill(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        visible=visible,
        pixel_values=stack_images(images) if images else None,
        gather=gather,
        attention_mask=attention_mask,
        then=then,
        image_sizes=torch.cat(sizes) if sizes else None,
    )
