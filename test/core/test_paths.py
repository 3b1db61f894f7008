"""paths.py: caller-supplied paths must resolve inside the allowed roots."""

from __future__ import annotations

import os

import pytest

from ccl_lgs_ros.paths import PathRefused, resolve_inside


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "scenes" / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link_out").symlink_to(outside)
    (root / "link_in").symlink_to(root / "scenes")
    return root, outside


def test_inside_paths_are_accepted(tree):
    root, _ = tree
    assert resolve_inside(root / "scenes" / "a", [root]) == (root / "scenes" / "a").resolve()
    assert resolve_inside("scenes/a", [root]) == (root / "scenes" / "a").resolve()  # relative to root
    assert resolve_inside(root / "link_in" / "a", [root], must_exist=True) == (root / "scenes" / "a").resolve()
    assert resolve_inside(root / "new", [root]) == (root / "new").resolve()  # need not exist
    assert resolve_inside(root, [root]) == root.resolve()


def test_outside_and_traversal_are_refused(tree):
    root, outside = tree
    with pytest.raises(PathRefused, match="outside the allowed roots"):
        resolve_inside(outside, [root])
    with pytest.raises(PathRefused, match="resolves to"):
        resolve_inside(root / "link_out", [root])  # symlink escaping the root
    with pytest.raises(PathRefused, match=r"'\.\.'"):
        resolve_inside(f"{root}/scenes/../scenes/a", [root])  # '..' even when it stays inside
    with pytest.raises(PathRefused, match=r"'\.\.'"):
        resolve_inside("../outside", [root])
    with pytest.raises(PathRefused, match="outside"):
        resolve_inside("/etc/passwd", [root])
    with pytest.raises(PathRefused, match="outside"):
        resolve_inside(str(root) + "_sibling", [root])  # prefix match is not containment


def test_bad_input_is_refused(tree):
    root, _ = tree
    for bad, why in [
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("x" * 5000, "longer"),
    ]:
        with pytest.raises(PathRefused, match=why):
            resolve_inside(bad, [root])
    with pytest.raises(PathRefused, match="no allowed roots"):
        resolve_inside(root / "scenes", [])
    with pytest.raises(PathRefused, match="does not exist"):
        resolve_inside(root / "missing", [root], must_exist=True)


def test_home_expansion(tree, monkeypatch):
    root, _ = tree
    monkeypatch.setenv("HOME", str(root.parent))
    assert resolve_inside("~/root/scenes", ["~/root"]) == (root / "scenes").resolve()
    assert os.path.expanduser("~") == str(root.parent)
