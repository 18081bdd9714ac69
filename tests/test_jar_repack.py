"""scripts/jar_repack.py: a wheel's jar split into frame and content comes back byte for byte, and as the
same entries where the unpacking host's zlib deflates differently."""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import jar_repack  # noqa: E402


def _jar_bytes(tmp_path: Path) -> bytes:
    jar = tmp_path / "model-server.jar"
    with zipfile.ZipFile(jar, "w") as out:
        out.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", (2024, 9, 30, 18, 39, 0)),
                     b"Manifest-Version: 1.0\r\nMain-Class: org.pytorch.serve.ModelServer\r\n",
                     compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
        out.writestr(zipfile.ZipInfo("org/pytorch/serve/ModelServer.class", (2024, 9, 30, 18, 39, 2)),
                     bytes(range(256)) * 64, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
        out.writestr(zipfile.ZipInfo("stored.bin", (2024, 9, 30, 18, 39, 4)), b"\x00\x01" * 100,
                     compress_type=zipfile.ZIP_STORED)
        out.writestr(zipfile.ZipInfo("level9.txt", (2024, 9, 30, 18, 39, 6)), b"the quick brown fox " * 500,
                     compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)  # not reproducible at level 6
    return jar.read_bytes()


def _wheel(tmp_path: Path, jar: bytes) -> Path:
    wheel = tmp_path / "torchserve-0.12.0-py3-none-any.whl"
    digest = base64.urlsafe_b64encode(hashlib.sha256(jar).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("ts/__init__.py", b"")
        out.writestr(jar_repack.JAR_MEMBER, jar)
        out.writestr("torchserve-0.12.0.dist-info/RECORD",
                     f"ts/__init__.py,,\n{jar_repack.JAR_MEMBER},sha256={digest},{len(jar)}\n")
    return wheel


def test_unpack_rebuilds_the_wheels_jar_byte_for_byte(tmp_path):
    jar = _jar_bytes(tmp_path)
    index = jar_repack.pack(_wheel(tmp_path, jar), tmp_path / "parts")
    assert [e["kind"] for e in index["entries"]] == ["deflate", "deflate", "stored", "raw"]

    rebuilt = jar_repack.unpack(tmp_path / "parts", tmp_path / "wheels")

    with zipfile.ZipFile(rebuilt) as wheel:
        assert wheel.read(jar_repack.JAR_MEMBER) == jar
        assert sorted(wheel.namelist()) == sorted(["ts/__init__.py", jar_repack.JAR_MEMBER,
                                                   "torchserve-0.12.0.dist-info/RECORD"])


def test_a_zlib_that_deflates_differently_gets_the_same_entries(tmp_path, monkeypatch, capsys):
    jar = _jar_bytes(tmp_path)
    jar_repack.pack(_wheel(tmp_path, jar), tmp_path / "parts")
    monkeypatch.setattr(jar_repack, "_deflate", lambda data: b"\x03\x00" + data[:1])  # any other deflate output

    rebuilt = jar_repack.unpack(tmp_path / "parts", tmp_path / "wheels")

    assert "not byte-identical" in capsys.readouterr().out
    with zipfile.ZipFile(rebuilt) as wheel, zipfile.ZipFile(wheel.open(jar_repack.JAR_MEMBER)) as got, \
            zipfile.ZipFile(tmp_path / "model-server.jar") as want:
        assert [i.filename for i in got.infolist()] == [i.filename for i in want.infolist()]
        for mine, theirs in zip(got.infolist(), want.infolist()):
            assert (mine.date_time, mine.CRC, mine.compress_type) == (theirs.date_time, theirs.CRC, theirs.compress_type)
            assert got.read(mine) == want.read(theirs)


def test_pack_refuses_a_jar_that_its_wheels_record_does_not_list(tmp_path):
    wheel = _wheel(tmp_path, _jar_bytes(tmp_path))
    tampered = tmp_path / "tampered" / wheel.name
    tampered.parent.mkdir()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(tampered, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info, data + b"x" if info.filename == jar_repack.JAR_MEMBER else data)
    with pytest.raises(SystemExit, match="RECORD"):
        jar_repack.pack(tampered, tmp_path / "parts")
