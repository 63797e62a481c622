"""The C allocator settings: free pages inside the heap go back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from ops.malloc_tuning import release_free_memory, tune_allocator

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

_PROBE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from ops.malloc_tuning import release_free_memory

    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    # 200 MB in 2 KB blocks (C heap: above Python's 512-byte limit); every 50th stays alive, so the
    # heap's top cannot shrink and the freed memory stays resident until it is trimmed
    blocks = [bytearray(2048) for _ in range(100_000)]
    keep = blocks[::50]
    del blocks
    before = rss_mb()
    released = release_free_memory()
    after = rss_mb()
    print(before, after, released, len(keep))
    """
)


@pytest.mark.slow
def test_freed_memory_inside_the_heap_goes_back_to_the_system():
    root = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=root)], capture_output=True, text=True, check=True)
    before, after, released, _ = out.stdout.split()
    assert released == "True"
    assert float(before) - float(after) > 100, out.stdout  # most of the 196 MB freed was resident until the trim


def test_the_arena_limit_is_accepted():
    assert tune_allocator() is True
    assert release_free_memory() in (True, False)
