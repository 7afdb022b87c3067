"""h2's client connection, adapted where h2 4.x falls short for a pool.

Each adaptation is small, overrides one documented-by-code hook of
``h2.connection.H2Connection``, is checked against the installed h2 at
import time, and is covered by tests that would fail if h2 changed under it:

* **GOAWAY drains** (RFC 9113 §6.8). h2 moves to CLOSED on any received
  GOAWAY, then rejects the frames of streams the server promised to finish
  and drops bytes queued to send (the WINDOW_UPDATEs those streams need).
  Here GOAWAY only produces its event; the pool stops opening streams.
* **Open streams are counted, not scanned.** h2 counts open outbound
  streams by scanning every stream on each new stream (about 6% of a small
  request). The pool's :class:`~h2pool.slots.SlotLedger` moves with h2's
  stream states already, so h2 asks it; streams the pool has finished with
  are moved to h2's bounded closed-stream record at once.
* **HPACK results are reused** for repeated header blocks
  (:mod:`h2pool.hpack_cache`).
* **No eager frame repr.** h2 builds ``repr(frame)`` for a trace log that
  is never written, and hyperframe's DATA repr hex-encodes the payload:
  about 30% of the CPU of a download. Received frames are given a subclass
  with a constant-time repr before h2 sees them.
* **DATA frames in runs.** Consecutive buffered DATA frames of one stream
  reach h2 as one frame (see :class:`_ClientFrameBuffer`): one state machine
  step, window check and event per run instead of per 8 KiB frame, with the
  same flow-control, content-length and frame-size checks.
  ``tests/test_client_h2.py`` compares it with h2's own buffer.
* **Response header blocks without work for disabled options.** With
  inbound normalisation and validation off, h2 still builds validation
  flags and copies the fields through a no-op pipeline; a block on an
  open stream takes h2's other steps only.
* **No exception per finished response.** Acknowledging data of a
  stream already forgotten returns the connection's window directly, where
  h2 raises and catches StreamClosedError.
* **Short receive paths for the frames our buffer makes.** A joined DATA
  run or a whole header block on a stream open for receiving takes h2's
  steps directly, without the trace call, repr, dispatch and closed-stream
  handling around them (which such a stream cannot need).
* **Request HEADERS without frame objects.** Opening a stream with a list
  of bytes fields takes h2's steps on h2's state machines and encoder, and
  writes the HEADERS/CONTINUATION bytes directly; anything else (trailers,
  priority, str fields, header normalisation on) is h2's own path.

Candidates to send upstream: the GOAWAY drain and a lazy trace call.
"""

from __future__ import annotations

import struct
from typing import Any, cast

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.stream
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2ConnectionStateMachine,
    _decode_headers,
)
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from h2.stream import H2Stream, H2StreamStateMachine, StreamInputs, StreamState
from h2.utilities import authority_from_headers, extract_method_header, is_informational_response
from hyperframe.flags import Flags
from hyperframe.frame import (
    AltSvcFrame,
    ContinuationFrame,
    DataFrame,
    ExtensionFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from .hpack_cache import CachingDecoder, CachingEncoder
from .slots import SlotLedger
from .tls_transport import Plaintext

if not h2.__version__.startswith("4.4."):  # pragma: no cover - guarded by the dependency pin
    raise ImportError(f"h2pool's adaptations of h2 were written for h2 4.4, found {h2.__version__}")


def _quiet(cls: type[Frame]) -> type[Frame]:
    name = cls.__name__

    def brief_repr(frame: Frame) -> str:
        return f"{name}(stream_id={frame.stream_id})"

    return type(name, (cls,), {"__repr__": brief_repr, "__slots__": ()})


_QUIET_FRAMES: dict[type[Frame], type[Frame]] = {
    cls: _quiet(cls)
    for cls in (
        DataFrame,
        HeadersFrame,
        ContinuationFrame,
        SettingsFrame,
        WindowUpdateFrame,
        PingFrame,
        RstStreamFrame,
        GoAwayFrame,
        PriorityFrame,
        PushPromiseFrame,
        AltSvcFrame,
        ExtensionFrame,
    )
}


#: The 9-byte frame header: length (16 + 8 bits), type, flags, stream ID.
_FRAME_HEADER = struct.Struct(">HBBBL")
_DATA_TYPE = DataFrame.type
_END_STREAM = 0x1
_PADDED = 0x8
_STREAM_ID_MASK = 0x7FFFFFFF
_HEADERS_TYPE = HeadersFrame.type
_CONTINUATION_TYPE = ContinuationFrame.type
_END_HEADERS = 0x4
_PADDED_OR_PRIORITY = _PADDED | 0x20
_STREAM_FRAME_TYPES = (_DATA_TYPE, _HEADERS_TYPE)
_QuietHeadersFrame = cast(type[HeadersFrame], _QUIET_FRAMES[HeadersFrame])
_QuietDataFrame = cast(type[DataFrame], _QUIET_FRAMES[DataFrame])
#: The frames :class:`_ClientFrameBuffer` makes itself, which carry END_STREAM
#: as a plain bool too: a joined run of unpadded DATA, and a whole header
#: block without padding or priority. Their type tells the connection that
#: it may take its short paths for them.
#: Fields that are the same in every such frame are class attributes.
_RunDataFrame = cast(
    type[DataFrame], type("DataFrame", (_QuietDataFrame,), {"__slots__": ("end_stream",), "pad_length": 0})
)
_BlockHeadersFrame = cast(
    type[HeadersFrame],
    type(
        "HeadersFrame",
        (_QuietHeadersFrame,),
        {"__slots__": ("end_stream",), "pad_length": 0, "depends_on": 0, "stream_weight": 0, "exclusive": False},
    ),
)
_DATA_FLAG_NAMES = frozenset(flag.name for flag in DataFrame.defined_flags)
_HEADERS_FLAG_NAMES = frozenset(flag.name for flag in HeadersFrame.defined_flags)
_new_object = object.__new__


def _flags(valid: frozenset[str], names: tuple[str, ...]) -> Flags:
    """hyperframe's ``Flags(defined_flags)`` holding ``names``, which must be among ``valid``.

    Flags' constructor builds the valid-name set anew for every frame; the
    frames made here share one (Flags never changes it).
    """
    flags = _new_object(Flags)
    flags._valid_flags = valid  # type: ignore[assignment]
    flags._flags = set(names)
    return flags


def _data_frame(stream_id: int, payload: bytes, end_stream: bool) -> DataFrame:
    """``DataFrame(stream_id, payload, flags=...)`` as parsed, without hyperframe's constructor chain.

    Each frame otherwise costs four chained ``__init__`` calls and a Flags
    object built by validating each flag name: about 3 us, for a run of
    DATA that h2 handles in less. The attributes are exactly those the
    constructor and ``parse_body`` set; ``tests/test_client_h2.py`` compares
    them with hyperframe's.
    """
    frame = _new_object(_RunDataFrame)
    frame.end_stream = end_stream  # type: ignore[attr-defined]
    frame.stream_id = stream_id
    frame.flags = _flags(_DATA_FLAG_NAMES, ("END_STREAM",) if end_stream else ())
    frame.data = payload
    frame.body_len = len(payload)
    return frame


def _headers_frame(stream_id: int, block: bytes, end_stream: bool) -> HeadersFrame:
    """A parsed HEADERS frame with END_HEADERS and no padding or priority, as :func:`_data_frame` makes DATA."""
    frame = _new_object(_BlockHeadersFrame)
    frame.end_stream = end_stream  # type: ignore[attr-defined]
    frame.stream_id = stream_id
    frame.flags = _flags(_HEADERS_FLAG_NAMES, ("END_HEADERS", "END_STREAM") if end_stream else ("END_HEADERS",))
    frame.data = block
    frame.body_len = len(block)
    return frame


class _ClientFrameBuffer(FrameBuffer):
    """h2's frame buffer, with four changes.

    * An oversized frame is rejected on its 9-byte header, not once its
      whole payload is buffered.
    * An incomplete DATA or HEADERS frame on a stream waits for more bytes
      without the frame object h2 would build from its header and discard
      (building it cannot fail for these).
    * A run of buffered DATA frames on one stream becomes one DATA frame.
      nginx sends 8 KiB frames, and h2 spends on each a frame object, two
      state machine steps, two window checks and a ``DataReceived`` event:
      most of the CPU of a download. A run is as many complete, unpadded
      DATA frames for the same stream as follow each other in the buffer,
      up to and including one with END_STREAM. Each is checked against the
      maximum frame size; its flow-controlled length is its payload length,
      so the joined frame's is their sum and h2's windows and content-length
      checks come out exactly as frame by frame (windows only shrink as
      DATA arrives, so a sum overdraws a window if and only if one of its
      frames does). Anything else - padding, another stream or type, a
      frame not yet complete, a header block in progress - goes through
      h2's own parsing, one frame at a time, in order.
    * A complete HEADERS frame with END_HEADERS and neither padding nor
      priority, the shape of nearly every response, is made into its frame
      object directly: its payload is the header block, which is all
      hyperframe would parse out of it. Other HEADERS go through h2.
    """

    def add_data(self, data: Any) -> None:
        """Buffer received bytes; an empty buffer takes our TLS layer's :class:`Plaintext` over.

        The TLS layer hands each read over in a fresh ``Plaintext`` that it
        never touches again: copying it would cost a pass over every byte
        received, and the allocation of a buffer as large. Anything else
        (``bytes``, a caller's reusable ``bytearray``) is copied, as h2 does.
        """
        if not self._data and type(data) is Plaintext and not self._preamble_len:
            self._data = data
        else:
            super().add_data(data)

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        length_high, length_low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(data)
        length = (length_high << 8) + length_low
        self._validate_frame_length(length)
        stream_id &= _STREAM_ID_MASK
        if stream_id and kind in _STREAM_FRAME_TYPES and len(data) < 9 + length:
            # Not complete yet: h2 would build the frame object from its header
            # (for DATA and HEADERS on a stream that cannot fail) and drop it.
            # A socket read ends mid-frame nearly every time in a download.
            raise StopIteration
        # From here a DATA or HEADERS frame on a stream is complete.
        if stream_id and not self._headers_buffer:
            if kind == _DATA_TYPE and not flags & _PADDED:
                return self._data_run(stream_id)
            if kind == _HEADERS_TYPE and flags & _END_HEADERS and not flags & _PADDED_OR_PRIORITY:
                return self._whole_header_block(stream_id, flags, 9 + length)
        return super().__next__()

    def _whole_header_block(self, stream_id: int, flags: int, end: int) -> HeadersFrame:
        """A HEADERS frame with END_HEADERS and no padding or priority: its payload is the block."""
        data = self._data
        frame = _headers_frame(stream_id, bytes(data[9:end]), bool(flags & _END_STREAM))
        del data[:end]
        return frame

    def _data_run(self, stream_id: int) -> DataFrame:
        """The complete, unpadded DATA frame at the front and those that continue its run, as one frame."""
        data = self._data
        buffered, limit = len(data), self.max_frame_size
        spans: list[tuple[int, int]] = []
        end = 0
        end_stream = False
        while buffered - end >= 9:
            length_high, length_low, kind, flags, frame_stream_id = _FRAME_HEADER.unpack_from(data, end)
            length = (length_high << 8) + length_low
            start = end + 9
            if (
                kind != _DATA_TYPE
                or flags & _PADDED
                or frame_stream_id & _STREAM_ID_MASK != stream_id
                or length > limit
                or start + length > buffered
            ):
                break
            end = start + length
            spans.append((start, end))
            if flags & _END_STREAM:
                end_stream = True
                break
        view = memoryview(data)
        payload = b"".join([view[start:stop] for start, stop in spans])
        view.release()
        del data[:end]
        return _data_frame(stream_id, payload, end_stream)


#: h2's transition tables keyed by the inputs' (and connection states') values.
#: h2 keys them by enum members, and a plain ``Enum`` hashes through a
#: Python-level ``__hash__``: two calls per step, a dozen steps per request.
_STREAM_STEPS = {(state, stream_input._value_): step for (state, stream_input), step in h2.stream._transitions.items()}
_CONNECTION_STEPS = {
    (state._value_, connection_input._value_): step
    for (state, connection_input), step in H2ConnectionStateMachine._transitions.items()
}


class _StreamStateMachine(H2StreamStateMachine):
    """h2's stream state machine, looking its transitions up by value; otherwise the same steps."""

    __slots__ = ()

    def process_input(self, input_: StreamInputs) -> list[h2.events.Event]:
        if not isinstance(input_, StreamInputs):
            raise ValueError("Input must be an instance of StreamInputs")
        try:
            func, target_state = _STREAM_STEPS[(self.state, input_._value_)]
        except KeyError as err:
            old_state = self.state
            self.state = StreamState.CLOSED
            raise h2.exceptions.ProtocolError(f"Invalid input {input_} in state {old_state}") from err
        previous_state = self.state
        self.state = target_state
        if func is None:
            return []
        try:
            return func(self, previous_state)
        except h2.exceptions.ProtocolError:
            self.state = StreamState.CLOSED
            raise
        except AssertionError as err:  # pragma: no cover - h2's internal consistency checks
            self.state = StreamState.CLOSED
            raise h2.exceptions.ProtocolError(err) from err


class _ConnectionStateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, looking its transitions up by value; otherwise the same steps."""

    __slots__ = ()

    def process_input(self, input_: ConnectionInputs) -> list[h2.events.Event]:
        if not isinstance(input_, ConnectionInputs):
            raise ValueError("Input must be an instance of ConnectionInputs")
        try:
            func, target_state = _CONNECTION_STEPS[(self.state._value_, input_._value_)]
        except KeyError as err:
            old_state = self.state
            self.state = ConnectionState.CLOSED
            raise h2.exceptions.ProtocolError(f"Invalid input {input_} in state {old_state}") from err
        self.state = target_state
        # h2's table has no step functions, and calls one without arguments if it had.
        return [] if func is None else cast(list[h2.events.Event], func())


#: Stream states that take DATA and header blocks (RFC 9113 §5.1).
_RECEIVING = frozenset((StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL))

_FinalHeadersEvent = h2.events.ResponseReceived | h2.events.TrailersReceived
_HeadersEvent = _FinalHeadersEvent | h2.events.InformationalResponseReceived


class ClientH2Connection(h2.connection.H2Connection):
    """A client ``H2Connection`` whose open-stream count is ``slots.open``."""

    def __init__(self, config: h2.config.H2Configuration, slots: SlotLedger, max_header_list_size: int) -> None:
        super().__init__(config=config)
        self._slots = slots
        self.encoder = CachingEncoder()
        self.decoder = CachingDecoder(max_header_list_size)
        self.incoming_buffer = _ClientFrameBuffer(server=False)
        self.state_machine.__class__ = _ConnectionStateMachine
        self._preface_seen = False
        # The options that keep a header block off the fast paths, read once
        # (each is a Python-level descriptor, read per request otherwise):
        # h2pool never changes a connection's configuration after creating it.
        self._plain_requests = config.client_side and not (
            config.normalize_outbound_headers or config.validate_outbound_headers
        )
        self._plain_responses = not (
            config.normalize_inbound_headers
            or config.validate_inbound_headers
            or isinstance(config.header_encoding, str)
        )
        table = self._frame_dispatch_table
        for cls, quiet in _QUIET_FRAMES.items():
            if cls in table:
                table[quiet] = table[cls]
        table[_RunDataFrame] = table[DataFrame]
        table[_BlockHeadersFrame] = table[HeadersFrame]

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.state_machine.__class__ = _StreamStateMachine
        return stream

    def _begin_request_stream(self, stream_id: int) -> H2Stream:
        """``_begin_new_stream(stream_id, ODD)`` for a stream of ours: h2's checks and steps, without its logging.

        h2's version also works out which side the ID belongs to and logs
        three times (to a logger that writes nothing): a fifth of the cost
        of opening a stream.
        """
        ours = stream_id % 2 == 1
        highest = self.highest_outbound_stream_id if ours else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise h2.exceptions.StreamIDTooLowError(stream_id, highest)
        if not ours:
            raise h2.exceptions.ProtocolError("Invalid stream ID for peer.")
        stream = H2Stream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        stream.state_machine.__class__ = _StreamStateMachine
        stream.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = stream
        self.highest_outbound_stream_id = stream_id
        return stream

    @property
    def open_outbound_streams(self) -> int:
        return self._slots.open

    @property
    def has_data_to_send(self) -> bool:
        """Whether frames are queued for :meth:`data_to_send` (without taking them)."""
        return bool(self._data_to_send)

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """Open a stream with a request header block of bytes fields; anything else goes to h2.

        h2 builds a HEADERS frame object, header validation flags, a
        re-encoded copy of the fields and a frame list per request, about
        15 us. The same steps in the same order, on the same state machines,
        windows and encoder, with the frame bytes written directly.
        """
        if (
            stream_id in self.streams
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or not self._plain_requests
            or not _plain_request_fields(headers)
        ):
            super().send_headers(
                stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive
            )
            return
        limit = self.remote_settings.max_concurrent_streams
        open_streams = self.open_outbound_streams
        if open_streams + 1 > limit:
            raise h2.exceptions.TooManyStreamsError(f"Max outbound streams is {limit}, {open_streams} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._begin_request_stream(stream_id)
        machine = stream.state_machine
        # No :status field: not an informational response, which h2 checks for.
        machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if stream._authority is None:
            stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        # A new stream's frame size is the connection's (h2 copies it at creation).
        self._data_to_send += _header_frames(stream_id, block, end_stream, self.max_outbound_frame_size)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """Give back window for data taken by a consumer, without an exception for a finished stream.

        A response usually ends, and its stream is forgotten, before the
        consumer takes its data; h2 then raises and catches StreamClosedError
        (with its traceback) to hand back only the connection's window. That
        outcome is produced here directly, for exactly the case h2 catches: a
        stream of ours, opened earlier, no longer in ``streams``.
        """
        if (
            stream_id in self.streams
            or stream_id % 2 == 0
            or not 0 < stream_id <= self.highest_outbound_stream_id
            or acknowledged_size < 0
        ):
            super().acknowledge_received_data(acknowledged_size, stream_id)
            return
        increment = self._inbound_flow_control_window_manager.process_bytes(acknowledged_size)
        if increment:
            self._prepare_for_sending([WindowUpdateFrame(0, window_increment=increment)])

    def forget_stream(self, stream_id: int) -> None:
        """Drop a stream the pool is done with; h2 remembers how it closed."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self._closed_streams[stream_id] = stream.closed_by

    def _receive_frame(self, frame: Frame) -> Any:
        if not self._preface_seen:
            # RFC 9113 §3.4: the server preface is a SETTINGS frame. (An ACK
            # of ours sent before it is tolerated, as h2's own server does it.)
            if not isinstance(frame, SettingsFrame):
                raise h2.exceptions.ProtocolError(f"the server's first frame was {type(frame).__name__}, not SETTINGS")
            self._preface_seen = True
        kind = frame.__class__
        if kind is _RunDataFrame or (kind is _BlockHeadersFrame and self._plain_responses):
            # A stream open for receiving cannot raise the closed-stream
            # errors h2's _receive_frame turns into RST_STREAM; anything else
            # on these frames raises, or returns no frames to send, there too.
            stream = self.streams.get(frame.stream_id)
            if stream is not None and stream.state_machine.state in _RECEIVING:
                if kind is _RunDataFrame:
                    return self._receive_run(stream, cast(DataFrame, frame))
                return self._receive_stream_headers(stream, cast(HeadersFrame, frame))[1]
        quiet = _QUIET_FRAMES.get(kind)
        if quiet is not None:
            frame.__class__ = quiet
        return super()._receive_frame(frame)

    def _receive_run(self, stream: H2Stream, frame: DataFrame) -> list[h2.events.Event]:
        """h2's steps for DATA on a stream open for receiving, for a run our frame buffer joined.

        A run is unpadded, so its flow-controlled length is its length. The
        steps of ``_receive_frame``, ``_receive_data_frame`` and
        ``H2Stream.receive_data``, in their order, without the trace call,
        the frame's repr, the stream look-up and the closed-stream handling
        that a stream in this state cannot need: about 2 us of each DATA
        event, several times that when the caches are cold between
        sequential requests.
        """
        data = frame.data
        length = len(data)
        end_stream: bool = frame.end_stream  # type: ignore[attr-defined]
        events = self.state_machine.process_input(ConnectionInputs.RECV_DATA)
        self._inbound_flow_control_window_manager.window_consumed(length)
        machine = stream.state_machine
        stream_events = machine.process_input(StreamInputs.RECV_DATA)
        data_event = cast(h2.events.DataReceived, stream_events[0])
        stream._inbound_window_manager.window_consumed(length)
        stream._track_content_length(length, end_stream)
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            data_event.stream_ended = cast(h2.events.StreamEnded, ended[0])
            stream_events += ended
        data_event.data = data
        data_event.flow_controlled_length = length
        return events + stream_events

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        stream_id = frame.stream_id
        stream = self.streams.get(stream_id)
        if stream is None and stream_id % 2 == 0:
            # Push is disabled: a server never opens a stream (RFC 9113 §5.1.1, §8.4).
            raise h2.exceptions.ProtocolError(f"server sent HEADERS on stream {stream_id}, which it cannot open")
        if stream is None or "PRIORITY" in frame.flags or not self._plain_responses:
            return super()._receive_headers_frame(frame)
        return self._receive_stream_headers(stream, frame)

    def _receive_stream_headers(self, stream: H2Stream, frame: HeadersFrame) -> tuple[list[Frame], list[Any]]:
        """h2's handling of a header block on an existing stream, minus its work for disabled options.

        With inbound normalisation and validation off and bytes headers,
        h2 still builds header validation flags and copies the fields
        through a no-op pipeline per response. These are its steps, in its
        order, on its state machines: decode, connection input, the
        stream's informational/final/trailer input and END_STREAM,
        content-length, the trailers-need-END_STREAM check.
        """
        headers = _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        end_stream = "END_STREAM" in frame.flags
        informational = is_informational_response(headers)
        if informational and end_stream:
            raise h2.exceptions.ProtocolError("Cannot set END_STREAM on informational responses")
        machine = stream.state_machine
        stream_events = machine.process_input(
            StreamInputs.RECV_INFORMATIONAL_HEADERS if informational else StreamInputs.RECV_HEADERS
        )
        headers_event = cast(_HeadersEvent, stream_events[0])
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            # Not informational: that raised above.
            cast(_FinalHeadersEvent, headers_event).stream_ended = cast(h2.events.StreamEnded, ended[0])
            stream_events += ended
        stream._initialize_content_length(headers)
        if isinstance(headers_event, h2.events.TrailersReceived) and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set")
        headers_event.headers = list(headers)
        return [], events + stream_events

    def _receive_rst_stream_frame(self, frame: RstStreamFrame) -> Any:
        stream_id = frame.stream_id
        highest = self.highest_outbound_stream_id if stream_id % 2 else self.highest_inbound_stream_id
        if stream_id not in self.streams and stream_id > highest:
            # RFC 9113 §5.1: RST_STREAM on an idle stream is a connection error.
            raise h2.exceptions.ProtocolError(f"RST_STREAM on idle stream {stream_id}")
        return super()._receive_rst_stream_frame(frame)

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        return [], [goaway_event(frame)]


def _plain_request_fields(headers: Any) -> bool:
    """Whether ``headers`` is a non-empty list of (bytes, bytes) fields with no ``:status``.

    A ``:status`` would make it a response (informational or not), which h2's
    own path refuses on a client's new stream.
    """
    if type(headers) is not list or not headers:
        return False
    # A loop, not all() over a generator: half the time, once per request.
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes or name == b":status":
            return False
    return True


def _header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """HEADERS (and CONTINUATION) frames carrying ``block``, as hyperframe would serialize them."""
    piece, rest = block[:max_frame_size], block[max_frame_size:]
    flags = (_END_STREAM if end_stream else 0) | (0 if rest else _END_HEADERS)
    frames = [_FRAME_HEADER.pack(len(piece) >> 8, len(piece) & 0xFF, _HEADERS_TYPE, flags, stream_id), piece]
    while rest:
        piece, rest = rest[:max_frame_size], rest[max_frame_size:]
        flags = 0 if rest else _END_HEADERS
        frames += (_FRAME_HEADER.pack(len(piece) >> 8, len(piece) & 0xFF, _CONTINUATION_TYPE, flags, stream_id), piece)
    return b"".join(frames)


def goaway_event(frame: GoAwayFrame) -> h2.events.ConnectionTerminated:
    """The event for a received GOAWAY, without closing h2's state machine (so streams can drain)."""
    event = h2.events.ConnectionTerminated()
    try:
        event.error_code = ErrorCodes(frame.error_code)
    except ValueError:
        event.error_code = frame.error_code
    event.last_stream_id = frame.last_stream_id
    event.additional_data = frame.additional_data or None
    return event
