"""Whether a pause ends the turn, for every session of a process: the text policy
(:mod:`gateway.conversation.turn_policy`) over the early transcript and, where configured,
an audio end-of-turn model (Smart Turn v3, :mod:`media.smart_turn`) run off the loop.

A model that fails at run time is not asked again: the text policy decides from then on,
and the failure is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Protocol

from gateway.conversation.turn_policy import Judgement, decide, judge_text
from media import Float32Array

logger = logging.getLogger(__name__)

TurnDetection = Literal["fixed", "text", "model", "auto"]
TURN_DETECTIONS: tuple[TurnDetection, ...] = ("fixed", "text", "model", "auto")
# Smart Turn takes ~10-40 ms here; a model slower than this is not worth waiting for.
MODEL_TIMEOUT_S = 1.0


class TurnModel(Protocol):
    def predict(self, audio: Float32Array) -> float:
        """The probability that the turn is complete. Blocking."""
        ...


class TurnJudge:
    def __init__(
        self,
        mode: TurnDetection,
        model: TurnModel | None = None,
        *,
        timeout_s: float = MODEL_TIMEOUT_S,
    ) -> None:
        if mode == "model" and model is None:
            raise ValueError("turn detection 'model' needs a turn model")
        # "auto": the model when there is one, else the text alone.
        self.mode: TurnDetection = ("model" if model else "text") if mode == "auto" else mode
        self._model = model if self.mode == "model" else None
        self._timeout_s = timeout_s
        self._executor: ThreadPoolExecutor | None = None  # made on first use
        self._failed = False

    @property
    def decides(self) -> bool:
        """False: a fixed silence ends every turn (``--turn-detection fixed``)."""
        return self.mode != "fixed"

    @property
    def uses_model(self) -> bool:
        return self._model is not None and not self._failed

    async def probability(self, audio: Float32Array) -> float | None:
        """The model's verdict on the utterance so far; None without a (working) model."""
        model = self._model
        if model is None or self._failed:
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turn-model")
        executor, loop = self._executor, asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(executor.submit(model.predict, audio), loop=loop),
                self._timeout_s,
            )
        except TimeoutError:
            logger.warning(
                "turn model took over %.1f s; the text decides this turn", self._timeout_s
            )
            return None
        except Exception:  # onnxruntime's own errors: fall back for good, say so once
            self._failed = True
            logger.exception("turn model failed; the text policy decides turns from now on")
            return None

    def judge(self, text: str, probability: float | None, language: str | None) -> Judgement:
        """``language``: the session's (None: not set, read as English, as the default
        models are)."""
        return decide(judge_text(text, language=language or "en"), probability)

    async def close(self) -> None:
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
