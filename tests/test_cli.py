"""``python -m h2pool``: the get and bench commands, run in-process against real servers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from h2pool.cli import histogram, percentile, run
from tests.servers import Certs, ServerProcess, expected_bytes, free_port

pytestmark = pytest.mark.timeout(30)


class Captured:
    def __init__(self, status: int, stdout: bytes, stderr: str) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


async def cli(*argv: str) -> Captured:
    stdout = io.BytesIO()
    stderr = io.StringIO()
    status = await run(list(argv), stdout, stderr)
    return Captured(status, stdout.getvalue(), stderr.getvalue())


async def test_get_prints_the_exact_body(nginx: ServerProcess, certs: Certs) -> None:
    result = await cli("get", nginx.url("/small"), "--cacert", str(certs.ca_path))
    assert result.status == 0, result.stderr
    assert result.stdout == expected_bytes("small")
    assert result.stderr == ""


async def test_get_with_output_writes_the_body_to_the_file(nginx: ServerProcess, certs: Certs, tmp_path: Path) -> None:
    target = tmp_path / "small.bin"
    result = await cli("get", nginx.url("/small"), "--cacert", str(certs.ca_path), "-o", str(target))
    assert result.status == 0, result.stderr
    assert target.read_bytes() == expected_bytes("small")
    assert result.stdout == b""


async def test_get_with_data_from_a_file_posts_it(
    hypercorn_server: ServerProcess, certs: Certs, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 300
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    result = await cli("get", hypercorn_server.url("/echo"), "--cacert", str(certs.ca_path), "-d", f"@{source}")
    assert result.status == 0, result.stderr
    assert result.stdout == payload


async def test_get_sends_the_headers_given_with_H(hypercorn_server: ServerProcess, certs: Certs) -> None:
    result = await cli(
        "get", hypercorn_server.url("/headers"), "--cacert", str(certs.ca_path), "-H", "X-Probe: cli value"
    )
    assert result.status == 0, result.stderr
    pairs = json.loads(result.stdout)
    assert ["x-probe", "cli value"] in pairs


async def test_get_verbose_reports_request_status_headers_and_timings_on_stderr(
    nginx: ServerProcess, certs: Certs
) -> None:
    result = await cli("get", nginx.url("/small"), "--cacert", str(certs.ca_path), "-v")
    assert result.status == 0, result.stderr
    assert result.stdout == expected_bytes("small")
    err = result.stderr
    assert "> :method: GET" in err
    assert "> :path: /small" in err
    assert re.search(r"^\* stream \d+$", err, re.MULTILINE)
    assert "< :status: 200" in err
    assert re.search(r"^< content-length: 100$", err, re.MULTILINE)
    assert f"{len(expected_bytes('small'))} body bytes" in err
    assert re.search(r"\* timings: connect [\d.]+ ms, first byte [\d.]+ ms .*total [\d.]+ ms", err)
    # Every frame of the connection, in order: the preface exchange, then the request's stream.
    frames = re.findall(r"^\* frame #\d+ ([<>]) (\S+) stream=(\d+)", err, re.MULTILINE)
    assert frames[0] == (">", "SETTINGS", "0")
    assert ("<", "SETTINGS", "0") in frames
    stream = re.search(r"^\* stream (\d+)$", err, re.MULTILINE)
    assert stream is not None
    sent_headers = frames.index((">", "HEADERS", stream.group(1)))
    assert frames.index(("<", "HEADERS", stream.group(1))) > sent_headers
    assert re.search(rf"^\* frame #\d+ < DATA stream={stream.group(1)} length=\d+ flags=END_STREAM$", err, re.MULTILINE)


async def test_get_of_an_unreachable_url_exits_1_with_a_one_line_typed_error() -> None:
    url = f"https://127.0.0.1:{free_port()}/"
    result = await cli("get", url, "--timeout", "5")
    assert result.status == 1
    assert result.stdout == b""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("h2pool: ConnectError: https://127.0.0.1:")


async def test_get_of_an_http_error_status_exits_0_and_prints_the_body(
    hypercorn_server: ServerProcess, certs: Certs
) -> None:
    result = await cli("get", hypercorn_server.url("/status/404"), "--cacert", str(certs.ca_path), "-v")
    assert result.status == 0, result.stderr
    assert "< :status: 404" in result.stderr


async def test_get_with_a_malformed_header_option_is_a_usage_error() -> None:
    result = await cli("get", "https://127.0.0.1:1/", "-H", "no colon here")
    assert result.status == 2
    assert "expected 'Name: value'" in result.stderr


async def test_bench_counts_every_response_and_prints_the_summary(nginx: ServerProcess, certs: Certs) -> None:
    result = await cli("bench", nginx.url("/small"), "-n", "200", "-c", "20", "--cacert", str(certs.ca_path))
    assert result.status == 0, result.stderr
    out = result.stdout.decode()
    assert "status codes: 200: 200\n" in out
    assert "200 responses, 0 errors" in out
    assert re.search(r"[\d.]+ req/s", out)
    assert re.search(r"latency: p50 [\d.]+ ms, p90 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms", out)
    bars = [line for line in out.splitlines() if re.match(r"\s+[\d.]+ ms - +[\d.]+ ms \[", line)]
    assert len(bars) == 10
    counts = [re.search(r"\[\s*(\d+)\]", line) for line in bars]
    assert sum(int(match.group(1)) for match in counts if match) == 200


async def test_bench_progress_on_a_non_terminal_is_at_most_ten_lines(nginx: ServerProcess, certs: Certs) -> None:
    result = await cli("bench", nginx.url("/small"), "-n", "50", "-c", "5", "--cacert", str(certs.ca_path))
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress:")]
    assert 1 <= len(progress) <= 10
    assert progress[-1].startswith("progress: 50/50 (100%)")


@pytest.mark.parametrize("argv", [["-n", "0"], ["-c", "0"], ["-c", "10001"], ["-n", "x"]])
async def test_bench_rejects_out_of_range_counts(argv: list[str]) -> None:
    result = await cli("bench", "https://127.0.0.1:1/", *argv)
    assert result.status == 2
    assert "error:" in result.stderr


async def test_bench_against_an_unreachable_url_counts_errors_and_exits_1() -> None:
    result = await cli("bench", f"https://127.0.0.1:{free_port()}/", "-n", "3", "-c", "3")
    assert result.status == 1
    assert "3 errors" in result.stdout.decode()
    assert "ConnectError: 3" in result.stdout.decode()
    # Failing fast is not throughput: the rate counts responses only.
    assert " 0.0 req/s (responses)" in result.stdout.decode()


def test_percentile_uses_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.9) == 7.0


def test_histogram_of_equal_values_puts_them_in_one_bucket() -> None:
    lines = histogram([0.002] * 5)
    assert len(lines) == 10
    assert sum(1 for line in lines if "#" in line) == 1


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_bench_progress_on_a_terminal_redraws_one_line(nginx: ServerProcess, certs: Certs) -> None:
    stdout = io.BytesIO()
    stderr = TerminalStream()
    status = await run(
        ["bench", nginx.url("/small"), "-n", "50", "-c", "5", "--cacert", str(certs.ca_path)], stdout, stderr
    )
    assert status == 0
    drawn = stderr.getvalue()
    assert drawn.startswith("\r[")
    assert drawn.count("\n") == 1 and drawn.endswith("\n")
    assert drawn.rstrip("\n").rsplit("\r", 1)[-1].startswith("[" + "#" * 30 + "] 50/50")
