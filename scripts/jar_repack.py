"""Carry the torchserve wheel in fewer bytes: its 46 MB frontend jar, unpacked, compresses far better.

    python scripts/jar_repack.py pack torchserve-0.12.0-py3-none-any.whl OUT_DIR     # on the packing host
    python scripts/jar_repack.py unpack OUT_DIR WHEEL_DIR                            # on the serving host

The wheel's ts/frontend/model-server.jar holds ~25k entries, each deflated on its own (101 MB -> 44 MB),
so xz sees only deflate output and gains little. ``pack`` splits the wheel into:

    <wheel stem>.nojar.whl     the wheel without the jar (every other member as it was)
    model-server.jar.frame     the jar's bytes with each entry's data cut out: local headers, central directory
    model-server.jar.content   every entry's data, uncompressed, one after another
    model-server.jar.json      where each entry's data went, its CRC-32, the jar's SHA-256 and size

and checks at pack time that deflating each entry again (zlib, level 6) gives its original bytes; an entry that
does not is kept as it was, compressed. ``unpack`` deflates the content again, splices it into the frame and
checks the SHA-256: the jar is the wheel's own, byte for byte (its hash is also the one the wheel's RECORD lists).
Where this Python's zlib deflates differently (another zlib build), the bytes cannot match; ``unpack`` then
writes a jar with the same entries in the same order (names, times, attributes, contents; CRC-32 of every
entry checked against the original's), says so, and goes on. Either way it writes the whole wheel back into
WHEEL_DIR for ``pip install``. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

JAR_MEMBER = "ts/frontend/model-server.jar"
LEVEL = 6  # what the jar's deflate output matches (Gradle's jar task, java.util.zip defaults)
LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
LOCAL_SIGNATURE = 0x04034B50


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _record_hash(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The sha256 the wheel's RECORD lists for ``member`` (urlsafe base64, no padding), if any."""
    record = next((name for name in wheel.namelist() if name.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in wheel.read(record).decode().splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            return rest.split(",", 1)[0].removeprefix("sha256=")
    return None


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack(wheel_path: Path, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        jar_info = wheel.getinfo(JAR_MEMBER)
        jar = wheel.read(JAR_MEMBER)
        listed = _record_hash(wheel, JAR_MEMBER)
        if listed is not None and listed != _urlsafe_sha256(jar):
            raise SystemExit(f"jar_repack: {JAR_MEMBER} does not match the hash in {wheel_path.name}'s RECORD")
        stripped = out_dir / (wheel_path.stem + ".nojar.whl")
        with zipfile.ZipFile(stripped, "w") as out:
            for info in wheel.infolist():
                if info.filename != JAR_MEMBER:
                    out.writestr(info, wheel.read(info), compress_type=info.compress_type)

    entries, frame, content = [], bytearray(), bytearray()
    position = 0  # in the jar
    with zipfile.ZipFile(io.BytesIO(jar)) as archive:
        infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
        for info in infos:
            fields = LOCAL_HEADER.unpack_from(jar, info.header_offset)
            if fields[0] != LOCAL_SIGNATURE:
                raise SystemExit(f"jar_repack: no local header at {info.header_offset} ({info.filename})")
            start = info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10]
            raw = jar[start:start + info.compress_size]
            data = archive.read(info)  # checks the CRC-32
            if info.compress_type == zipfile.ZIP_DEFLATED and _deflate(data) == raw:
                kind, carried = "deflate", data
            elif info.compress_type == zipfile.ZIP_STORED:
                kind, carried = "stored", data
            else:
                kind, carried = "raw", raw  # kept compressed: unpack copies it
            frame += jar[position:start]
            position = start + info.compress_size
            entries.append({"name": info.filename, "data_offset": start, "compress_size": info.compress_size,
                            "content_size": len(carried), "kind": kind, "crc": info.CRC,
                            "date_time": list(info.date_time), "external_attr": info.external_attr,
                            "compress_type": info.compress_type})
            content += carried
    frame += jar[position:]
    index = {"member": JAR_MEMBER, "wheel": wheel_path.name, "size": len(jar),
             "sha256": hashlib.sha256(jar).hexdigest(), "record_sha256": listed, "zlib_level": LEVEL,
             "packed_with_zlib": zlib.ZLIB_RUNTIME_VERSION,
             "wheel_member": {"date_time": list(jar_info.date_time), "external_attr": jar_info.external_attr},
             "entries": entries}
    (out_dir / "model-server.jar.frame").write_bytes(frame)
    (out_dir / "model-server.jar.content").write_bytes(content)
    (out_dir / "model-server.jar.json").write_text(json.dumps(index) + "\n")
    kinds = {kind: sum(e["kind"] == kind for e in entries) for kind in ("deflate", "stored", "raw")}
    print(f"jar_repack: {len(entries)} entries ({kinds}), frame {len(frame)} B, content {len(content)} B; "
          f"jar {len(jar)} B sha256 {index['sha256'][:16]}...")
    return index


def rebuild_jar(directory: Path) -> tuple[bytes, bool]:
    """The jar from ``directory``'s three parts; True when it is byte-identical to the packed one."""
    index = json.loads((directory / "model-server.jar.json").read_text())
    frame = (directory / "model-server.jar.frame").read_bytes()
    content = memoryview((directory / "model-server.jar.content").read_bytes())
    out, frame_pos, content_pos, removed = bytearray(), 0, 0, 0
    identical = True
    for entry in index["entries"]:
        data = content[content_pos:content_pos + entry["content_size"]]
        content_pos += entry["content_size"]
        raw = _deflate(bytes(data)) if entry["kind"] == "deflate" else bytes(data)
        if len(raw) != entry["compress_size"]:
            identical = False
            break
        cut = entry["data_offset"] - removed  # where the data was cut out of the frame
        out += frame[frame_pos:cut]
        out += raw
        frame_pos = cut
        removed += entry["compress_size"]
    else:
        out += frame[frame_pos:]
        identical = hashlib.sha256(out).hexdigest() == index["sha256"] and len(out) == index["size"]
    if identical:
        return bytes(out), True
    return _rebuild_entries(index, content), False


def _rebuild_entries(index: dict, content: memoryview) -> bytes:
    """A jar with the packed one's entries (order, names, times, attributes, contents): for a zlib that
    deflates differently. Every entry's CRC-32 is checked against the original's."""
    buffer = io.BytesIO()
    position = 0
    with zipfile.ZipFile(buffer, "w") as jar:
        for entry in index["entries"]:
            data = bytes(content[position:position + entry["content_size"]])
            position += entry["content_size"]
            if entry["kind"] == "raw":
                data = zlib.decompress(data, -15)
            if zlib.crc32(data) != entry["crc"]:
                raise SystemExit(f"jar_repack: {entry['name']}: CRC-32 differs from the original's")
            info = zipfile.ZipInfo(entry["name"], tuple(entry["date_time"]))
            info.external_attr = entry["external_attr"]
            info.compress_type = entry["compress_type"]
            jar.writestr(info, data, compresslevel=LEVEL if entry["compress_type"] == zipfile.ZIP_DEFLATED else None)
    return buffer.getvalue()


def unpack(directory: Path, wheel_dir: Path) -> Path:
    index = json.loads((directory / "model-server.jar.json").read_text())
    jar, identical = rebuild_jar(directory)
    if identical:
        print(f"jar_repack: {JAR_MEMBER} rebuilt byte-identical (sha256 {index['sha256'][:16]}..., as the wheel's RECORD lists)")
    else:
        print(f"jar_repack: this Python's zlib ({zlib.ZLIB_RUNTIME_VERSION}) deflates differently from the packing "
              f"host's ({index['packed_with_zlib']}): {JAR_MEMBER} rebuilt with the same {len(index['entries'])} "
              "entries (contents CRC-32 checked), not byte-identical")
    stripped = directory / (Path(index["wheel"]).stem + ".nojar.whl")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    target = wheel_dir / index["wheel"]
    with zipfile.ZipFile(stripped) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info), compress_type=info.compress_type)
        member = zipfile.ZipInfo(JAR_MEMBER, tuple(index["wheel_member"]["date_time"]))
        member.external_attr = index["wheel_member"]["external_attr"]
        member.compress_type = zipfile.ZIP_STORED  # the jar is compressed already; pip only unpacks it
        out.writestr(member, jar)
    print(f"jar_repack: wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    pack_parser = commands.add_parser("pack", help="split a torchserve wheel into the parts to carry")
    pack_parser.add_argument("wheel", type=Path)
    pack_parser.add_argument("out_dir", type=Path)
    unpack_parser = commands.add_parser("unpack", help="rebuild the wheel from the parts")
    unpack_parser.add_argument("directory", type=Path)
    unpack_parser.add_argument("wheel_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.wheel, args.out_dir)
    else:
        unpack(args.directory, args.wheel_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
