"""Versioned, code-free model artifacts under ``<warehouse>/models/<model>/<version>/``.

An artifact directory holds only data: tensors as safetensors, everything else as
JSON (config, normalisation statistics, thresholds, metrics) and a ``manifest.json``
written last. Loading one never executes code from it (no pickle anywhere).

Versions are content-addressed: ``<last training night>-<sha256[:10]>`` of the model
name, training nights, configuration and code version. Training the same model on the
same nights with the same configuration yields the same version, so a rerun reuses the
artifact instead of writing a second one, and a new configuration never overwrites an
old model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where tensors are saved or loaded, not by every reader of versions
    import torch

MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """The git commit of this checkout (``+dirty`` when modified), or the package version."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no",
             "--", "pipeline", "models"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "pkg-" + version("pcap-anomaly-pipeline")
        except PackageNotFoundError:
            return "unknown"


def model_version(model: str, train_dates: list[str], config: dict) -> str:
    """Content-addressed version string, e.g. ``2026-01-02-3f9a0c1b2d``.

    The code version is deliberately not hashed in (a comment change must not force
    retraining); it is recorded in the manifest instead.
    """
    payload = json.dumps(
        {"model": model, "train_dates": sorted(train_dates), "config": config},
        sort_keys=True, default=str,
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{max(train_dates)}-{digest}"


def models_root(warehouse: str | os.PathLike, model: str) -> Path:
    return Path(warehouse) / "models" / model


def artifact_dir(warehouse: str | os.PathLike, model: str, version: str) -> Path:
    return models_root(warehouse, model) / version


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_artifact(
    warehouse: str | os.PathLike,
    model: str,
    version: str,
    writer: Callable[[Path], dict],
    manifest_extra: dict | None = None,
) -> Path:
    """Create ``models/<model>/<version>/`` atomically with ``writer(staging_dir)``.

    ``writer`` writes its files into the directory it is given and returns a JSON-able
    dict (training metrics) stored in the manifest. When the version already exists
    complete, nothing is written and its path is returned (idempotent reruns).
    """
    final = artifact_dir(warehouse, model, version)
    if is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{version}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        metrics = writer(staging)
        manifest = {
            "model": model,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "metrics": metrics or {},
            **(manifest_extra or {}),
        }
        save_json(staging / MANIFEST, manifest)
        if final.exists():  # an incomplete leftover of a crashed run
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def list_versions(warehouse: str | os.PathLike, model: str) -> list[dict]:
    """Manifests of every complete version, oldest first (by ``created_at``)."""
    root = models_root(warehouse, model)
    if not root.is_dir():
        return []
    manifests = [load_json(p / MANIFEST) for p in root.iterdir() if is_complete(p)]
    return sorted(manifests, key=lambda m: (m["created_at"], m["version"]))


def latest_version(warehouse: str | os.PathLike, model: str) -> dict | None:
    """Manifest of the newest complete version, or ``None``."""
    versions = list_versions(warehouse, model)
    return versions[-1] if versions else None


def require_version(warehouse: str | os.PathLike, model: str, version: str) -> Path:
    """Path of a pinned version; ``FileNotFoundError`` listing the known ones otherwise."""
    path = artifact_dir(warehouse, model, version)
    if not is_complete(path):
        known = [m["version"] for m in list_versions(warehouse, model)]
        raise FileNotFoundError(f"{model} model version {version!r} not found in {path.parent}; known: {known}")
    return path


def save_json(path: str | os.PathLike, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def load_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Save tensors (e.g. a ``state_dict``) as safetensors; copies to contiguous CPU."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load safetensors: plain tensors only, no code is executed."""
    from safetensors.torch import load_file

    return load_file(str(path), device=device)
