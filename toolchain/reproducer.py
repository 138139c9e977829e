"""Reproducers for internal errors: what is needed to rerun the failing command (as MLIR does)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path


def write_reproducer(exc: BaseException, request, argv: list[str]) -> str:
    data = {
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__),
        "argv": list(argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if request is not None:
        data["request"] = {key: (str(value) if value is not None else None) for key, value in vars(request).items()}
        try:
            from mcc.toolchain import ir

            model = ir.load_model(request.model_path)
            data["model_sha256"] = ir.content_hash(model)
        except Exception as load_error:  # the reproducer must be written whatever the model is
            data["model_sha256"] = f"unavailable ({type(load_error).__name__})"
        if request.passes is None:
            from mcc.toolchain.pipeline import NAMED_PIPELINES

            data["pipeline"] = NAMED_PIPELINES["default"]
        else:
            data["pipeline"] = request.passes
    try:
        from importlib.metadata import version

        data["mcc_version"] = version("mcc")
    except Exception:
        data["mcc_version"] = "unknown"
    directory = Path(os.environ.get("MCC_CRASH_DIR", tempfile.gettempdir()))
    directory.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="mcc-crash-", suffix=".json", dir=directory)
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2, default=str)
    return path
