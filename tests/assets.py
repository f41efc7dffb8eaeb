"""Small real shards for tests, good and deliberately broken."""

from __future__ import annotations

import io
import json
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
        buffer, format="PNG"
    )
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
        members += [
            (f"{key}.jpg", jpeg_bytes()),
            (f"{key}.json", b'{"label": %d}' % (i % 3)),
            (f"{key}.txt", f"a red square number {i}".encode()),
        ]
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
    mixed = (
        good_members("mixed", 5)
        + [
            ("bad_notimage.jpg", b"this is not an image"),
            ("bad_notimage.txt", b"caption"),
            ("bad_nocaption.jpg", jpeg_bytes()),
            ("bad_emptycaption.jpg", jpeg_bytes()),
            ("bad_emptycaption.txt", b"   "),
            ("bad_pickle.jpg", jpeg_bytes()),
            ("bad_pickle.pyd", pickle.dumps(Exploit(marker))),
            ("bad_pickle.txt", b"caption"),
            ("bad_huge.png", png_bytes((3000, 3000))),
            ("bad_huge.txt", b"a huge image"),
        ]
        + good_members("tail", 3)
    )
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
    data[start : start + 512] = b"\xff" * 512
    (out_dir / "corrupt.tar").write_bytes(bytes(data))

    # Not a tar at all.
    (out_dir / "garbage.tar").write_bytes(b"\x00garbage" * 300)

    # A clean shard that must arrive whole.
    write_tar(out_dir / "good.tar", good_members("good", 10))
    return {
        "good_keys": {f"mixed{i:04d}" for i in range(5)}
        | {f"tail{i:04d}" for i in range(3)}
        | {f"good{i:04d}" for i in range(10)}
        | {f"corrupt{i:04d}" for i in (0, 1, 3, 4, 5)}
        | {f"trunc{i:04d}" for i in range(4)}
    }


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


# --- hand-made tar bytes for malformed headers that tarfile will not write ----------------------


def tar_header(name: str | bytes, size: int, kind: bytes = b"0", size_field: bytes | None = None) -> bytes:
    """A ustar header block with a valid checksum; `size_field` replaces the 12-byte size as given."""
    block = bytearray(512)
    raw_name = name if isinstance(name, bytes) else name.encode()
    block[0 : len(raw_name)] = raw_name
    block[100:108] = b"0000644\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def tar_member(name: str | bytes, data: bytes, **header) -> bytes:
    return tar_header(name, len(data), **header) + data + bytes(-len(data) % 512)


def pax_member(records: dict[str, str]) -> bytes:
    """A pax extended header ('x') holding `records` for the member that follows it."""
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        length = len(text) + len(str(len(text)))
        length = len(text) + len(str(length))
        body += str(length).encode() + text
    return tar_member("././@PaxHeader", body, kind=b"x")


def good_sample_bytes(key: str, label: int = 0) -> bytes:
    return (
        tar_member(f"{key}.jpg", jpeg_bytes())
        + tar_member(f"{key}.json", b'{"label": %d}' % label)
        + tar_member(f"{key}.txt", f"a red square {key}".encode())
    )


def write_malformed_shards(out_dir: Path) -> dict:
    """One shard per malformed input that once failed a whole run, each with good samples before
    and after where the tar allows it. Returns {"good": count, "bad": {reason: count}} as every
    reader must report them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpeg = jpeg_bytes()

    def sample(key: str, meta: bytes | None = None) -> bytes:
        return (
            tar_member(f"{key}.jpg", jpeg)
            + (tar_member(f"{key}.json", meta) if meta else b"")
            + tar_member(f"{key}.txt", b"a caption")
        )

    def shard(name: str, middle: bytes, good_after: bool = True) -> None:
        before = good_sample_bytes(f"{name}_a") + good_sample_bytes(f"{name}_b")
        after = good_sample_bytes(f"{name}_y") + good_sample_bytes(f"{name}_z") if good_after else b""
        (out_dir / f"{name}.tar").write_bytes(before + middle + after + bytes(1024))

    # pax size that is not a number: the member keeps its own header's size, and stays good
    shard("pax_size_text", pax_member({"size": "abc"}) + sample("p0"))
    # pax size of 50 GB in a small file: the declared data runs past the end (truncated; no sample)
    (out_dir / "pax_size_huge.tar").write_bytes(
        good_sample_bytes("h_a")
        + good_sample_bytes("h_b")
        + pax_member({"size": str(50 * 10**9)})
        + tar_member("h0.jpg", jpeg)
        + tar_member("h0.txt", b"caption")
        + bytes(1024)
    )
    # GNU base-256 size field: 0x80 then 0xff * 11 (~2^88 bytes)
    shard("gnu_base256", tar_header("g0.jpg", 0, size_field=b"\x80" + b"\xff" * 11) + tar_member("g0.txt", b"c"))
    shard("label_inf", sample("l0", b'{"label": 1e400}'))
    shard("label_huge", sample("l1", b'{"label": %d}' % 2**70))
    shard("conversation_string", sample("c0", b'{"conversations": "a string"}'))
    no_image = b'{"conversations": [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "red"}]}'
    two_images = b'{"conversations": [{"from": "human", "value": "<image><image>?"}, {"from": "gpt", "value": "red"}]}'
    shard("placeholders", sample("i0", no_image) + sample("i2", two_images))
    shard("duplicate_key", sample("d0") + tar_member("d0.txt", b"a second caption"))
    shard(
        "not_adjacent",
        tar_member("n0.jpg", jpeg)
        + tar_member("n1.jpg", jpeg)
        + tar_member("n0.txt", b"c")
        + tar_member("n1.txt", b"c"),
    )
    # a negative size passes Python's int(..., 8): a reader that trusts it seeks back onto the same header
    shard("negative_size", tar_header("m0.jpg", 0, size_field=b"-0001750\0\0\0\0") + sample("m1"))
    # a member name that is not UTF-8 (Latin-1): the sample is good, its key holds U+FFFD
    shard("latin1_name", tar_member(b"caf\xe9.jpg", jpeg) + tar_member(b"caf\xe9.txt", b"a caption"))
    shard("caption_huge", tar_member("t0.jpg", jpeg) + tar_member("t0.txt", b"word " * 20_000))
    turns = [{"from": "human", "value": "<image> hi"}] + [{"from": "gpt", "value": "hi"}] * 300
    shard("many_turns", sample("v0", json.dumps({"conversations": turns}).encode()))
    shard("metadata_huge", sample("w0", b'{"label": 1, "pad": "' + b"x" * (1 << 20) + b'"}'))
    (out_dir / "empty.tar").write_bytes(bytes(10240))
    (out_dir / "zero_bytes.tar").write_bytes(b"")
    (out_dir / "directories_only.tar").write_bytes(tar_header("a_dir/", 0, kind=b"5") + bytes(1024))
    return {
        "good": 13 * 4 + 1 + 2 + 2,  # 4 around each middle (p0, m1, the Latin-1 key too); 2 before the huge pax size
        "bad": {
            "bad_header": 3,
            "missing_image": 1,  # g0.txt is left without its image
            "caption_too_long": 1,
            "too_many_turns": 1,
            "metadata_too_large": 1,
            "truncated_tar": 1,
            "bad_metadata": 2,
            "bad_conversation": 1,
            "image_placeholders": 2,
            "duplicate_member": 1,
            "missing_caption": 2,
            "members_not_adjacent": 2,
            "empty_shard": 3,
        },
    }


def make_synth(out: Path, train: int, val: int, shard_samples: int, image_size: int = 32) -> Path:
    """Synthetic shards (+ manifest and tokenizer) written by `mmtrain data synth`, as a user makes them."""
    from mmtrain.jobs.cli import main

    args = ["--out", str(out), "--train", str(train), "--val", str(val), "--shard-samples", str(shard_samples)]
    assert main(["data", "synth", *args, "--image-size", str(image_size)]) == 0
    return out
