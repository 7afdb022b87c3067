"""h2pool: an asyncio HTTP/2 client connection pool with explicit stream slots."""

from .config import PoolConfig
from .exceptions import (
    AcquireTimeout,
    ALPNError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionTerminated,
    ConnectTimeout,
    H2PoolError,
    H2PoolTimeout,
    InvalidRequest,
    PoolClosed,
    ProtocolError,
    ReadTimeout,
    RequestBodyError,
    RequestTimeout,
    StreamReset,
    TLSError,
    TLSHandshakeTimeout,
    WriteTimeout,
)
from .handle import Handle
from .headers import Headers, ResponseHead
from .hooks import ConnectionInfo, PoolHooks
from .origin import Origin
from .pool import OriginStats, Pool, PoolStats
from .priority import Priority
from .response import Response

__version__ = "0.1.0"

__all__ = [
    "ALPNError",
    "AcquireTimeout",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionInfo",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionTerminated",
    "H2PoolError",
    "H2PoolTimeout",
    "Handle",
    "Headers",
    "InvalidRequest",
    "Origin",
    "OriginStats",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolHooks",
    "PoolStats",
    "Priority",
    "ProtocolError",
    "ReadTimeout",
    "RequestBodyError",
    "RequestTimeout",
    "Response",
    "ResponseHead",
    "StreamReset",
    "TLSError",
    "TLSHandshakeTimeout",
    "WriteTimeout",
]
