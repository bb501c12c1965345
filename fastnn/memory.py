"""How much memory this process may still allocate, read from where the limits are.

The smallest of: the machine's memory, MemAvailable (/proc/meminfo), the cgroup's limit less
what it uses (cgroup v2 ``memory.max``/``memory.current``, v1 ``memory.limit_in_bytes``/
``memory.usage_in_bytes``, for this process's cgroup from /proc/self/cgroup and its parents),
and RLIMIT_AS / RLIMIT_DATA less what the process has mapped (VmSize / VmData).  Readers
refuse what cannot fit in one line before they allocate it.  ``CGROUP_ROOT`` and ``PROC_SELF``
can be pointed at a fake tree (tests do).
"""

import os
import resource

CGROUP_ROOT = "/sys/fs/cgroup"  # where the cgroup file systems are mounted (tests point it at a fake tree)
PROC_SELF = "/proc/self"  # this process's cgroup, status (VmSize, VmData) and the machine's meminfo beside it
UNLIMITED = 1 << 60  # a cgroup v1 "no limit" is a page-rounded 2**63 - 1


def _read_int(path):
    """The integer in the one-line file ``path``, or None (missing, 'max', unreadable)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _cgroup_paths(proc):
    """{'v2': path} and/or {'v1': path} of this process's memory cgroup, from ``proc``/cgroup."""
    found = {}
    try:
        with open(os.path.join(proc, "cgroup")) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found["v2"] = parts[2]
        elif "memory" in parts[1].split(","):
            found["v1"] = parts[2]
    return found


def _cgroup_limit(folder, top, limit_file, usage_file):
    """(the smallest limit minus its usage, the limit) over ``folder`` and its parents up to ``top``, or None."""
    best = None
    folder = os.path.normpath(folder)
    top = os.path.normpath(top)
    while folder.startswith(top):
        limit = _read_int(os.path.join(folder, limit_file))
        if limit is not None and limit < UNLIMITED:
            left = max(0, limit - (_read_int(os.path.join(folder, usage_file)) or 0))
            if best is None or left < best[0]:
                best = (left, limit)
        if folder == top:
            break
        folder = os.path.dirname(folder)
    return best


def _status(proc, key):
    """A ``kB`` field of ``proc``/status (VmSize, VmData) in bytes, or 0."""
    try:
        with open(os.path.join(proc, "status")) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_limits(root=None, proc=None):
    """Every limit on the memory this process may still allocate, as [(bytes, where it comes from)]:
    the machine's memory and MemAvailable, the cgroup's limit less its usage (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``, this process's cgroup and its parents), RLIMIT_AS and RLIMIT_DATA less
    what the process has mapped."""
    root = CGROUP_ROOT if root is None else root
    proc = PROC_SELF if proc is None else proc
    limits = []
    try:
        limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the machine's memory"))
    except (ValueError, OSError, AttributeError):
        limits.append((1 << 40, "a guess of the machine's memory"))
    try:
        with open(os.path.join(os.path.dirname(proc), "meminfo")) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append((int(line.split()[1]) * 1024, "the memory available now (MemAvailable)"))
    except (OSError, ValueError, IndexError):
        pass
    groups = _cgroup_paths(proc)
    v2 = _cgroup_limit(os.path.join(root, groups.get("v2", "/").lstrip("/")), root, "memory.max", "memory.current")
    v2 = v2 or _cgroup_limit(root, root, "memory.max", "memory.current")  # a container sees its own cgroup as /
    if v2:
        limits.append((v2[0], f"the cgroup's memory.max of {describe_bytes(v2[1])} less what it uses"))
    v1_top = os.path.join(root, "memory")
    v1 = _cgroup_limit(os.path.join(v1_top, groups.get("v1", "/").lstrip("/")), v1_top, "memory.limit_in_bytes",
                       "memory.usage_in_bytes") if "v1" in groups or os.path.isdir(v1_top) else None
    v1 = v1 or _cgroup_limit(v1_top, v1_top, "memory.limit_in_bytes", "memory.usage_in_bytes")
    if v1:
        limits.append((v1[0], f"the cgroup's memory.limit_in_bytes of {describe_bytes(v1[1])} less what it uses"))
    for name, used in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        try:
            soft = resource.getrlimit(getattr(resource, name))[0]
        except (ValueError, OSError, AttributeError):
            continue
        if soft != resource.RLIM_INFINITY and soft >= 0:
            where = f"{name} of {describe_bytes(soft)} less what this process has mapped"
            limits.append((max(0, soft - _status(proc, used)), where))
    return limits


def host_memory():
    """Bytes of memory this process may still allocate: the smallest of ``memory_limits()``."""
    return min(memory_limits())[0]


def memory_words():
    """The smallest of ``memory_limits()`` in words: "1.2 GiB (the cgroup's memory.max of 2 GiB less what it uses)"."""
    size, where = min(memory_limits())
    return f"{describe_bytes(size)} ({where})"


def describe_bytes(n):
    """``n`` bytes in words, e.g. "3.2 GiB"."""
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            break
    return f"{n:.3g} {unit}"


