"""Conversation templates: a conversation becomes token ids and labels in one step.

A template renders a conversation as an ordered list of text *segments*, each marked as trained
(an assistant answer plus its end-of-turn marker) or not (system text, user turns, the generation
prompt that introduces an answer). The ids are those of the whole rendered string tokenised at once,
exactly as inference tokenises a rendered chat template; the segments only decide the labels. Each
boundary between a trained and an untrained segment is located by tokenising the text before it as
one string, which must give a prefix of the whole ids. So:

* the ids of a prompt are exactly the ids the model sees at inference after the generation
  prompt, whatever the tokenizer (SentencePiece with or without its legacy dummy "▁" after special
  tokens, byte-level BPE), and
* the labels are exactly the ids the model must emit after that prompt: each answer and its
  end-of-turn marker. Where a tokenizer merges text across a boundary (so no token boundary falls
  there: LLaVA's "tokenization mismatch"), the conversation is refused with the boundary named,
  never silently masked or mislabelled.

The same template also writes the Jinja chat template saved in the processor, so plain
`transformers` users build the same prompt string (`chat_template_jinja`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from crystalvlm.markers import IMAGE_TOKEN

IMAGE_PLACEHOLDER = IMAGE_TOKEN  # one `<image>` per image in a conversation's text (LLaVA's data format)
IGNORE_INDEX = -100


class TokenizerLike(Protocol):
    def __call__(self, text: str | list[str], add_special_tokens: bool = ...) -> Any: ...
    def convert_tokens_to_ids(self, token: str) -> int: ...


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    text: str


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


class ConversationError(ValueError):
    """A conversation that no template can encode (empty, wrong roles, wrong order)."""


@dataclass(frozen=True)
class Template:
    """A declarative chat format.

    `user_format` wraps a user turn and ends with the generation prompt that introduces the
    answer; `assistant_format` wraps an answer and ends with the end-of-turn marker (trained);
    `after_assistant` is untrained text between an answer and the next turn.
    """

    name: str
    begin: str  # text at the very start (a BOS marker), untrained
    system_format: str  # "{system}" placeholder; "" when the format has no system turn
    default_system: str
    user_format: str  # "{content}" placeholder
    assistant_format: str  # "{content}" placeholder; includes the end-of-turn marker
    after_assistant: str
    stop_strings: tuple[str, ...]  # decoding stops when one of these is produced
    markers: tuple[str, ...]  # literal special tokens the tokenizer must keep whole
    first_turn_only_image: bool = False  # `plain`: the user's words are dropped, only the image stays

    # ---------------------------------------------------------------- rendering
    def segments(self, turns: Sequence[Turn], add_generation_prompt: bool = False) -> list[Segment]:
        """Render a conversation as trained / untrained segments.

        With add_generation_prompt the conversation must end with a user turn; the result ends
        with the generation prompt, ready for the model to answer.
        """
        turns = list(turns)
        if not turns:
            raise ConversationError("empty conversation")
        system = self.default_system
        if turns[0].role == "system":
            system = turns[0].text
            turns = turns[1:]
        if not turns:
            raise ConversationError("conversation has only a system turn")
        for index, turn in enumerate(turns):
            expected = "user" if index % 2 == 0 else "assistant"
            if turn.role != expected:
                raise ConversationError(
                    f"turn {index} is from {turn.role!r}, expected {expected!r} (turns must alternate user/assistant)"
                )
            if not turn.text.strip():
                raise ConversationError(f"turn {index} ({turn.role}) is empty")
        if add_generation_prompt and turns[-1].role != "user":
            raise ConversationError("a generation prompt needs a conversation that ends with a user turn")
        if not add_generation_prompt and turns[-1].role != "assistant":
            raise ConversationError("a training conversation must end with an assistant turn")

        pieces: list[Segment] = []
        pending = self.begin
        if self.system_format and system:
            pending += self.system_format.format(system=system)
        for turn in turns:
            if turn.role == "user":
                content = turn.text
                if self.first_turn_only_image:  # one placeholder per image, the words dropped
                    content = IMAGE_PLACEHOLDER * content.count(IMAGE_PLACEHOLDER)
                pending += self.user_format.format(content=content)
            else:
                pieces.append(Segment(pending, trained=False))
                pieces.append(Segment(self.assistant_format.format(content=turn.text), trained=True))
                pending = self.after_assistant
        if add_generation_prompt:
            pieces.append(Segment(pending, trained=False))
        elif pending:
            # Text after the final answer is never trained on and never needed at inference.
            pass
        return [piece for piece in pieces if piece.text]

    def prompt_text(self, turns: Sequence[Turn]) -> str:
        """The full generation prompt as one string (what the saved chat template renders)."""
        return "".join(segment.text for segment in self.segments(turns, add_generation_prompt=True))

    # ---------------------------------------------------------------- tokenising
    def check_tokenizer(self, tokenizer: TokenizerLike) -> None:
        """Refuse a tokenizer that would split one of this template's special markers."""
        for marker in self.markers + (IMAGE_PLACEHOLDER,):
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ValueError(
                    f"template {self.name!r} needs {marker!r} to be a single token, but the tokenizer "
                    f"splits it into {len(ids)} ids {ids}; add it as a special token"
                )

    def encode(
        self, turns: Sequence[Turn], tokenizer: TokenizerLike, add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels together (labels are IGNORE_INDEX on untrained tokens).

        The ids are the whole rendered text tokenised as one string. `<image>` stays one id here;
        the dataset expands it to the model's image-token count. Raises TokenizationMismatch when a
        trained/untrained boundary falls inside a token.
        """
        return self.encode_many([turns], tokenizer, add_generation_prompt)[0]

    def encode_many(
        self, conversations: Sequence[Sequence[Turn]], tokenizer: TokenizerLike, add_generation_prompt: bool = False
    ) -> list[tuple[list[int], list[int]]]:
        """`encode` of each conversation, with one tokenizer call for all of them (a batch of generation
        prompts tokenises in one call instead of one per prompt). Raises as `encode` does for the first
        conversation that cannot be encoded."""
        rendered = []
        texts: list[str] = []
        for turns in conversations:
            segments = self.segments(turns, add_generation_prompt=add_generation_prompt)
            text = "".join(segment.text for segment in segments)
            # Character offsets where training switches on or off (segment ends followed by the other kind).
            boundaries, offset = [], 0
            for index, segment in enumerate(segments[:-1]):
                offset += len(segment.text)
                if segments[index + 1].trained != segment.trained:
                    boundaries.append(offset)
            rendered.append((segments, text, boundaries))
            # The whole text and the text before each boundary, each tokenised as one string.
            texts += [text[:at] for at in boundaries] + [text]
        token_ids = _token_ids_batch(tokenizer, texts) if texts else []
        encoded, cursor = [], 0
        for segments, text, boundaries in rendered:
            *prefix_ids, input_ids = token_ids[cursor : cursor + len(boundaries) + 1]
            cursor += len(boundaries) + 1
            encoded.append(self._labelled(segments, text, boundaries, prefix_ids, input_ids))
        return encoded

    def _labelled(self, segments: list[Segment], text: str, boundaries: list[int], prefix_ids: list[list[int]],
                  input_ids: list[int]) -> tuple[list[int], list[int]]:
        """Labels over `input_ids` (the whole text's ids): the trained segments' tokens, IGNORE_INDEX elsewhere."""
        ends = [_prefix_length(ids, input_ids, text, at, self.name) for ids, at in zip(prefix_ids, boundaries)]
        ends.append(len(input_ids))
        labels = [IGNORE_INDEX] * len(input_ids)
        start_token, run = 0, 0
        for index, segment in enumerate(segments):
            if index < len(segments) - 1 and segments[index + 1].trained == segment.trained:
                continue  # the run goes on into the next segment
            end_token = ends[run]
            if segment.trained:
                labels[start_token:end_token] = input_ids[start_token:end_token]
            start_token, run = end_token, run + 1
        return input_ids, labels

    # ---------------------------------------------------------------- HF chat template
    def chat_template_jinja(self) -> str:
        """A Jinja chat template for the saved processor that renders `prompt_text` exactly.

        Message content may be a string or a list of {"type": "image"} / {"type": "text"} items;
        images render as `<image>\\n` before the text, as LLaVA's data does.
        """

        def lit(text: str) -> str:
            # Jinja string literal: escape backslashes, quotes and newlines.
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

        user_prefix, user_suffix = self.user_format.split("{content}")
        assistant_prefix, assistant_suffix = self.assistant_format.split("{content}")
        system_prefix, system_suffix = (self.system_format.split("{system}") if self.system_format else ("", ""))
        content_macro = (
            "{%- macro render(content) -%}"
            "{%- if content is string -%}{{ content }}{%- else -%}"
            "{%- for item in content if item['type'] == 'image' -%}" + "{{ " + lit(IMAGE_PLACEHOLDER + "\n") + " }}" + "{%- endfor -%}"
            "{%- for item in content if item['type'] == 'text' -%}{{ item['text'] }}{%- endfor -%}"
            "{%- endif -%}{%- endmacro -%}"
        )
        if self.first_turn_only_image:
            user_body = (
                "{%- set rendered = render(message['content']) -%}"
                "{{ " + lit(IMAGE_PLACEHOLDER) + " if " + lit(IMAGE_PLACEHOLDER) + " in rendered else '' }}"
            )
        else:
            user_body = "{{ render(message['content']) }}"
        system_block = ""
        if self.system_format:
            system_block = (
                "{%- if messages[0]['role'] == 'system' -%}{%- set system = render(messages[0]['content']) -%}"
                "{%- else -%}{%- set system = " + lit(self.default_system) + " -%}{%- endif -%}"
                "{%- if system -%}{{ " + lit(system_prefix) + " }}{{ system }}{{ " + lit(system_suffix) + " }}{%- endif -%}"
            )
        return (
            content_macro
            + "{{ " + lit(self.begin) + " }}"
            + system_block
            + "{%- for message in messages if message['role'] != 'system' -%}"
            + "{%- if message['role'] == 'user' -%}"
            + "{%- if not loop.first -%}{{ " + lit(self.after_assistant) + " }}{%- endif -%}"
            + "{{ " + lit(user_prefix) + " }}" + user_body + "{{ " + lit(user_suffix) + " }}"
            + "{%- else -%}"
            + "{{ " + lit(assistant_prefix) + " }}{{ render(message['content']) }}{{ " + lit(assistant_suffix) + " }}"
            + "{%- endif -%}{%- endfor -%}"
        )


class TokenizationMismatch(ConversationError):
    """A trained/untrained boundary that falls inside a token of the whole rendered text."""


def _token_ids_batch(tokenizer: TokenizerLike, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _prefix_length(prefix_ids: list[int], whole_ids: list[int], text: str, offset: int, template: str) -> int:
    """How many of `whole_ids` (the ids of `text`) the text before `offset` tokenises to.

    The prefix tokenised on its own must be a prefix of the whole ids: that is what makes a
    generation prompt's ids (tokenised alone at inference) the start of the training ids."""
    if whole_ids[: len(prefix_ids)] != prefix_ids:
        diverge = next((i for i, (a, b) in enumerate(zip(prefix_ids, whole_ids)) if a != b),
                       min(len(prefix_ids), len(whole_ids)))
        raise TokenizationMismatch(
            f"tokenization mismatch with template {template!r}: the text before {text[offset:offset + 20]!r} "
            f"tokenises alone to ids that differ from the whole conversation's at token {diverge} "
            f"(whole {whole_ids[diverge:diverge + 3]}, alone {prefix_ids[diverge:diverge + 3]}); the tokenizer "
            f"merges across {text[max(0, offset - 10):offset]!r}|{text[offset:offset + 10]!r}, so the answer's "
            "tokens cannot be labelled exactly"
        )
    return len(prefix_ids)


VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)

TEMPLATES: dict[str, Template] = {
    # LLaVA's `plain` (alignment): the image, then the caption and a newline; the user's words are dropped.
    "plain": Template(
        name="plain", begin="", system_format="", default_system="",
        user_format="{content}", assistant_format="{content}\n", after_assistant="",
        stop_strings=("\n",), markers=(), first_turn_only_image=True,
    ),
    # LLaVA-1.5's `vicuna_v1` (conv_vicuna_v1: sep " ", sep2 "</s>").
    "vicuna_v1": Template(
        name="vicuna_v1", begin="<s>", system_format="{system} ", default_system=VICUNA_SYSTEM,
        user_format="USER: {content} ASSISTANT:", assistant_format=" {content}</s>", after_assistant="",
        stop_strings=("</s>",), markers=("<s>", "</s>"),
    ),
    # LLaVA-NeXT's `llava_llama_3`.
    "llama3": Template(
        name="llama3", begin="<|begin_of_text|>",
        system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        default_system=LLAMA3_SYSTEM,
        user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_format="{content}<|eot_id|>", after_assistant="",
        stop_strings=("<|eot_id|>",),
        markers=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # ChatML (Qwen and others).
    "chatml": Template(
        name="chatml", begin="", system_format="<|im_start|>system\n{system}<|im_end|>\n",
        default_system="You are a helpful assistant.",
        user_format="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        assistant_format="{content}<|im_end|>", after_assistant="\n",
        stop_strings=("<|im_end|>",), markers=("<|im_start|>", "<|im_end|>"),
    ),
}


# CrystalChat (LLM360), as its instruction data was built: `<s><|sys_start|>SYSTEM<|sys_end|>`, then
# per turn `<|im_start|>USER<|im_end|>ANSWER`, and `</s>` closing the conversation. Its own data
# trains no end-of-turn token between turns (the next `<|im_start|>` is untrained) and ends only the
# last answer with `</s>`; here every answer ends with a trained `</s>` so each answer teaches the
# model to stop (identical for single-turn records), and decoding also stops at `<|im_start|>`.
CRYSTALCHAT_SYSTEM = ("You are a helpful and intelligent assistant. Follow the instructions and answer the "
                      "questions as accurately as possible.")
TEMPLATES["crystalchat"] = Template(
    name="crystalchat", begin="<s>", system_format="<|sys_start|>{system}<|sys_end|>",
    default_system=CRYSTALCHAT_SYSTEM, user_format="<|im_start|>{content}<|im_end|>",
    assistant_format="{content}</s>", after_assistant="",
    stop_strings=("</s>", "<|im_start|>"),
    markers=("<s>", "</s>", "<|sys_start|>", "<|sys_end|>", "<|im_start|>", "<|im_end|>"),
)

def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown template {name!r}; known templates: {', '.join(sorted(TEMPLATES))}") from None


def all_template_markers() -> list[str]:
    """Every special marker of every template (the tiny tokenizer reserves them all)."""
    markers: list[str] = []
    for template in TEMPLATES.values():
        markers += [m for m in template.markers if m not in markers]
    return markers
