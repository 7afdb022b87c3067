"""h2pool.client_h2's adaptations against h2's own code paths.

The frame buffer joins runs of DATA frames on one stream into one frame and
parses whole HEADERS blocks itself, and header blocks on open streams skip
h2's work for disabled options. These tests feed the same server bytes, cut
into the same reads, to a client connection with those changes and to one
with h2's own buffer (plus the early length check) and h2's own header
handling, and require the same outcome: the same data and
flow-controlled lengths per stream, the same other events in the same order,
the same error in the same read, the same flow-control windows and
content-length bookkeeping, and the same kinds of frames sent back.

Request HEADERS sent without h2's frame objects are compared with h2's own
``send_headers`` the same way: same bytes, errors and stream states.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import partial
from typing import Any

import h2.events
import h2.exceptions
import hpack
import hyperframe.exceptions
import pytest
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from h2.stream import H2StreamStateMachine, StreamInputs, StreamState
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from h2pool.client_h2 import ClientH2Connection, _ClientFrameBuffer, _ConnectionStateMachine, _StreamStateMachine
from h2pool.connection import _H2_CONFIG
from h2pool.slots import SlotLedger
from h2pool.tls_transport import Plaintext

#: Small enough that drawn DATA can overdraw a stream's window.
STREAM_WINDOW = 1_000
MAX_FRAME = 16_384
OPEN_STREAMS = (1, 3)
#: A stream the client never opened: DATA on it is a connection error.
IDLE_STREAM = 5

ERRORS = (h2.exceptions.ProtocolError, hyperframe.exceptions.HyperframeError, hpack.HPACKError)


class _FrameByFrameBuffer(FrameBuffer):
    """The reference: h2's buffer with the early length check, no joined runs."""

    def __next__(self) -> Frame:
        if len(self._data) >= 9:
            self._validate_frame_length(int.from_bytes(self._data[:3], "big"))
        return super().__next__()


def _h2_receive_headers(conn: ClientH2Connection, frame: HeadersFrame) -> Any:
    """The reference for header blocks: h2's own handling behind h2pool's push guard."""
    if frame.stream_id % 2 == 0 and frame.stream_id not in conn.streams:
        raise h2.exceptions.ProtocolError("server-opened stream")
    return h2.connection.H2Connection._receive_headers_frame(conn, frame)


def _client(frame_by_frame: bool) -> ClientH2Connection:
    conn = ClientH2Connection(_H2_CONFIG, SlotLedger(100, 100), 65_536)
    conn.local_settings.update({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW})
    conn.local_settings.acknowledge()
    if frame_by_frame:
        conn.incoming_buffer = _FrameByFrameBuffer(server=False)
        table = conn._frame_dispatch_table
        for cls in [cls for cls in table if issubclass(cls, HeadersFrame)]:
            table[cls] = partial(_h2_receive_headers, conn)
    conn.initiate_connection()
    for stream_id in OPEN_STREAMS:
        conn.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"a")],
            end_stream=True,
        )
    conn.data_to_send()
    return conn


@dataclass
class Outcome:
    events: list[tuple[Any, ...]]
    error: tuple[type[BaseException], int] | None
    windows: dict[int, tuple[int, int | None]]
    sent: set[tuple[str, int]]


def _normalised(events: list[h2.events.Event]) -> list[tuple[Any, ...]]:
    """Events with consecutive DATA of one stream added up: how the two buffers may differ."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, h2.events.DataReceived):
            if out and out[-1][0] == "data" and out[-1][1] == event.stream_id:
                _, stream_id, data, flow = out.pop()
                out.append(("data", stream_id, data + (event.data or b""), flow + (event.flow_controlled_length or 0)))
            else:
                out.append(("data", event.stream_id, event.data or b"", event.flow_controlled_length or 0))
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            out.append((type(event).__name__, event.stream_id, event.headers))
        elif isinstance(event, h2.events.StreamReset):
            out.append(("reset", event.stream_id, event.error_code, event.remote_reset))
        else:
            out.append((type(event).__name__, getattr(event, "stream_id", None)))
    return out


def _play(reads: list[bytes], frame_by_frame: bool) -> Outcome:
    conn = _client(frame_by_frame)
    events: list[h2.events.Event] = []
    error = None
    for index, data in enumerate(reads):
        try:
            # The fast side gets what our TLS layer hands over: a fresh
            # bytearray per read, which an empty frame buffer takes over.
            events.extend(conn.receive_data(data if frame_by_frame else Plaintext(data)))
        except ERRORS as exc:
            error = (type(exc), index)
            break
    # After an error the connection is finished: only what it sent matters.
    windows: dict[int, tuple[int, int | None]] = {}
    if error is None:
        windows = _windows(conn)
    sent = set()
    for frame in _frames_in(conn.data_to_send()):
        sent.add((type(frame).__name__, frame.stream_id))
    return Outcome(_normalised(events), error, windows, sent)


def _windows(conn: ClientH2Connection) -> dict[int, tuple[int, int | None]]:
    """Each window's size plus the bytes processed but not yet acknowledged, and each stream's body length."""
    windows: dict[int, tuple[int, int | None]] = {}
    manager = conn._inbound_flow_control_window_manager
    windows[0] = (manager.current_window_size + manager._bytes_processed, None)
    for stream_id, stream in conn.streams.items():
        stream_manager = stream._inbound_window_manager
        windows[stream_id] = (
            stream_manager.current_window_size + stream_manager._bytes_processed,
            stream._actual_content_length,
        )
    return windows


def _frames_in(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def _assert_same(wire: bytes, cuts: list[int]) -> Outcome:
    reads, last = [], 0
    for cut in sorted({c % (len(wire) + 1) for c in cuts}):
        reads.append(wire[last:cut])
        last = cut
    reads.append(wire[last:])
    joined, reference = _play(reads, frame_by_frame=False), _play(reads, frame_by_frame=True)
    assert joined == reference
    return joined


_ENCODER = hpack.Encoder()


def _headers(stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool, split: bool) -> bytes:
    block = _ENCODER.encode(fields)
    if not split:
        return HeadersFrame(
            stream_id, block, flags=["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        ).serialize()
    head = HeadersFrame(stream_id, block[:2], flags=["END_STREAM"] if end_stream else []).serialize()
    return head + ContinuationFrame(stream_id, block[2:], flags=["END_HEADERS"]).serialize()


def _data(stream_id: int, size: int, pad: int | None, end_stream: bool) -> bytes:
    flags = ["END_STREAM"] if end_stream else []
    frame = DataFrame(stream_id, bytes([stream_id]) * size, flags=flags + (["PADDED"] if pad is not None else []))
    if pad is not None:
        frame.pad_length = pad
    return frame.serialize()


def _raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">HBBBL", size >> 8, size & 0xFF, kind, flags, stream_id) + payload


PREFACE = SettingsFrame(0).serialize()
STREAMS = st.sampled_from([*OPEN_STREAMS, IDLE_STREAM])
MOVES = st.one_of(
    st.tuples(st.just("data"), STREAMS, st.integers(0, 400), st.none() | st.integers(0, 20), st.booleans()),
    st.tuples(
        st.just("response"),
        st.sampled_from(OPEN_STREAMS),
        st.none() | st.integers(0, 2_000),
        st.booleans(),
        # Informational responses, and END_STREAM where it is and is not allowed.
        st.sampled_from([b"200", b"204", b"100", b"103"]),
        st.booleans(),
    ),
    st.tuples(st.just("trailers"), st.sampled_from(OPEN_STREAMS), st.booleans(), st.booleans()),
    st.tuples(st.just("rst"), st.sampled_from(OPEN_STREAMS)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("window_update"), st.sampled_from([0, *OPEN_STREAMS])),
    st.tuples(st.just("oversized"), st.sampled_from(OPEN_STREAMS), st.booleans()),
    st.tuples(st.just("reserved_bit"), st.sampled_from(OPEN_STREAMS), st.integers(0, 50), st.integers(0, 255)),
    st.tuples(st.just("bad_padding"), st.sampled_from(OPEN_STREAMS)),
    st.tuples(st.just("open_header_block"), st.sampled_from(OPEN_STREAMS)),
    st.tuples(
        st.just("raw_headers"),
        st.sampled_from([0, *OPEN_STREAMS]),
        st.integers(0, 255),
        st.sampled_from(
            [b"\x88", b"\x00\x88", b"\x02\x88\x00\x00", bytes(5) + b"\x88", b"\x01" + bytes(5) + b"\x88\x00"]
        ),
    ),
)


def _wire(move: tuple[Any, ...]) -> bytes:
    kind = move[0]
    if kind == "data":
        _, stream_id, size, pad, end_stream = move
        return _data(stream_id, size, pad, end_stream)
    if kind == "response":
        _, stream_id, length, split, status, end_stream = move
        fields = [(b":status", status)] + ([(b"content-length", str(length).encode())] if length is not None else [])
        return _headers(stream_id, fields, end_stream=end_stream, split=split)
    if kind == "trailers":
        _, stream_id, split, end_stream = move
        return _headers(stream_id, [(b"x-end", b"1")], end_stream=end_stream, split=split)
    if kind == "rst":
        return RstStreamFrame(move[1], error_code=8).serialize()
    if kind == "ping":
        return PingFrame(0, b"12345678").serialize()
    if kind == "window_update":
        return WindowUpdateFrame(move[1], window_increment=100).serialize()
    if kind == "oversized":
        # Rejected on its header, whether or not its payload has arrived.
        _, stream_id, whole = move
        return _raw_frame(0, 0, stream_id, bytes(MAX_FRAME + 1) if whole else b"", length=MAX_FRAME + 1)
    if kind == "reserved_bit":
        # Every flag bit, the reserved stream ID bit: what hyperframe ignores, so must the run.
        _, stream_id, size, flags = move
        return _raw_frame(0, flags & ~0x8, stream_id | 0x8000_0000, bytes(size))
    if kind == "raw_headers":
        # Any flags (padding, priority, END_HEADERS, undefined bits) over a
        # block that fits some of them: what hyperframe accepts, so must the buffer.
        _, stream_id, flags, payload = move
        return _raw_frame(1, flags, stream_id, payload)
    if kind == "open_header_block":
        # Anything but its CONTINUATION next is a connection error.
        return HeadersFrame(move[1], b"\x88").serialize()
    # Padding as long as the payload.
    return _raw_frame(0, 0x8, move[1], bytes([4, 0, 0, 0]))


@settings(
    max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(moves=st.lists(MOVES, max_size=25), cuts=st.lists(st.integers(0, 20_000), max_size=6))
def test_joined_data_runs_have_the_outcome_of_frame_by_frame_parsing(
    moves: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    _assert_same(PREFACE + b"".join(_wire(move) for move in moves), cuts)


def test_an_empty_frame_buffer_takes_the_tls_layers_plaintext_over_and_copies_anything_else() -> None:
    conn = _client(False)
    conn.receive_data(PREFACE)
    read = Plaintext(_response(1)[:5])
    conn.receive_data(read)
    assert conn.incoming_buffer._data is read
    # Not empty now: the next read is appended.
    conn.receive_data(Plaintext(b"x"))
    assert conn.incoming_buffer._data is read and read.endswith(b"x")
    # A caller's own bytearray, which it may reuse, is copied even into an empty buffer.
    other = _client(False)
    other.receive_data(PREFACE)
    reused = bytearray(_response(1)[:5])
    other.receive_data(reused)
    assert other.incoming_buffer._data is not reused


def _response(stream_id: int, length: int | None = None) -> bytes:
    return _wire(("response", stream_id, length, False, b"200", False))


def test_a_run_of_data_frames_is_one_event_with_the_sum_of_their_lengths() -> None:
    wire = PREFACE + _response(1) + b"".join(_data(1, 100, None, i == 4) for i in range(5))
    outcome = _assert_same(wire, [])
    events = [event for event in _client(False).receive_data(wire) if isinstance(event, h2.events.DataReceived)]
    assert [(event.data, event.flow_controlled_length) for event in events] == [(b"\x01" * 500, 500)]
    assert events[0].stream_ended is not None
    assert outcome.error is None


def test_a_run_ends_at_padding_another_stream_or_an_incomplete_frame() -> None:
    frames = [_data(1, 10, None, False), _data(1, 10, 3, False), _data(1, 10, None, False), _data(3, 10, None, False)]
    wire = PREFACE + _response(1) + _response(3) + b"".join(frames) + _data(3, 10, None, False)
    conn = _client(False)
    events = conn.receive_data(wire[:-5])
    data_events = [(e.stream_id, e.flow_controlled_length) for e in events if isinstance(e, h2.events.DataReceived)]
    assert data_events == [(1, 10), (1, 14), (1, 10), (3, 10)]
    _assert_same(wire, [len(wire) - 5])


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        # The third frame overdraws the stream's 1,000-byte window.
        (
            PREFACE + _response(1) + b"".join(_data(1, 400, None, False) for _ in range(3)),
            h2.exceptions.FlowControlError,
        ),
        # More body than content-length announced.
        (
            PREFACE + _response(1, 500) + b"".join(_data(1, 300, None, False) for _ in range(2)),
            h2.exceptions.ProtocolError,
        ),
        # DATA inside a header block.
        (
            PREFACE + _response(1) + HeadersFrame(1, b"\x88").serialize() + _data(1, 10, None, False),
            h2.exceptions.ProtocolError,
        ),
        # An oversized frame behind a valid one.
        (
            PREFACE + _response(1) + _data(1, 10, None, False) + _wire(("oversized", 1, True)),
            h2.exceptions.FrameTooLargeError,
        ),
        # DATA on stream 0.
        (PREFACE + _raw_frame(0, 0, 0, b"abc"), h2.exceptions.ProtocolError),
        # An informational response cannot end the stream.
        (PREFACE + _wire(("response", 1, None, False, b"103", True)), h2.exceptions.ProtocolError),
        # Trailers must end it.
        (PREFACE + _response(1) + _wire(("trailers", 1, False, False)), h2.exceptions.ProtocolError),
    ],
)
def test_errors_inside_a_run_are_the_errors_of_frame_by_frame_parsing(wire: bytes, error: type[Exception]) -> None:
    outcome = _assert_same(wire, [])
    assert outcome.error is not None and issubclass(outcome.error[0], error)


def test_data_after_end_stream_is_not_joined_to_the_run_before_it() -> None:
    wire = PREFACE + _response(1) + _data(1, 10, None, True) + _data(1, 10, None, False) + _data(1, 10, None, False)
    outcome = _assert_same(wire, [])
    # The stream is closed: h2 resets it and gives the connection window back.
    assert outcome.error is None and ("RstStreamFrame", 1) in outcome.sent
    assert [event for event in outcome.events if event[0] == "data"] == [("data", 1, b"\x01" * 10, 10)]


# Request HEADERS: ClientH2Connection.send_headers against h2's own.


def _h2_send_headers(conn: ClientH2Connection, stream_id: int, headers: Any, end_stream: bool) -> None:
    h2.connection.H2Connection.send_headers(conn, stream_id, headers, end_stream)


def _sender(max_frame_size: int) -> ClientH2Connection:
    conn = ClientH2Connection(_H2_CONFIG, SlotLedger(100, 100), 65_536)
    conn.initiate_connection()
    peer_settings = SettingsFrame(0, settings={SettingCodes.MAX_CONCURRENT_STREAMS: 3})
    if max_frame_size != MAX_FRAME:
        peer_settings.settings[SettingCodes.MAX_FRAME_SIZE] = max_frame_size
    conn.receive_data(peer_settings.serialize())
    conn.data_to_send()
    return conn


def _sent_state(conn: ClientH2Connection) -> tuple[Any, ...]:
    streams = {
        stream_id: (stream.state_machine.state, stream._authority, stream.request_method, stream.open)
        for stream_id, stream in conn.streams.items()
    }
    return conn.data_to_send(), streams, conn.state_machine.state, conn.highest_outbound_stream_id


FIELD = st.builds(
    # Sensitive fields must stay never-indexed (RFC 7541 §7.1.3) on either path.
    lambda make, name, value: make(name, value),
    st.sampled_from([lambda name, value: (name, value), hpack.NeverIndexedHeaderTuple]),
    st.sampled_from([b"x-a", b"accept", b"cookie", b"authorization"]),
    st.binary(max_size=40),
)
REQUEST = st.tuples(
    st.sampled_from([1, 2, 3, 5, 7, 9, 11]),
    st.sampled_from([b"GET", b"HEAD", b"POST"]),
    st.lists(FIELD, max_size=4),
    st.booleans(),
    # Long enough for CONTINUATION at either frame size, or not.
    st.sampled_from([0, 1, 80]),
    # A :status makes h2 take the block for a response (1xx: informational).
    st.sampled_from([None, b"103", b"200"]),
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(requests=st.lists(REQUEST, max_size=6), max_frame_size=st.sampled_from([MAX_FRAME, 16_384 * 2]))
def test_request_headers_are_sent_as_h2_sends_them(requests: list[tuple[Any, ...]], max_frame_size: int) -> None:
    ours, reference = _sender(max_frame_size), _sender(max_frame_size)
    for stream_id, method, fields, end_stream, path_length, status in requests:
        # Long paths make blocks that need CONTINUATION frames.
        block = [
            *([(b":status", status)] if status is not None else []),
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"a.test"),
            (b":path", b"/" + bytes(range(256)) * path_length),
            *fields,
        ]
        outcomes = []
        for conn, send in ((ours, ClientH2Connection.send_headers), (reference, _h2_send_headers)):
            try:
                send(conn, stream_id, block, end_stream)
                outcomes.append(None)
            except h2.exceptions.H2Error as exc:
                outcomes.append(type(exc))
            if outcomes[-1] is None:
                conn._slots.reserve()
                conn._slots.opened()
        assert outcomes[0] == outcomes[1]
        assert _sent_state(ours) == _sent_state(reference)


def test_trailers_and_non_bytes_fields_go_through_h2() -> None:
    ours, reference = _sender(MAX_FRAME), _sender(MAX_FRAME)
    request = [(":method", "POST"), (":scheme", "https"), (":authority", "a.test"), (":path", "/")]
    for conn, send in ((ours, ClientH2Connection.send_headers), (reference, _h2_send_headers)):
        send(conn, 1, request, False)
        send(conn, 1, [(b"x-end", b"1")], True)
    sent, streams, _, _ = _sent_state(ours)
    assert sent == _sent_state(reference)[0]
    assert [type(frame) for frame in _frames_in(sent)] == [HeadersFrame, HeadersFrame]
    assert streams[1][0] == reference.streams[1].state_machine.state


@pytest.mark.parametrize(
    ("flags", "payload"),
    [
        (0x4 | 0x20, bytes(4) + b"\x10\x88"),  # PRIORITY: 5 bytes before the block
        (0x4 | 0x8, b"\x02\x88\x00\x00"),  # PADDED: pad length, block, padding
        (0x4 | 0x8 | 0x20 | 0x1, b"\x01" + bytes(4) + b"\x10\x88\x00"),
        (0x4 | 0x1 | 0x2 | 0x10 | 0x40 | 0x80, b"\x88"),  # undefined bits are ignored
    ],
)
def test_header_blocks_with_padding_or_priority_are_read_as_hyperframe_reads_them(flags: int, payload: bytes) -> None:
    outcome = _assert_same(PREFACE + _raw_frame(1, flags, 1, payload), [])
    assert outcome.error is None
    assert ("ResponseReceived", 1, [(b":status", b"200")]) in outcome.events


def _attributes(frame: Any, names: Any) -> dict[str, Any]:
    """``names`` as ``frame`` answers them (ours keeps the constant ones on its class)."""
    fields = {name: getattr(frame, name) for name in names}
    flags = fields.pop("flags")
    return {**fields, "flags": set(flags), "valid_flags": set(flags._valid_flags)}


@pytest.mark.parametrize(
    "wire",
    [
        _raw_frame(0, 0x1, 1, b"body"),  # DATA, END_STREAM
        _raw_frame(0, 0x0, 1, b""),
        _raw_frame(1, 0x4, 3, b"\x88"),  # HEADERS, END_HEADERS
        _raw_frame(1, 0x4 | 0x1, 3, b"\x88\x0f\x10\x01x"),
    ],
)
def test_frames_made_without_hyperframes_constructor_have_the_attributes_of_parsed_ones(wire: bytes) -> None:
    ours, reference = _ClientFrameBuffer(server=False), FrameBuffer(server=False)
    for buffer in (ours, reference):
        buffer.max_frame_size = MAX_FRAME
        buffer.add_data(wire)
    frame, expected = next(ours), next(reference)
    assert isinstance(frame, type(expected))
    assert _attributes(frame, vars(expected)) == _attributes(expected, vars(expected))
    assert repr(frame) == f"{type(expected).__name__}(stream_id={expected.stream_id})"
    frame.flags.add("END_STREAM")
    with pytest.raises(ValueError, match="Unexpected flag"):
        frame.flags.add("ACK")


# Window acknowledgements.


def _acknowledged(conn: ClientH2Connection, size: int, stream_id: int, own: bool) -> tuple[Any, ...]:
    try:
        if own:
            conn.acknowledge_received_data(size, stream_id)
        else:
            h2.connection.H2Connection.acknowledge_received_data(conn, size, stream_id)
    except (ValueError, h2.exceptions.H2Error) as exc:
        return (type(exc),)
    return (conn.data_to_send(), _windows(conn))


@pytest.mark.parametrize(
    ("size", "stream_id", "updated"),
    [
        (40_000, 1, [0]),  # forgotten stream of ours: the connection's window only
        (10, 1, []),  # too little for a WINDOW_UPDATE yet
        (40_000, 3, [0, 3]),  # live stream: its window and the connection's
        (10, 9, None),  # never opened: h2 raises
        (10, 2, None),  # the server's stream ID space
        (10, 0, None),
        (10, -1, None),
        (-1, 1, None),
    ],
)
def test_acknowledging_data_has_the_outcome_of_h2s_acknowledgement(
    size: int, stream_id: int, updated: list[int] | None
) -> None:
    outcomes = []
    for own in (True, False):
        conn = _client(frame_by_frame=False)
        conn.receive_data(
            PREFACE + _response(1) + _response(3) + _data(1, 900, None, True) + _data(3, 900, None, False)
        )
        conn.forget_stream(1)
        conn.data_to_send()
        outcomes.append(_acknowledged(conn, size, stream_id, own))
    assert outcomes[0] == outcomes[1]
    if updated is None:
        assert len(outcomes[0]) == 1, "h2 raises here"
    else:
        assert sorted(frame.stream_id for frame in _frames_in(outcomes[0][0])) == updated


def test_a_response_after_our_goaway_is_refused_as_h2_refuses_it() -> None:
    outcomes = []
    for frame_by_frame in (False, True):
        conn = _client(frame_by_frame)
        conn.receive_data(PREFACE)
        conn.close_connection()
        conn.data_to_send()
        with pytest.raises(h2.exceptions.ProtocolError) as raised:
            conn.receive_data(_response(1))
        outcomes.append((type(raised.value), conn.data_to_send()))
    assert outcomes[0] == outcomes[1]


# State machines keyed by value.


def _step(machine: Any, machine_input: Any) -> tuple[Any, ...]:
    try:
        events = machine.process_input(machine_input)
    except (ValueError, h2.exceptions.ProtocolError) as exc:
        return (type(exc), str(exc), machine.state)
    return ([(type(event), vars(event)) for event in events], machine.state, vars(machine))


@pytest.mark.parametrize("client", [True, False, None])
@pytest.mark.parametrize("state", list(StreamState))
def test_the_stream_state_machine_takes_h2s_step_for_every_state_and_input(
    state: StreamState, client: bool | None
) -> None:
    for machine_input in [*StreamInputs, "SEND_HEADERS"]:
        ours, reference = _StreamStateMachine(1), H2StreamStateMachine(1)
        for machine in (ours, reference):
            machine.state, machine.client, machine.headers_sent = state, client, client is False
        assert _step(ours, machine_input) == _step(reference, machine_input), (state, machine_input)


@pytest.mark.parametrize("state", list(ConnectionState))
def test_the_connection_state_machine_takes_h2s_step_for_every_state_and_input(state: ConnectionState) -> None:
    for machine_input in [*ConnectionInputs, StreamInputs.SEND_HEADERS]:
        ours, reference = _ConnectionStateMachine(), H2ConnectionStateMachine()
        ours.state = reference.state = state
        assert _step(ours, machine_input) == _step(reference, machine_input), (state, machine_input)


def test_a_client_connection_and_its_streams_run_the_value_keyed_state_machines() -> None:
    conn = _sender(MAX_FRAME)
    conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")])
    assert type(conn.state_machine) is _ConnectionStateMachine
    assert type(conn.streams[1].state_machine) is _StreamStateMachine
    assert conn.streams[1].state_machine.state is StreamState.OPEN
