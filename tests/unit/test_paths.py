"""Files under a root are made and removed without following links."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.backups import paths
from app.errors import PathNotAllowed


@pytest.fixture
def root(tmp_path: Path) -> Path:
    made = tmp_path / "root"
    made.mkdir()
    return made


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    made = tmp_path / "outside"
    made.mkdir()
    (made / "keep.qcow2").write_bytes(b"not yours")
    return made


def test_directories_are_made_down_to_the_file(root: Path) -> None:
    paths.make_parents(str(root / "a" / "b" / "vda.qcow2"), root, what="target")
    assert (root / "a" / "b").is_dir()


def test_a_link_on_the_way_is_refused_and_nothing_is_made_beyond_it(
    root: Path, outside: Path
) -> None:
    (root / "a").symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="symbolic link"):
        paths.make_parents(str(root / "a" / "b" / "vda.qcow2"), root, what="target")
    assert sorted(p.name for p in outside.iterdir()) == ["keep.qcow2"]
    with pytest.raises(PathNotAllowed):
        paths.lstat(str(root / "a" / "keep.qcow2"), root, what="target")


def test_the_root_itself_may_be_reached_through_a_link(tmp_path: Path, root: Path) -> None:
    linked = tmp_path / "linked-root"
    linked.symlink_to(root)
    paths.make_parents(str(linked / "d" / "vda.qcow2"), linked, what="target")
    assert (root / "d").is_dir()


def test_removing_a_link_or_a_directory_removes_nothing(root: Path, outside: Path) -> None:
    (root / "vda.qcow2").symlink_to(outside / "keep.qcow2")
    (root / "dir").mkdir()
    assert not paths.remove_file(str(root / "vda.qcow2"), root, what="target")
    assert not paths.remove_file(str(root / "dir"), root, what="target")
    assert (outside / "keep.qcow2").read_bytes() == b"not yours"
    (root / "sub").symlink_to(outside)
    with pytest.raises(PathNotAllowed):
        paths.remove_file(str(root / "sub" / "keep.qcow2"), root, what="target")
    assert (outside / "keep.qcow2").exists()


def test_a_file_is_removed_with_its_emptied_directories_up_to_the_root(root: Path) -> None:
    target = root / "dom" / "backup" / "vda.qcow2"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert paths.remove_file(str(target), root, what="target", prune=2)
    assert list(root.iterdir()) == []


def test_paths_outside_the_root_are_refused(root: Path, outside: Path) -> None:
    for path in (str(outside / "keep.qcow2"), str(root), f"{root}/../outside/keep.qcow2"):
        with pytest.raises(PathNotAllowed):
            paths.remove_file(path, root, what="target")
    assert (outside / "keep.qcow2").exists()
