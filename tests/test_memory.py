"""Per-stage peak RSS and the heap handed back between stages (carelab.memory)."""

import sys

import pytest

from carelab import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def test_peak_window_resets_to_current_rss():
    block = bytearray(256 * 1024**2)  # 256 MB, touched: resident
    block[::4096] = b"x" * len(block[::4096])
    old_peak = memory.peak_rss_gb()
    del block  # a block this large is unmapped on free
    memory.release_heap()
    if not memory.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert memory.peak_rss_gb() < old_peak - 0.2  # the freed block is out of the new window
    assert abs(memory.peak_rss_gb() - memory.rss_gb()) < 0.05


def test_a_stage_peak_is_its_own():
    if not memory.reset_peak_rss():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    before = memory.peak_rss_gb()
    block = bytearray(128 * 1024**2)
    block[::4096] = b"y" * len(block[::4096])
    grown = memory.peak_rss_gb()
    del block
    assert grown - before >= 0.12


def test_release_heap_returns_a_bool():
    assert isinstance(memory.release_heap(), bool)


def test_trim_gives_back_the_holes_between_live_blocks():
    """Freed blocks between live ones stay resident until trimmed (what the generation engine trims after joins)."""
    blocks = [bytearray(b"z" * (64 * 1024)) for _ in range(4000)]  # 250 MB of small, touched heap blocks
    kept = blocks[7::8]  # every 8th survives, so the freed ones are holes, not the heap's top
    del blocks
    memory.trim_heap()
    holes = memory.rss_gb()
    blocks = [bytearray(b"z" * (64 * 1024)) for _ in range(4000)]
    kept += blocks[7::8]
    del blocks
    before = memory.rss_gb()
    assert memory.trim_heap()
    assert before - memory.rss_gb() >= 0.15  # most of the 7/8 freed is handed back
    assert memory.rss_gb() < holes + 0.1
    assert len(kept) == 1000



def test_kept_heap_restores_the_thresholds():
    """Inside ``kept_heap`` the thresholds keep freed pages; afterwards they are what carelab set before, or glibc's."""
    before = dict(memory._malloc_options)
    with memory.kept_heap(max_free_bytes=1024**3):
        if memory.libc_function("mallopt") is None:
            pytest.skip("no glibc mallopt here")
        assert memory._malloc_options[memory.M_TRIM_THRESHOLD] == 1024**3
        assert memory._malloc_options[memory.M_MMAP_THRESHOLD] == memory.GLIBC_WARM[memory.M_MMAP_THRESHOLD]
    warm = not before
    expected = {memory.M_MMAP_THRESHOLD: before.get(memory.M_MMAP_THRESHOLD,
                                                    memory.GLIBC_WARM[memory.M_MMAP_THRESHOLD]),
                memory.M_TRIM_THRESHOLD: before.get(memory.M_TRIM_THRESHOLD,
                                                    memory.GLIBC_WARM[memory.M_TRIM_THRESHOLD] if warm
                                                    else memory.GLIBC_STATIC_TRIM)}
    assert {k: memory._malloc_options[k] for k in expected} == expected



def test_kept_heap_hands_the_kept_pages_back_on_leaving():
    """Pages freed inside ``kept_heap`` stay resident there (no trim below the bound) and are handed back on leaving,
    so they do not stack under the next stage."""
    if memory.libc_function("mallopt") is None:
        pytest.skip("no glibc mallopt here")
    memory.trim_heap()
    with memory.kept_heap(max_free_bytes=1024**3):
        blocks = [bytearray(b"k" * (1024 * 1024)) for _ in range(200)]  # 200 MB of 1-MB blocks: heap, not mmap
        touched = memory.rss_gb()
        del blocks
        assert memory.rss_gb() > touched - 0.05  # freed at the heap's top, under the bound: kept resident
    assert memory.rss_gb() < touched - 0.15  # handed back on leaving
