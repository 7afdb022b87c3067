"""The frame trace: frame headers found in a byte stream however it is cut, logged only when enabled."""

from __future__ import annotations

import logging

import pytest
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

from h2pool.frame_trace import CLIENT_PREFACE_SIZE, ConnectionTrace, FrameHeaders, describe, frame_logger
from h2pool.testing import CLIENT_PREFACE, MockServer, Reply
from tests.test_protocol import URL, make_pool


def frames() -> bytes:
    data = DataFrame(1, b"x" * 300)
    data.flags.add("END_STREAM")
    headers = HeadersFrame(3, b"\x82")
    headers.flags.add("END_HEADERS")
    headers.flags.add("END_STREAM")
    ping = PingFrame(0, b"12345678")
    ping.flags.add("ACK")
    return b"".join(f.serialize() for f in (SettingsFrame(0), data, headers, WindowUpdateFrame(0, 1000), ping))


EXPECTED = [
    "SETTINGS stream=0 length=0",
    "DATA stream=1 length=300 flags=END_STREAM",
    "HEADERS stream=3 length=1 flags=END_STREAM|END_HEADERS",
    "WINDOW_UPDATE stream=0 length=4",
    "PING stream=0 length=8 flags=ACK",
]


def test_frames_in_one_piece_are_described_in_order() -> None:
    assert FrameHeaders().feed(frames()) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 5, 9, 10, 64, 301])
def test_frames_cut_into_pieces_of_any_size_give_the_same_description(size: int) -> None:
    stream, found = frames(), []
    headers = FrameHeaders()
    for start in range(0, len(stream), size):
        found.extend(headers.feed(stream[start : start + size]))
    assert found == EXPECTED


def test_the_client_preface_is_passed_over() -> None:
    assert len(CLIENT_PREFACE) == CLIENT_PREFACE_SIZE
    assert FrameHeaders(skip=CLIENT_PREFACE_SIZE).feed(CLIENT_PREFACE + frames()) == EXPECTED


def test_an_unknown_frame_type_is_named_by_its_number() -> None:
    header = (5).to_bytes(3, "big") + bytes([0xBE, 0x03]) + (7).to_bytes(4, "big")
    assert describe(header) == "UNKNOWN(0xbe) stream=7 length=5 flags=0x03"


async def test_connections_trace_only_when_the_frame_logger_is_enabled(caplog: pytest.LogCaptureFixture) -> None:
    assert ConnectionTrace.if_enabled("#0") is None
    caplog.set_level(logging.DEBUG, logger=frame_logger.name)
    server = MockServer(handler=lambda request: Reply(body=b"traced"))
    async with make_pool(server) as pool:
        assert (await pool.request("GET", URL)).content == b"traced"
    lines = [record.getMessage() for record in caplog.records if record.name == frame_logger.name]
    assert any(" > HEADERS stream=1 " in line for line in lines), lines
    assert any(" < DATA stream=1 length=6" in line for line in lines), lines
