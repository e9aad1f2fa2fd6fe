"""Atomic output files: write to a temp file in the target folder, fsync, rename. A crash leaves no half file."""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import MediaError, OutputError

MP4_SUFFIXES = (".mp4", ".m4v", ".mov")  # what an MP4 file may be named without misleading a player


def check_output_path(
    path: str | os.PathLike[str], *, inputs: tuple[Path, ...] = (), suffixes: tuple[str, ...] = ()
) -> Path:
    """The output path, after checking its folder exists and is writable, its name fits what is written
    (`suffixes`), and it is not one of the inputs (the same file by another name included: symlink, hard link)."""
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise OutputError(f"output {out} must end in {' or '.join(suffixes)}: that is the file written",
                          hint=f"name it {out.with_suffix(suffixes[0]).name}")  # fmt: skip
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}", hint="create it first or choose another -o path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}", hint="choose a folder you can write to")
    if out.is_dir():
        raise OutputError(f"output path is a folder: {out}", hint="give a file name such as out.mp4")
    for src in inputs:
        if src.exists() and out.exists() and os.path.samefile(out, src):
            raise OutputError(f"output would overwrite the input: {out} is {src}", hint="write to another file")
    return out


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The text of a secret kept in `path`, created once (mode 0600, never overwritten) from `make()`."""
    if path.exists():
        return path.read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return text


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def pid_folder(prefix: str) -> Path:
    """A new temporary folder named PREFIX<pid>-…: sweep_dead_folders can then tell when its process is gone."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def sweep_dead_folders(parent: Path, prefix: str, *, older_than: float = 0.0) -> list[Path]:
    """Remove the pid_folder(prefix) folders in `parent` whose process is gone (kill -9, OOM: no `finally` ran) and
    that were last changed over `older_than` seconds ago. A live process's folder stays (a reused PID's too, which
    is harmless), and so does any folder not named that way."""
    removed = []
    now = time.time()
    for folder in parent.glob(f"{glob_escape(prefix)}*-*"):
        pid = folder.name[len(prefix) :].split("-", 1)[0]
        with contextlib.suppress(OSError):  # its own process may remove it meanwhile
            st = folder.lstat()
            if not pid.isdigit() or not stat.S_ISDIR(st.st_mode) or now - st.st_mtime < older_than or _alive(int(pid)):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def sweep_stale_parts(final: Path) -> list[Path]:
    """Remove the temp files of `final` left by dead processes (kill -9, power loss); a live writer's stay."""
    removed = []
    with contextlib.suppress(OSError):
        for part in final.parent.glob(f".{glob_escape(final.name)}.*-*.part"):
            pid = part.name[len(final.name) + 2 :].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                part.unlink(missing_ok=True)
                removed.append(part)
    return removed


# atomic_output's temp files, and the steps' own beside them (`.a.wav.<pid>-<hex>.pass0.part`).
_PART = re.compile(r"\.(.+)\.\d+-[0-9a-f]+(\.[^.]+)?\.part")


def part_target(path: Path) -> Path:
    """The file a temp part becomes (`.name.<pid>-<hex>[.step].part` → `name`); any other path as it is."""
    match = _PART.fullmatch(path.name)
    return path.with_name(match.group(1)) if match else path


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, inputs: tuple[Path, ...] = (), suffixes: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a temp path beside `path`; on normal exit it becomes `path`, on any exception it is removed."""
    final = check_output_path(path, inputs=inputs, suffixes=suffixes)
    sweep_stale_parts(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    # The removal is set up before the file is made: a Ctrl-C that landed inside touch(), after the file existed,
    # left it behind (an empty part, seen once in a full test run on a loaded machine).
    try:
        try:
            tmp.touch(exist_ok=False)  # permission bits do not tell the whole story (root, read-only mounts)
        except OSError as exc:
            raise OutputError(f"cannot write in the output folder {final.parent}: {exc.strerror}",
                              hint="choose a folder you can write to") from None  # fmt: skip
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        if exc.errno in _FULL:  # a write can only fail so here: say where and what to do, not "Errno 28"
            raise OutputError(f"no space left on the disk of {final.parent} (writing {final.name})",
                              hint="free space there, or write elsewhere, and run again") from None  # fmt: skip
        raise
    finally:
        tmp.unlink(missing_ok=True)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def os_reason(exc: OSError) -> str:
    """An OSError in words for a message: "read-only file system", not "[Errno 30] Read-only file system: '/x'"."""
    return (exc.strerror or str(exc)).lower()


PROBE_BYTES = 256 * 1024


def writable_problem(folder: Path, *, create: bool) -> str | None:
    """Why files cannot be written in `folder` (None when they can): it cannot be created, is on a read-only or
    full disk, or is not ours. `create`: make it and write PROBE_BYTES there (and remove them); otherwise (a dry
    run, which writes nothing) ask its nearest existing ancestor."""
    if not create:
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):  # read-only mounts answer no here, even to root
            return f"{existing} is not writable"
        with contextlib.suppress(OSError):
            disk = os.statvfs(existing)
            if disk.f_bavail * disk.f_frsize < PROBE_BYTES:
                return f"no space left on the disk of {existing}"
        return None
    probe = folder / f".assetprep-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(bytes(PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())  # a disk that reserves space at write-back tells it here
    except OSError as exc:
        return f"cannot write in {folder}: {'no space left on its disk' if exc.errno in _FULL else os_reason(exc)}"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def read_text_file(path: str | os.PathLike[str], encoding: str | None = "utf-8") -> str:
    """A text file the user named (manifest, script): only a regular file is read — a FIFO would block the open
    until some writer comes, a device (/dev/zero) would never end. Raises FileNotFoundError, OSError (its
    strerror says why) or UnicodeDecodeError (`not_text` words it).

    `encoding=None`: text as editors and spreadsheets save it — UTF-8 with or without a BOM, or UTF-16 with its
    BOM (Notepad's "Unicode", Excel's "Unicode Text"); a BOM is never part of the text. Other bytes are refused,
    not guessed: a wrong guess would put "JosÃ©" into a video."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once this way; a regular file ignores the flag
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, a device or a folder)", str(path))
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read()
    if encoding is None:
        utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        encoding = "utf-16" if utf16 else "utf-8-sig"
    return data.decode(encoding)


def not_text(path: str | os.PathLike[str], exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8, in words a user can act on: the line, the byte and its offset."""
    line = exc.object[: exc.start].count(b"\n") + 1
    return f"{path} is not UTF-8 text (line {line}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


HASH_BLOCK = 1 << 20  # the buffer stays in the CPU's cache between the read and the hash


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file (never the whole file in memory)."""
    return hash_range(path, 0, None).hexdigest()


def hash_range(path: str | os.PathLike[str], start: int, length: int | None) -> Any:
    """SHA-256 of `length` bytes of `path` from `start` (None: to the end), through one reused buffer: reads of
    16 MiB into fresh memory made a pass 15% slower (256 MiB: 0.22 s, now 0.19 s). A file that ends before `length`
    raises ShrankError."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(HASH_BLOCK))
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            n = f.readinto(view if left is None else view[: min(HASH_BLOCK, left)])
            if not n:
                if left is None:
                    break
                raise ShrankError(f"{path} ended at byte {start} while it was read")
            digest.update(view[:n])
            start += n
            left = None if left is None else left - n
    return digest


class ShrankError(OSError):
    """A file got shorter while it was read: something is still writing or truncating it."""


def check_input_file(path: str | os.PathLike[str]) -> Path:
    """Fail early, with a clear message, on inputs ffprobe would only report cryptically."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"input file not found: {p}", hint="check the path")
    if not p.is_file():
        raise MediaError(f"input is not a file: {p}", hint="pass a media file")
    if p.stat().st_size == 0:
        raise MediaError(f"input file is empty (0 bytes): {p}", hint="re-export or re-download it")
    if not os.access(p, os.R_OK):
        raise MediaError(f"input file is not readable: {p}", hint="check its permissions")
    return p
