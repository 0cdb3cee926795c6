"""Huge-page-backed buffers for packed weights (llmaccel/_memory.py, csrc/memory.cpp)."""

import pytest
import torch

from llmaccel import _memory
from llmaccel._ext import ext, load_error

pytestmark = pytest.mark.skipif(load_error() is not None, reason="needs the C++ extension")


def test_thp_mode_is_reported():
    assert ext().transparent_huge_pages_mode() in ("always", "madvise", "never", "unsupported")
    import llmaccel

    assert llmaccel.cpu_info()["transparent_huge_pages"] == ext().transparent_huge_pages_mode()


@pytest.mark.parametrize("nbytes", [0, 1, 4099, (2 << 20) + 17, 5 * (2 << 20)])
def test_streamed_buffer_is_exact_size_and_usable(nbytes):
    buf = _memory.streamed_buffer(nbytes)
    assert buf.dtype == torch.int8 and buf.shape == (nbytes,) and buf.is_contiguous()
    page = _memory.huge_page_bytes()
    if page and nbytes >= page:
        assert buf.data_ptr() % page == 0
    pattern = (torch.arange(nbytes) % 251 - 125).to(torch.int8)
    buf.copy_(pattern)
    assert torch.equal(buf, pattern)


def test_opt_out(monkeypatch):
    monkeypatch.setenv("LLMACCEL_HUGE_PAGES", "0")
    _memory.huge_page_bytes.cache_clear()
    try:
        assert _memory.huge_page_bytes() == 0
        assert _memory.streamed_buffer(3 << 20).shape == (3 << 20,)
    finally:
        _memory.huge_page_bytes.cache_clear()


def test_advise_validates_its_arguments():
    page = ext().huge_page_bytes()
    if page == 0:
        pytest.skip("no transparent huge pages on this system")
    buf = _memory.streamed_buffer(2 * page)
    with pytest.raises(ValueError, match="advise_huge_pages.*multiples"):
        ext().advise_huge_pages(buf.data_ptr() + 64, page)
    with pytest.raises(ValueError, match="advise_huge_pages.*multiples"):
        ext().advise_huge_pages(buf.data_ptr(), page + 4096)
    with pytest.raises(ValueError, match="advise_huge_pages.*nbytes"):
        ext().advise_huge_pages(buf.data_ptr(), -1)
    with pytest.raises(ValueError, match="advise_huge_pages.*null"):
        ext().advise_huge_pages(0, page)
    assert isinstance(ext().advise_huge_pages(buf.data_ptr(), page), bool)


@pytest.mark.parametrize("nbytes", [0, 1, 7, 8, 4099, 100003])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_stream_read_reads_every_byte_once(nbytes, nthreads):
    g = torch.Generator().manual_seed(nbytes)
    buf = torch.randint(-128, 128, (nbytes,), dtype=torch.int8, generator=g)
    # Exact reference: the wrapping uint64 sum of the 8-byte little-endian words, plus the tail bytes.
    raw = buf.numpy().view("uint8")
    words = nbytes // 8
    expect = int(raw[:words * 8].view("<u8").sum(dtype="uint64")) if words else 0
    expect = (expect + int(raw[words * 8:].sum(dtype="uint64"))) % (1 << 64)
    assert ext().stream_read(buf.data_ptr(), nbytes, nthreads) == expect


def test_stream_read_validates_its_arguments():
    buf = torch.ones(64, dtype=torch.int8)
    with pytest.raises(ValueError, match="stream_read.*nbytes"):
        ext().stream_read(buf.data_ptr(), -1, 1)
    with pytest.raises(ValueError, match="stream_read.*nthreads"):
        ext().stream_read(buf.data_ptr(), 64, 0)
    with pytest.raises(ValueError, match="stream_read.*null"):
        ext().stream_read(0, 64, 1)
