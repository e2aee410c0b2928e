"""Local AI Gateway: browser microphone → WebRTC → VAD → Whisper → (Ollama) → data channel."""

__version__ = "0.1.0"
