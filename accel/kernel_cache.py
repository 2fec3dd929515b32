"""The cache of compiled kernels: a library is loaded only if this user built it, from this source, with these flags.

Loading a shared library runs its code, so a `.so` in the cache is as trusted as the program itself. The
cache (``~/.cache/scratch-lm/kernels/``, or ``SCRATCH_LM_KERNEL_CACHE``) uses predictable names, so without
checks anyone who can write there -- or a file left behind by an interrupted build -- decides what runs. Here:

- the cache directory is created private (0700); an existing one must be owned by this user and not writable
  by group or others, else it is not used at all (PyTorch's operations run instead);
- next to each library, a record written at build time holds the SHA-256 of the source and the compiler
  command, and of the library's bytes;
- a library is loaded only if it is a regular file owned by this user, not writable by others, and both hashes
  match; otherwise it is rebuilt, with a one-line notice saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

CommandFor = Callable[[Path, Path], list[str]]  # (source, output library) -> the compiler's argv


def notice(message: str) -> None:
    print(f"scratch-lm: {message}", file=sys.stderr)


def cached_build(source: Path, command_for: CommandFor, cache_dir: Path) -> Path | None:
    """The path of a trusted library built from `source`, compiling it (once) if needed; None when the cache
    directory cannot be trusted (the caller then uses PyTorch's operations). Raises OSError /
    CalledProcessError when compiling fails."""
    problem = private_directory(cache_dir)
    if problem:
        notice(f"not using compiled kernels: the kernel cache {cache_dir} {problem}; PyTorch's operations run "
               f"instead (fix: chmod 700 {cache_dir}, or set SCRATCH_LM_KERNEL_CACHE to a private folder)")
        return None
    key = build_key(source, command_for(source, Path("OUTPUT")))
    library = cache_dir / f"{source.stem}-{key[:16]}.so"
    if library.exists() or library.is_symlink():
        problem = untrusted(library, key)
        if problem is None:
            return library
        notice(f"rebuilding {library.name}: the cached library {problem}")
    compile_into(source, command_for, library, key)
    return library


def private_directory(path: Path) -> str | None:
    """Create `path` private to this user (0700), or say why an existing one is not private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (a symbolic link?)"
    if info.st_uid != os.getuid():
        return f"is owned by another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return None


def build_key(source: Path, command: list[str]) -> str:
    """SHA-256 of what decides the library's code: the source, the compiler command, torch's version."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(json.dumps([command, torch.__version__]).encode())
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(library: Path) -> Path:
    return library.with_suffix(".json")


def untrusted(library: Path, key: str) -> str | None:
    """Why `library` must not be loaded, or None when it is the one this user built for `key`."""
    for path in (library, record_path(library)):
        if not path.exists():
            return "has no build record (not built here)"
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            return f"{path.name} is not a regular file"
        if info.st_uid != os.getuid():
            return f"{path.name} is owned by another user (uid {info.st_uid})"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return f"{path.name} is writable by other users"
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return "has an unreadable build record"
    if not isinstance(record, dict) or record.get("build_key") != key:
        return "was built from another source or with other flags"
    if record.get("library_sha256") != file_hash(library):
        return "differs from the library that was built (changed or truncated since)"
    return None


def compile_into(source: Path, command_for: CommandFor, library: Path, key: str) -> None:
    """Compile into a private temporary name, record the hashes, then move both into place (atomic renames:
    a concurrent build or an interrupted one never leaves a half-written library under the final name)."""
    notice(f"compiling {source.name} once for this machine (about 15 s)...")
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        partial = Path(scratch) / library.name
        subprocess.run(command_for(source, partial), check=True, capture_output=True, text=True)
        os.chmod(partial, 0o700)
        record = Path(scratch) / record_path(library).name
        record.write_text(json.dumps({"source": source.name, "build_key": key,
                                      "library_sha256": file_hash(partial)}))
        os.chmod(record, 0o600)
        for path in (library, record_path(library)):  # an untrusted leftover may be a link or a folder
            if path.is_symlink() or path.is_file():
                path.unlink()
        os.replace(record, record_path(library))
        os.replace(partial, library)
