"""Signalling: SDP offer/answer with aiortc, sessions and their lifecycle, ICE configuration
and the message protocol."""
