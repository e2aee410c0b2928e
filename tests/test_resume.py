"""Resumable conversations (``gateway/conversation/resume.py``): tokens and the parked
histories, exactly, with time passed in."""

from __future__ import annotations

import jwt
import pytest

from gateway.conversation.history import Turn
from gateway.conversation.resume import (
    AUDIENCE,
    Conversations,
    ConversationTokens,
    ParkedHistories,
    Resumed,
    ResumeError,
)

KEY = bytes(range(32))
NOW = 1_800_000_000.0
TURNS = (Turn("user", "What is the capital of Australia?"), Turn("assistant", "Canberra."))


def test_a_token_names_its_conversation_for_its_principal() -> None:
    tokens = ConversationTokens(KEY, lifetime_s=600)
    token = tokens.issue("c1", "api-key:alice", NOW)
    assert tokens.verify(token, "api-key:alice", NOW + 599) == "c1"
    anonymous = tokens.issue("c2", None, NOW)
    assert tokens.verify(anonymous, None, NOW) == "c2"


@pytest.mark.parametrize(
    ("principal", "code"),
    [("api-key:bob", "resume_invalid"), (None, "resume_invalid")],
)
def test_another_principals_token_is_refused_as_invalid(principal: str | None, code: str) -> None:
    tokens = ConversationTokens(KEY, lifetime_s=600)
    token = tokens.issue("c1", "api-key:alice", NOW)
    with pytest.raises(ResumeError) as caught:
        tokens.verify(token, principal, NOW)
    assert caught.value.code == code
    assert "alice" not in str(caught.value)


def test_expired_forged_and_foreign_tokens_are_refused() -> None:
    tokens = ConversationTokens(KEY, lifetime_s=600)
    token = tokens.issue("c1", None, NOW)
    with pytest.raises(ResumeError) as expired:
        tokens.verify(token, None, NOW + 600)
    assert expired.value.code == "resume_expired"
    forged = jwt.encode(
        {"aud": AUDIENCE, "cid": "c1", "exp": int(NOW + 60)}, b"x" * 32, algorithm="HS256"
    )
    other_audience = jwt.encode({"aud": "api", "cid": "c1", "exp": int(NOW + 60)}, KEY)
    unsigned = jwt.encode({"aud": AUDIENCE, "cid": "c1", "exp": int(NOW + 60)}, "", "none")
    for bad in (forged, other_audience, unsigned, "not a token", token[:-2]):
        with pytest.raises(ResumeError) as caught:
            tokens.verify(bad, None, NOW)
        assert caught.value.code == "resume_invalid"


def test_a_history_is_handed_over_once_within_the_window() -> None:
    parked = ParkedHistories(limit=4, window_s=120)
    parked.park("c1", None, TURNS, NOW)
    assert parked.take("c1", None, NOW + 119) == TURNS
    with pytest.raises(ResumeError) as again:
        parked.take("c1", None, NOW + 119)
    assert again.value.code == "resume_expired"


def test_a_history_past_its_window_or_of_another_principal_is_not_given() -> None:
    parked = ParkedHistories(limit=4, window_s=120)
    parked.park("c1", "api-key:alice", TURNS, NOW)
    with pytest.raises(ResumeError):
        parked.take("c1", "api-key:bob", NOW)
    with pytest.raises(ResumeError):
        parked.take("c1", "api-key:alice", NOW + 120)
    assert len(parked) == 0  # expired ones are forgotten


def test_parked_histories_are_bounded_oldest_out_and_reparking_refreshes() -> None:
    parked = ParkedHistories(limit=2, window_s=120)
    parked.park("c1", None, TURNS, NOW)
    parked.park("c2", None, TURNS, NOW + 1)
    parked.park("c1", None, TURNS[:1], NOW + 2)  # the same conversation ended again
    parked.park("c3", None, TURNS, NOW + 3)  # c2 is now the oldest
    assert len(parked) == 2
    with pytest.raises(ResumeError):
        parked.take("c2", None, NOW + 3)
    assert parked.take("c1", None, NOW + 3) == TURNS[:1]
    with pytest.raises(ValueError, match="at least 1"):
        ParkedHistories(limit=0, window_s=1)


class _Ids:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"new{self.count}"


def _directory(window_s: float = 300) -> Conversations:
    return Conversations(
        ConversationTokens(KEY, lifetime_s=3600),
        ParkedHistories(limit=8, window_s=window_s),
        _Ids(),
    )


def test_a_conversation_is_continued_after_its_session_ended() -> None:
    conversations = _directory()
    first = conversations.begin(None, "key:a", NOW)
    assert first == Resumed("new1")
    ended: list[str] = []
    holding = conversations.hold(
        first.conversation_id, "key:a", lambda: TURNS, lambda: ended.append("x")
    )
    token = conversations.tokens.issue(first.conversation_id, "key:a", NOW)
    conversations.release(holding, NOW + 10)
    again = conversations.begin(token, "key:a", NOW + 20)
    assert again == Resumed("new1", TURNS)
    assert ended == []  # it had ended on its own
    # Handed over once: the same token again starts afresh, and says why.
    third = conversations.begin(token, "key:a", NOW + 30)
    assert third.conversation_id == "new2"
    assert third.turns == ()
    assert third.refused is not None
    assert third.refused.code == "resume_expired"


def test_a_live_session_holding_the_conversation_is_ended_and_taken_over() -> None:
    conversations = _directory()
    first = conversations.begin(None, None, NOW)
    ended: list[str] = []
    old = conversations.hold(
        first.conversation_id, None, lambda: TURNS, lambda: ended.append("old")
    )
    token = conversations.tokens.issue(first.conversation_id, None, NOW)
    resumed = conversations.begin(token, None, NOW + 5)
    assert resumed == Resumed(first.conversation_id, TURNS)
    assert ended == ["old"]
    more = (*TURNS, Turn("user", "And New Zealand?"), Turn("assistant", "Wellington."))
    new = conversations.hold(resumed.conversation_id, None, lambda: more, lambda: None)
    # The old session ends after the new one holds the conversation: it parks nothing and
    # leaves the new one's hold alone.
    conversations.release(old, NOW + 6)
    assert len(conversations.parked) == 0
    again = conversations.begin(token, None, NOW + 7)  # a third takeover gets the new turns
    assert again.turns == more
    conversations.release(new, NOW + 8)
    assert len(conversations.parked) == 0


def test_forged_and_foreign_tokens_start_a_new_conversation() -> None:
    conversations = _directory()
    first = conversations.begin(None, "key:a", NOW)
    conversations.hold(first.conversation_id, "key:a", lambda: TURNS, lambda: None)
    token = conversations.tokens.issue(first.conversation_id, "key:a", NOW)
    stolen = conversations.begin(token, "key:b", NOW)
    assert stolen.turns == ()
    assert stolen.refused is not None
    assert stolen.refused.code == "resume_invalid"
    assert conversations.begin("garbage", "key:a", NOW).refused is not None
    # The rightful owner still can.
    assert conversations.begin(token, "key:a", NOW).turns == TURNS


def test_with_no_window_nothing_is_parked() -> None:
    conversations = _directory(window_s=0)
    first = conversations.begin(None, None, NOW)
    holding = conversations.hold(first.conversation_id, None, lambda: TURNS, lambda: None)
    conversations.release(holding, NOW)
    assert len(conversations.parked) == 0
