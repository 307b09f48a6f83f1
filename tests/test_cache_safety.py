"""The cache directory and every cache in it: private, never followed through planted links,
and no damaged, full or unusable cache may run code, crash the process, fail a call or lose
perf-db records (issue 12)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
import pytest

import convflow
from convflow import cachedir, config, perfdb
from convflow.errors import CacheError, CacheWarning, ConfigError

NOBODY = 65534
# Variables that would move a library's cache out of CONVFLOW_CACHE_DIR (the suite sets some).
_CACHE_VARIABLES = ("NUMBA_CACHE_DIR", "POCL_CACHE_DIR", "XDG_CACHE_HOME", "PYOPENCL_NO_CACHE")

# A 2-D problem small enough to compile and run in a second; all ones, so every output
# inside is 9 and the corners with padding=1 are 4.
CALL = textwrap.dedent("""
    import sys, warnings, numpy as np, convflow
    warnings.simplefilter("always")
    x = np.ones((1, 1, 4, 4), np.float32); w = np.ones((1, 1, 3, 3), np.float32)
    for backend in sys.argv[1].split(","):
        status = convflow.available_backends()[backend]
        if not status.available:
            print(backend, "unavailable:", status.reason)
            continue
        y = convflow.conv2d(x, w, padding=1, backend=backend, algorithm=sys.argv[2] if
                            len(sys.argv) > 2 and backend == "opencl" else None)
        print(backend, y.ravel().tolist())
""")
GOOD = "[4.0, 6.0, 6.0, 4.0, 6.0, 9.0, 9.0, 6.0, 6.0, 9.0, 9.0, 6.0, 4.0, 6.0, 6.0, 4.0]"


def run_convflow(cache: pathlib.Path | str, backends: str = "numba", *extra: str,
                 cwd: pathlib.Path | None = None, home: pathlib.Path | None = None,
                 **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    environment.update(CONVFLOW_CACHE_DIR=str(cache), **env)
    if home is not None:
        environment["HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", CALL, backends, *extra], capture_output=True,
                          text=True, env=environment, cwd=cwd, timeout=600)


def as_nobody(script: str, stdin: bytes = b"") -> None:
    """Run a shell script as user nobody (the other user of these tests)."""
    subprocess.run(["/bin/sh", "-ec", script], input=stdin, check=True, timeout=60,
                   preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))


def opencl_or_skip() -> None:
    from conftest import require_backend

    require_backend("opencl")


@pytest.fixture
def sticky_base():
    """A root-owned, world-writable, sticky directory like /tmp, where nobody can make things."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="convflow-trust-"))
    base.chmod(0o1777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_trust(monkeypatch):
    """Trust decisions and perf-dbs made fresh for the test (and forgotten after it)."""
    cachedir.forget()
    perfdb._databases.clear()
    yield
    cachedir.forget()
    perfdb._databases.clear()


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 KiB tmpfs (a disk that fills at once, or a file system that can be made
    read-only); skipped where mounting is not allowed."""
    mounts = []

    def mount(size: str = "64k") -> pathlib.Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                                 str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill(directory: pathlib.Path) -> None:
    """Take every free byte of *directory*'s file system."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def remount_read_only(point: pathlib.Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)


# The trust decision ----------------------------------------------------------------------
def test_a_fresh_cache_directory_is_made_private(tmp_path, monkeypatch, fresh_trust):
    target = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(target))
    decision = cachedir.trust()
    assert decision.trusted and decision.path == target, decision
    for path in (tmp_path / "a", tmp_path / "a" / "b", target):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_a_root_owned_sticky_parent_like_tmp_is_accepted(sticky_base, monkeypatch, fresh_trust):
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(sticky_base / "cache"))
    assert cachedir.trust().trusted


def test_a_cache_directory_made_by_another_user_is_not_used(sticky_base, tmp_path):
    """Another user makes the directory first and plants a pickle where numba's index of
    the backend's first kernel goes: it must never run, and root writes nothing there."""
    from numba.core.caching import UserProvidedCacheLocator

    from convflow.backends.numba import kernels

    cache = sticky_base / "cache"
    marker = tmp_path / "planted-code-ran"
    source = kernels.__file__
    index = (cache / "numba" / UserProvidedCacheLocator.get_suitable_cache_subpath(source)
             / f"kernels.threading_probe-{kernels.threading_probe.py_func.__code__.co_firstlineno}"
               f".py{sys.version_info[0]}{sys.version_info[1]}.nbi")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    as_nobody(f"mkdir -m 0777 -p {index.parent} && cat > {index} && chmod -R a+rwX {cache}",
              stdin=pickle.dumps(Payload()))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    result = run_convflow(cache, "numba", CONVFLOW_FIND_MODE="autotune")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout
    assert not marker.exists(), "a pickle planted by another user was executed"
    assert result.stderr.count("CacheWarning") == 1, result.stderr
    assert "is owned by user 'nobody'" in result.stderr
    after = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    assert after == before and all(p.stat().st_uid == NOBODY for p in after)


def test_a_world_writable_cache_directory_is_not_used(tmp_path, monkeypatch, fresh_trust):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(cache))
    decision = cachedir.trust()
    assert not decision.trusted and "writable by group or others (mode 0777)" in decision.reason
    with pytest.warns(CacheWarning, match="writable by group or others"):
        db = perfdb.current()
    db.store("k", perfdb.Entry("direct", {"direct": 1.0}, 0.0))
    assert db.lookup("k").algorithm == "direct"  # kept in memory for this process
    assert list(cache.iterdir()) == []


def test_a_group_writable_parent_is_not_trusted(tmp_path, monkeypatch, fresh_trust):
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o775)
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(parent / "cache"))
    decision = cachedir.trust()
    assert not decision.trusted and "a directory above the cache directory" in decision.reason
    assert not (parent / "cache").exists()


def test_a_parent_owned_by_another_user_is_not_trusted(sticky_base, monkeypatch, fresh_trust):
    as_nobody(f"mkdir -m 0755 {sticky_base / 'theirs'}")
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(sticky_base / "theirs" / "cache"))
    decision = cachedir.trust()
    assert not decision.trusted and "owned by user 'nobody'" in decision.reason


def test_a_link_planted_by_another_user_is_not_followed(sticky_base, tmp_path, monkeypatch,
                                                        fresh_trust):
    scratch = tmp_path / "etc"
    scratch.mkdir()
    as_nobody(f"ln -s {scratch} {sticky_base / 'link'}")
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(sticky_base / "link" / "cache"))
    decision = cachedir.trust()
    assert not decision.trusted and "symbolic link owned by user 'nobody'" in decision.reason
    assert list(scratch.iterdir()) == []


def test_a_cache_directory_that_is_a_link_is_never_written_through(tmp_path):
    """CONVFLOW_CACHE_DIR pointing through a link at a directory standing in for /etc:
    nothing at all is written there (perf-db, numba, pocl, pytools)."""
    scratch = tmp_path / "etc"
    scratch.mkdir(mode=0o700)
    link = tmp_path / "cache"
    link.symlink_to(scratch)
    result = run_convflow(link, "numba,opencl", "naive", CONVFLOW_FIND_MODE="autotune")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout
    assert "opencl unavailable" in result.stdout or f"opencl {GOOD}" in result.stdout
    assert "is a symbolic link" in result.stderr and result.stderr.count("CacheWarning") == 1
    assert list(scratch.iterdir()) == []


def test_links_owned_by_this_user_above_the_cache_are_followed(tmp_path, monkeypatch,
                                                               fresh_trust):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "alias").symlink_to(real)
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", str(tmp_path / "alias" / "cache"))
    decision = cachedir.trust()
    assert decision.trusted and decision.path == real / "cache"


def test_a_relative_cache_directory_is_taken_from_the_working_directory(tmp_path):
    """``CONVFLOW_CACHE_DIR=-1`` made PoCL's linker read a path as an option and abort."""
    result = run_convflow("-1", "numba,opencl", "naive", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout
    assert "opencl unavailable" in result.stdout or f"opencl {GOOD}" in result.stdout
    assert (tmp_path / "-1" / "numba").is_dir()


def test_an_overlong_cache_directory_is_a_config_error(monkeypatch):
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", "/tmp/" + "c" * 400)
    with pytest.raises(ConfigError, match=r"CONVFLOW_CACHE_DIR=.* is invalid: one of its names "
                                          r"is 400 bytes long; the file system allows 255"):
        config.cache_dir()
    monkeypatch.setenv("CONVFLOW_CACHE_DIR", "/tmp/" + "/".join(["d" * 200] * 20))
    with pytest.raises(ConfigError, match="paths must stay under"):
        config.cache_dir()


def test_info_shows_the_trust_decision(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    env["CONVFLOW_CACHE_DIR"] = str(cache)
    result = subprocess.run([sys.executable, "-m", "convflow", "info"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"cache directory: {cache} (not used: {cache} (the cache directory) is writable by " \
           f"group or others (mode 0777)" in result.stdout
    cache.chmod(0o700)
    result = subprocess.run([sys.executable, "-m", "convflow", "info"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert f"cache directory: {cache} (private: owned by user 'root'" in result.stdout


# numba's cache ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def numba_cache(tmp_path_factory):
    """A cache directory holding numba's compiled threading probe and direct kernel."""
    cache = tmp_path_factory.mktemp("numba-cache") / "cache"
    result = run_convflow(cache, "numba")
    assert result.returncode == 0 and f"numba {GOOD}" in result.stdout, result.stderr
    return cache


def _damage(path: pathlib.Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(os.urandom(300))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "flipped", "devzero"])
@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
def test_damaged_numba_cache_files_are_removed_and_rebuilt(numba_cache, tmp_path, how, suffix):
    cache = tmp_path / "cache"
    shutil.copytree(numba_cache, cache, symlinks=True)
    damaged = sorted((cache / "numba").rglob(f"*{suffix}"))
    assert damaged
    for path in damaged:
        _damage(path, how)
    result = run_convflow(cache, "numba")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout, result.stdout + result.stderr
    # Both kernels' entries are damaged: one warning for the cache, not one per kernel.
    assert result.stderr.count("it was removed and the kernel compiled again") == 1
    for path in damaged:  # rewritten as files, and sound: the next process loads them quietly
        assert path.is_file() and not path.is_symlink()
    again = run_convflow(cache, "numba")
    assert f"numba {GOOD}" in again.stdout and "CacheWarning" not in again.stderr, again.stderr


@pytest.mark.parametrize("how", ["a file", "read-only", "read-only file system"])
def test_an_unusable_numba_folder_keeps_writes_in_the_cache_or_nowhere(tmp_path, tmpfs, how):
    home = tmp_path / "home"
    home.mkdir()
    if how == "read-only file system":
        cache = tmpfs("1m")
        (cache / "numba").mkdir(mode=0o700)
        remount_read_only(cache)
    else:
        cache = tmp_path / "cache"
        cache.mkdir(mode=0o700)
        if how == "a file":
            (cache / "numba").write_text("not a folder")
        else:
            (cache / "numba").mkdir(mode=0o500)
    from convflow.backends.numba import kernels

    package_cache = pathlib.Path(kernels.__file__).parent / "__pycache__"
    before = set(package_cache.glob("*.nb*"))
    result = run_convflow(cache, "numba", home=home)
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout
    assert result.stderr.count(f"the cache {cache / 'numba'}: it ") == 1, result.stderr
    assert "this cache is skipped" in result.stderr
    assert set(package_cache.glob("*.nb*")) == before
    assert list(home.rglob("*")) == []
    if how == "read-only":
        assert list((cache / "numba").iterdir()) == []


def test_an_unusable_numba_cache_dir_of_the_user_has_no_fallback(tmp_path):
    """NUMBA_CACHE_DIR set by the user to something unusable: numba would fall back to the
    package's __pycache__; convflow's kernels compile in memory instead, with one warning."""
    from convflow.backends.numba import kernels

    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "not-a-dir").write_text("")
    package_cache = pathlib.Path(kernels.__file__).parent / "__pycache__"
    before = set(package_cache.glob("*.nb*"))
    result = run_convflow(tmp_path / "cache", "numba", home=home,
                          NUMBA_CACHE_DIR=str(tmp_path / "not-a-dir"))
    assert result.returncode == 0 and f"numba {GOOD}" in result.stdout, result.stderr
    assert result.stderr.count("numba's kernel cache: it cannot be used") == 1, result.stderr
    assert set(package_cache.glob("*.nb*")) == before and list(home.rglob("*")) == []


# PoCL's and PyOpenCL's caches ------------------------------------------------------------
@pytest.fixture(scope="module")
def pocl_cache(tmp_path_factory):
    """A cache directory holding PoCL's programs for two solvers (sealed at exit)."""
    opencl_or_skip()
    cache = tmp_path_factory.mktemp("pocl-cache") / "cache"
    for algorithm in ("naive", "vec_im2col_gemm"):
        result = run_convflow(cache, "opencl", algorithm)
        assert result.returncode == 0 and f"opencl {GOOD}" in result.stdout, result.stderr
    return cache


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "flipped", "devzero"])
@pytest.mark.parametrize("target", ["*.so", "program.bc"])
def test_damaged_pocl_cache_files_never_abort_the_process(pocl_cache, tmp_path, how, target):
    cache = tmp_path / "cache"
    shutil.copytree(pocl_cache, cache, symlinks=True)
    damaged = sorted((cache / "pocl").rglob(target))
    assert damaged
    for path in damaged:
        _damage(path, how)
    for algorithm in ("naive", "vec_im2col_gemm"):
        result = run_convflow(cache, "opencl", algorithm)
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert f"opencl {GOOD}" in result.stdout, result.stderr[-2000:]
    assert "damaged or unsealed program(s) were removed" in result.stderr or algorithm != "naive"


def test_unsealed_pocl_entries_are_removed_when_no_process_uses_the_cache(pocl_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(pocl_cache, cache, symlinks=True)
    (cache / "pocl" / "seals.json").write_text("{ damaged")
    for path in (cache / "pocl").rglob("*.so"):
        _damage(path, "garbage")
    result = run_convflow(cache, "opencl", "naive")
    assert result.returncode == 0 and f"opencl {GOOD}" in result.stdout, result.stderr[-2000:]
    assert "unsealed" in result.stderr


def test_a_read_only_pocl_folder_names_the_cache_and_still_computes(tmp_path):
    opencl_or_skip()
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / "pocl").mkdir(mode=0o500)
    result = run_convflow(cache, "numba,opencl", "naive")
    assert result.returncode == 0, result.stderr
    assert f"opencl {GOOD}" in result.stdout and f"numba {GOOD}" in result.stdout
    assert f"the cache {cache / 'pocl'}: it is not writable; this cache is skipped" \
        in result.stderr.replace("\n", " ")
    assert list((cache / "pocl").iterdir()) == []


@pytest.mark.parametrize("how", ["garbage", "truncated", "a file", "read-only"])
def test_a_damaged_pytools_cache_touches_no_call(tmp_path, how):
    opencl_or_skip()
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    pytools = cache / "pytools"
    if how == "a file":
        pytools.write_text("not a folder")
    else:
        pytools.mkdir()
        version = ".".join(map(str, sys.version_info[:3])) + f".{sys.version_info.releaselevel}" \
            f".{sys.version_info.serial}"
        # Where pyopencl's invoker cache (pytools 2024+) keeps its SQLite file.
        pdict = pytools / f"pdict-v5-pyopencl-invoker-cache-v42-nano-{version}.sqlite"
        with sqlite3.connect(pdict) as db:
            db.execute("CREATE TABLE dict (keyhash TEXT PRIMARY KEY, key_value TEXT)")
            db.execute("INSERT INTO dict VALUES ('a', 'b')")
        if how == "garbage":
            pdict.write_bytes(os.urandom(5000))
        elif how == "truncated":
            pdict.write_bytes(pdict.read_bytes()[:700])
        else:
            pytools.chmod(0o500)
            pdict.chmod(0o400)
    result = run_convflow(cache, "numba,opencl", "naive")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout and f"opencl {GOOD}" in result.stdout, result.stderr


def test_a_full_disk_never_ends_the_process(tmp_path, tmpfs):
    """Full disk: numba compiles in memory, the perf-db is skipped, PoCL is not started (LLVM
    would end the process); every call that can run gives the right answer."""
    cache = tmpfs("64k")
    fill(cache)
    result = run_convflow(cache, "numba,opencl", "naive", CONVFLOW_FIND_MODE="autotune")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout
    assert "Traceback" not in result.stderr and "LLVM ERROR" not in result.stderr
    assert ("opencl unavailable" in result.stdout and "MiB free" in result.stdout) \
        or f"opencl {GOOD}" in result.stdout


def test_the_opencl_probe_reports_any_exception_and_numba_goes_on(monkeypatch):
    from convflow.backends import _instances
    from convflow.backends import opencl as opencl_backend

    def broken() -> None:
        raise sqlite3.OperationalError("database disk image is malformed")

    monkeypatch.setattr(opencl_backend, "import_pyopencl", broken)
    monkeypatch.setitem(_instances, "opencl", opencl_backend.OpenCLBackend())
    status = convflow.available_backends()["opencl"]
    assert not status.available
    assert status.reason == ("OpenCL could not start: OperationalError: database disk image is "
                             "malformed")
    x = np.ones((1, 1, 4, 4), np.float32)
    y = convflow.conv2d(x, np.ones((1, 1, 3, 3), np.float32), padding=1, backend="numba")
    assert str(y.ravel().tolist()) == GOOD


# The perf-db -----------------------------------------------------------------------------
def _db_with_a_record(directory: pathlib.Path) -> perfdb.PerfDB:
    db = perfdb.PerfDB(directory)
    db.store("kept", perfdb.Entry("direct", {"direct": 1.0}, 1.0))
    return db


def _records(directory: pathlib.Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(directory / perfdb.FILE_NAME)) as db:
        return [row[0] for row in db.execute("SELECT key FROM entries")]


def test_a_locked_perf_db_is_skipped_not_quarantined(tmp_path, monkeypatch):
    _db_with_a_record(tmp_path)
    monkeypatch.setattr(perfdb, "_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(tmp_path / perfdb.FILE_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db = perfdb.PerfDB(tmp_path)
        with pytest.warns(CacheWarning, match="database is locked.*nothing in it is lost"):
            assert db.lookup("kept") is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one warning, not one per call
            db.store("new", perfdb.Entry("im2col_gemm", {}, 2.0))
            assert db.lookup("new").algorithm == "im2col_gemm"  # in memory meanwhile
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name] == []
    assert _records(tmp_path) == ["kept"]
    assert perfdb.PerfDB(tmp_path).lookup("kept").algorithm == "direct"


@pytest.mark.parametrize("error", [
    sqlite3.OperationalError("database or disk is full"),
    sqlite3.OperationalError("attempt to write a readonly database"),
    sqlite3.OperationalError("unable to open database file"),
    PermissionError(13, "Permission denied"),
    OSError(28, "No space left on device"),
])
def test_errors_that_are_not_corruption_never_move_the_perf_db(tmp_path, monkeypatch, error):
    _db_with_a_record(tmp_path)
    cachedir.forget()
    real_connect = sqlite3.connect

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(perfdb.sqlite3, "connect", failing)
    db = perfdb.PerfDB(tmp_path)
    with pytest.warns(CacheWarning, match="cannot be used now"):
        assert db.lookup("kept") is None
        db.store("new", perfdb.Entry("direct", {}, 2.0))
    with pytest.raises(CacheError, match="cannot be cleared now"):
        db.clear()
    assert "error" in db.info()
    monkeypatch.setattr(perfdb.sqlite3, "connect", real_connect)
    assert sorted(p.name for p in tmp_path.iterdir()) == [perfdb.FILE_NAME]
    assert _records(tmp_path) == ["kept"]


def test_a_full_disk_while_tuning_loses_no_record(tmpfs):
    cache = tmpfs("64k")
    db = _db_with_a_record(cache)
    fill(cache)
    cachedir.forget()
    with pytest.warns(CacheWarning, match="full"):
        for i in range(200):  # enough rows to need new pages
            db.store(f"new-{i}" + "x" * 500, perfdb.Entry("direct", {"direct": 1.0}, 2.0))
    assert [p.name for p in cache.iterdir() if ".corrupt-" in p.name] == []
    (cache / "filler").unlink()
    assert "kept" in _records(cache)
    assert perfdb.PerfDB(cache).lookup("kept").algorithm == "direct"


def test_a_read_only_cache_in_autotune_mode_raises_nothing_raw(tmpfs):
    cache = tmpfs("1m")
    _db_with_a_record(cache)
    remount_read_only(cache)
    result = run_convflow(cache, "numba", CONVFLOW_FIND_MODE="autotune")
    assert result.returncode == 0, result.stderr
    assert f"numba {GOOD}" in result.stdout and "Traceback" not in result.stderr
    assert "PermissionError" not in result.stderr


def test_quarantines_never_overwrite_an_earlier_backup(tmp_path):
    contents = []
    for round_ in range(3):  # within one second, one process
        (tmp_path / perfdb.FILE_NAME).write_bytes(b"not a database %d" % round_ * 100)
        contents.append((tmp_path / perfdb.FILE_NAME).read_bytes())
        db = perfdb.PerfDB(tmp_path)
        cachedir.forget()
        with pytest.warns(CacheWarning, match="unreadable as a database"):
            assert db.lookup("anything") is None
    backups = sorted(p for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert len(backups) == 3
    assert sorted(p.read_bytes() for p in backups) == sorted(contents)


def test_a_link_in_place_of_the_perf_db_is_not_written_through(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / perfdb.FILE_NAME).symlink_to(target)
    db = perfdb.PerfDB(tmp_path)
    cachedir.forget()
    with pytest.warns(CacheWarning, match="is not a regular file"):
        db.store("k", perfdb.Entry("direct", {}, 1.0))
    assert target.read_bytes() == b""


# What held must keep holding -------------------------------------------------------------
TUNER = textwrap.dedent("""
    import sys, numpy as np, convflow
    sys.path.insert(0, sys.argv[2])
    import reference
    backends = [b for b in ("numba", "opencl") if convflow.available_backends()[b].available]
    rng = np.random.default_rng(int(sys.argv[1]))
    for k in range(4):
        c = 4 + 4 * ((int(sys.argv[1]) + k) % 3)
        x = rng.standard_normal((1, c, 10 + k, 10)).astype(np.float32)
        w = rng.standard_normal((8, c, 3, 3)).astype(np.float32)
        expected = reference.conv(x.astype(np.float64), w.astype(np.float64),
                                  padding=((1, 1), (1, 1)))
        for backend in backends:
            d = convflow.explain(x, w, padding=1, backend=backend)
            assert d.source in ("autotune", "cache"), d.source
            y = convflow.conv2d(x, w, padding=1, backend=backend)
            assert np.allclose(y, expected, rtol=1e-4, atol=1e-4), (backend, d.algorithm)
    print("ok", backends)
""")


def test_tuners_killed_at_random_leave_every_cache_sound(tmp_path):
    """Autotuning processes (numba and, where available, opencl) SIGKILLed at random moments
    and started again: every run that finishes is right, and the perf-db, numba's and
    PoCL's caches stay sound for the next process."""
    import random

    cache = tmp_path / "cache"
    tests_dir = str(pathlib.Path(__file__).parent)
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    env.update(CONVFLOW_CACHE_DIR=str(cache), CONVFLOW_FIND_MODE="autotune",
               CONVFLOW_TUNE_BUDGET_MS="150")
    chance = random.Random(12)

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", TUNER, str(i), tests_dir], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = {i: start(i) for i in range(3)}
    kills = 0
    while kills < 6:
        victim = chance.choice(sorted(procs))
        try:
            procs[victim].wait(timeout=chance.uniform(0.5, 4.0))
        except subprocess.TimeoutExpired:
            procs[victim].kill()
            procs[victim].wait()
            kills += 1
        procs[victim] = start(victim)
    for proc in procs.values():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and out.startswith("ok"), err[-3000:]
    with contextlib.closing(sqlite3.connect(cache / perfdb.FILE_NAME)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    final = subprocess.run([sys.executable, "-c", TUNER, "0", tests_dir], env=env,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0 and final.stdout.startswith("ok"), final.stderr[-3000:]
    assert [p for p in cache.iterdir() if ".corrupt-" in p.name] == []


def test_cache_clear_never_removes_through_a_link(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    scratch = tmp_path / "etc"
    scratch.mkdir()
    (scratch / "passwd").write_text("keep me")
    (cache / "numba").symlink_to(scratch)
    (cache / "pocl").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_VARIABLES}
    env["CONVFLOW_CACHE_DIR"] = str(cache)
    result = subprocess.run([sys.executable, "-m", "convflow", "cache", "clear"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "removed PoCL kernels" in result.stdout and "Traceback" not in result.stderr
    assert (scratch / "passwd").read_text() == "keep me" and (cache / "numba").is_symlink()
