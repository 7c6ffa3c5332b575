"""Server-wide admission: how many requests are being answered, and how many decoded pixels they hold.

Each request takes a `Ticket` when it arrives (refused when `max_requests` are already in flight)
and, before its images are decoded, reserves their pixel count from the image headers (refused when
the requests in flight would hold more than `max_pixels`). A decoded image stays in memory, at full
size, until its request is answered; this bounds the total. The ticket is given back when the
answer is complete (or the client has gone).
"""

from __future__ import annotations

import threading


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
