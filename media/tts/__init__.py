"""Audio out: turning a streamed reply into speech (see ``speakable``)."""
