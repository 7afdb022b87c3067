"""Receive-window policy: grow windows to the path's bandwidth-delay product, within a budget.

Small windows make long-distance downloads slow (curl#1102: 23 MB at 33 ms
RTT took 8.3 s over HTTP/2 against 1.1 s over HTTP/1.1); large fixed windows
let every slow consumer make the client buffer that much. So windows start
at the configured size and grow only when measured to be the bottleneck:

* :class:`BdpEstimator` follows hyper's approach (``src/proto/h2/ping.rs``):
  while DATA flows, one PING is sent and the bytes consumed until its ACK
  are a sample of the bandwidth-delay product. A sample that fills most of
  the current window means the window, not the network, limits the
  transfer: the window grows sixteenfold, up to a cap. With a round trip
  already known (from an earlier sample, or from the SETTINGS exchange
  that opens the connection), a sample that fills two thirds of the window
  in under half a round trip decides at once instead of at its ACK.
* :class:`WindowBudget` keeps the windows advertised by all connections of a
  pool within ``receive_buffer_budget``. Received data is acknowledged only
  as consumers read it, so the sum of connection windows bounds what the
  pool can ever hold buffered, however many slow consumers there are.

Both are plain classes with no I/O; the connection feeds them bytes and times.
"""

from __future__ import annotations

#: A sample starts once this fraction (1/N) of the window, and at least
#: SAMPLE_MIN_BYTES, has arrived since the last: early enough that the first
#: sample of a transfer starts in its first round trip, late enough that
#: small responses never cost a PING.
SAMPLE_AFTER = 8
SAMPLE_MIN_BYTES = 64 * 1024

#: RFC 9113 §6.9.2: a connection's receive window starts at 65,535 bytes and
#: cannot be taken back, so every connection holds at least this much.
MIN_CONNECTION_WINDOW = 65_535


class BdpEstimator:
    """Bandwidth-delay-product sampling by PING, during DATA bursts.

    A sample starts once an eighth of a window of DATA (at least 64 KiB) has
    arrived since the last one, so small responses cost no PINGs, and at
    most one sample is in flight: at most one PING per round trip while a
    transfer lasts.

    A sample counts the bytes the *consumer* took during one round trip, not
    the bytes that arrived: a consumer that does not read leaves a full
    window buffered, which looks window-limited by arrivals alone and would
    grow its window to the cap for nothing.
    """

    __slots__ = ("_cap", "_decided", "_pinged_at", "_sampled", "_unsampled", "rtt", "window")

    #: Growth per window-limited sample. Large steps on purpose: each step
    #: costs up to two round trips (the sample, then SETTINGS reaching the server),
    #: so doubling from 1 MiB to 16 MiB would cost eight.
    GROWTH = 16

    def __init__(self, window: int, cap: int) -> None:
        #: The stream window currently advertised.
        self.window = window
        self._cap = cap
        self._unsampled = 0
        self._sampled = 0
        self._pinged_at: float | None = None
        #: The sample in flight has already grown the window (see :meth:`on_consumed`).
        self._decided = False
        #: Round trip of the last sample (or, before one, of the SETTINGS exchange), in seconds.
        self.rtt: float | None = None

    def on_data(self, size: int) -> bool:
        """Count received DATA; True when a sampling PING should be sent now."""
        if self._pinged_at is not None or self.window >= self._cap:
            return False
        self._unsampled += size
        if self._unsampled < max(self.window // SAMPLE_AFTER, SAMPLE_MIN_BYTES):
            return False
        self._unsampled = 0
        self._sampled = 0
        return True

    @property
    def sampling(self) -> bool:
        """Whether a sample's PING is in flight (consumption counts towards it)."""
        return self._pinged_at is not None

    def seed_rtt(self, rtt: float) -> None:
        """A round trip measured before any sample (the SETTINGS exchange): lets the first sample end early."""
        if self.rtt is None:
            self.rtt = rtt

    def on_consumed(self, size: int, now: float | None = None) -> int | None:
        """Count DATA the consumer took; the new window if the sample in flight already shows it should grow.

        A sample that reaches two thirds of the window in under half a
        known round trip would reach it by the ACK whatever happens next:
        the window is the limit, and growing now saves the rest of the
        round trip. (At 40 ms that is most of a round trip, since a
        window-limited burst arrives in a few milliseconds.)
        """
        if self._pinged_at is None:
            return None
        self._sampled += size
        if self._decided or now is None or self.rtt is None or now - self._pinged_at >= self.rtt / 2:
            return None
        grown = self._grown(self._sampled)
        self._decided = grown is not None
        return grown

    def pinged(self, now: float) -> None:
        self._pinged_at = now

    def on_ack(self, now: float) -> int | None:
        """The sampling PING came back: the new window if it should grow, else None."""
        if self._pinged_at is None:
            return None
        self.rtt = now - self._pinged_at
        self._pinged_at = None
        sample, self._sampled = self._sampled, 0
        if self._decided:
            # The window grew during the sample already.
            self._decided = False
            return None
        return self._grown(sample)

    def _grown(self, sample: int) -> int | None:
        """Take the grown window if ``sample`` shows the window was the limit, unless at the cap."""
        if sample * 3 < self.window * 2:
            # The network or the consumer, not the window, was the limit.
            return None
        grown = min(self._cap, max(self.window, sample) * self.GROWTH)
        if grown <= self.window:
            return None
        self.window = grown
        return grown


class WindowBudget:
    """The bytes of receive window a pool may advertise over all its connections."""

    __slots__ = ("allocated", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.allocated = 0

    def grant(self, wanted: int, floor: int = 0) -> int:
        """Take up to ``wanted`` bytes (at least ``floor``, budget or not); return what was taken."""
        granted = max(floor, min(wanted, self.limit - self.allocated))
        self.allocated += granted
        return granted

    def give_back(self, size: int) -> None:
        self.allocated = max(0, self.allocated - size)

    @property
    def available(self) -> int:
        return max(0, self.limit - self.allocated)
