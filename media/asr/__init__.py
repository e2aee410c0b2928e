"""Speech recognisers behind one interface (``media.asr.base.ASREngine``)."""
