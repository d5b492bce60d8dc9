"""Files and directories written whole, with the modes a plain write would give them."""

from __future__ import annotations

import os
import stat

import polars as pl
import pytest

from sendwise.store.files import atomic_path, write_frame


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_directories_and_files_get_the_modes_of_a_normal_write(tmp_path, umask):
    """mkdtemp made shop directories 0700: no other user or service account could enter."""
    shop = tmp_path / "shop"
    with atomic_path(shop, directory=True) as staging:
        write_frame(pl.DataFrame({"a": [1]}), staging / "orders.parquet")
    assert mode(shop) == 0o777 & ~umask
    assert mode(shop / "orders.parquet") == 0o666 & ~umask
    with atomic_path(shop, directory=True) as staging:  # replacing keeps the normal mode
        (staging / "x").write_text("x")
    assert mode(shop) == 0o777 & ~umask and (shop / "x").exists()


def test_a_failed_write_leaves_the_old_directory_and_no_staging(tmp_path):
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "kept").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(shop, directory=True) as staging:
        (staging / "half").write_text("new")
        raise RuntimeError("stopped half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["shop"]
    assert [p.name for p in shop.iterdir()] == ["kept"]
