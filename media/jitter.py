"""RTP audio packets back in order, and which frames are lost: the receive path's protocol
core (no I/O, time passed in, as ``media.endpointer``).

Packets go in with :meth:`ReorderBuffer.push`; what comes out is the stream's timeline as
events, in order, each with its position ``pts`` (samples at 48 kHz from the first):
``Decoded`` (a packet to decode), ``Lost`` (a frame the network lost: conceal it, or rebuild
it from ``fec``, the packet after it), ``Filled`` (time the sender sent nothing for, DTX:
conceal it) and ``Skipped`` (a jump the timeline makes without audio). Every sample of the
timeline is in exactly one event, so decoding them all gives continuous audio.

Why not aiortc's ``JitterBuffer(capacity=16, prefetch=4)``: it releases at most one frame per
arriving packet, only from an unbroken run of packets at its start. After a loss nothing
comes out until 16 packets are held; it then discards the oldest, real frames included, one
per arrival, until the gap reaches its start. Each lost packet costs the ~4 frames before
it too, and the backlog stays ~15 frames (300 ms) deep from then on: measured with 5 % of
321 packets dropped at random, 112 frames went missing for 24 packets lost.

The rules here:

* A frame comes out once ``depth`` newer packets have arrived: ``depth`` frames of delay, as
  aiortc's prefetch (4, which ``media.listener.JITTER_PREFETCH_FRAMES`` takes out of the
  arrival clock). A packet that arrives within that window is put in its place.
* A frame still missing then is lost; if the packet after it has arrived, that packet comes
  with it (``Lost.fec``): Opus in-band FEC carries a copy of the frame before it.
* Loss adds no delay: a burst is settled as soon as ``depth`` newer packets are in, and as
  many frames come out at once as are due.
* When nothing arrives for ``flush_after_s``, everything held comes out (a sender that
  pauses or stops never holds audio back); :meth:`deadline` says when, :meth:`poll` does it.
* A packet for a frame already out (late beyond the window, or a duplicate) is dropped and
  counted. Sequence numbers are 16-bit and wrap; they are compared modulo 2**16.
* A packet more than ``max_gap`` beyond the newest (or ``max_misorder`` behind the next
  frame out), or from another source (SSRC), is a restart: what is held comes out, and the
  stream continues from it. A packet that is not Opus (``samples`` <= 0) counts as lost.
* Timestamps place frames in time: a lost frame lasts as long as the frame before it; a
  timestamp jump between consecutive packets up to ``max_fill`` samples (DTX) is
  ``Filled``, a longer one is ``Skipped`` (at most ``max_skip``; a restart's jump is not
  known and skips nothing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

RATE = 48_000  # the Opus RTP clock
GRANULE = 120  # 2.5 ms: the unit Opus can conceal
DEFAULT_FRAME = 960  # 20 ms, until a packet says otherwise

DEPTH = 4
FLUSH_AFTER_S = 0.12
MAX_GAP = 50  # packets: one second of 20 ms frames
MAX_MISORDER = 100  # packets, as aiortc's JitterBuffer
MAX_FILL = RATE  # one second
MAX_SKIP = 60 * RATE


@dataclass(frozen=True, slots=True)
class Packet:
    sequence: int  # 16-bit RTP sequence number
    timestamp: int  # 32-bit RTP timestamp
    samples: int  # duration at 48 kHz (from the Opus packet's own header)
    payload: bytes


@dataclass(frozen=True, slots=True)
class Decoded:
    pts: int
    samples: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Lost:
    pts: int
    samples: int
    fec: bytes | None  # the next packet, when it arrived: it may carry this frame's copy


@dataclass(frozen=True, slots=True)
class Filled:
    pts: int
    samples: int


@dataclass(frozen=True, slots=True)
class Skipped:
    pts: int
    samples: int


Event = Decoded | Lost | Filled | Skipped


@dataclass
class ReorderStats:
    packets: int = 0  # accepted into the buffer
    lost: int = 0  # frames released as Lost
    late: int = 0  # arrived after their frame was released as lost
    duplicates: int = 0  # arrived again after their frame was decoded (or while held)
    restarts: int = 0
    invalid: int = 0  # not audio the decoder can read: treated as lost


def _seq_diff(a: int, b: int) -> int:
    """a - b for 16-bit sequence numbers, in [-32768, 32767]."""
    return (a - b + 0x8000) % 0x10000 - 0x8000


def _ts_diff(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, in [-2**31, 2**31)."""
    return (a - b + 0x8000_0000) % 0x1_0000_0000 - 0x8000_0000


class ReorderBuffer:
    def __init__(
        self,
        depth: int = DEPTH,
        *,
        flush_after_s: float = FLUSH_AFTER_S,
        max_gap: int = MAX_GAP,
        max_misorder: int = MAX_MISORDER,
        max_fill: int = MAX_FILL,
        max_skip: int = MAX_SKIP,
    ) -> None:
        if depth < 0 or max_gap <= depth or max_misorder <= depth:
            raise ValueError(f"need 0 <= depth < max_gap, max_misorder; got {depth}")
        self.depth = depth
        self.flush_after_s = flush_after_s
        self.max_gap = max_gap
        self.max_misorder = max_misorder
        self.max_fill = max_fill
        self.max_skip = max_skip
        self.stats = ReorderStats()
        self._held: dict[int, Packet] = {}
        self._head: int | None = None  # sequence number of the next frame out
        self._span = 0  # head .. newest packet held, inclusive (0: nothing held)
        self._source: int | None = None
        self._released_any = False
        self._expected_ts: int | None = None  # where the next frame out should start
        self._frame = DEFAULT_FRAME  # the last frame's duration
        self._pts = 0
        self._last_arrival = 0.0
        self._recently_lost: deque[int] = deque(maxlen=max_misorder)

    @property
    def pts(self) -> int:
        """The position the next event will start at."""
        return self._pts

    @property
    def held(self) -> int:
        """Frames waiting (packets held plus the gaps between them)."""
        return self._span

    def push(self, packet: Packet, now: float, source: int | None = None) -> list[Event]:
        """Take one packet (``source``: its SSRC); returns the events it releases."""
        self._last_arrival = now
        events: list[Event] = []
        if packet.samples <= 0:
            self.stats.invalid += 1
            return events
        if self._head is None:
            self._start(packet, source)
        elif source != self._source:
            events += self._restart(packet, source)
        else:
            offset = _seq_diff(packet.sequence, self._head)
            if offset < 0:
                if not self._released_any and offset >= -self.depth:
                    self._head = packet.sequence  # reordered before the first packet
                    self._span -= offset
                elif offset >= -self.max_misorder:
                    self._count_late(packet.sequence)
                    return events
                else:
                    events += self._restart(packet, source)
            elif offset >= self._span + self.max_gap:
                events += self._restart(packet, source)
            elif packet.sequence in self._held:
                self.stats.duplicates += 1
                return events
            else:
                self._span = max(self._span, offset + 1)
        self._held[packet.sequence] = packet
        self.stats.packets += 1
        while self._span > self.depth:
            events += self._release_head()
        return events

    def deadline(self) -> float | None:
        """When :meth:`poll` should next be called; None while nothing is held."""
        return self._last_arrival + self.flush_after_s if self._span else None

    def poll(self, now: float) -> list[Event]:
        """Everything held, once nothing has arrived for ``flush_after_s``."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        return self.flush()

    def flush(self) -> list[Event]:
        """Everything held, in order (gaps between packets are lost frames)."""
        events: list[Event] = []
        while self._span:
            events += self._release_head()
        return events

    # --- internals ---

    def _start(self, packet: Packet, source: int | None) -> None:
        self._head = packet.sequence
        self._span = 1
        self._source = source

    def _restart(self, packet: Packet, source: int | None) -> list[Event]:
        events = self.flush()
        self.stats.restarts += 1
        if source != self._source:
            self._expected_ts = None  # another stream: its timestamps say nothing of ours
        self._held.clear()
        self._recently_lost.clear()
        self._start(packet, source)
        return events

    def _count_late(self, sequence: int) -> None:
        if sequence in self._recently_lost:
            self._recently_lost.remove(sequence)
            self.stats.late += 1
        else:
            self.stats.duplicates += 1

    def _release_head(self) -> list[Event]:
        assert self._head is not None
        head = self._head
        self._head = (head + 1) % 0x10000
        self._span -= 1
        self._released_any = True
        packet = self._held.pop(head, None)
        if packet is None:
            following = self._held.get(self._head)
            lost = Lost(self._pts, self._frame, following.payload if following else None)
            self._advance(lost.samples)
            self.stats.lost += 1
            self._recently_lost.append(head)
            return [lost]
        events = self._timestamp_gap(packet)
        events.append(Decoded(self._pts, packet.samples, packet.payload))
        self._pts += packet.samples
        self._expected_ts = (packet.timestamp + packet.samples) % 0x1_0000_0000
        self._frame = packet.samples
        return events

    def _advance(self, samples: int) -> None:
        self._pts += samples
        if self._expected_ts is not None:
            self._expected_ts = (self._expected_ts + samples) % 0x1_0000_0000

    def _timestamp_gap(self, packet: Packet) -> list[Event]:
        """Time between the frame before ``packet`` and ``packet`` that no packet covers."""
        if self._expected_ts is None:
            return []
        gap = _ts_diff(packet.timestamp, self._expected_ts)
        if gap < GRANULE:  # none, or the sender's clock went back: the timeline goes on
            return []
        if gap > self.max_fill:
            skipped = Skipped(self._pts, gap if gap <= self.max_skip else 0)
            self._pts += skipped.samples
            return [skipped]
        events: list[Event] = []
        gap -= gap % GRANULE
        while gap:
            size = min(gap, self._frame)
            events.append(Filled(self._pts, size))
            self._pts += size
            gap -= size
        return events
