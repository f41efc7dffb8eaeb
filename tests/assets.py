"""Small real shards for tests, good and deliberately broken."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(size=(32, 32), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def good_members(prefix: str, count: int) -> list[tuple[str, bytes]]:
    members = []
    for i in range(count):
        key = f"{prefix}{i:04d}"
        members += [(f"{key}.jpg", jpeg_bytes()), (f"{key}.json", b'{"label": %d}' % (i % 3)),
                    (f"{key}.txt", f"a red square number {i}".encode())]
    return members


class Exploit:
    """Unpickling this writes a marker file: proof that a reader unpickled sample data."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled!"))


def write_bad_shards(out_dir: Path, marker: Path) -> dict[str, object]:
    """Shards covering every bad-input case beside good samples. Returns the expected counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # One shard mixing good samples with every per-sample problem.
    mixed = good_members("mixed", 5) + [
        ("bad_notimage.jpg", b"this is not an image"), ("bad_notimage.txt", b"caption"),
        ("bad_nocaption.jpg", jpeg_bytes()),
        ("bad_emptycaption.jpg", jpeg_bytes()), ("bad_emptycaption.txt", b"   "),
        ("bad_pickle.jpg", jpeg_bytes()), ("bad_pickle.pyd", pickle.dumps(Exploit(marker))),
        ("bad_pickle.txt", b"caption"),
        ("bad_huge.png", png_bytes((3000, 3000))), ("bad_huge.txt", b"a huge image"),
    ] + good_members("tail", 3)
    mixed.sort(key=lambda m: m[0].split(".")[0])
    write_tar(out_dir / "mixed.tar", mixed)

    # A truncated tar: the first samples are intact, the file ends mid-member.
    write_tar(out_dir / "truncated_full.tar", good_members("trunc", 6))
    data = (out_dir / "truncated_full.tar").read_bytes()
    (out_dir / "truncated_full.tar").unlink()
    cut = _member_offset(data, "trunc0004.json") + 700  # inside the .json member: samples 0-3 are whole
    (out_dir / "truncated.tar").write_bytes(data[:cut])

    # A corrupt tar: one member's header overwritten with garbage in the middle of the file.
    write_tar(out_dir / "corrupt.tar", good_members("corrupt", 6))
    data = bytearray((out_dir / "corrupt.tar").read_bytes())
    start = _member_offset(bytes(data), "corrupt0002.jpg")
    data[start:start + 512] = b"\xff" * 512
    (out_dir / "corrupt.tar").write_bytes(bytes(data))

    # Not a tar at all.
    (out_dir / "garbage.tar").write_bytes(b"\x00garbage" * 300)

    # A clean shard that must arrive whole.
    write_tar(out_dir / "good.tar", good_members("good", 10))
    return {"good_keys": {f"mixed{i:04d}" for i in range(5)} | {f"tail{i:04d}" for i in range(3)}
            | {f"good{i:04d}" for i in range(10)} | {f"corrupt{i:04d}" for i in (0, 1, 3, 4, 5)}
            | {f"trunc{i:04d}" for i in range(4)}}


def _member_offset(data: bytes, name: str) -> int:
    """Byte offset of a member's header in an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            if info.name == name:
                return info.offset
    raise KeyError(name)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket stays bound until all are picked (asked one at a
    time, the OS can hand the same port out twice, and `ray start` refuses a port given twice)."""
    import socket
    from contextlib import ExitStack

    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def free_port() -> int:
    return free_ports(1)[0]
