"""TenPak from Python: open ``.tnpk`` artifacts (compressed, signed, range-streamed LLM
weights) from a file or an http(s) URL and load their tensors into torch.

    import tenpak
    art = tenpak.open("https://host/model.tnpk", key="publisher.pub")
    layer0 = art.load(layers=[0], device="cpu")          # only layer 0's chunks are fetched
    model.load_state_dict(tenpak.load_state_dict("model.tnpk", dtype=torch.bfloat16))

Every chunk is checked against its sha256 before it is decoded; with ``key=`` the
artifact's ed25519 signature is checked before its manifest is read. A fine-tune packed
as a delta opens with its base (``base=``) and loads as the fine-tune.

Decoding runs in Rust with the GIL released, on all cores; each tensor is written once,
straight into a buffer that torch wraps without copying (``torch.frombuffer``).
``device="cuda"``: a wheel built with CUDA (``tenpak.HAS_CUDA``) uploads the encoded
chunks and decodes them on GPU 0 with tenpak's kernels, handing the memory to torch by
DLPack; otherwise each tensor is decoded on the CPU and copied.

Errors are typed: :class:`SignatureError`, :class:`IntegrityError` (a corrupt chunk),
:class:`FormatError`, :class:`MissingBaseError`, :class:`WrongBaseError`,
:class:`FetchError`, :class:`TensorNotFoundError`, all subclasses of :class:`TenpakError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ._tenpak import (  # noqa: F401  (re-exported)
    HAS_CUDA,
    Artifact as _Artifact,
    FetchError,
    FormatError,
    IntegrityError,
    MissingBaseError,
    SignatureError,
    TenpakError,
    TensorNotFoundError,
    WrongBaseError,
    __version__,
)

__all__ = [
    "open",
    "load_state_dict",
    "Artifact",
    "TensorInfo",
    "TenpakError",
    "SignatureError",
    "IntegrityError",
    "FormatError",
    "MissingBaseError",
    "WrongBaseError",
    "FetchError",
    "TensorNotFoundError",
    "__version__",
]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of an artifact, as its manifest lists it."""

    name: str
    shape: Tuple[int, ...]
    dtype: str
    encoding: str
    layer: Optional[int]
    encoded_bytes: int


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tenpak's load() returns torch tensors: pip install torch "
            "(or use Artifact.load_bytes for raw little-endian buffers)"
        ) from e
    return torch


def _dtype_name(dtype) -> Optional[str]:
    if dtype is None:
        return None
    if isinstance(dtype, str):
        return {"bfloat16": "bf16", "float16": "f16", "half": "f16", "float32": "f32", "float": "f32"}.get(
            dtype, dtype
        )
    torch = _torch()
    names = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
    if dtype not in names:
        raise ValueError(f"dtype {dtype}: use torch.bfloat16, torch.float16 or torch.float32")
    return names[dtype]


class Artifact:
    """A ``.tnpk`` opened by :func:`open`."""

    def __init__(self, inner: _Artifact):
        self._a = inner

    @property
    def location(self) -> str:
        return self._a.location

    @property
    def digest(self) -> str:
        """The artifact's digest (sha256 of its manifest)."""
        return self._a.digest

    @property
    def base_digest(self) -> Optional[str]:
        """The base's digest, for a delta opened with its base."""
        return self._a.base_digest

    @property
    def metadata(self) -> Dict[str, str]:
        return self._a.metadata()

    @property
    def tensors(self) -> List[TensorInfo]:
        return [TensorInfo(n, tuple(s), d, e, l, b) for (n, s, d, e, l, b) in self._a.tensors()]

    @property
    def files(self) -> List[str]:
        """Side files (config.json, tokenizer.json, ...)."""
        return self._a.files()

    def read_file(self, name: str) -> bytes:
        return self._a.read_file(name)

    @property
    def config(self) -> dict:
        """``config.json``, parsed."""
        return json.loads(self.read_file("config.json"))

    @property
    def bytes_fetched(self) -> int:
        """Bytes read from the file or fetched over HTTP so far."""
        return self._a.bytes_fetched()

    @property
    def size(self) -> int:
        return self._a.size()

    def names(self, layers: Optional[Iterable[int]] = None) -> List[str]:
        ls = None if layers is None else set(layers)
        return [t.name for t in self.tensors if ls is None or t.layer in ls]

    def load_bytes(
        self,
        names: Optional[Sequence[str]] = None,
        layers: Optional[Iterable[int]] = None,
        dtype: Union[str, None] = None,
    ) -> List[Tuple[str, Tuple[int, ...], str, bytearray]]:
        """Like :meth:`load`, without torch: (name, shape, dtype, little-endian bytes)."""
        if isinstance(names, str):
            names = [names]
        return self._a.load(
            None if names is None else list(names),
            None if layers is None else [int(l) for l in layers],
            _dtype_name(dtype),
        )

    def load(
        self,
        names: Optional[Sequence[str]] = None,
        layers: Optional[Iterable[int]] = None,
        device: str = "cpu",
        dtype=None,
    ):
        """Fetches, verifies and decodes the tensors named by ``names`` (exact names or
        globs such as ``"model.layers.0.*"``) and/or of ``layers`` (transformer layer
        numbers); all of them when both are None. Returns ``{name: torch.Tensor}`` in
        ``dtype`` (``torch.bfloat16``, ``torch.float16``, ``torch.float32``; None: each
        tensor's own dtype) on ``device``."""
        torch = _torch()
        tdt = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
        if str(device) in ("cuda", "cuda:0") and HAS_CUDA and self.base_digest is None:
            # Decoded on the GPU (tenpak's kernels), handed over by DLPack: no copy.
            from torch.utils.dlpack import from_dlpack

            if isinstance(names, str):
                names = [names]
            loaded = self._a.load_cuda(
                None if names is None else list(names),
                None if layers is None else [int(l) for l in layers],
                _dtype_name(dtype),
            )
            return {name: from_dlpack(cap) for name, cap in loaded}
        out = {}
        for name, shape, dt, buf in self.load_bytes(names, layers, dtype):
            if len(buf) == 0:
                t = torch.empty(tuple(shape), dtype=tdt[dt])
            else:
                # Shares the bytearray's memory: no copy.
                t = torch.frombuffer(buf, dtype=tdt[dt]).view(tuple(shape))
            if device != "cpu":
                t = t.to(device)
            out[name] = t
        return out

    def __repr__(self) -> str:
        kind = f"delta on {self.base_digest}" if self.base_digest else "model"
        return f"<tenpak.Artifact {self.location} {self.digest} ({kind}, {len(self._a.tensors())} tensors)>"


def open(
    path_or_url: str,
    key: Optional[str] = None,
    base: Optional[str] = None,
    parallel: int = 4,
) -> Artifact:
    """Opens a ``.tnpk`` file or http(s) URL (served with Range support: the Hub's
    ``resolve`` URLs, the registry, any static host). ``key``: a public key file
    (``KEY.pub`` from ``tenpak keygen``) the artifact must be signed by. ``base``: the
    base artifact (file or URL) of a delta. ``parallel``: concurrent range requests."""
    return Artifact(_Artifact(str(path_or_url), key=None if key is None else str(key), base=None if base is None else str(base), parallel=parallel))


def load_state_dict(
    path_or_url: str,
    key: Optional[str] = None,
    base: Optional[str] = None,
    device: str = "cpu",
    dtype=None,
    names: Optional[Sequence[str]] = None,
    layers: Optional[Iterable[int]] = None,
):
    """Every tensor (or those selected) as a state dict for ``model.load_state_dict``."""
    return open(path_or_url, key=key, base=base).load(names=names, layers=layers, device=device, dtype=dtype)
