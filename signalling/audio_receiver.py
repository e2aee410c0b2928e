"""The gateway's inbound audio: lost packets concealed or rebuilt, not multiplied.

aiortc's audio receive path turns each lost packet into several lost frames and conceals
nothing (see ``media.jitter`` for why). This adapter replaces that part of it, for the
gateway's own peer connections only: :class:`ConcealingJitterBuffer` takes the place of one
``RTCRtpReceiver``'s jitter buffer, puts packets in order with
:class:`media.jitter.ReorderBuffer`, decodes them with :class:`media.opus.OpusDecoder`
(lost frames rebuilt from the next packet's in-band FEC, else concealed by libopus) and
hands the frames to the receiver's track, so that aiortc's own decoder thread sits idle.

The aiortc internals it relies on (aiortc 1.16, see ``TESTED``):

* ``RTCRtpReceiver._handle_rtp_packet`` keeps RTCP statistics, unwraps RTX and sends NACKs
  (video only), depayloads, then calls ``self.__jitter_buffer.add(packet)`` (name-mangled:
  ``_RTCRtpReceiver__jitter_buffer``), which returns ``(pli_flag, encoded_frame)``; a frame
  goes to its decoder thread, which puts decoded frames on ``RemoteStreamTrack._queue``.
  We replace that attribute *on the one receiver instance* (never on the class or module):
  everything before the jitter buffer runs unchanged, our ``add`` returns ``(False, None)``
  so the decoder thread gets nothing, and our frames go on ``_queue`` directly, from the
  event loop (decoding 20 ms of Opus takes ~35 µs). When the receiver stops, aiortc's
  decoder thread still ends the track as before.
* The receiver's negotiated codecs (``_RTCRtpReceiver__codecs``, payload type → codec):
  packets of any other codec than Opus go to aiortc's own jitter buffer, kept for them.
* The transceiver's negotiated codecs (``_codecs``): the answer is made from them, so
  setting ``useinbandfec=1`` on Opus there, before ``createAnswer``, tells the client
  (RFC 7587) that it is worth sending in-band FEC; browsers send it only when the answer
  says so.
* ``RTCPeerConnection`` emits ``track`` at the end of ``setRemoteDescription``, once those
  codecs are set and before any answer exists: :func:`adapt_audio_receivers` adapts each
  audio receiver there.

A release outside ``TESTED``, internals not as expected, or no libopus: a warning once, and
aiortc's own path (the gateway works as before, loss and all). Frames are s16, by default in
aiortc's form (stereo 48 kHz); the gateway asks for what its listener needs (mono 16 kHz),
which libopus decodes straight away, cheaper than decoding at 48 kHz and resampling after.
``pts`` counts samples of that rate from the first (aiortc's mapped RTP timestamp, scaled),
and the delay stays aiortc's 4 frames (``media.jitter.DEPTH``).
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import logging
from typing import Any, Protocol

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

from media import jitter, opus
from media.jitter import Decoded, Event, Filled, Lost, Packet, ReorderBuffer, Skipped
from signalling.versions import AIORTC_TESTED, Tested, untested_release

logger = logging.getLogger(__name__)

# Versions this adapter was tested against, as [lowest, first untested) (major, minor) pairs.
TESTED: Tested = {"aiortc": AIORTC_TESTED}

_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_CODECS = "_RTCRtpReceiver__codecs"


class ReceiverObserver(Protocol):
    """What the receive path reports (``gateway.ops.metrics.ReceiverMetrics``)."""

    def frame_recovered(self) -> None:
        """A lost frame rebuilt from the next packet's in-band FEC."""

    def frame_concealed(self) -> None:
        """A lost frame concealed by libopus (no FEC for it)."""

    def packet_late(self) -> None:
        """A packet that arrived after its frame had been concealed."""

    def frame_dropped(self) -> None:
        """A frame the listener had not read :data:`MAX_BACKLOG_FRAMES` frames later."""


class _Unobserved:
    def frame_recovered(self) -> None:
        pass

    def frame_concealed(self) -> None:
        pass

    def packet_late(self) -> None:
        pass

    def frame_dropped(self) -> None:
        pass


# --- support: checked once, at start-up or at the first session ---


# Decoded frames waiting for the listener, at most: 5 s of 20 ms frames. aiortc's track
# queue has no bound of its own.
MAX_BACKLOG_FRAMES = 250


def unsupported_reason(installed: dict[str, str] | None = None) -> str | None:
    """Why the adapter cannot be used here; None when it can. ``installed`` maps package →
    version, for tests; by default it is read from metadata."""
    found = untested_release(TESTED, installed)
    if found is not None:
        return (
            f"{found.package} {found.version} is installed, but the concealing audio receiver "
            f"relies on {found.package} internals tested only with {found.tested}"
        )
    try:
        opus.load_libopus()
    except OSError as exc:
        return f"libopus cannot be loaded ({exc})"
    return None


@functools.cache
def check_support() -> bool:
    """Whether lost audio can be concealed; logs why not, once (call it at start-up)."""
    reason = unsupported_reason()
    if reason is not None:
        logger.warning("%s: lost audio packets will not be concealed (aiortc's own path)", reason)
        return False
    logger.debug("concealing audio receiver: libopus %s", opus.version())
    return True


# --- applying it ---


def adapt_audio_receivers(
    pc: RTCPeerConnection,
    observer: ReceiverObserver | None = None,
    *,
    rate: int = opus.SAMPLE_RATE,
    channels: int = opus.CHANNELS,
) -> None:
    """Receive each audio track ``pc``'s remote peer sends through the concealing path,
    decoded to ``rate`` and ``channels``, and answer with ``useinbandfec=1``. Call it
    before the offer is applied; a peer connection on an unsupported aiortc is left as it
    is (its frames are then aiortc's: 48 kHz stereo)."""
    if not check_support():
        return

    def on_track(track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        for transceiver in pc.getTransceivers():
            if transceiver.receiver.track is track:
                try:
                    adapt_receiver(transceiver, observer, rate=rate, channels=channels)
                except Exception:  # never let this fail the offer: aiortc's path remains
                    logger.exception("could not adapt the audio receiver")

    pc.on("track", on_track)


def adapt_receiver(
    transceiver: RTCRtpTransceiver,
    observer: ReceiverObserver | None = None,
    *,
    rate: int = opus.SAMPLE_RATE,
    channels: int = opus.CHANNELS,
) -> bool:
    """Replace this one receiver's jitter buffer; False (and aiortc's path) when its
    internals are not as tested. Calling it twice changes nothing."""
    receiver = transceiver.receiver
    current = vars(receiver).get(_JITTER_BUFFER)
    if isinstance(current, ConcealingJitterBuffer):
        return True
    track = receiver.track
    queue = getattr(track, "_queue", None)
    if (
        not isinstance(current, JitterBuffer)
        or not isinstance(vars(receiver).get(_CODECS), dict)
        or not isinstance(queue, asyncio.Queue)
    ):
        _warn_internals()
        return False
    decoder = opus.OpusDecoder(rate, channels)
    setattr(
        receiver,
        _JITTER_BUFFER,
        ConcealingJitterBuffer(receiver, current, queue, observer, decoder=decoder),
    )
    for codec in transceiver._codecs:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters["useinbandfec"] = 1
    return True


@functools.cache
def _warn_internals() -> None:
    logger.warning("aiortc's audio receiver is not as tested: lost audio will not be concealed")


# --- the replacement ---


class ConcealingJitterBuffer:
    """Stands in for one receiver's ``JitterBuffer``: ``add`` is what aiortc calls for
    each RTP packet, on the event loop."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        fallback: JitterBuffer,
        frames: asyncio.Queue[Any],
        observer: ReceiverObserver | None = None,
        *,
        decoder: opus.OpusDecoder | None = None,
    ) -> None:
        self._receiver = receiver
        self._fallback = fallback  # for packets of another codec (G.722, PCMU, ...)
        self._frames = frames  # the track's queue, which its recv() reads
        self._observer: ReceiverObserver = observer or _Unobserved()
        self._loop = asyncio.get_running_loop()
        self._buffer = ReorderBuffer()
        self._decoder = decoder or opus.OpusDecoder()
        self._layout = "mono" if self._decoder.channels == 1 else "stereo"
        self._time_base = fractions.Fraction(1, self._decoder.rate)
        self._timer: asyncio.TimerHandle | None = None
        self._late = 0
        self.capacity = fallback.capacity  # what a JitterBuffer has

    @property
    def stats(self) -> jitter.ReorderStats:
        return self._buffer.stats

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        codec = vars(self._receiver)[_CODECS].get(packet.payload_type)
        if codec is None or codec.mimeType.lower() != "audio/opus":
            result: tuple[bool, JitterFrame | None] = self._fallback.add(packet)
            return result
        payload = bytes(packet.payload)
        events = self._buffer.push(
            Packet(
                packet.sequence_number,
                packet.timestamp,
                opus.packet_samples(payload),
                payload,
            ),
            self._loop.time(),
            packet.ssrc,
        )
        self._deliver(events)
        self._arm()
        return False, None

    def _arm(self) -> None:
        if self._timer is not None:
            return
        deadline = self._buffer.deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._deliver(self._buffer.poll(self._loop.time()))
        self._arm()

    def _deliver(self, events: list[Event]) -> None:
        late = self._buffer.stats.late
        for _ in range(late - self._late):
            self._observer.packet_late()
        self._late = late
        if not events:
            return
        track = self._receiver.track
        live = track is not None and track.readyState == "live"
        for event in events:
            frame = self._decode(event)
            if frame is not None and live:
                if self._frames.qsize() >= MAX_BACKLOG_FRAMES:
                    # The listener is this far behind (an overloaded machine): the oldest
                    # speech is worth least, and the track's queue must not grow forever.
                    self._frames.get_nowait()
                    self._observer.frame_dropped()
                self._frames.put_nowait(frame)

    def _decode(self, event: Event) -> av.AudioFrame | None:
        if isinstance(event, Decoded):
            pcm = self._decoder.decode(event.payload, event.samples)
            if pcm is None or len(pcm) != self._decoder.length(event.samples):
                self._observer.frame_concealed()  # arrived, but unreadable
                pcm = self._decoder.conceal(event.samples)
        elif isinstance(event, Lost):
            if event.fec is not None and opus.has_fec(event.fec):
                pcm = self._decoder.recover(event.fec, event.samples)
                self._observer.frame_recovered()
            else:
                pcm = self._decoder.conceal(event.samples)
                self._observer.frame_concealed()
        elif isinstance(event, Filled):
            pcm = self._decoder.conceal(event.samples)
        else:
            assert isinstance(event, Skipped)
            return None  # the timeline jumps: the listener counts it as lost
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=self._layout)
        frame.sample_rate = self._decoder.rate
        frame.pts = event.pts * self._decoder.rate // opus.SAMPLE_RATE
        frame.time_base = self._time_base
        return frame
