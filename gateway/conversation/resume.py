"""Resumable conversations: ``session.ready`` carries a signed ``conversation`` token, and a
new session that presents it (a page reconnecting after its network dropped) continues the
same history, if its old session ended less than ``--resume-window-s`` ago. Pure: time
comes in as ``now`` (``time.time`` seconds, as JWT's ``exp``).

The token is a JWT (HS256, PyJWT) naming the conversation and, when auth is on, the
principal it belongs to; another principal's token is refused like a forged one, so that
a token cannot tell one user about another's conversations. It is signed with a key made
at start-up: histories live in this process's memory, so a restart ends every
conversation, and its tokens with them.

A token stays valid for the longest a session may last plus the window, since the window
counts from the end of the session, which the token cannot know; the parked history's own
deadline is what decides.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jwt

from gateway.conversation.history import Turn
from gateway.errors import GatewayError

AUDIENCE = "local-ai-gateway:conversation"
ALGORITHM = "HS256"

ResumeCode = Literal["resume_invalid", "resume_expired"]
INVALID = (
    "the conversation token is not valid here (the gateway may have restarted); "
    "this is a new conversation"
)


class ResumeError(GatewayError):
    """A token that cannot resume anything; the session goes on with a new conversation."""

    def __init__(self, code: ResumeCode, message: str) -> None:
        super().__init__(message)
        self.code: ResumeCode = code


@dataclass(frozen=True)
class ConversationTokens:
    key: bytes  # 32 random bytes, made at start-up
    lifetime_s: float  # the longest session plus the resume window

    def issue(self, conversation_id: str, principal: str | None, now: float) -> str:
        claims: dict[str, object] = {
            "aud": AUDIENCE,
            "cid": conversation_id,
            "iat": int(now),
            "exp": int(now + self.lifetime_s),
        }
        if principal is not None:
            claims["sub"] = principal
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def verify(self, token: str, principal: str | None, now: float) -> str:
        """The conversation ``token`` names, if it was made here for ``principal`` and has
        not expired; otherwise :class:`ResumeError`."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                # Time is judged below against ``now``, not the wall clock.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "cid", "aud"],
                },
            )
        except jwt.InvalidTokenError as exc:
            raise ResumeError("resume_invalid", INVALID) from exc
        conversation_id = claims["cid"]
        if not isinstance(conversation_id, str) or claims.get("sub") != principal:
            raise ResumeError("resume_invalid", INVALID)
        if not isinstance(claims["exp"], int) or now >= claims["exp"]:
            raise ResumeError("resume_expired", "the conversation token has expired")
        return conversation_id


def claimed_conversation(token: str) -> str | None:
    """The conversation id a token claims, unverified: only to route a reconnect to the
    media worker that holds the history (``gateway.http.front``), which verifies it."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    conversation_id = claims.get("cid")
    return conversation_id if isinstance(conversation_id, str) else None


@dataclass(frozen=True)
class _Parked:
    principal: str | None
    turns: tuple[Turn, ...]
    until: float


class ParkedHistories:
    """The histories of sessions that ended, each kept for ``window_s``; at most ``limit``
    (the oldest goes first), so a stream of short sessions cannot grow memory."""

    def __init__(self, limit: int, window_s: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._parked: OrderedDict[str, _Parked] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parked)

    def park(
        self, conversation_id: str, principal: str | None, turns: tuple[Turn, ...], now: float
    ) -> None:
        self._expire(now)
        self._parked.pop(conversation_id, None)
        self._parked[conversation_id] = _Parked(principal, turns, now + self.window_s)
        while len(self._parked) > self.limit:
            self._parked.popitem(last=False)

    def take(self, conversation_id: str, principal: str | None, now: float) -> tuple[Turn, ...]:
        """The history, handed over once: a second session with the same token starts a new
        conversation. :class:`ResumeError` when there is none to take."""
        self._expire(now)
        parked = self._parked.get(conversation_id)
        if parked is None or parked.principal != principal:
            raise ResumeError(
                "resume_expired",
                "that conversation can no longer be resumed (its window has passed, or it "
                "was resumed already); this is a new one",
            )
        del self._parked[conversation_id]
        return parked.turns

    def _expire(self, now: float) -> None:
        while self._parked:
            conversation_id, oldest = next(iter(self._parked.items()))
            if oldest.until > now:
                return
            del self._parked[conversation_id]


@dataclass(frozen=True)
class Resumed:
    """What a new session continues: its conversation id (the token's, or a new one), the
    history so far, and why a presented token could not be used."""

    conversation_id: str
    turns: tuple[Turn, ...] = ()
    refused: ResumeError | None = None


@dataclass(eq=False)
class Holding:
    """One session's hold on a conversation (``Conversations.hold``)."""

    conversation_id: str
    principal: str | None
    history: Callable[[], tuple[Turn, ...]]
    end: Callable[[], None]  # ends the session that holds it (its client came back elsewhere)


class Conversations:
    """Every conversation this gateway holds, live or parked, by id: the one place that
    hands a history from an old session to the new one that presents its token."""

    def __init__(
        self,
        tokens: ConversationTokens,
        parked: ParkedHistories,
        new_id: Callable[[], str],
    ) -> None:
        self.tokens = tokens
        self.parked = parked
        self._new_id = new_id
        self._live: dict[str, Holding] = {}

    def begin(self, token: str | None, principal: str | None, now: float) -> Resumed:
        """The conversation a new session starts with. A live session that holds the
        token's conversation (its client vanished and came back before the old session
        was reaped) is ended and its history taken over."""
        if token is None:
            return Resumed(self._new_id())
        try:
            conversation_id = self.tokens.verify(token, principal, now)
            live = self._live.get(conversation_id)
            if live is not None and live.principal == principal:
                del self._live[conversation_id]
                turns = live.history()
                live.end()
                return Resumed(conversation_id, turns)
            return Resumed(conversation_id, self.parked.take(conversation_id, principal, now))
        except ResumeError as exc:
            return Resumed(self._new_id(), refused=exc)

    def hold(
        self,
        conversation_id: str,
        principal: str | None,
        history: Callable[[], tuple[Turn, ...]],
        end: Callable[[], None],
    ) -> Holding:
        """A session is now carrying this conversation, until it lets go (``release``)."""
        holding = Holding(conversation_id, principal, history, end)
        self._live[conversation_id] = holding
        return holding

    def release(self, holding: Holding, now: float) -> None:
        """The session carrying it ended: park its history for the resume window, unless
        another session has taken it over (the old session of a takeover ends after the
        new one holds the conversation: it must leave the new one alone)."""
        if self._live.get(holding.conversation_id) is not holding:
            return
        del self._live[holding.conversation_id]
        if self.parked.window_s > 0:
            self.parked.park(holding.conversation_id, holding.principal, holding.history(), now)
