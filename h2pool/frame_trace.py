"""A frame-by-frame trace of a connection, for debugging (``python -m h2pool get -v``).

Each connection reports the frames it sends and receives on the
``h2pool.frames`` logger at DEBUG level, one line a frame, like ``nghttp -v``:
``< DATA stream=1 length=8192 flags=END_STREAM``. Only the 9-byte frame
headers are read, from a copy of the byte stream kept apart from h2's own
parsing, so tracing cannot change what the connection does.

Whether a connection traces is decided when it is made: without a DEBUG
handler on the logger it holds no tracer and pays one ``is None`` check per
read and write.
"""

from __future__ import annotations

import logging

from hyperframe.frame import FRAMES

frame_logger = logging.getLogger("h2pool.frames")

FRAME_HEADER_SIZE = 9

#: The client connection preface (RFC 9113 §3.4): sent before the first frame.
CLIENT_PREFACE_SIZE = 24


def describe(header: bytes) -> str:
    """``TYPE stream=N length=N flags=A|B`` for one 9-byte frame header."""
    length = int.from_bytes(header[:3], "big")
    kind, flags = header[3], header[4]
    stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    frame_class = FRAMES.get(kind)
    if frame_class is None:
        return f"UNKNOWN(0x{kind:02x}) stream={stream_id} length={length} flags=0x{flags:02x}"
    name = frame_class.__name__.removesuffix("Frame")
    names = [flag.name for flag in frame_class.defined_flags if flags & flag.bit]
    return f"{_SPELLING.get(name, name.upper())} stream={stream_id} length={length}" + (
        f" flags={'|'.join(names)}" if names else ""
    )


_SPELLING = {
    "RstStream": "RST_STREAM",
    "GoAway": "GOAWAY",
    "WindowUpdate": "WINDOW_UPDATE",
    "PushPromise": "PUSH_PROMISE",
    "AltSvc": "ALTSVC",
}


class FrameHeaders:
    """Finds the frame headers in one direction of a byte stream, however it is cut into pieces."""

    __slots__ = ("_header", "_skip")

    def __init__(self, skip: int = 0) -> None:
        #: Bytes still to pass over: a payload, or the client preface.
        self._skip = skip
        self._header = b""

    def feed(self, data: bytes | bytearray) -> list[str]:
        """The frames whose headers complete within ``data``, described."""
        found = []
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                passed = min(self._skip, end - position)
                self._skip -= passed
                position += passed
                continue
            wanted = FRAME_HEADER_SIZE - len(self._header)
            self._header += data[position : position + wanted]
            position += wanted
            if len(self._header) < FRAME_HEADER_SIZE:
                break
            found.append(describe(self._header))
            self._skip = int.from_bytes(self._header[:3], "big")
            self._header = b""
        return found


class ConnectionTrace:
    """Both directions of one connection, logged as ``>`` (sent) and ``<`` (received)."""

    __slots__ = ("_label", "_received", "_sent")

    def __init__(self, label: str) -> None:
        self._label = label
        self._sent = FrameHeaders(skip=CLIENT_PREFACE_SIZE)
        self._received = FrameHeaders()

    @classmethod
    def if_enabled(cls, label: str) -> ConnectionTrace | None:
        return cls(label) if frame_logger.isEnabledFor(logging.DEBUG) else None

    def sent(self, data: bytes | bytearray) -> None:
        for line in self._sent.feed(data):
            frame_logger.debug("%s > %s", self._label, line)

    def received(self, data: bytes | bytearray) -> None:
        for line in self._received.feed(data):
            frame_logger.debug("%s < %s", self._label, line)
