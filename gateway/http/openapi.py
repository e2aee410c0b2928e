"""``GET /openapi.json``: the HTTP routes described in OpenAPI 3.1, for client generators and
people reading the API. Pure: built from the configuration, so that it says whether a
bearer token is needed. The test suite checks it against the app's router, so a route added
without a description (or a description left after its route) fails there.

WebSocket and data-channel messages are not HTTP operations; ``/ws`` is listed for its
handshake, and its messages are in the README and DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway import __version__
from gateway.http.auth import OPEN_PATHS
from gateway.ops.config import Config

Operation = dict[str, Any]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_ANSWER = {
    "type": "object",
    "required": ["sdp", "type", "session_id"],
    "properties": {
        "sdp": {"type": "string"},
        "type": {"const": "answer"},
        "session_id": {"type": "string"},
        "events_token": {
            "type": "string",
            "description": "reads this session's events: /sessions/<id>/events?token=",
        },
    },
}
_OFFER = {
    "type": "object",
    "required": ["sdp", "type"],
    "properties": {
        "sdp": {"type": "string", "description": "after ICE gathering completed (no trickle)"},
        "type": {"const": "offer"},
        "session": {
            "type": "object",
            "description": "overrides for this session",
            "additionalProperties": False,
            "properties": {
                "language": {"type": "string"},
                "system_prompt": {"type": "string"},
                "tts": {"type": "boolean"},
                "voice": {"type": "string"},
                "echo_cancellation": {"type": "boolean"},
                "conversation": {
                    "type": "string",
                    "description": "the token from an earlier session.ready, to continue "
                    "that conversation",
                },
            },
        },
    },
}
_OK = {"type": "object", "properties": {"ok": {"const": True}}}
_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "/sessions/<id>"}}
_SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _op(summary: str, responses: Mapping[str, Any], **more: Any) -> Operation:
    return {"summary": summary, "responses": dict(responses), **more}


def _operations(auth: bool) -> dict[str, dict[str, Operation]]:
    """path → method → operation, for every route the app serves."""
    retry = {"Retry-After": {"schema": {"type": "integer"}}}
    busy = {**_error("at the session limit, or shutting down"), "headers": retry}
    page = "The built-in page"
    paths: dict[str, dict[str, Operation]] = {
        "/": {"get": _op(page, {"200": _text("text/html", "the page")})},
        "/app.js": {"get": _op(f"{page}'s script", {"200": _text("text/javascript", "")})},
        "/app.css": {"get": _op(f"{page}'s style sheet", {"200": _text("text/css", "")})},
        "/gateway-client.js": {
            "get": _op("The browser client (ES module)", {"200": _text("text/javascript", "")})
        },
        "/health": {"get": _op("Liveness", {"200": _json(_OK, "alive")})},
        "/ready": {
            "get": _op(
                "Readiness: the ASR model, Ollama and its model, not shutting down",
                {
                    "200": _json({"type": "object"}, "ready, with each check"),
                    "503": _json({"type": "object"}, "not ready, with each check and why"),
                },
            )
        },
        "/config": {
            "get": _op(
                "What a client needs: protocol version, ICE servers (TURN credentials for an "
                "authenticated client), features",
                {"200": _json({"type": "object"}, "the client configuration")},
            )
        },
        "/metrics": {"get": _op("Prometheus metrics", {"200": _text("text/plain", "")})},
        "/offer": {
            "post": _op(
                "Open a WebRTC session from an SDP offer",
                {
                    "200": {**_json(_ANSWER, "the answer"), "headers": _LOCATION},
                    "400": _error("a bad offer, named"),
                    "413": _error("too large"),
                    "415": _error("not application/json"),
                    "429": {**_error("too many offers or sessions from here"), "headers": retry},
                    "503": busy,
                },
                requestBody={"required": True, "content": {"application/json": {"schema": _OFFER}}},
            )
        },
        "/whip": {
            "post": _op(
                "WHIP (RFC 9725): open a receive-only session from a bare SDP offer",
                {
                    "201": {
                        **_text("application/sdp", "the answer"),
                        "headers": {
                            **_LOCATION,
                            "ETag": {"schema": {"type": "string"}},
                            "Link": {
                                "schema": {"type": "string"},
                                "description": "the events (server-sent-events) and ICE servers",
                            },
                        },
                    },
                    "400": _error("a bad offer, named"),
                    "413": _error("too large"),
                    "415": _error("not application/sdp"),
                    "429": {**_error("too many offers or sessions from here"), "headers": retry},
                    "503": busy,
                },
                requestBody={
                    "required": True,
                    "content": {"application/sdp": {"schema": {"type": "string"}}},
                },
            ),
            "options": _op(
                "What the WHIP endpoint takes",
                {"200": {"description": "Accept-Post: application/sdp"}},
            ),
            "get": _op("The WHIP endpoint (no representation)", {"204": {"description": ""}}),
        },
        "/sessions/{session_id}": {
            "delete": _op(
                "End a session",
                {"204": {"description": "ended"}, "404": _error("no such session")},
                parameters=[_SESSION_ID],
            ),
            "get": _op(
                "The session (no representation)",
                {"204": {"description": "it exists"}, "404": _error("no such session")},
                parameters=[_SESSION_ID],
            ),
            "patch": _op(
                "WHIP trickle ICE or ICE restart: not supported",
                {
                    "405": _error("not supported (Allow says what is)"),
                    "404": _error("no such session"),
                },
                parameters=[_SESSION_ID],
            ),
        },
        "/sessions/{session_id}/events": {
            "get": _op(
                "The session's events as Server-Sent Events (Last-Event-ID resumes)",
                {
                    "200": _text("text/event-stream", "the events, each with its id"),
                    "400": _error("a Last-Event-ID that is not this session's"),
                    "404": _error("no such session, or not yours"),
                    "429": _error("too many streams for this session"),
                },
                parameters=[
                    _SESSION_ID,
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "the answer's events_token, instead of credentials",
                    },
                ],
            )
        },
        "/ws": {
            "get": _op(
                "WebSocket: the data channel's JSON events, and binary PCM s16le mono audio",
                {
                    "101": {"description": "switching protocols"},
                    "403": _error("an origin that is not allowed"),
                    "503": busy,
                },
            )
        },
        "/openapi.json": {"get": _op("This description", {"200": _json({"type": "object"}, "")})},
    }
    if auth:
        ticket = {"type": "object", "properties": {"ticket": {"type": "string"}}}
        paths["/ws-ticket"] = {
            "post": _op(
                "A single-use ticket for /ws, for a browser that cannot send a header",
                {"200": _json(ticket, "the ticket"), "429": _error("too many tickets")},
            )
        }
    return paths


def openapi(config: Config) -> dict[str, Any]:
    """The description of this gateway's HTTP routes, as configured."""
    auth = config.auth != "none"
    paths = _operations(auth)
    if auth:
        for path, operations in paths.items():
            if path in OPEN_PATHS:
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation["responses"].setdefault("401", _error("no or a bad credential"))
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Local AI Gateway",
            "version": __version__,
            "description": "Talk to your own AI: WebRTC or WebSocket audio in, transcripts "
            "and streamed answers out.",
        },
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }
    if auth:
        document["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key" if config.auth == "api-key" else "a JWT",
            }
        }
    return document
