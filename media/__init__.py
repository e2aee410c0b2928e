"""Audio in: track frames → 16 kHz mono → VAD endpointing → utterances → ASR."""
