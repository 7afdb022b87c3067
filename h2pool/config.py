"""Pool options, validated once.

All knobs live in one frozen dataclass so that a connection reads plain
attributes on its hot paths and a bad value fails when the pool is made, not
on the thousandth request. ``docs/tuning.md`` explains each default.
"""

from __future__ import annotations

import dataclasses
import math

MAX_WINDOW = 2**31 - 1
MIN_FRAME_SIZE = 2**14
MAX_FRAME_SIZE = 2**24 - 1

#: Streams a connection may carry before the server's SETTINGS arrive. Go's
#: and hyper's transports assume the same: a burst before SETTINGS that
#: overshoots the server's real limit draws GOAWAY (golang/go#39389).
ASSUMED_PEER_MAX_STREAMS = 100


@dataclasses.dataclass(frozen=True, slots=True)
class PoolConfig:
    """Every option of :class:`h2pool.Pool`; see ``docs/api.md`` for each."""

    max_connections_per_origin: int = 10
    min_connections_per_origin: int = 0
    max_idle_connections_per_origin: int = 10
    max_concurrent_streams: int = 1000
    connect_timeout: float = 10.0
    tls_handshake_timeout: float = 10.0
    acquire_timeout: float = 30.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    idle_timeout: float = 60.0
    ping_interval: float = 30.0
    ping_timeout: float = 10.0
    max_lifetime: float | None = None
    max_retries: int = 3
    tls_session_reuse: bool = True
    predictive_prewarm: bool = True
    prewarm_threshold: float = 0.75
    retry_backoff: float = 0.05
    retry_backoff_max: float = 1.0
    initial_stream_window: int = 1 << 20
    connection_window: int = 16 << 20
    adaptive_window: bool = True
    max_stream_window: int = 16 << 20
    receive_buffer_budget: int = 256 << 20
    max_frame_size: int = MIN_FRAME_SIZE
    header_table_size: int = 4096
    max_header_list_size: int = 64 << 10
    coalesce_connections: bool = True
    happy_eyeballs_delay: float = 0.25
    dns_cache_ttl: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_connections_per_origin", "max_concurrent_streams"):
            _check_int(name, getattr(self, name), 1, 2**31 - 1)
        _check_int("max_idle_connections_per_origin", self.max_idle_connections_per_origin, 0, 2**31 - 1)
        for name in _SECONDS:
            _check_seconds(name, getattr(self, name))
        if self.retry_backoff > self.retry_backoff_max:
            raise ValueError("retry_backoff must not exceed retry_backoff_max")
        if self.max_lifetime is not None:
            _check_seconds("max_lifetime", self.max_lifetime)
        _check_int("max_retries", self.max_retries, 0, 100)
        _check_int("min_connections_per_origin", self.min_connections_per_origin, 0, self.max_connections_per_origin)
        _check_int("receive_buffer_budget", self.receive_buffer_budget, 65_535, 2**63)
        for name in ("happy_eyeballs_delay", "dns_cache_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds, 0 or more, not {value!r}")
        for name in ("tls_session_reuse", "predictive_prewarm", "adaptive_window", "coalesce_connections"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False")
        threshold = self.prewarm_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise ValueError(f"prewarm_threshold must be a fraction in (0, 1], not {threshold!r}")
        _check_int("initial_stream_window", self.initial_stream_window, 1, MAX_WINDOW)
        _check_int("connection_window", self.connection_window, 65_535, MAX_WINDOW)
        _check_int("max_stream_window", self.max_stream_window, 1, MAX_WINDOW)
        _check_int("max_frame_size", self.max_frame_size, MIN_FRAME_SIZE, MAX_FRAME_SIZE)
        _check_int("header_table_size", self.header_table_size, 0, 2**32 - 1)
        _check_int("max_header_list_size", self.max_header_list_size, 1, 2**32 - 1)


_SECONDS = (
    "connect_timeout",
    "tls_handshake_timeout",
    "acquire_timeout",
    "read_timeout",
    "write_timeout",
    "idle_timeout",
    "ping_interval",
    "ping_timeout",
    "retry_backoff",
    "retry_backoff_max",
)


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 or math.isinf(value):
        # An infinite default is how peers end up hanging on a silent server.
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")
