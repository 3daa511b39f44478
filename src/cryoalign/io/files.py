"""Files the commands write: every writer goes through `atomic_write` (the file appears
complete or not at all); `output_journal` removes what a failed command wrote; the output
folder rules (`output_folder`, the folder marks) live here and nowhere else."""

from __future__ import annotations

import contextlib
import os
import tempfile

from ..errors import InputError


def atomic_write(path, write_fn, *, journal: bool = True) -> None:
    """Call ``write_fn(tmp_path)`` then rename tmp onto `path`; no partial file on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}; choose a writable location") from None
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
        if _JOURNAL is not None and journal:
            _JOURNAL.append(path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}; choose a writable location") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


_JOURNAL: list | None = None


@contextlib.contextmanager
def output_journal():
    """Record every file (and folder, via `made_dir`) written inside the block; when the
    block raises, remove them all, so a failed command leaves no partial set of outputs."""
    global _JOURNAL
    previous, _JOURNAL = _JOURNAL, []
    try:
        yield _JOURNAL
    except BaseException:
        for path in reversed(_JOURNAL):
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)  # only when empty
                else:
                    os.remove(path)
        raise
    finally:
        _JOURNAL = previous


def made_dir(path) -> None:
    """Tell the journal that `path` was created by this command."""
    if _JOURNAL is not None:
        _JOURNAL.append(os.fspath(path))


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path, text: str, *, journal: bool = True) -> None:
    def _write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, _write, journal=journal)


def check_writable(path) -> None:
    """Fail early (before any work) when `path` cannot be created."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        probe = folder
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise InputError(f"cannot write {path}: {probe} is a file, not a folder; choose another location")
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable; choose another location")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path}: it is a directory; give a file name")


def check_writable_folder(path, flag: str) -> None:
    """Fail before any work when `path` cannot be (or become) a folder this command adds
    files to (a resumable run's folder, a catalogue): a file, below a file, or in a place
    that is not writable.  `flag` names the option in the message (--out-dir, --db)."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path} is a file, not a folder; give a new folder or one this command wrote")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"cannot create {flag} {path}: {probe} is a file; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "folder" if probe == os.path.abspath(path) else f"cannot create it: {probe}"
        raise InputError(f"{flag} {path}: {what} is not writable; choose a writable location for {flag}")


def file_sha256(path, chunk: int = 2**22) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


FOLDER_MARK = ".cryoalign"  # in every output folder: its contents are one cryoalign run's
WORK_MARK = ".cryoalign-work"  # in a resumable run's folder (variance): kept between runs


def check_output_folder(path) -> None:
    """Fail before any work when `path` cannot become an output folder: a file, an
    unwritable location, or a folder holding files cryoalign did not write (a run
    replaces the whole folder, so it never mixes runs and never deletes others' files)."""
    path = os.fspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"output folder {path} is a file; choose another --out-dir")
        foreign = foreign_files(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise InputError(
                f"output folder {path} holds files that cryoalign did not write ({shown}); choose "
                "a new or empty folder (a run replaces the whole folder)"
            )
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise InputError(f"cannot create output folder {path}: {probe} is a file; choose a writable location")
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot create output folder {path}: {probe} is not writable; choose a writable location")


def foreign_files(path) -> list[str]:
    """Entries of folder `path` that no cryoalign run wrote: all of them when it has no
    FOLDER_MARK, else those the mark does not list (a user's file added afterwards)."""
    entries = sorted(os.listdir(path))
    mark = os.path.join(path, FOLDER_MARK)
    if not os.path.isfile(mark):
        return entries
    with open(mark, errors="replace") as fh:
        listed = {line.rstrip("\n") for line in fh.readlines()[1:]}
    return [e for e in entries if e != FOLDER_MARK and e not in listed]


def mark_folder(path, what: str) -> None:
    """Write FOLDER_MARK: who wrote the folder, then the name of every entry in it."""
    names = sorted(e for e in os.listdir(path) if e != FOLDER_MARK)
    write_text(
        os.path.join(path, FOLDER_MARK), f"written by {what}\n" + "".join(f"{n}\n" for n in names), journal=False
    )


@contextlib.contextmanager
def output_folder(path, what: str = "cryoalign"):
    """Yield a new temporary folder beside `path`; when the block succeeds it replaces
    `path` whole (a folder written by an earlier run is removed), so the folder only ever
    holds the files of one complete run, even when two runs write to it at once.  When
    the block fails, nothing is left."""
    import shutil
    import uuid

    path = os.path.abspath(os.fspath(path))
    check_output_folder(path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path}: {exc.strerror}; choose a writable location") from None
    try:
        yield tmp
        mark_folder(tmp, what)
        os.chmod(tmp, 0o777 & ~_current_umask())
        for _ in range(100):
            try:
                os.rename(tmp, path)  # onto nothing, or onto an empty folder
                break
            except OSError:
                if not os.path.isdir(path) or foreign_files(path):
                    raise InputError(
                        f"output folder {path} was changed by something other than cryoalign "
                        "during the run; choose a new folder"
                    ) from None
                old = f"{path}.old-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(path, old)  # another run's complete folder: set aside, then removed
                except FileNotFoundError:
                    continue
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- resumable runs' folders
def check_work_folder(out_dir: str, flag: str) -> None:
    """Fail before any work when `out_dir` cannot hold a resumable run: a file, an
    unwritable place, or a non-empty folder that is neither a resumable run's (WORK_MARK)
    nor one cryoalign wrote (`check_output_folder`)."""
    check_writable_folder(out_dir, flag)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, WORK_MARK)):
        check_output_folder(out_dir)


def open_work_folder(out_dir: str, work: str, what: str) -> bool:
    """Create `out_dir` (when missing), its `work` folder and the WORK_MARK (saying `what`);
    True when `out_dir` was created now.  Unwritable places and files are refused first."""
    check_writable_folder(out_dir, "--out-dir")
    created = not os.path.exists(out_dir)
    try:
        os.makedirs(work, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out_dir}: {exc.strerror}; choose a writable location") from None
    if not os.path.exists(os.path.join(out_dir, WORK_MARK)):
        write_text(os.path.join(out_dir, WORK_MARK), what + "\n", journal=False)
    return created


def remove_unused_work_folder(out_dir: str, work: str, created: bool) -> None:
    """After a refusal: remove `work` and the mark when no result is stored in it (nothing
    to resume), and `out_dir` itself when this run created it and it is empty."""
    import shutil

    if os.path.isdir(work) and any(name.endswith(".json") for name in os.listdir(work)):
        return  # finished maps: a rerun resumes from them
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.remove(os.path.join(out_dir, WORK_MARK))
    if created:
        with contextlib.suppress(OSError):
            os.rmdir(out_dir)  # only when empty
