"""The peers h2pool is compared with, behind the interface of :mod:`bench.workloads`.

* httpx, HTTP/2 (``AsyncClient(http2=True)``);
* aiohttp, HTTP/1.1 with up to 100 connections (``TCPConnector(limit=100)``);
* h2load (nghttp2's C load generator), the ceiling: run as a subprocess,
  its own report parsed, its CPU read from the reaped child's rusage.
"""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import ssl
import subprocess
from importlib import metadata

import aiohttp
import httpx

from .measure import BenchError, Sample
from .target import Target
from .workloads import ClientFactory, H2poolClient

#: h2load may not run longer than this.
H2LOAD_TIMEOUT_S = 120.0


class HttpxClient:
    """httpx over HTTP/2; every response must really be HTTP/2."""

    def __init__(self, ssl_context: ssl.SSLContext | bool) -> None:
        self.client = httpx.AsyncClient(
            http2=True,
            verify=ssl_context,
            timeout=30.0,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )

    async def get(self, url: str) -> int:
        response = await self.client.get(url)
        if response.status_code != 200 or response.http_version != "HTTP/2":
            raise BenchError(f"httpx: GET {url} answered {response.status_code} over {response.http_version}")
        return len(response.content)

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpClient:
    """aiohttp over HTTP/1.1, up to 100 connections."""

    def __init__(self, ssl_context: ssl.SSLContext | bool) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ssl=ssl_context),
            timeout=aiohttp.ClientTimeout(total=30.0),
        )

    async def get(self, url: str) -> int:
        async with self.session.get(url) as response:
            body = await response.read()
            if response.status != 200:
                raise BenchError(f"aiohttp: GET {url} answered {response.status}")
        return len(body)

    async def aclose(self) -> None:
        await self.session.close()


def client_factories(target: Target) -> dict[str, ClientFactory]:
    """h2pool (one connection), httpx and aiohttp, each with its own TLS context for ``target``."""
    return {
        "h2pool": lambda: H2poolClient(target.ssl_context(), max_connections_per_origin=1),
        # httpx sets its own ALPN list; aiohttp speaks HTTP/1.1.
        "httpx": lambda: HttpxClient(target.ssl_context(alpn=())),
        "aiohttp": lambda: AiohttpClient(target.ssl_context(alpn=("http/1.1",))),
    }


def peer_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("httpx", "httpcore", "h2", "aiohttp")}


# h2load


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def h2load_version() -> str | None:
    """``h2load nghttp2/1.52.0``, or None if h2load is not installed."""
    if not h2load_available():
        return None
    result = subprocess.run(["h2load", "--version"], capture_output=True, text=True, timeout=10, check=False)
    return result.stdout.strip() or None


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_SUCCEEDED = re.compile(r"(\d+) succeeded")
_DATA = re.compile(r"\((\d+)\) data")
_REQUEST_TIME = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


async def h2load(
    url: str, requests: int, streams: int, *, cipher: str | None = None, window_bits: int | None = None
) -> Sample:
    """``h2load -n requests -c 1 -m streams url``: req/s, body MB/s, CPU per request, mean request time.

    ``cipher`` (OpenSSL's name, as ``ssl`` reports it) is the only suite
    h2load may offer. Left to itself h2load prefers AES-128-GCM, where
    Python's ``ssl`` (OpenSSL's default order) gets AES-256-GCM from a
    server that follows the client's order, as nginx does by default; a
    ceiling is only a ceiling for the same work. (With AES-NI the two
    measured within noise of each other here: 1 MiB downloads, 8 at a
    time, h2load median 657 vs 744 MB/s over six alternated runs.)
    ``window_bits`` sets both the stream and the connection window to
    ``2**bits - 1`` (h2load's default is 2**30 - 1).
    """
    argv = ["h2load", "-n", str(requests), "-c", "1", "-m", str(streams)]
    if cipher is not None:
        argv.append(f"--tls13-ciphers={cipher}" if cipher.startswith("TLS_") else f"--ciphers={cipher}")
    if window_bits is not None:
        argv += ["-w", str(window_bits), "-W", str(window_bits)]
    argv.append(url)
    cpu_before = _children_cpu_s()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(H2LOAD_TIMEOUT_S):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    cpu_s = _children_cpu_s() - cpu_before
    return _parse_h2load(output.decode("utf-8", "replace"), requests, process.returncode, cpu_s)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parse_h2load(report: str, requests: int, returncode: int | None, cpu_s: float) -> Sample:
    finished = _FINISHED.search(report)
    succeeded = _SUCCEEDED.search(report)
    data = _DATA.search(report)
    request_time = _REQUEST_TIME.search(report)
    if returncode != 0 or not (finished and succeeded and data and request_time):
        raise BenchError(f"h2load failed (exit {returncode}):\n{report[-2000:]}")
    if int(succeeded.group(1)) != requests:
        raise BenchError(f"h2load: only {succeeded.group(1)} of {requests} requests succeeded:\n{report[-2000:]}")
    duration_s = float(finished.group(1)) * _UNIT_S[finished.group(2)]
    return {
        "requests": requests,
        "req_s": float(finished.group(3)),
        "mb_s": int(data.group(1)) / duration_s / 1e6,
        "cpu_us_per_req": cpu_s / requests * 1e6,
        "mean_request_us": float(request_time.group(1)) * _UNIT_S[request_time.group(2)] * 1e6,
    }
