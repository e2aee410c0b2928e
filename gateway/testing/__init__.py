"""Test support shared by ``tests/`` and ``bench/``: a real aiortc client, an
Ollama-compatible server and an OpenAI-compatible speech server. It reads the committed
speech clips from the repository's ``tests/data``, so it works from a checkout (an
editable install), not from a wheel."""
