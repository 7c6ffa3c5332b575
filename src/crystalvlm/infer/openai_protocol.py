"""OpenAI Chat Completions, as far as this server speaks it: the schema, request checking, responses.

The request and response shapes are pydantic models (they are also the server's OpenAPI schema).
Everything a client can get wrong is found here, before any model work, and reported as an
`ApiError` carrying the HTTP status and OpenAI's error body:
`{"error": {"message", "type", "param", "code"}}`, where `param` names the place in the request
(`messages[1].content[0].image_url`). A request is checked in this order, cheapest first: the JSON
and its types (pydantic), the model name, the counts (messages, images, stop strings), the length
of the text in characters (a bound no prompt within the token limit exceeds), the decoding
settings. Tokenising, fetching and decoding images come later, in the server.

Images arrive as `image_url` parts; `data:` URLs are decoded, and `http(s)` URLs are fetched only
when the operator allows it (remote_images.py). Every image is checked against the byte and pixel
limits, the pixel count read from the header before decoding, and only the formats in
`data.images.IMAGE_FORMATS` are decoded.

Beyond OpenAI's fields the request may carry `"decoding"`: a decoding string such as `"opera"` or
`"vcd:alpha=1"` (see decoding/config.py), within the server's caps (`ServerLimits.decoding`: beams,
OPERA's rollbacks, ...; a max_new_tokens no more than max_tokens). Without it, `temperature` > 0
samples and a missing or zero temperature decodes greedily.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Callable, Literal, Union

import anyio
from PIL import Image
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from crystalvlm.data.images import IMAGE_FORMATS, ImageError, decode_image_bytes
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
from crystalvlm.infer.decoding.config import DecodingConfig, DecodingConfigError
from crystalvlm.infer.decoding.limits import DecodingLimitError
from crystalvlm.infer.limits import ServerLimits

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code)).model_dump()


# ---------------------------------------------------------------------------- the request schema
def _by_json_type(message: str, **branches: Any) -> Any:
    """A union chosen by the JSON type of the value ("string", "array", "object"): one branch's errors,
    or `message` when the value has none of the types."""
    def kind(value: Any) -> str | None:
        found = {str: "string", list: "array", dict: "object"}.get(type(value))
        if found is None and isinstance(value, BaseModel):
            found = "object"
        return found if found in branches else None

    members = tuple(Annotated[branch, Tag(name)] for name, branch in branches.items())
    return Annotated[Union[members], Discriminator(kind, custom_error_type="wrong_type", custom_error_message=message)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str = Field(description="data:image/png;base64,... (or http(s):// when the server allows remote images)")
    detail: str | None = Field(None, description="accepted and ignored")


ImageUrlValue = _by_json_type("must be an object with a 'url' string", object=ImageUrl, string=str)


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageUrlValue


def _part_kind(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "text part", "image_url": "image part"}.get(kind) if isinstance(kind, str) else None


ContentPart = Annotated[
    Union[Annotated[TextPart, Tag("text part")], Annotated[ImagePart, Tag("image part")]],
    Discriminator(_part_kind, custom_error_type="wrong_part", custom_error_message="must be a part with type 'text' or 'image_url'"),
]


Content = _by_json_type("must be a string or a non-empty array of parts", string=str,
                        array=Annotated[list[ContentPart], Field(min_length=1)])
StopValue = _by_json_type("must be a string or an array of strings", string=str, array=list[str])


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Content


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields this server reads; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, description="the id from /v1/models")
    messages: list[Message] = Field(min_length=1, description="the conversation; the last message is the user's")
    max_tokens: int | None = Field(None, description="new tokens at most (up to the server's limit)",
                                   json_schema_extra={"minimum": 1})
    max_completion_tokens: int | None = Field(None, description="the same as max_tokens; wins over it",
                                              json_schema_extra={"minimum": 1})
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="> 0 samples; 0 or absent decodes greedily")
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = None
    n: int | None = Field(None, description="must be 1")
    stop: StopValue | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = Field(None, description="not supported")
    decoding: str | None = Field(None, description="crystalvlm: a decoding string such as 'beam:num_beams=3', 'opera', 'vcd'")


# ---------------------------------------------------------------------------- the response schema
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    decoding: str = Field(description="crystalvlm: the decoding settings used, in full")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer (`data: {...}`), then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = Field(None, description="only in the last chunk, with stream_options.include_usage")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "crystalvlm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------- parsing
@dataclass
class ImageReference:
    """An image part before decoding: a data URL's bytes, or a remote URL to fetch."""

    where: str  # e.g. "messages[1].content[0]"
    data: bytes | None = None
    url: str | None = None


@dataclass
class ChatRequest:
    turns: list[Turn]
    images: list[ImageReference]
    config: DecodingConfig
    stream: bool = False
    include_usage: bool = False
    stop_strings: tuple[str, ...] = ()
    decoded_images: list[Image.Image] = field(default_factory=list)


def parse_chat_request(body: bytes, model_name: str, limits: ServerLimits) -> ChatRequest:
    """Check a request body (JSON bytes); ApiError names the first problem. Runs off the event loop."""
    try:
        request = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as error:
        raise _api_error(error) from None
    if request.model != model_name:
        raise ApiError(404, f"the model {_short(request.model)} does not exist; this server serves {model_name!r}",
                       "model", "model_not_found")
    if request.n not in (1, None):
        raise ApiError(400, f"'n' must be 1 (one answer per request), got {request.n!r}", "n")
    if request.logprobs:
        raise ApiError(400, "'logprobs' is not supported by this server", "logprobs")
    turns, images = _turns_and_images(request.messages, limits)
    stop_strings = _stop_strings(request.stop, limits)
    config = _decoding_config(request, limits)
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return ChatRequest(turns, images, config, bool(request.stream), include_usage, stop_strings)


def _turns_and_images(messages: list[Message], limits: ServerLimits) -> tuple[list[Turn], list[ImageReference]]:
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"{len(messages)} messages; at most {limits.max_messages} are accepted", "messages")
    turns: list[Turn] = []
    images: list[ImageReference] = []
    characters = 0
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = ROLES[message.role]
        content = message.content
        pieces: list[str | None] = []  # the message's parts in order: a text, or None for an image
        if isinstance(content, str):
            _refuse_placeholder(content, f"{where}.content")
            texts, message_images = [content], []
        else:
            texts, message_images = [], []
            for part_index, part in enumerate(content):
                part_where = f"{where}.content[{part_index}]"
                if isinstance(part, TextPart):
                    _refuse_placeholder(part.text, f"{part_where}.text")
                    texts.append(part.text)
                    pieces.append(part.text)
                elif role != "user":
                    raise ApiError(400, f"{part_where}: only user messages may carry images", part_where)
                else:
                    if len(images) + len(message_images) >= limits.max_images:
                        raise ApiError(400, f"more than {limits.max_images} images in one request", "messages")
                    url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
                    message_images.append(ImageReference(part_where, url=url))
                    pieces.append(None)
        text = "\n".join(texts)
        characters += len(text)
        if limits.max_prompt_chars is not None and characters > limits.max_prompt_chars:
            raise ApiError(400, f"the messages have over {limits.max_prompt_chars} characters of text, more than "
                                f"{limits.max_prompt_tokens} tokens' worth; this server accepts at most "
                                f"{limits.max_prompt_tokens} tokens", "messages", "context_length_exceeded")
        images += message_images
        turns.append(Turn(role, _message_text(pieces, texts, len(message_images))))
    if turns[-1].role != "user":
        raise ApiError(400, "the last message must come from the user", "messages")
    for reference in images:
        _read_image_url(reference, limits)
    return turns, images


def _message_text(pieces: list[str | None], texts: list[str], image_count: int) -> str:
    """A message's text with one `<image>` per image part.

    LLaVA's convention, which single-image models are trained on: each image becomes "<image>\\n" in
    front of the message's text, wherever its part was. Several images with text between them
    (interleaved: "first:", image, "second:", image, question) keep their places instead, each image
    "<image>\\n" and each text followed by "\\n" when more parts follow; with all images first both
    rules give the same text."""
    front = (IMAGE_PLACEHOLDER + "\n") * image_count + "\n".join(texts)
    if image_count < 2:
        return front
    rendered = ""
    for index, piece in enumerate(pieces):
        if piece is None:
            rendered += IMAGE_PLACEHOLDER + "\n"
        else:
            rendered += piece + ("\n" if index < len(pieces) - 1 else "")
    return rendered


def _refuse_placeholder(text: str, where: str) -> None:
    if IMAGE_PLACEHOLDER in text:
        raise ApiError(400, f"{where} contains {IMAGE_PLACEHOLDER!r}; send images as image_url parts", where)


def _read_image_url(reference: ImageReference, limits: ServerLimits) -> None:
    """A data URL's bytes into `reference.data`; an http(s) URL stays for fetching (when allowed)."""
    url, where, param = reference.url or "", reference.where, f"{reference.where}.image_url"
    if url.startswith("data:"):
        header, comma, encoded = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"{where}: a data URL must look like data:image/png;base64,<data>", param)
        if not header[5:].startswith("image/"):
            raise ApiError(400, f"{where}: the data URL's media type {_short(header[5:-7])} is not an image", param)
        if len(encoded) // 4 * 3 > limits.max_image_bytes + 3:  # checked before decoding the base64
            raise ApiError(413, f"{where}: the image has about {len(encoded) // 4 * 3} bytes, over the limit of "
                                f"{limits.max_image_bytes}", where, "image_too_large")
        try:
            reference.data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data URL is not valid base64", param) from None
        if len(reference.data) > limits.max_image_bytes:
            raise ApiError(413, f"{where}: the image has {len(reference.data)} bytes, over the limit of "
                                f"{limits.max_image_bytes}", where, "image_too_large")
        reference.url = None
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote_images:
            raise ApiError(400, f"{where}: remote image URLs are refused by this server; send the image inline "
                                "as a data:image/...;base64 URL", where, "remote_image_refused")
    else:
        raise ApiError(400, f"{where}: unsupported image URL scheme (use data:image/...;base64,...)", param)


def _decoding_config(request: ChatCompletionRequest, limits: ServerLimits) -> DecodingConfig:
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    # The most new tokens the decoding string may ask for: the checked max_tokens when the client sent one.
    budget_cap, budget_source = ((limits.max_tokens, "this server's max_tokens") if max_tokens is None
                                 else (max_tokens, "the request's max_tokens"))
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    if not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"'max_tokens' must be an integer from 1 to {limits.max_tokens}, got {_short(max_tokens)}",
                       "max_tokens")
    common: dict[str, Any] = {"max_new_tokens": max_tokens}
    if request.temperature:
        common["temperature"] = request.temperature
    if request.top_p:
        common["top_p"] = request.top_p
    if request.seed is not None:
        common["seed"] = request.seed
    decoding = request.decoding
    if decoding is None:
        decoding = "sample" if request.temperature else "greedy"
    try:
        config = DecodingConfig.parse(decoding, **common)
        decoding_limits = replace(limits.decoding, max_new_tokens=budget_cap)
        decoding_limits.check(config)
    except DecodingLimitError as error:
        why = budget_source if error.key == "max_new_tokens" else "this server's limit"
        raise ApiError(400, f"{error} ({why})", "decoding", "decoding_limit_exceeded") from None
    except (DecodingConfigError, TypeError) as error:
        raise ApiError(400, f"bad decoding settings: {error}", "decoding") from None
    return config


def _stop_strings(stop: str | list[str] | None, limits: ServerLimits) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if len(stop) > limits.max_stop_strings:
        raise ApiError(400, f"{len(stop)} stop strings; at most {limits.max_stop_strings} are accepted", "stop")
    for index, item in enumerate(stop):
        if not item:
            raise ApiError(400, "'stop' must be a non-empty string or an array of them", "stop")
        if len(item) > limits.max_stop_chars:
            raise ApiError(400, f"stop string {index} has {len(item)} characters; at most {limits.max_stop_chars} "
                                "are accepted", "stop")
    return tuple(stop)


# ---------------------------------------------------------------------------- pydantic's errors, OpenAI's way
EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a string", "bool_type": "a boolean",
    "list_type": "an array", "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object",
}
RANGES = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "over"),
          "less_than_equal": ("le", "at most"), "less_than": ("lt", "under")}


def _api_error(error: ValidationError) -> ApiError:
    """The first problem pydantic found, as an ApiError naming its place (`messages[0].content[1].type`)."""
    first = error.errors(include_url=False)[0]
    kind, ctx, value = first["type"], first.get("ctx") or {}, first.get("input")
    path = [item for item in first["loc"] if isinstance(item, int) or item in _FIELD_NAMES]
    if kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {ctx.get('error', first['msg'])}", code="invalid_json")
    if not path:
        return ApiError(400, "the request body must be a JSON object")
    param = "".join(f"[{item}]" if isinstance(item, int) else f".{item}" for item in path).lstrip(".")
    if kind == "missing":
        return ApiError(400, f"'{param}' is required", param)
    if kind in ("wrong_type", "wrong_part"):
        expected = first["msg"].removeprefix("must be ")
    elif kind == "literal_error":
        expected = ctx["expected"]
    elif kind == "too_short":
        expected = "a non-empty array" if isinstance(value, list) else "a non-empty string"
    elif kind in RANGES:
        expected = _range(path, kind, ctx)
    else:
        expected = EXPECTED.get(kind)
    if expected is None:
        return ApiError(400, f"'{param}': {first['msg'][:1].lower()}{first['msg'][1:]}, got {_short(value)}", param)
    return ApiError(400, f"'{param}' must be {expected}, got {_short(value)}", param)


def _range(path: list, kind: str, ctx: dict) -> str:
    """'a number from 0.0 to 2.0' for a top-level field with both bounds; else the one bound broken."""
    field_info = ChatCompletionRequest.model_fields.get(path[0]) if len(path) == 1 else None
    bounds = {}
    for item in field_info.metadata if field_info else ():
        for name in ("ge", "le"):
            if getattr(item, name, None) is not None:
                bounds[name] = float(getattr(item, name))
    if "ge" in bounds and "le" in bounds:
        return f"a number from {bounds['ge']} to {bounds['le']}"
    name, words = RANGES[kind]
    return f"{words} {ctx.get(name)}"


def _short(value: Any, limit: int = 60) -> str:
    """A client's value as it goes into a message: repr, cut to `limit` characters."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = "<a very long number>"
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..."


def _field_names(*models: type[BaseModel]) -> frozenset[str]:
    return frozenset(name for model in models for name in model.model_fields)


_FIELD_NAMES = _field_names(ChatCompletionRequest, Message, TextPart, ImagePart, ImageUrl, StreamOptions)


# ---------------------------------------------------------------------------- images
async def fetch_remote_images(references: list[ImageReference], limits: ServerLimits) -> None:
    """Fetch the bytes of the references that are http(s) URLs, all within one deadline."""
    from crystalvlm.infer import remote_images

    remote = [reference for reference in references if reference.url is not None]
    if not remote:
        return
    policy = remote_images.FetchPolicy(limits.max_image_bytes, limits.remote_image_timeout_s, limits.remote_image_networks)
    current = remote[0]
    try:
        with anyio.fail_after(policy.deadline_s):
            async with remote_images.new_client(policy) as client:
                for current in remote:
                    current.data = await remote_images.fetch(current.url, policy, client)
    except remote_images.RemoteImageError as error:
        remote_images.log.info("remote image %s refused: %s", current.where, error.reason)
        raise ApiError(400, f"{current.where}: {error.public}", f"{current.where}.image_url", "remote_image_unavailable") from None
    except TimeoutError:
        remote_images.log.info("remote image %s refused: over the deadline of %s s", current.where, policy.deadline_s)
        raise ApiError(400, f"{current.where}: {remote_images.GENERIC}", f"{current.where}.image_url",
                       "remote_image_unavailable") from None


def decode_images(references: list[ImageReference], limits: ServerLimits,
                  hold_pixels: Callable[[int, int], None] | None = None) -> list[Image.Image]:
    """Decode (data URLs, or remote ones once fetched); ApiError names the failing part. `hold_pixels`
    reserves an image's pixels from its header before it is decoded (and may refuse)."""
    images = []
    for reference in references:
        try:
            images.append(decode_image_bytes(reference.data, reference.where, limits.max_image_pixels,
                                             IMAGE_FORMATS, hold_pixels))
        except ImageError as error:
            raise ApiError(400, str(error), reference.where, "invalid_image") from None
    return images


# ---------------------------------------------------------------------------- responses
def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def completion_body(completion_id: str, model_name: str, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int, decoding: str) -> dict:
    return ChatCompletion(
        id=completion_id, created=int(time.time()), model=model_name,
        choices=[Choice(index=0, message=AssistantMessage(content=text), finish_reason=openai_finish_reason(finish_reason))],
        usage=usage(prompt_tokens, completion_tokens), decoding=decoding,
    ).model_dump()


def chunk_body(completion_id: str, model_name: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    choice = ChunkChoice(index=0, delta=Delta(**delta),
                         finish_reason=openai_finish_reason(finish_reason) if finish_reason else None, logprobs=None)
    chunk = ChatCompletionChunk(id=completion_id, object="chat.completion.chunk", created=created, model=model_name,
                                choices=[choice])
    return chunk.model_dump(exclude_unset=True)


def usage_chunk_body(completion_id: str, model_name: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    chunk = ChatCompletionChunk(id=completion_id, object="chat.completion.chunk", created=created, model=model_name,
                                choices=[], usage=usage(prompt_tokens, completion_tokens))
    return chunk.model_dump(exclude_unset=True)


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)


def openai_finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def models_body(model_name: str, created: int) -> dict:
    return ModelList(data=[ModelCard(id=model_name, created=created)]).model_dump()


def model_object(model_name: str, created: int) -> dict:
    return ModelCard(id=model_name, created=created).model_dump()
