"""Names read from a checksum list never leave its folder."""
import hashlib
import os

import pytest

from qtutor.data import verify_checksums


def _listing(folder, *lines):
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def test_the_repository_list_verifies():
    assert verify_checksums() and all(verify_checksums().values())


def test_a_good_list(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    digest = hashlib.sha256(b"hello").hexdigest()
    _listing(tmp_path, f"{digest}  a.txt", f"{'0' * 64} *a.txt")
    assert verify_checksums(tmp_path) == {"a.txt": False}  # the last line for a name wins
    _listing(tmp_path, f"{digest}  a.txt")
    assert verify_checksums(tmp_path) == {"a.txt": True}


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../x", "*../secret"])
def test_a_name_outside_the_folder_is_refused(tmp_path, name):
    (tmp_path / "sub").mkdir()
    _listing(tmp_path, f"{'a' * 64}  ok.txt", f"{'b' * 64}  {name}")
    (tmp_path / "ok.txt").write_text("x")
    with pytest.raises(ValueError, match=r"line 2: .* is outside .*only name files inside its own folder"):
        verify_checksums(tmp_path)


def test_a_link_that_points_out_is_refused(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    folder = tmp_path / "data"
    folder.mkdir()
    os.symlink(outside, folder / "link.txt")
    _listing(folder, f"{'c' * 64}  link.txt")
    with pytest.raises(ValueError, match="is outside"):
        verify_checksums(folder)


@pytest.mark.parametrize("line", ["nothex  a.txt", "abc", f"{'g' * 64}  a.txt"])
def test_a_malformed_line_names_its_number(tmp_path, line):
    _listing(tmp_path, line)
    with pytest.raises(ValueError, match=r"line 1: .* is not '<64 hex digits> <file name>'"):
        verify_checksums(tmp_path)
