"""llama.cpp's sources (converter, tools) at the installed llama-cpp-python's version: found, fetched, refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from edgedistill.errors import EdgeDistillError, OfflineError
from edgedistill.formats import llamacpp_source as src


def test_make_install_put_the_sources_of_the_installed_version_in_the_environment():
    path = src.source_dir(fetch=False)
    assert (path / "convert_hf_to_gguf.py").is_file() and (path / "gguf-py" / "gguf").is_dir()
    assert (path / "tools" / "imatrix" / "imatrix.cpp").is_file()
    assert (path / src.MARKER).read_text().strip() == src.version()
    assert not (path / "models").exists()  # llama.cpp's test vocabularies stay in the archive


def test_a_wrong_explicit_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDISTILL_LLAMA_CPP_SRC", str(tmp_path))
    with pytest.raises(EdgeDistillError, match="EDGEDISTILL_LLAMA_CPP_SRC"):
        src.source_dir()


def test_no_registry_gives_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    dest = tmp_path / "cache" / "llama.cpp" / "x"
    with pytest.raises(OfflineError, match="registry reachable"):
        src.fetch_into(dest)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_unpacking_keeps_the_vendored_tree_only_and_no_links(tmp_path):
    archive = tmp_path / "sdist.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        def add(name, data=b"x", kind=tarfile.REGTYPE, target=""):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("llama_cpp_python-9/vendor/llama.cpp/convert_hf_to_gguf.py")
        add("llama_cpp_python-9/vendor/llama.cpp/models/ggml-vocab.gguf")
        add("llama_cpp_python-9/vendor/llama.cpp/link", kind=tarfile.SYMTYPE, target="/etc/passwd")
        add("llama_cpp_python-9/llama_cpp/llama.py")
    out = tmp_path / "out"
    out.mkdir()
    src._unpack_vendored(archive, out)
    assert sorted(p.name for p in out.rglob("*")) == ["convert_hf_to_gguf.py"]
