"""Forward passes of an HF Llava model over a batch of rows with a KV cache — and nothing else.

Decoding strategies decide which tokens to feed; this class only computes. Rows are left padded:
positions come from the attention mask (`cumsum - 1`, as `transformers.generate` does), so a padded
row computes exactly what it would alone. Rows can be reordered, repeated or dropped (beam search,
finished requests), and the last tokens can be taken back (OPERA's probing of candidates).

A batch may instead carry `prefill_steps` (shared_prefix.py): the prompts' cache is then built in a few
forwards, each extending rows of the previous one, so that a prefix shared by several rows (system
prompt, image, question stem) is computed once and its cache rows repeated.

Everything is written against the stable `transformers` 5.x surface: the model's forward with a
cache, `DynamicCache.reorder_cache` and `DynamicCache.crop(-n)` (a negative count removes tokens in
every 5.x release). The cache's keyword is the one exception: it was renamed from `past_key_values` to
`cache` during 5.x (5.24 warns on the old name, which goes in 5.40), so it is read off the model's
forward once (`cache_keyword`) and used both to pass the cache and to read it from the output.
"""

from __future__ import annotations

import copy
import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

import torch


@functools.cache
def cache_keyword(model_class: type) -> str:
    """The name under which `model_class.forward` takes the KV cache, and its output returns it:
    `cache` in transformers releases that renamed it, `past_key_values` before.

    Read from the signature (transformers' decorators keep the wrapped function's, via __wrapped__). A
    forward that names neither (a wrapper taking **kwargs) gets `past_key_values`, which every 5.x
    release accepts.
    """
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def image_size_inputs(image_sizes: torch.Tensor | None, device) -> dict:
    """The `image_sizes` argument for a LlavaNext (anyres) model; nothing for a Llava."""
    return {} if image_sizes is None else {"image_sizes": image_sizes.to(device)}


@dataclass
class PrefillStep:
    """One forward of a prefill done in steps: every row continues a row of the cache built so far.

    A row's tokens sit at the right of the step, padding at its left, so padding can sit inside a
    prompt (between a shared prefix and a row's own tokens); the attention mask hides it and the
    position ids are each token's index in its own prompt, so a token sees what it sees alone.
    """

    parent_rows: list[int] | None  # cache row each row continues (repeats allowed); None: the first step
    input_ids: torch.Tensor  # (R_s, W) long, left padded within the step
    attention_mask: torch.Tensor  # (R_s, W) long, 0 on padding
    position_ids: torch.Tensor  # (R_s, W) long: index of each token in its own prompt, 1 on padding
    pixel_values: torch.Tensor | None  # (I_s, 3, S, S): the images whose tokens are in this step, in row order
    image_sizes: torch.Tensor | None = None  # (I_s, 2) anyres only: (height, width) of those images

    @property
    def positions_computed(self) -> int:
        """Positions the model computes in this step, padding included."""
        return self.input_ids.numel()


@dataclass
class PackedPrefill:
    """A three-step shared-prefix prefill in two forwards: the prefix segments (batch prefix, group
    prefixes) side by side in one row of P tokens, each token seeing only its own prompt's earlier tokens
    (`visible`) at the positions it has in its prompt; that row's cache is gathered into one left-padded
    row per group (`gather`), and the own-tokens step `then` continues those rows."""

    input_ids: torch.Tensor  # (1, P) long
    position_ids: torch.Tensor  # (1, P) long: index of each token in its own prompt
    visible: torch.Tensor  # (P, P) bool: token i may attend to token j (a tree-shaped causal mask)
    pixel_values: torch.Tensor | None  # (I, 3, S, S) (anyres: (I, P, 3, S, S)): the images, in the order their tokens appear in the row
    gather: torch.Tensor  # (G, T) long: the row index of each group row's t-th token (left padded: 0 there)
    attention_mask: torch.Tensor  # (G, T) long, 0 on left padding
    then: PrefillStep  # the own tokens: parent_rows index the G gathered rows
    image_sizes: torch.Tensor | None = None  # (I, 2) anyres only: (height, width) of those images

    @property
    def positions_computed(self) -> int:
        return self.input_ids.numel() + self.then.positions_computed


@dataclass
class PromptBatch:
    """Left-padded prompts of one batch, ready for the model."""

    input_ids: torch.Tensor  # (R, L) long, image tokens already expanded
    attention_mask: torch.Tensor  # (R, L) long, 0 on left padding
    pixel_values: torch.Tensor | None  # (I, 3, S, S): the images of all rows, in row order
    prompt_lengths: list[int]  # unpadded length of each row
    images_per_row: list[int]  # how many of `pixel_values` belong to each row
    # anyres (LlavaNext) only: (I, 2) (height, width) of each image; pixel_values are then (I, P, 3, S, S)
    image_sizes: torch.Tensor | None = None
    # When set, `ModelRunner.prefill` runs these steps instead of one forward over `input_ids`: the same
    # prompts, with prefixes shared by several rows computed once; the last step has one row per prompt.
    prefill_steps: list[PrefillStep] | None = None
    # When set (instead), `ModelRunner.prefill` computes the shared prefixes in one forward (PackedPrefill).
    packed_prefill: PackedPrefill | None = None

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


class ModelRunner:
    """Owns one KV cache over R rows of one batch; every call returns float32 next-token logits (R, V)."""

    def __init__(self, model) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.cache_keyword = cache_keyword(type(model))  # "cache" or "past_key_values", by transformers release
        self.cache = None
        self.attention_mask: torch.Tensor | None = None  # (R, T) over everything in the cache
        self.next_positions: torch.Tensor | None = None  # (R,) position id of the next token
        self.last_attention: torch.Tensor | None = None  # (R, heads, q, T) last layer, when captured
        self._capture_hook = None

    # ------------------------------------------------------------------ forward passes
    def _image_inputs(self, pixel_values: torch.Tensor | None, image_sizes: torch.Tensor | None) -> dict:
        """The forward's image arguments on the model's device: pixel_values in its dtype (None for a
        text-only batch), and image_sizes for an anyres (LlavaNext) model only."""
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, dtype=self.model.dtype)
        return {"pixel_values": pixel_values, **image_size_inputs(image_sizes, self.device)}

    @torch.no_grad()
    def prefill(self, batch: PromptBatch) -> torch.Tensor:
        if batch.packed_prefill is not None:
            return self._prefill_packed(batch.packed_prefill)
        if batch.prefill_steps is not None:
            return self._prefill_in_steps(batch.prefill_steps)
        input_ids = batch.input_ids.to(self.device)
        attention_mask = batch.attention_mask.to(self.device)
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        output = self.model(
            input_ids=input_ids,
            **self._image_inputs(batch.pixel_values, batch.image_sizes),
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: (R, 1, V) instead of (R, L, V)
        )
        self.cache = getattr(output, self.cache_keyword)
        self.attention_mask = attention_mask
        self.next_positions = positions[:, -1] + 1
        return output.logits[:, -1, :].float()

    def _prefill_in_steps(self, steps: list[PrefillStep], continuing: bool = False) -> torch.Tensor:
        """Run `steps` (see PrefillStep), on top of the cache when `continuing`; the logits after each
        prompt's last token, (R, V)."""
        if not continuing:
            self.cache, self.attention_mask = None, None
        for step in steps:
            step_mask = step.attention_mask.to(self.device)
            if step.parent_rows is None and self.cache is None:
                attention_mask = step_mask
            elif step.parent_rows is None:
                # Continuing a cache whose rows are already this step's rows (a packed prefill gathered them).
                attention_mask = torch.cat([self.attention_mask, step_mask], dim=1)
            else:
                # Repeat the cache rows of shared prefixes to this step's rows: (R_prev, ...) -> (R_s, ...).
                rows = torch.as_tensor(step.parent_rows, dtype=torch.long, device=self.device)
                self.cache.reorder_cache(rows)
                attention_mask = torch.cat([self.attention_mask.index_select(0, rows), step_mask], dim=1)
            output = self.model(
                input_ids=step.input_ids.to(self.device),
                **self._image_inputs(step.pixel_values, step.image_sizes),
                attention_mask=attention_mask,
                position_ids=step.position_ids.to(self.device),
                **{self.cache_keyword: self.cache},
                use_cache=True,
                logits_to_keep=1,
            )
            self.cache = getattr(output, self.cache_keyword)
            self.attention_mask = attention_mask
        # Every row of the last step ends with its prompt's last token.
        self.next_positions = steps[-1].position_ids[:, -1].to(self.device) + 1
        return output.logits[:, -1, :].float()

    @property
    def can_pack(self) -> bool:
        """Whether `_prefill_packed` can run: the attention takes a custom 4D mask (SDPA, eager; not
        flash-attention) and the cache keeps plain per-layer key and value tensors."""
        implementation = getattr(self.model.config.text_config, "_attn_implementation", None)
        return implementation in ("sdpa", "eager")

    def _prefill_packed(self, packed: PackedPrefill) -> torch.Tensor:
        """Run a PackedPrefill; the logits after each prompt's last token, (R, V)."""
        visible = packed.visible.to(self.device)[None, None]  # (1, 1, P, P)
        if self.model.config.text_config._attn_implementation == "eager":
            # Eager attention adds its mask to the scores: 0 where visible, the dtype's minimum elsewhere.
            visible = torch.zeros(visible.shape, dtype=self.model.dtype, device=self.device).masked_fill(
                ~visible, torch.finfo(self.model.dtype).min)
        output = self.model(
            input_ids=packed.input_ids.to(self.device),
            **self._image_inputs(packed.pixel_values, packed.image_sizes),
            attention_mask=visible,  # a 4D mask is taken as given (transformers' masking_utils)
            position_ids=packed.position_ids.to(self.device),
            use_cache=True,
            logits_to_keep=1,  # unused: the own-tokens step gives the logits
        )
        cache = getattr(output, self.cache_keyword)
        # The row's keys and values, (1, H, P, D), become the own-tokens step's rows, (R, H, T, D): each
        # row gathers its group's chain directly (one copy, instead of one row per group repeated after).
        index, attention_mask, then = packed.gather, packed.attention_mask, packed.then
        if then.parent_rows is not None:
            rows = torch.as_tensor(then.parent_rows, dtype=torch.long)
            index, attention_mask = index.index_select(0, rows), attention_mask.index_select(0, rows)
            then = replace(then, parent_rows=None)
        index = index.to(self.device)
        for layer in cache.layers:
            layer.keys = _gather_rows(layer.keys, index)
            layer.values = _gather_rows(layer.values, index)
        self.cache = cache
        self.attention_mask = attention_mask.to(self.device)
        return self._prefill_in_steps([then], continuing=True)

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (R, n) tokens on top of the cache; the logits after the last of them."""
        if self.cache is None:
            raise RuntimeError("extend() before prefill()")
        tokens = tokens.to(self.device)
        count = tokens.shape[1]
        offsets = torch.arange(count, device=self.device)
        positions = self.next_positions[:, None] + offsets[None, :]
        self.attention_mask = torch.cat(
            [self.attention_mask, self.attention_mask.new_ones((tokens.shape[0], count))], dim=1
        )
        output = self.model(
            input_ids=tokens,
            attention_mask=self.attention_mask,
            position_ids=positions,
            **{self.cache_keyword: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = getattr(output, self.cache_keyword)
        self.next_positions = self.next_positions + count
        return output.logits[:, -1, :].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, (R,)."""
        return self.extend(tokens.view(-1, 1))

    # ------------------------------------------------------------------ row and cache surgery
    def select_rows(self, index: torch.Tensor | list[int]) -> None:
        """Keep rows `index` in that order (repeats allowed): beam reordering, dropping finished rows."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        self.cache.reorder_cache(index)
        self.attention_mask = self.attention_mask.index_select(0, index)
        self.next_positions = self.next_positions.index_select(0, index)

    def drop_last_tokens(self, count: int) -> None:
        """Take back the last `count` tokens of every row."""
        if count <= 0:
            return
        self.cache.crop(-count)
        self.attention_mask = self.attention_mask[:, :-count]
        self.next_positions = self.next_positions - count

    def snapshot(self) -> "RunnerState":
        """A copy of the cache and bookkeeping, independent of later steps."""
        return RunnerState(copy.deepcopy(self.cache), self.attention_mask.clone(), self.next_positions.clone())

    def restore(self, state: "RunnerState") -> None:
        self.cache = copy.deepcopy(state.cache)
        self.attention_mask = state.attention_mask.clone()
        self.next_positions = state.next_positions.clone()

    @property
    def length(self) -> int:
        """Tokens in the cache, padding included."""
        return 0 if self.attention_mask is None else self.attention_mask.shape[1]

    # ------------------------------------------------------------------ attention capture (OPERA)
    @contextmanager
    def capture_last_layer_attention(self) -> Iterator[None]:
        """Record the last decoder layer's attention weights after every forward (`last_attention`).

        Weights exist only with the eager attention path, so the language model is switched to it for
        the duration and switched back after. Only the last layer is kept: asking the model for
        `output_attentions` would hold every layer's (R, heads, T, T) map at once.
        """
        config = self.model.config.text_config
        previous = config._attn_implementation
        attention_module = _last_self_attention(self.model)
        if previous != "eager":
            self.model.set_attn_implementation({"text_config": "eager"})

        def keep_weights(_module, _inputs, output) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the last attention layer returned no weights; OPERA needs eager attention")
            self.last_attention = weights.detach()

        handle = attention_module.register_forward_hook(keep_weights)
        try:
            yield
        finally:
            handle.remove()
            self.last_attention = None
            if previous != "eager":
                self.model.set_attn_implementation({"text_config": previous})


def _gather_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(1, H, P, D) keys or values of one packed row -> (G, H, T, D): row g holds positions index[g].
    A strided view, not made contiguous here: the next forward's cache update concatenates it with the
    new tokens' states, and that copy lays it out (a copy here would be a second one)."""
    return states[0].index_select(1, index.flatten()).unflatten(1, index.shape).transpose(0, 1)


@dataclass
class RunnerState:
    cache: object
    attention_mask: torch.Tensor
    next_positions: torch.Tensor


def _last_self_attention(model) -> torch.nn.Module:
    language_model = model.model.language_model
    layers = getattr(language_model, "layers", None)
    if not layers or not hasattr(layers[-1], "self_attn"):
        raise ValueError(
            f"cannot find the last attention layer of {type(language_model).__name__} "
            "(expected .layers[-1].self_attn as in Llama, Mistral, Qwen2)"
        )
    return layers[-1].self_attn
