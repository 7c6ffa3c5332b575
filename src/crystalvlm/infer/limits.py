"""The server's limits (`ServerLimits`), and admission: how many requests are being answered, and
how many decoded pixels they hold.

Each request takes a `Ticket` when it arrives (refused when `max_requests` are already in flight)
and, before its images are decoded, reserves their pixel count from the image headers (refused when
the requests in flight would hold more than `max_pixels`). A decoded image stays in memory, at full
size, until its request is answered; this bounds the total. The ticket is given back when the
answer is complete (or the client has gone).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from crystalvlm.infer.decoding.limits import DecodingLimits


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, and what the server holds at once. Set by the operator only."""

    max_request_bytes: int = 16 * 2**20  # whole JSON body
    body_timeout_s: float = 30.0  # for the whole body to arrive (a slow sender holds a place meanwhile)
    max_image_bytes: int = 8 * 2**20  # one image, after base64 decoding
    max_image_pixels: int = 4096 * 4096  # width * height from the header, before decoding
    max_images: int = 4  # per request
    max_messages: int = 64
    max_prompt_tokens: int = 4096  # image tokens included
    # Characters of text, checked before tokenising; None: max_prompt_tokens x twice the longest
    # vocabulary entry (build_app fills it in from the tokenizer).
    max_prompt_chars: int | None = None
    max_tokens: int = 1024  # upper bound of max_tokens / max_completion_tokens
    default_max_tokens: int = 256
    max_stop_strings: int = 4
    max_stop_chars: int = 64  # per stop string (matching costs grow with the square of the length)
    max_concurrent_requests: int = 128  # being answered at once (queued, decoding, generating); then 503
    max_pending: int = 128  # waiting in the batcher's queue; then 503
    max_pending_pixels: int = 256 * 2**20  # decoded image pixels held by the requests being answered
    batch_wait_ms: float = 5.0  # how long the batcher waits for more requests to join a batch
    allow_remote_images: bool = False
    remote_image_timeout_s: float = 10.0  # one deadline for all the remote images of a request
    remote_image_networks: tuple[str, ...] = ()  # non-public networks remote images may come from
    # Caps on beams, OPERA's rollbacks, ... that a request's "decoding" string cannot raise (decoding/limits.py).
    # Its max_new_tokens is replaced per request: the request's max_tokens, or without one `max_tokens` above.
    decoding: DecodingLimits = field(default_factory=DecodingLimits)

    def __post_init__(self) -> None:
        if self.max_images * self.max_image_pixels > self.max_pending_pixels:
            raise ValueError(f"max_pending_pixels ({self.max_pending_pixels}) must hold one request's images: "
                             f"max_images x max_image_pixels = {self.max_images * self.max_image_pixels}")
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) must be from 1 to max_tokens ({self.max_tokens})")


class Busy(Exception):
    """The server is at one of its limits; the request may succeed later."""


class Admission:
    def __init__(self, max_requests: int, max_pixels: int) -> None:
        self.max_requests = max_requests
        self.max_pixels = max_pixels
        self.requests = 0
        self.pixels = 0
        self._lock = threading.Lock()  # tickets hold pixels from worker threads (image decoding)

    def admit(self) -> "Ticket":
        with self._lock:
            if self.requests >= self.max_requests:
                raise Busy(f"{self.max_requests} requests are already being answered")
            self.requests += 1
        return Ticket(self)


class Ticket:
    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.pixels = 0
        self._released = False

    def hold_pixels(self, width: int, height: int) -> None:
        """Reserve one image's pixels (from its header) before it is decoded; Busy when over the budget."""
        count = width * height
        admission = self._admission
        with admission._lock:
            if self._released:
                raise Busy("the request has already finished")
            if admission.pixels + count > admission.max_pixels:
                raise Busy(f"the requests being answered already hold {admission.pixels} decoded image pixels; "
                           f"the server holds at most {admission.max_pixels}")
            admission.pixels += count
            self.pixels += count

    def release(self) -> None:
        """Give back the request's place and pixels (safe to call more than once)."""
        admission = self._admission
        with admission._lock:
            if self._released:
                return
            self._released = True
            admission.requests -= 1
            admission.pixels -= self.pixels
