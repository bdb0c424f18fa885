"""Reading MANO-format model files (.pkl or .npz) without running foreign code.

The official MANO pickles hold chumpy arrays; chumpy is unmaintained (broken on Python 3.11 and
numpy >= 1.24) and, more to the point, unpickling runs whatever classes a file names. The
restricted unpickler below resolves only numpy/scipy array classes and turns chumpy objects into
plain numpy arrays; any other class is refused.
"""

from __future__ import annotations

import io
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}
_SPARSE = {"csc_matrix", "csr_matrix"}   # MANO's J_regressor; both can check their index arrays


class _ChumpyArray:
    """Stands in for any chumpy object; keeps only its value."""

    def __init__(self, *args, **kwargs) -> None:
        self.value = None

    def __setstate__(self, state) -> None:
        self.value = state.get("x") if isinstance(state, dict) else None


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return _ChumpyArray
        if (module, name) in _ALLOWED:
            import importlib
            return getattr(importlib.import_module(module), name)
        if module.startswith("scipy.sparse") and name in _SPARSE:
            import scipy.sparse
            return getattr(scipy.sparse, name)
        raise _Refused(f"refuses to load class {module}.{name} (a pickle is code)")


def _to_numpy(value):
    if isinstance(value, _ChumpyArray):
        if value.value is None:
            raise ValueError("a chumpy object without a value")
        return np.asarray(value.value)
    if hasattr(value, "toarray"):  # scipy sparse
        # Its index arrays come from the file: toarray trusts them and reads out of bounds (a crash)
        # where they are wrong, so they are checked first.
        value.check_format(full_check=True)
        return value.toarray()
    return value


def npz_arrays(raw: bytes) -> dict[str, np.ndarray]:
    """The arrays of an .npz file's bytes, never unpickling; ValueError for anything else (numpy's
    own message for a file that is no zip blames pickled data and suggests loading it unsafely)."""
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        raise ValueError("not a zip archive")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as err:   # zlib: a damaged compressed member
        raise ValueError(str(err)) from None


def read_model_arrays(path: Path) -> dict:
    """Arrays of a MANO-format file, chumpy and sparse values turned into numpy. Raises ValueError."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read the model file ({err.strerror or err})") from None
    if path.suffix == ".npz":
        try:
            return npz_arrays(raw)
        except ValueError as err:
            raise ValueError(f"{path}: not a readable .npz model ({err})") from None
    if path.suffix == ".pkl":
        try:
            data = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
        except _Refused as err:
            raise ValueError(f"{path}: {err}") from None
        except Exception as err:   # damaged bytes raise any kind; the unpickler above runs no code
            raise ValueError(f"{path}: not a readable MANO pickle ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a MANO pickle holds a dict, this one a {type(data).__name__}")
        try:
            return {k: _to_numpy(v) for k, v in data.items()}
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        except Exception as err:   # a sparse matrix missing its arrays, say
            raise ValueError(f"{path}: not a readable MANO pickle ({type(err).__name__}: {err})") from None
    raise ValueError(f"{path}: unknown model format (expected .pkl or .npz)")
