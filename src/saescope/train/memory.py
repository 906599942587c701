"""Memory outside the tensors: the allocator's freed pages and the model's memory-mapped weight pages (each
measured in bench/train_bench.py)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed blocks (up to 1 GiB each) for reuse instead of returning them to the OS.

    A training step allocates and frees several [F, d] tensors; by default glibc serves each from a fresh mmap, so
    every step pays page faults and kernel zeroing for them again (bench: 25 % of a step at F=16384 on CPU). The
    cost is that the process keeps its peak heap. Process-wide; Linux/glibc only; SAESCOPE_MALLOPT=0 turns it off.
    """
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SAESCOPE_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    log.debug("glibc malloc keeps freed blocks: %s", ok)
    return ok


def release_freed_memory() -> None:
    """Undo `retain_freed_memory` once training is over and hand the retained free blocks back to the OS, so a
    process that goes on (`saescope run`: evaluation, collation) does not carry the training peak."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        return
    trim_freed_memory()


def trim_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`), leaving malloc's thresholds as they are:
    glibc raises its mmap threshold as large blocks are freed, so tensors of up to 32 MB then live on the heap and
    stay resident after they are freed (measured: 2.6 GB anonymous after collation, 0.6 GB once trimmed). Fixing
    the threshold instead would page-fault every such tensor again (collation 1.6x slower)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_file_pages(module: torch.nn.Module) -> int:
    """Ask the kernel to drop the resident pages of a module's weights (Linux `MADV_PAGEOUT`): pages of memory-mapped
    weight files are clean, so they are freed and read again from the file on the next touch; nothing is lost, and
    anonymous memory without swap stays as it is. `saescope run` calls it once the model's forward passes are over
    (collation from the store reads one layer's attention weights): gemma-3-270m's 1.0 GB mapping otherwise stays
    resident through collation, the run's peak. Returns the bytes advised (0 where unsupported)."""
    import ctypes
    import mmap
    import sys

    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    files = []  # file-backed mappings only: anonymous memory is left alone, swap or not
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[4] != "0" and parts[5].endswith(".safetensors"):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    files.append((lo, hi))
    except OSError:
        return 0
    MADV_PAGEOUT, page, total, seen = 21, mmap.PAGESIZE, 0, set()
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "cpu":
            continue
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr in seen or n < page or not any(lo <= ptr and ptr + n <= hi for lo, hi in files):
            continue
        seen.add(ptr)
        start = ptr - ptr % page
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(ptr + n - start), MADV_PAGEOUT) == 0:
            total += n
    return total


