"""OpenAI Chat Completions, as far as this server speaks it: request checking and response shapes.

Everything a client can get wrong is found here, before any model work, and reported as an
`ApiError` carrying the HTTP status and OpenAI's error body:
`{"error": {"message", "type", "param", "code"}}`. Images arrive as `image_url` parts; only `data:`
URLs are decoded unless the operator allows remote URLs, and every image is checked against the
byte and pixel limits (pixel count read from the header, so decompression bombs are refused before
decoding).

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
from typing import Any

from PIL import Image

from crystalvlm.data.images import ImageError, decode_image_bytes
from crystalvlm.data.templates import IMAGE_PLACEHOLDER, Turn
from crystalvlm.infer.decoding.config import DecodingConfig, DecodingConfigError
from crystalvlm.infer.decoding.limits import DecodingLimitError, DecodingLimits

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ServerLimits:
    max_request_bytes: int = 64 * 2**20  # whole JSON body
    max_image_bytes: int = 16 * 2**20  # one image, after base64 decoding
    max_image_pixels: int = 25_000_000  # width * height from the header (decompression bombs)
    max_images: int = 4  # per request
    max_messages: int = 64
    max_prompt_tokens: int = 4096  # image tokens included
    max_tokens: int = 1024  # upper bound of max_tokens / max_completion_tokens
    default_max_tokens: int = 256
    max_stop_strings: int = 4
    max_pending: int = 1024  # queued requests before the server answers 503
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    allow_remote_images: bool = False
    remote_image_timeout_s: float = 10.0
    # Caps on beams, OPERA's rollbacks, ... that a request's "decoding" string cannot raise (decoding/limits.py).
    # Its max_new_tokens is replaced here: the request's max_tokens, or without one `max_tokens` above.
    decoding: DecodingLimits = field(default_factory=DecodingLimits)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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


# ---------------------------------------------------------------------------- parsing
def parse_chat_request(payload: Any, model_name: str, limits: ServerLimits) -> ChatRequest:
    if not isinstance(payload, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", "model")
    if model != model_name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {model_name!r}", "model", "model_not_found")
    n = payload.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, f"'n' must be 1 (one answer per request), got {n!r}", "n")
    if payload.get("logprobs"):
        raise ApiError(400, "'logprobs' is not supported by this server", "logprobs")
    stream = _optional(payload, "stream", bool, False)
    stream_options = _optional(payload, "stream_options", dict, None) or {}
    include_usage = bool(stream_options.get("include_usage", False))
    turns, images = _parse_messages(payload.get("messages"), limits)
    config = _decoding_config(payload, limits)
    stop_strings = _stop_strings(payload.get("stop"), limits)
    return ChatRequest(turns, images, config, stream, include_usage, stop_strings)


def _parse_messages(messages: Any, limits: ServerLimits) -> tuple[list[Turn], list[ImageReference]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"{len(messages)} messages; at most {limits.max_messages} are accepted", "messages")
    turns: list[Turn] = []
    images: list[ImageReference] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = ROLES.get(message.get("role"))
        if role is None:
            raise ApiError(400, f"{where}.role must be one of {sorted(ROLES)}, got {message.get('role')!r}", f"{where}.role")
        text, message_images = _parse_content(message.get("content"), where, role)
        images += message_images
        if len(images) > limits.max_images:
            raise ApiError(400, f"more than {limits.max_images} images in one request", "messages")
        # LLaVA's convention: each image becomes "<image>\n" in front of the text of its message.
        turns.append(Turn(role, (IMAGE_PLACEHOLDER + "\n") * len(message_images) + text))
    if turns[-1].role != "user":
        raise ApiError(400, "the last message must come from the user", "messages")
    return turns, images


def _parse_content(content: Any, where: str, role: str) -> tuple[str, list[ImageReference]]:
    if isinstance(content, str):
        _refuse_placeholder(content, f"{where}.content")
        return content, []
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"{where}.content must be a string or a non-empty array of parts", f"{where}.content")
    texts: list[str] = []
    images: list[ImageReference] = []
    for part_index, part in enumerate(content):
        part_where = f"{where}.content[{part_index}]"
        if not isinstance(part, dict):
            raise ApiError(400, f"{part_where} must be an object", part_where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise ApiError(400, f"{part_where}.text must be a string", f"{part_where}.text")
            _refuse_placeholder(text, f"{part_where}.text")
            texts.append(text)
        elif kind == "image_url":
            if role != "user":
                raise ApiError(400, f"{part_where}: only user messages may carry images", part_where)
            images.append(_image_reference(part.get("image_url"), part_where))
        else:
            raise ApiError(400, f"{part_where}.type must be 'text' or 'image_url', got {kind!r}", f"{part_where}.type")
    return "\n".join(texts), images


def _refuse_placeholder(text: str, where: str) -> None:
    if IMAGE_PLACEHOLDER in text:
        raise ApiError(400, f"{where} contains {IMAGE_PLACEHOLDER!r}; send images as image_url parts", where)


def _image_reference(value: Any, where: str) -> ImageReference:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{where}.image_url.url must be a string", f"{where}.image_url")
    if url.startswith("data:"):
        header, comma, encoded = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, f"{where}: a data URL must look like data:image/png;base64,<data>", f"{where}.image_url")
        if not header[5:].startswith("image/"):
            raise ApiError(400, f"{where}: the data URL's media type {header[5:-7]!r} is not an image", f"{where}.image_url")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: the data URL is not valid base64", f"{where}.image_url") from None
        return ImageReference(where, data=data)
    if url.startswith(("http://", "https://")):
        return ImageReference(where, url=url)
    raise ApiError(400, f"{where}: unsupported image URL scheme (use data:image/...;base64,...)", f"{where}.image_url")


def _decoding_config(payload: dict, limits: ServerLimits) -> DecodingConfig:
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    # The most new tokens the decoding string may ask for: the checked max_tokens when the client sent one.
    budget_cap, budget_source = ((limits.max_tokens, "this server's max_tokens") if max_tokens is None
                                 else (max_tokens, "the request's max_tokens"))
    if max_tokens is None:
        max_tokens = limits.default_max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"'max_tokens' must be an integer from 1 to {limits.max_tokens}, got {max_tokens!r}", "max_tokens")
    temperature = _optional_number(payload, "temperature", 0.0, 2.0)
    top_p = _optional_number(payload, "top_p", 0.0, 1.0)
    seed = payload.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ApiError(400, f"'seed' must be an integer, got {seed!r}", "seed")
    common: dict[str, Any] = {"max_new_tokens": max_tokens}
    if temperature:
        common["temperature"] = temperature
    if top_p:
        common["top_p"] = top_p
    if seed is not None:
        common["seed"] = seed
    decoding = payload.get("decoding")
    if decoding is None:
        decoding = "sample" if temperature else "greedy"
    if not isinstance(decoding, str):
        raise ApiError(400, f"'decoding' must be a string such as 'greedy', 'beam:num_beams=3', 'opera' or 'vcd', got {decoding!r}", "decoding")
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


def _stop_strings(stop: Any, limits: ServerLimits) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
        raise ApiError(400, "'stop' must be a non-empty string or an array of them", "stop")
    if len(stop) > limits.max_stop_strings:
        raise ApiError(400, f"at most {limits.max_stop_strings} stop strings", "stop")
    return tuple(stop)


def _optional(payload: dict, key: str, kind: type, default: Any) -> Any:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ApiError(400, f"'{key}' must be a {kind.__name__}, got {value!r}", key)
    return value


def _optional_number(payload: dict, key: str, low: float, high: float) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be a number from {low} to {high}, got {value!r}", key)
    return float(value)


# ---------------------------------------------------------------------------- images
def decode_images(references: list[ImageReference], limits: ServerLimits) -> list[Image.Image]:
    """Decode (fetching remote ones when allowed); ApiError names the failing part."""
    images = []
    for reference in references:
        data = reference.data
        if reference.url is not None:
            data = _fetch(reference, limits)
        if len(data) > limits.max_image_bytes:
            raise ApiError(413, f"{reference.where}: the image has {len(data)} bytes, over the limit of {limits.max_image_bytes}",
                           reference.where, "image_too_large")
        try:
            images.append(decode_image_bytes(data, reference.where, limits.max_image_pixels))
        except ImageError as error:
            raise ApiError(400, str(error), reference.where, "invalid_image") from None
    return images


def _fetch(reference: ImageReference, limits: ServerLimits) -> bytes:
    if not limits.allow_remote_images:
        raise ApiError(400, f"{reference.where}: remote image URLs are refused by this server; send the image inline "
                            "as a data:image/...;base64 URL", reference.where, "remote_image_refused")
    import httpx

    try:
        with httpx.stream("GET", reference.url, timeout=limits.remote_image_timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise ApiError(400, f"{reference.where}: fetching the image gave HTTP {response.status_code}", reference.where)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limits.max_image_bytes:
                    raise ApiError(413, f"{reference.where}: the remote image is over {limits.max_image_bytes} bytes",
                                   reference.where, "image_too_large")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise ApiError(400, f"{reference.where}: could not fetch the image ({error})", reference.where) from None


# ---------------------------------------------------------------------------- responses
def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def completion_body(completion_id: str, model_name: str, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int, decoding: str) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": openai_finish_reason(finish_reason),
            "logprobs": None,
        }],
        "usage": usage(prompt_tokens, completion_tokens),
        "decoding": decoding,
    }


def chunk_body(completion_id: str, model_name: str, created: int, delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_name,
        "choices": [{"index": 0, "delta": delta, "finish_reason": openai_finish_reason(finish_reason) if finish_reason else None,
                     "logprobs": None}],
    }


def usage_chunk_body(completion_id: str, model_name: str, created: int, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def openai_finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def models_body(model_name: str, created: int) -> dict:
    return {"object": "list", "data": [model_object(model_name, created)]}


def model_object(model_name: str, created: int) -> dict:
    return {"id": model_name, "object": "model", "created": created, "owned_by": "crystalvlm"}
