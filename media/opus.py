"""Opus decoding that can conceal a lost frame (PLC) or rebuild it from the next packet's
in-band FEC, through libopus itself (ctypes).

PyAV's decoder (what aiortc uses) cannot do either: FFmpeg's libopus wrapper never passes
``decode_fec`` and has no way to ask for concealment. libopus does both in ``opus_decode``:
a NULL packet conceals ``frame_size`` samples; ``decode_fec=1`` on the packet that follows a
loss decodes the redundant copy of the lost frame (LBRR) that a sender with in-band FEC
(``useinbandfec=1``, as browsers send it) puts in SILK and hybrid packets, and conceals
when there is none.

Which libopus: the copy in PyAV's wheel (``av.libs/``, ``av/.dylibs``; libopus 1.6 in
PyAV 18), else the system's (Debian's ``libopus0``, 1.3). Both have the functions used
here except ``opus_packet_has_lbrr`` (1.5 and later), for which :func:`has_fec` has its own
reading of the packet.

Output is interleaved signed 16-bit, by default what aiortc's decoder produces (48 kHz,
stereo); libopus also decodes straight to 8, 12, 16 or 24 kHz and to mono (a stereo stream
downmixed to (L+R)/2), which costs less than decoding at 48 kHz and resampling after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import weakref

import av
import numpy as np

from media import Int16Array

SAMPLE_RATE = 48_000  # the RTP clock of Opus (RFC 7587), whatever the decoded rate
CHANNELS = 2
RATES = (8_000, 12_000, 16_000, 24_000, 48_000)  # what opus_decoder_create accepts
GRANULE = 120  # 2.5 ms: concealment and FEC sizes are multiples of it
MAX_FRAME = 5760  # 120 ms, the longest Opus packet

_OK = 0
_MAX_FRAMES = 48  # frames in one packet, at most (RFC 6716 section 3.2.5)


@functools.cache
def load_libopus() -> ctypes.CDLL:
    """libopus with the signatures used here; OSError when there is none."""
    path = _bundled_libopus() or ctypes.util.find_library("opus")
    if path is None:
        raise OSError("libopus not found (neither in PyAV's wheel nor on the system)")
    lib = ctypes.CDLL(path)
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_get_version_string.argtypes = []
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_packet_get_samples_per_frame.restype = ctypes.c_int
    lib.opus_packet_get_samples_per_frame.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    lib.opus_packet_parse.restype = ctypes.c_int
    lib.opus_packet_parse.argtypes = [
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_int16),
        ctypes.c_void_p,
    ]
    if hasattr(lib, "opus_packet_has_lbrr"):
        lib.opus_packet_has_lbrr.restype = ctypes.c_int
        lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
    return lib


def _bundled_libopus() -> str | None:
    """The libopus PyAV's wheel carries next to its FFmpeg (auditwheel/delocate/delvewheel
    put it in av.libs/ or av/.dylibs/, with a hash in the name)."""
    package = os.path.dirname(av.__file__)
    for pattern in ("../av.libs/libopus*.so*", ".dylibs/libopus*.dylib", "../av.libs/opus*.dll"):
        found = sorted(glob.glob(os.path.join(package, pattern)))
        if found:
            return os.path.normpath(found[0])
    return None


def version() -> str:
    return bytes(load_libopus().opus_get_version_string()).decode()


def packet_samples(packet: bytes) -> int:
    """Samples per channel at 48 kHz that ``packet`` holds; -1 when it is not Opus."""
    if not packet:
        return -1
    n: int = load_libopus().opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE)
    return n if n > 0 else -1


def has_fec(packet: bytes) -> bool:
    """Whether ``packet`` carries a redundant copy of the frame before it (SILK LBRR)."""
    lib = load_libopus()
    if not packet:
        return False
    if hasattr(lib, "opus_packet_has_lbrr"):
        return bool(lib.opus_packet_has_lbrr(packet, len(packet)) > 0)
    return _has_lbrr(lib, packet)


def _has_lbrr(lib: ctypes.CDLL, packet: bytes) -> bool:
    """``opus_packet_has_lbrr`` of libopus 1.5, for older libraries: the LBRR flag is one of
    the first bits of the first frame's SILK header (one per 20 ms, per channel)."""
    if packet[0] >> 3 >= 16:  # configurations 16-31 are CELT-only: no SILK, no LBRR
        return False
    per_frame = lib.opus_packet_get_samples_per_frame(packet, SAMPLE_RATE)
    silk_frames = per_frame // 960 if per_frame > 960 else 1
    frames = (ctypes.c_void_p * _MAX_FRAMES)()
    sizes = (ctypes.c_int16 * _MAX_FRAMES)()
    data = ctypes.create_string_buffer(packet, len(packet))
    count = lib.opus_packet_parse(data, len(packet), None, frames, sizes, None)
    if count <= 0 or sizes[0] == 0 or frames[0] is None:
        return False
    address = ctypes.addressof(data)
    first = packet[frames[0] - address]
    lbrr = (first >> (7 - silk_frames)) & 1
    if packet[0] & 0x4:  # stereo: the side channel has its own flag
        lbrr |= (first >> (6 - 2 * silk_frames)) & 1
    return bool(lbrr)


class OpusDecoder:
    """One stream's libopus decoder state (it must see every frame, decoded or concealed,
    in order). Blocking but short: ~35 µs per 20 ms frame at 48 kHz stereo, ~20 µs
    concealed.

    ``rate`` and ``channels`` are the output's. Sample counts passed in are of the RTP
    clock (48 kHz, as :func:`packet_samples` gives them), so that callers keep one timeline
    whatever the output rate; what comes back holds ``samples * rate // 48000`` per channel.
    """

    def __init__(self, rate: int = SAMPLE_RATE, channels: int = CHANNELS) -> None:
        if rate not in RATES or channels not in (1, 2):
            raise ValueError(
                f"libopus decodes to {RATES} Hz, mono or stereo; not {rate} Hz x {channels}"
            )
        self.rate = rate
        self.channels = channels
        self._lib = lib = load_libopus()
        error = ctypes.c_int(0)
        state = lib.opus_decoder_create(rate, channels, ctypes.byref(error))
        if error.value != _OK or not state:
            raise OSError(f"opus_decoder_create: {self._strerror(error.value)}")
        self._state: int = state
        self._finalizer = weakref.finalize(self, lib.opus_decoder_destroy, state)

    def decode(self, packet: bytes, samples: int | None = None) -> Int16Array | None:
        """The packet's audio; None when libopus cannot decode it (conceal instead).
        ``samples``: what :func:`packet_samples` said of it, where the caller has asked."""
        if samples is None:
            samples = packet_samples(packet)
        if samples <= 0:
            return None
        return self._run(packet, samples, fec=False)

    def conceal(self, samples: int) -> Int16Array:
        """``samples`` (a multiple of 2.5 ms) of libopus' concealment for a lost frame."""
        pcm = self._run(None, samples, fec=False)
        if pcm is None:
            return np.zeros(self.length(samples), dtype=np.int16)
        return pcm

    def recover(self, next_packet: bytes, samples: int) -> Int16Array:
        """The lost ``samples`` just before ``next_packet``, from its in-band FEC (libopus
        conceals what it does not cover). Decode ``next_packet`` itself afterwards."""
        pcm = self._run(next_packet, samples, fec=True)
        return pcm if pcm is not None else self.conceal(samples)

    def length(self, samples: int) -> int:
        """How many values ``samples`` of the RTP clock decode to (all channels)."""
        return samples * self.rate // SAMPLE_RATE * self.channels

    def _run(self, packet: bytes | None, samples: int, *, fec: bool) -> Int16Array | None:
        if not self._finalizer.alive:
            raise ValueError("the Opus decoder is closed")
        pcm = np.empty(self.length(samples), dtype=np.int16)
        size = len(pcm) // self.channels  # per channel, as libopus counts
        length = len(packet) if packet is not None else 0
        got = self._lib.opus_decode(self._state, packet, length, pcm.ctypes.data, size, int(fec))
        if got < 0:
            return None
        return pcm[: got * self.channels]

    def close(self) -> None:
        self._finalizer()

    def _strerror(self, code: int) -> str:
        return bytes(self._lib.opus_strerror(code)).decode()
