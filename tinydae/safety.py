"""Checks made before work that a later failure would waste, shared by the CLI and the library.

Each raises ConfigError (or DataError) with one line naming the problem and the fix, so the CLI
prints ``error: ...`` and exits 2 instead of a traceback after minutes of lost work.
"""
import contextlib
import json
import math
import os

from tinydae.errors import ConfigError

# Leave this much of the available memory to everything else (the OS, BLAS buffers, CuPy's pool).
MEMORY_HEADROOM = 0.8
NAME_MAX = 255  # bytes in a file name on Linux file systems; os.pathconf tells where it can


def name_max(directory):
    """The longest file name (bytes) the file system of `directory` takes."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _check_name(path, folder, what):
    """A name longer than the file system takes fails at the end of the work: refuse it first."""
    name = os.fsencode(os.path.basename(os.path.abspath(path)))
    limit = name_max(folder)
    if len(name) > limit:
        raise ConfigError(f"{what} {path}: its name is {len(name)} bytes, longer than the {limit} the file "
                          f"system allows; choose a shorter name")


def _why(e):
    return e.strerror or str(e)


def _under_a_file(path, what):
    """Refuse a path below a regular file (e.g. README.md/out.h5): mkdir would say only 'File exists'."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while ancestor and not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if ancestor and not os.path.isdir(ancestor):
        raise ConfigError(f"{what} {path} is under {ancestor}, which is a file, not a folder")


def same_file(a, b):
    """True when paths a and b name one file (through links too); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_file(path, what="--out", overwrite=False, inputs=(), outputs=()):
    """`path` can be created or replaced as a file: not a directory, its folder exists (or can be
    made) and is writable.  Creates missing parent folders.  -> the path

    The rule every command follows (here, in one place): a file that exists is replaced only
    with --overwrite (overwrite=True), and never when it is one of the command's `inputs` (a
    checkpoint, a data file: (option, path) pairs; through links too) or another of its
    `outputs` ((option, path) pairs already claimed), --overwrite or not."""
    path = os.fspath(path)
    if not path:
        raise ConfigError(f"{what} is empty; give a file name")
    if os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a directory; give a file name")
    if path.endswith((os.sep, "/")):
        raise ConfigError(f"{what} {path} names a directory (it ends in /); give a file name")
    for option, other in outputs:
        if other and same_file(path, other):
            raise ConfigError(f"{what} {path} is also {option}; give them different files")
    for option, given in inputs:
        if given and os.path.exists(path) and same_file(path, given):
            raise ConfigError(f"{what} {path} is {option} {given} itself, an input of this command; "
                              f"choose another {what}")
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another {what}")
    _under_a_file(path, what)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot create its folder {parent}: {_why(e)}") from None
    _check_name(path, parent, what)
    _probe(parent, f"{what} {path}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path} exists and is not writable")
    return path


def check_output_dir(path, what="--out"):
    """`path` is (or can be made) a writable directory.  Creates it.  -> the path"""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what} {path} is a file; give a directory")
    _under_a_file(path, what)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot create it: {_why(e)}") from None
    _probe(path, f"{what} {path}")
    return path


def _probe(folder, label):
    """Write and remove a small file: os.access lies on some file systems (and for root)."""
    probe = os.path.join(folder, f".tinydae-write-test-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{label}: cannot write in {folder}: {_why(e)}") from None


def available_memory():
    """Bytes of memory available to this process (Linux MemAvailable, else physical), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes, what, fix):
    """Refuse work whose arrays alone would need more than the available memory.

    nbytes: the estimate; what: what needs it ('a model of 10,000,000 hidden units');
    fix: how to need less ('use a smaller --hidden').
    """
    have = available_memory()
    if have is not None and nbytes > MEMORY_HEADROOM * have:
        raise ConfigError(f"{what} needs about {_size(nbytes)} of memory, but only {_size(have)} is "
                          f"available; {fix}")


def check_free_space(folder, nbytes, what, fix="free some space or choose another --out"):
    """Refuse work whose output (nbytes) cannot fit in the free space of `folder`'s file system,
    before the work: a full disk would otherwise end it at the first save."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return  # no statvfs here: the write itself will say
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise ConfigError(f"{what} needs about {_size(nbytes)} of disk space in {folder}, but only {_size(free)} "
                          f"is free; {fix}")


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


def json_safe(obj):
    """-> (obj with every non-finite float replaced by None, [paths of the replaced values]).

    JSON has no NaN or Infinity; json.dumps would write bare NaN, which no strict parser reads.
    """
    replaced = []

    def walk(x, where):
        if isinstance(x, float) and not math.isfinite(x):
            replaced.append(where or "value")
            return None
        if isinstance(x, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # NumPy scalars
            return walk(x.item(), where)
        return x

    return walk(obj, ""), replaced


def dumps(obj, **kwargs):
    """json.dumps that never writes NaN/Infinity: non-finite values become null, and a
    "non_finite" list names them (when obj is a dict)."""
    clean, replaced = json_safe(obj)
    if replaced and isinstance(clean, dict):
        clean["non_finite"] = replaced
    return json.dumps(clean, allow_nan=False, **kwargs)


@contextlib.contextmanager
def out_of_memory(what, fix):
    """The last resort behind check_memory: a MemoryError (the estimate missed something, or
    another process took the memory meanwhile) becomes one ConfigError line, not a traceback.

        with out_of_memory("running 100,000 chains", "use a smaller --n"): ...
    """
    try:
        yield
    except MemoryError:
        raise ConfigError(f"ran out of memory {what}; {fix}") from None


@contextlib.contextmanager
def exclusive_lock(directory, what="--out"):
    """Hold an exclusive lock on DIRECTORY/.lock for the block, so two runs cannot write one
    folder; the second gets "... is in use by another run (pid N)".

    flock locks die with their process, so a run killed with -9 never leaves a lock that blocks.
    The holder removes the file while it still holds the lock; a process that opened the file just
    before sees, once it gets the lock, that the name now points elsewhere, and tries again.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run unguarded rather than not at all
        yield None
        return
    path = os.path.join(directory, ".lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"{what} {directory}: cannot create its lock file {path}: {_why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{what} {directory} is in use by another run (pid {holder}); wait for "
                              f"it to finish or choose another {what}") from None
        try:
            mine = os.stat(path)
            if (mine.st_dev, mine.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # locked a file its holder had just removed: try the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
        os.close(fd)
