"""The kernel cache (accel/kernel_cache.py) loads only libraries this user built from this source and flags.

Each case plants or spoils a file in a fresh cache folder and checks what cached_build hands back: the library
it builds itself (a tiny C function answering 42, called through ctypes) and a one-line notice -- never the
planted library, whose constructor would leave a marker file if it were ever loaded.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from accel.kernel_cache import cached_build

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")

GOOD = 'extern "C" int scratch_lm_answer() { return 42; }\n'
PLANTED = """#include <fstream>
extern "C" int scratch_lm_answer() { return 666; }
__attribute__((constructor)) static void planted() { std::ofstream("MARKER") << "ran"; }
"""


def command_for(source: Path, output: Path) -> list[str]:
    return ["g++", str(source), "-o", str(output), "-shared", "-fPIC", "-O1"]


@pytest.fixture
def setup(tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text(GOOD)
    return source, tmp_path / "cache"


def answer(library: Path) -> int:
    return ctypes.CDLL(str(library)).scratch_lm_answer()


def plant(path: Path, marker: Path) -> None:
    evil = path.parent.parent / "evil.cpp"
    evil.write_text(PLANTED.replace("MARKER", str(marker)))
    subprocess.run(command_for(evil, path), check=True)


def test_first_build_is_private_and_recorded_then_reused(setup, capsys):
    source, cache = setup
    library = cached_build(source, command_for, cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and answer(library) == 42
    assert library.with_suffix(".json").is_file()
    assert capsys.readouterr().err == "scratch-lm: compiling tiny.cpp once for this machine (about 15 s)...\n"
    built = library.stat().st_mtime_ns
    assert cached_build(source, command_for, cache) == library and library.stat().st_mtime_ns == built
    assert capsys.readouterr().err == ""  # trusted: loaded as it is
    source.write_text(GOOD + "// changed\n")
    assert cached_build(source, command_for, cache) != library  # another source: another library


def spoil_with_planted(library: Path, tmp_path: Path) -> None:
    library.with_suffix(".json").unlink()
    library.unlink()
    plant(library, tmp_path / "marker")


def spoil_emptied(library: Path, tmp_path: Path) -> None:
    library.write_bytes(b"")


def spoil_writable(library: Path, tmp_path: Path) -> None:
    os.chmod(library, 0o777)


def spoil_symlink(library: Path, tmp_path: Path) -> None:
    plant(tmp_path / "elsewhere.so", tmp_path / "marker")
    library.unlink()
    library.symlink_to(tmp_path / "elsewhere.so")


def spoil_swapped(library: Path, tmp_path: Path) -> None:  # planted under the name, record left as it was
    library.unlink()
    plant(library, tmp_path / "marker")


@pytest.mark.parametrize("spoil, why", [
    (spoil_with_planted, "has no build record (not built here)"),
    (spoil_emptied, "differs from the library that was built (changed or truncated since)"),
    (spoil_swapped, "differs from the library that was built"),
    (spoil_writable, "is writable by other users"),
    (spoil_symlink, "is not a regular file"),
], ids=["planted", "emptied", "swapped", "writable", "symlink"])
def test_an_untrusted_library_is_rebuilt_never_loaded(setup, tmp_path, capsys, spoil, why):
    source, cache = setup
    library = cached_build(source, command_for, cache)
    spoil(library, tmp_path)
    capsys.readouterr()
    again = cached_build(source, command_for, cache)
    err = capsys.readouterr().err
    assert err.startswith(f"scratch-lm: rebuilding {library.name}: the cached library") and why in err, err
    assert again == library and answer(again) == 42 and not (tmp_path / "marker").exists()
    assert stat.S_ISREG(again.lstat().st_mode) and not again.stat().st_mode & 0o022


def test_a_cache_folder_others_can_write_is_not_used(setup, capsys):
    source, cache = setup
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    assert cached_build(source, command_for, cache) is None
    err = capsys.readouterr().err
    assert err == (f"scratch-lm: not using compiled kernels: the kernel cache {cache} is writable by other users; "
                   f"PyTorch's operations run instead (fix: chmod 700 {cache}, or set SCRATCH_LM_KERNEL_CACHE to a "
                   "private folder)\n")
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_cache_folder_of_another_user_is_not_used(setup, capsys):
    source, cache = setup
    cache.mkdir(mode=0o700)
    os.chown(cache, 65534, 65534)
    assert cached_build(source, command_for, cache) is None
    assert "is owned by another user (uid 65534)" in capsys.readouterr().err


LOAD = """
import sys
from pathlib import Path
from accel.matvec import compile_command, load_kernel
print(load_kernel(Path(sys.argv[1]), "SCRATCH_LM_TEST_SWITCH"))
"""


@pytest.mark.parametrize("spoil", ["planted", "empty"])
def test_the_kernel_loader_never_loads_a_planted_library(tmp_path, spoil):
    """Through accel/matvec.py's load_kernel (the loader of matvec.cpp and entropy.cpp), in a fresh process: a
    library planted under the name the cache uses, or an empty one there, is rebuilt before anything is loaded."""
    import sys

    from accel.kernel_cache import build_key
    from accel.matvec import compile_command, cpu_can_run_it

    if not cpu_can_run_it():
        pytest.skip("load_kernel runs only on an AVX2 CPU")
    source, cache, marker = tmp_path / "tiny.cpp", tmp_path / "cache", tmp_path / "marker"
    source.write_text(GOOD)
    cache.mkdir(mode=0o700)
    name = f"tiny-{build_key(source, compile_command(source, Path('OUTPUT')))[:16]}.so"
    if spoil == "planted":
        plant(cache / name, marker)
    else:
        (cache / name).write_bytes(b"")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", LOAD, str(source)], capture_output=True, text=True, timeout=300,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root), "SCRATCH_LM_KERNEL_CACHE": str(cache)})
    assert run.stdout.strip() == "True", run.stderr
    assert f"scratch-lm: rebuilding {name}: the cached library has no build record (not built here)" in run.stderr
    assert not marker.exists() and answer(cache / name) == 42
