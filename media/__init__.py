"""Audio in: track frames → 16 kHz mono → VAD endpointing → utterances → ASR."""

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]  # audio samples in [-1, 1], mono
Int16Array = npt.NDArray[np.int16]  # PCM samples as they go to and come from codecs
