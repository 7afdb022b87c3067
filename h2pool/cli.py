"""The command line: ``python -m h2pool get URL`` (curl-like) and ``python -m h2pool bench URL`` (h2load-like).

``get`` prints the response body to stdout (bytes as received) or writes it
to ``-o FILE``. With ``-v`` it reports on stderr, prefixed like curl: ``*``
for h2pool's own notes, ``>`` for the request pseudo-headers and headers
sent, ``<`` for the response status, headers and trailers, ``* frame`` for
every HTTP/2 frame sent (``>``) and received (``<``) on the connection, then
what was received (header blocks, body reads, bytes) and timings. "Body reads" are the
chunks the pool handed over; one read may hold several DATA frames that
arrived together, so it counts at most the DATA frames, never more.

``bench`` sends N GET requests from C concurrent workers through one pool,
shows progress on stderr and prints throughput, status counts, errors,
latency percentiles and a histogram on stdout.

Exit status: 0 once a response was received, whatever its HTTP status (the
status is data, as with curl without ``-f``); 1 for an h2pool error (connect,
TLS, timeout, reset, ...), reported as one line ``h2pool: <ErrorType>:
<message>`` on stderr, or an unreadable ``-d @file``; 2 for bad usage. For
``bench``: 0 if every request got a response, 1 if any raised an h2pool
error (the summary is printed either way).

TLS is always verified; ``--cacert FILE`` trusts a PEM CA bundle instead of
the default (certifi) one. There is deliberately no way to turn checks off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Protocol, TextIO

from . import __version__
from .config import PoolConfig
from .exceptions import H2PoolError
from .frame_trace import frame_logger
from .headers import request_headers
from .origin import parse_url
from .pool import Pool

#: Workers cap for ``bench -c``: each is a task, and more would only queue for slots.
MAX_CONCURRENCY = 10_000
#: Progress lines written when stderr is not a terminal (one per 10 %).
PROGRESS_LINES = 10
#: Seconds between redraws of the progress bar on a terminal.
PROGRESS_INTERVAL = 0.1
HISTOGRAM_BUCKETS = 10
HISTOGRAM_WIDTH = 40
PROGRESS_WIDTH = 30


class _Writer(Protocol):
    def write(self, text: str, /) -> int: ...


class _Exit(Exception):
    """argparse wanted to exit; ``run`` returns the status instead of leaving the process."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that writes to given streams and never calls ``sys.exit``."""

    def __init__(self, *args: Any, out: _Writer, err: _Writer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out = out
        self.err = err

    def _print_message(self, message: str, file: object = None) -> None:
        if message:
            (self.err if file is sys.stderr else self.out).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self.err.write(message)
        raise _Exit(status)

    def error(self, message: str) -> NoReturn:
        self.err.write(self.format_usage())
        self.exit(2, f"{self.prog}: error: {message}\n")


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip().lower(), value.strip()


def _bounded_int(low: int, high: int | None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            upper = f" and at most {high}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be at least {low}{upper}, not {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser(out: _Writer, err: _Writer) -> _Parser:
    parser = _Parser(prog="python -m h2pool", description="HTTP/2 requests through h2pool.", out=out, err=err)
    parser.add_argument("--version", action="version", version=f"h2pool {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{get,bench}")

    get = commands.add_parser("get", help="send one request, print the body (curl-like)", out=out, err=err)
    get.add_argument("url")
    get.add_argument(
        "-H", "--header", action="append", type=_header, default=[], metavar="'NAME: VALUE'", help="repeatable"
    )
    get.add_argument("-d", "--data", help="request body; @FILE reads it from FILE; implies POST unless -X")
    get.add_argument("-X", "--request", dest="method", help="method (default GET, or POST with -d)")
    get.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE instead of stdout")
    get.add_argument("-v", "--verbose", action="store_true", help="headers, counts and timings on stderr")
    get.add_argument("--cacert", metavar="FILE", help="trust the CA certificates in this PEM file")
    get.add_argument("--timeout", type=_seconds, metavar="S", help="bound connecting, and the request, to S seconds")

    bench = commands.add_parser("bench", help="load-test one URL (h2load-like)", out=out, err=err)
    bench.add_argument("url")
    bench.add_argument(
        "-n", "--requests", type=_bounded_int(1, None), default=100, metavar="N", help="requests in all (>= 1)"
    )
    bench.add_argument(
        "-c",
        "--concurrency",
        type=_bounded_int(1, MAX_CONCURRENCY),
        default=10,
        metavar="C",
        help=f"concurrent workers (1 to {MAX_CONCURRENCY})",
    )
    bench.add_argument("--cacert", metavar="FILE", help="trust the CA certificates in this PEM file")
    return parser


def _ssl_context(cacert: str | None) -> ssl.SSLContext | None:
    if cacert is None:
        return None
    context = ssl.create_default_context(cafile=cacert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _error_line(exc: BaseException) -> str:
    return f"h2pool: {type(exc).__name__}: {exc}\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# get


async def _get(args: argparse.Namespace, stdout: BinaryIO, stderr: TextIO) -> int:
    body: bytes | None = None
    if args.data is not None:
        if args.data.startswith("@"):
            try:
                body = await asyncio.to_thread(Path(args.data[1:]).read_bytes)
            except OSError as exc:
                stderr.write(f"h2pool: cannot read request body: {exc}\n")
                return 1
        else:
            body = args.data.encode()
    method = args.method or ("POST" if body is not None else "GET")
    headers: list[tuple[str, str]] = list(args.header)
    if not any(name == "user-agent" for name, _ in headers):
        headers.append(("user-agent", f"h2pool/{__version__}"))
    verbose = args.verbose
    defaults = PoolConfig()
    connect_timeout = args.timeout or defaults.connect_timeout
    tls_timeout = args.timeout or defaults.tls_handshake_timeout
    try:
        context = _ssl_context(args.cacert)
    except (OSError, ssl.SSLError) as exc:
        stderr.write(f"h2pool: cannot load --cacert {args.cacert}: {exc}\n")
        return 1

    try:
        target = parse_url(args.url)
        # Built here only to show it: the pool builds the same block from the same inputs.
        sent = request_headers(method, target.origin, target.path, headers)
        # -v: every frame of the connection, as nghttp -v shows them.
        with _frames_to(stderr) if verbose else contextlib.nullcontext():
            async with Pool(context, connect_timeout=connect_timeout, tls_handshake_timeout=tls_timeout) as pool:
                start = time.perf_counter()
                # Connecting first separates connect + TLS + SETTINGS from the request's own time.
                await pool.prewarm(target.origin)
                connected = time.perf_counter()
                if verbose:
                    steps = "TCP, TLS, SETTINGS" if target.origin.scheme == "https" else "TCP, SETTINGS"
                    stderr.write(f"* connected to {target.origin} ({steps}) in {_ms(connected - start)}\n")
                    for raw_name, raw_value in sent:
                        stderr.write(f"> {raw_name.decode('latin-1')}: {raw_value.decode('latin-1')}\n")
                    if body is not None:
                        stderr.write(f"> [body: {len(body)} bytes]\n")
                async with pool.stream(method, args.url, headers=headers, content=body, timeout=args.timeout) as resp:
                    first_byte = time.perf_counter()
                    if verbose:
                        stderr.write(f"* stream {resp.stream_id}\n< :status: {resp.status}\n")
                        for name, value in resp.headers:
                            stderr.write(f"< {name}: {value}\n")
                    reads = received = 0
                    # A CLI writing one local file: blocking writes are what stdout does too.
                    sink = open(args.output, "wb") if args.output else None  # noqa: SIM115, ASYNC230
                    try:
                        out = sink if sink is not None else stdout
                        async for chunk in resp.aiter_bytes():
                            reads += 1
                            received += len(chunk)
                            out.write(chunk)
                        out.flush()
                    finally:
                        if sink is not None:
                            sink.close()
                    trailers = resp.trailers
                done = time.perf_counter()
    except H2PoolError as exc:
        stderr.write(_error_line(exc))
        return 1
    except OSError as exc:
        # Only -o can raise this here: the pool turns network OSErrors into H2PoolErrors.
        stderr.write(f"h2pool: cannot write output: {exc}\n")
        return 1
    if verbose:
        for name, value in trailers:
            stderr.write(f"< [trailer] {name}: {value}\n")
        blocks = 1 + (1 if len(trailers) else 0)
        stderr.write(
            f"* received: {blocks} HEADERS block(s), {reads} body read(s) of DATA, {received} body bytes\n"
            f"* timings: connect {_ms(connected - start)}, first byte {_ms(first_byte - connected)} after"
            f" connecting, total {_ms(done - start)}\n"
        )
    return 0


@contextlib.contextmanager
def _frames_to(stream: TextIO) -> Iterator[None]:
    """Write the ``h2pool.frames`` trace to ``stream`` while the block runs."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("* frame %(message)s"))
    level, propagate = frame_logger.level, frame_logger.propagate
    frame_logger.addHandler(handler)
    frame_logger.setLevel(logging.DEBUG)
    frame_logger.propagate = False
    try:
        yield
    finally:
        frame_logger.removeHandler(handler)
        frame_logger.setLevel(level)
        frame_logger.propagate = propagate


# bench


@dataclass
class BenchResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def done(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def histogram(values: Sequence[float], buckets: int = HISTOGRAM_BUCKETS, width: int = HISTOGRAM_WIDTH) -> list[str]:
    """Equal-width buckets from min to max, one line each, bars scaled to the fullest bucket."""
    if not values:
        return []
    low, high = min(values), max(values)
    span = (high - low) / buckets
    counts = [0] * buckets
    for value in values:
        index = buckets - 1 if span == 0 else min(int((value - low) / span), buckets - 1)
        counts[index] += 1
    fullest = max(counts)
    lines = []
    for index, count in enumerate(counts):
        edge = low + span * index
        bar = "#" * math.ceil(count * width / fullest) if count else ""
        lines.append(f"  {edge * 1000:9.2f} ms - {(edge + span) * 1000:9.2f} ms [{count:>7}] {bar}")
    return lines


class _Progress:
    """One redrawn line on a terminal, else at most PROGRESS_LINES plain lines."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = stream.isatty()
        self.next_line = 1

    def update(self, done: int, elapsed: float) -> None:
        if self.tty:
            filled = PROGRESS_WIDTH * done // self.total
            bar = "#" * filled + "-" * (PROGRESS_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} {elapsed:.1f} s")
        else:
            # Milestones at every tenth, so the line count stays bounded however large N is.
            reached = done * PROGRESS_LINES // self.total
            if reached < self.next_line:
                return
            # Several milestones passed since the last look print as one line.
            self.next_line = reached + 1
            self.stream.write(f"progress: {done}/{self.total} ({100 * done // self.total}%) {elapsed:.1f} s\n")
        self.stream.flush()

    def finish(self, done: int, elapsed: float) -> None:
        self.update(done, elapsed)
        if self.tty:
            self.stream.write("\n")


async def bench(
    url: str, requests: int, concurrency: int, context: ssl.SSLContext | None, stderr: TextIO
) -> BenchResult:
    """Run the benchmark; h2pool errors are counted by type, never raised."""
    result = BenchResult()
    progress = _Progress(stderr, requests)
    remaining = requests

    async def worker(pool: Pool) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            begin = time.perf_counter()
            try:
                response = await pool.request("GET", url)
            except H2PoolError as exc:
                result.errors[type(exc).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - begin)
            result.statuses[response.status] += 1

    start = time.perf_counter()
    async with Pool(context) as pool:
        workers = [asyncio.create_task(worker(pool)) for _ in range(min(concurrency, requests))]
        ticker = asyncio.gather(*workers)
        try:
            while not ticker.done():
                await asyncio.wait([ticker], timeout=PROGRESS_INTERVAL)
                progress.update(result.done, time.perf_counter() - start)
            await ticker
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    result.elapsed = time.perf_counter() - start
    progress.finish(result.done, result.elapsed)
    return result


def format_bench(result: BenchResult, url: str, concurrency: int) -> str:
    total = result.done
    lines = [
        f"URL: {url}",
        f"requests: {total} total, {len(result.latencies)} responses, {sum(result.errors.values())} errors,"
        f" concurrency {concurrency}",
        # Only responses count towards the rate: failing fast is not throughput.
        f"time: {result.elapsed:.3f} s total,"
        f" {len(result.latencies) / result.elapsed if result.elapsed else 0.0:.1f} req/s (responses)",
        "status codes: " + (", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items())) or "none"),
    ]
    if result.errors:
        lines.append("errors: " + ", ".join(f"{name}: {n}" for name, n in sorted(result.errors.items())))
    latencies = sorted(result.latencies)
    if latencies:
        lines.append(
            "latency: "
            + ", ".join(
                f"{label} {_ms(percentile(latencies, f))}" for label, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
            )
            + f", max {_ms(latencies[-1])}"
        )
        lines.append("latency histogram:")
        lines.extend(histogram(latencies))
    return "\n".join(lines) + "\n"


async def _bench(args: argparse.Namespace, stdout: BinaryIO, stderr: TextIO) -> int:
    try:
        parse_url(args.url)
        context = _ssl_context(args.cacert)
    except H2PoolError as exc:
        stderr.write(_error_line(exc))
        return 1
    except (OSError, ssl.SSLError) as exc:
        stderr.write(f"h2pool: cannot load --cacert {args.cacert}: {exc}\n")
        return 1
    result = await bench(args.url, args.requests, args.concurrency, context, stderr)
    stdout.write(format_bench(result, args.url, args.concurrency).encode())
    stdout.flush()
    return 1 if result.errors else 0


# Entry points.


async def run(argv: Sequence[str], stdout: BinaryIO, stderr: TextIO) -> int:
    """Run the command line ``argv`` (without the program name); returns the exit status."""
    text_out = _TextOut(stdout)
    try:
        args = build_parser(text_out, stderr).parse_args(list(argv))
    except _Exit as exit_:
        return exit_.status
    if args.command == "get":
        return await _get(args, stdout, stderr)
    return await _bench(args, stdout, stderr)


class _TextOut:
    """A text view of the binary stdout, for argparse's help and version output."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text.encode())
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        return asyncio.run(run(args, sys.stdout.buffer, sys.stderr))
    except KeyboardInterrupt:
        sys.stderr.write("h2pool: interrupted\n")
        return 130
