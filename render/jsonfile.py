"""Reading the small JSON files the tools exchange (manifests, capture.json, camera and training
configs): one path, so that a missing, binary, malformed or non-object file always gives one error
that names the file, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_object(path: str | Path, what: str) -> dict:
    """The JSON object in `path`; ValueError "PATH: cannot read WHAT (...)" or "PATH: WHAT must
    be a JSON object" otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read {what} ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a JSON object")
    return data
