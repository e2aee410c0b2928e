"""WHIP, the WebRTC-HTTP Ingestion Protocol (RFC 9725): a publisher (OBS, a browser library,
a device) sends its microphone to ``POST /whip`` as a bare SDP offer.

- ``POST /whip`` takes ``application/sdp`` (anything else: 415, naming ``/offer`` for JSON),
  checks the offer as ``/offer`` does (``signalling.offer``), under the same
  authentication (``Authorization: Bearer``), limits and error shapes, and answers
  ``201 Created`` with the answer as ``application/sdp`` and: ``Location: /sessions/<id>``
  (the WHIP session URL, which ``DELETE`` ends); an ``ETag`` naming the ICE session; a
  ``Link`` to the session's Server-Sent Events (:data:`EVENTS_REL`), with its capability
  token; and a ``Link`` ``rel="ice-server"`` for each STUN/TURN URL the client may use
  (``/config``'s ``ice_servers``: TURN with short-lived credentials, RFC 9725 section 4.6).
- The answer is receive-only, as the RFC requires: the gateway sends no audio back, so a
  WHIP session's replies are text only. Transcripts and replies reach the publisher as
  Server-Sent Events (``gateway.http.events``), data channel or not.
- ``OPTIONS /whip`` answers ``Accept-Post: application/sdp``; a CORS preflight gets the
  usual CORS answer (``gateway.http.cors``), which exposes ``Location``, ``ETag`` and
  ``Link`` to pages on allowed origins.
- ``PATCH /sessions/<id>`` (trickle ICE, ICE restart): neither is supported (the gateway
  gathers every candidate before answering, and takes an offer that carries them all), so
  the answer is ``405 Method Not Allowed`` with ``Allow``: RFC 9725 asks ``422`` only of a
  session that supports one of the two, and RFC 9110 makes 405 the answer for a method
  the resource does not support. ``PATCH`` is not among the methods CORS allows either,
  which is how browser WHIP clients (``@eyevinn/whip-web-client``) learn not to trickle.
- ``GET /whip`` and ``GET /sessions/<id>``: 204, as the RFC asks of resources it gives no
  representation.

The events ``Link`` relation: RFC 9725 names this very extension (server-sent events) as
its example, ``urn:ietf:params:whip:ext:example:server-sent-events``; no such extension is
registered yet, so the example's name is used, and clients that know none ignore it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Mapping

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.http import state as keys
from gateway.http.auth import principal_of
from gateway.http.events import events_path
from gateway.http.forwarded import client_address
from gateway.http.middleware import json_error, rate_limited
from gateway.http.relay import client_ice_servers
from gateway.http.sessions import find_session
from gateway.http.webrtc import open_session
from signalling.limits import client_key
from signalling.offer import parse_sdp_offer

SDP = "application/sdp"
EVENTS_REL = "urn:ietf:params:whip:ext:example:server-sent-events"
ENDPOINT_METHODS = "GET, OPTIONS, POST"
SESSION_METHODS = "DELETE, GET, OPTIONS"
_ICE_CREDENTIALS = re.compile(r"^a=ice-(?:ufrag|pwd):(.+?)\r?$", re.MULTILINE)
_URI = re.compile(r"[!#-;=?-\[\]_a-z~]+", re.ASCII)  # no <, >, space, quote or control


# --- pure: the offer in, the headers out ---


def ice_etag(answer: str) -> str:
    """A strong entity-tag for the answer's ICE session (its ICE credentials)."""
    credentials = "\n".join(_ICE_CREDENTIALS.findall(answer)) or answer
    return '"' + hashlib.sha256(credentials.encode("utf-8")).hexdigest()[:32] + '"'


def link(target: str, rel: str, **params: str) -> str:
    """One Link field value (RFC 8288): parameters as quoted strings."""
    quoted = "".join(f'; {name}="{_quote(value)}"' for name, value in params.items())
    return f'<{target}>; rel="{rel}"{quoted}'


def ice_server_links(servers: Iterable[Mapping[str, object]]) -> list[str]:
    """``RTCIceServer`` dictionaries (``/config``'s) as RFC 9725 ``ice-server`` Links."""
    links = []
    for server in servers:
        urls = server.get("urls")
        username, credential = server.get("username"), server.get("credential")
        params = (
            {"username": username, "credential": credential, "credential-type": "password"}
            if isinstance(username, str) and isinstance(credential, str)
            else {}
        )
        for url in [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []:
            if isinstance(url, str) and _URI.fullmatch(url):
                links.append(link(url, "ice-server", **params))
    return links


def answer_headers(
    session_id: str,
    events_token: str,
    answer: str,
    ice_servers: Iterable[Mapping[str, object]] = (),
) -> CIMultiDict[str]:
    """The headers of a ``201 Created`` answer (RFC 9725 section 4.2)."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers[hdrs.CONTENT_TYPE] = SDP
    headers[hdrs.LOCATION] = f"/sessions/{session_id}"
    headers[hdrs.ETAG] = ice_etag(answer)
    # The events Link carries a capability, and the ice-server ones credentials.
    headers[hdrs.CACHE_CONTROL] = "no-store"
    headers.add(hdrs.LINK, link(events_path(session_id, events_token), EVENTS_REL))
    for value in ice_server_links(ice_servers):
        headers.add(hdrs.LINK, value)
    return headers


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


# --- the routes ---


async def publish(request: web.Request) -> web.StreamResponse:
    """``POST /whip``."""
    if request.content_type != SDP:
        raise web.HTTPUnsupportedMediaType(
            reason="POST /whip takes an SDP offer as application/sdp (RFC 9725); "
            "a JSON offer goes to POST /offer"
        )
    app = request.app
    remote = client_address(request)
    wait = app[keys.OFFER_LIMITER].check(client_key(remote), time.monotonic())
    if wait is not None:
        return rate_limited(wait, "too many offers from your address; try again shortly")
    offer = parse_sdp_offer(await request.read())  # OfferTooLarge: 413
    session, answer = await open_session(
        app, offer, remote, principal=principal_of(request), receive_only=True
    )
    ice_servers = client_ice_servers(request, time.time())
    headers = answer_headers(session.id, session.events_token, answer, ice_servers)
    return web.Response(status=201, body=answer.encode("utf-8"), headers=headers)


async def endpoint_options(request: web.Request) -> web.StreamResponse:
    """``OPTIONS /whip`` that is not a CORS preflight (those are the CORS middleware's)."""
    return web.Response(status=200, headers={"Accept-Post": SDP, hdrs.ALLOW: ENDPOINT_METHODS})


async def no_content(request: web.Request) -> web.StreamResponse:
    """``GET /whip``: the endpoint has no representation."""
    return web.Response(status=204)


async def session_resource(request: web.Request) -> web.StreamResponse:
    """``GET /sessions/<id>``: 204 for its owner, 404 for anyone else."""
    find_session(request)
    return web.Response(status=204)


async def patch_session(request: web.Request) -> web.StreamResponse:
    """``PATCH /sessions/<id>``: trickle ICE and ICE restarts are not supported."""
    find_session(request)  # 404 first: another principal learns nothing
    return json_error(
        405,
        "method_not_allowed",
        "this gateway supports neither trickle ICE nor ICE restarts: send an offer that "
        "carries every candidate (wait for ICE gathering to complete), and to restart, "
        "DELETE this session and POST a new offer",
        {hdrs.ALLOW: SESSION_METHODS},
    )
