"""The listener reading a track whose frames fail (``media/listener.py``): the stream goes
on, and a failure that persists logs one traceback, then counts."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import Float32Array
from media import listener as listener_module
from media.endpointer import EndpointerSettings
from media.listener import AudioListener
from media.vad import SileroModel, VadBatcher


class Frames(MediaStreamTrack):
    """``count`` frames of 20 ms of silence at 48 kHz, then the end of the track."""

    kind = "audio"

    def __init__(self, count: int) -> None:
        super().__init__()
        self._left = count
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if not self._left:
            raise MediaStreamError
        self._left -= 1
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 48_000
        frame.pts = self._pts
        self._pts += 960
        return frame


class Failing(AudioListener):
    """Fails to hear its first ``failures`` frames."""

    def __init__(self, failures: int) -> None:
        super().__init__(VadBatcher(SileroModel()), EndpointerSettings(), lambda event: None)
        self.failures = failures
        self.heard = 0

    async def hear(self, samples: Float32Array, arrived: float) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("broken")
        self.heard += 1
        await super().hear(samples, arrived)


async def test_a_run_of_dropped_frames_logs_one_traceback_then_counts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener_module, "DROP_SUMMARY_EVERY", 3)
    listener = Failing(failures=7)
    with caplog.at_level(logging.WARNING, logger="media.listener"):
        await listener.run(Frames(9))
    assert listener.heard == 2  # the track was read to its end
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("audio frame dropped", True),
        ("3 audio frames dropped in a row", False),
        ("6 audio frames dropped in a row", False),
        ("audio frames pass again after 7 dropped in a row", False),
    ]


async def test_each_run_of_failures_gets_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    listener = Failing(failures=1)
    with caplog.at_level(logging.WARNING, logger="media.listener"):
        await listener.run(Frames(2))
        listener.failures = 1
        await listener.run(Frames(2))
    assert [r.exc_info is not None for r in caplog.records] == [True, True]  # no "again"
