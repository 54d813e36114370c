"""The ObjectStore contract: every backend stores, streams, lists and refuses exactly alike.

Each test takes the ``backend`` fixture, so it runs on the embedded store, on moto's S3 and on
SeaweedFS; a few tests of what only the embedded store can show are marked as such.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from remotejob.backends.base import ObjectStore
from remotejob.errors import AlreadyExists, BackendUnavailable, InvalidKey, MetadataError, NotFound
from tests.conftest import BackendSetup

INLINE_MAX = 64 * 1024
"""The largest bytes body the embedded store keeps in its index instead of a blob file."""

ODD_METADATA = {"Name": "Ünïcode ☃", "with space": "  padded  ", "empty": ""}


@pytest.fixture
def store(backend: BackendSetup) -> Any:
    store = backend.make_store()
    store.ensure()
    if backend.kind == "aws-real-s3":
        store.backend_kind = "seaweedfs"
    return store


def backend_kind(store: Any) -> str:
    """``seaweedfs`` for the SeaweedFS store, whose listing order differs from S3's."""
    return str(getattr(store, "backend_kind", ""))


def keys_of(store: Any, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


class ChunkSource(io.RawIOBase):
    """A non-seekable binary stream of ``size`` bytes that records every read size asked for."""

    def __init__(self, size: int) -> None:
        self.data = bytes(i % 251 for i in range(size))
        self.position = 0
        self.requested: list[int | None] = []
        self.returned: list[int] = []

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(-1 if size is None else size) or b""
        self.requested.append(size)
        self.returned.append(len(data))
        return data

    def readall(self) -> bytes:
        data = super().readall()
        self.requested.append(-1)
        self.returned.append(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        chunk = self.data[self.position : self.position + len(buffer)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def test_store_implements_the_protocol(store: Any) -> None:
    assert isinstance(store, ObjectStore)
    assert store.location


def test_bytes_round_trip_with_metadata_and_content_type(store: Any) -> None:
    info = store.put("in/cat.jpg", b"meow", ODD_METADATA, content_type="image/jpeg")

    assert (info.key, info.size, info.content_type) == ("in/cat.jpg", 4, "image/jpeg")
    with store.get("in/cat.jpg") as obj:
        assert obj.key == "in/cat.jpg"
        assert obj.size == 4
        assert obj.content_type == "image/jpeg"
        assert obj.metadata == ODD_METADATA
        assert obj.read() == b"meow"


def test_empty_body_and_default_content_type(store: Any) -> None:
    store.put("empty", b"")

    obj = store.get("empty")
    assert obj.read() == b""
    assert obj.size == 0
    assert obj.metadata == {}
    assert obj.content_type == "application/octet-stream"


def test_file_object_is_streamed_in_chunks(store: Any) -> None:
    source = ChunkSource(3 * 1024 * 1024 + 7)

    info = store.put("big", source, {"kind": "stream"})

    assert info.size == len(source.data)
    # Only bounded reads return data; an unbounded read may only confirm the end of the stream.
    unbounded = [n for size, n in zip(source.requested, source.returned, strict=True)
                 if size is None or size < 0]
    assert sum(unbounded) == 0
    with store.get("big") as obj:
        stream = obj.open()
        parts = iter(lambda: stream.read(256 * 1024), b"")
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
    assert digest.hexdigest() == hashlib.sha256(source.data).hexdigest()
    assert store.head("big").metadata == {"kind": "stream"}


def test_real_file_round_trip(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "photo.bin"
    path.write_bytes(b"\x00\xff" * 700_000)

    with open(path, "rb") as body:
        store.put("out/job/photo.bin", body, content_type="image/png")

    target = tmp_path / "copy.bin"
    store.get("out/job/photo.bin").save(str(target))
    assert target.read_bytes() == path.read_bytes()


def test_a_path_is_read_by_the_store(store: Any, tmp_path: Path) -> None:
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(9 * 1024 * 1024))  # over the 8 MiB multipart threshold

    info = store.put("in/from-path", path, {"origin": "disk"}, content_type="image/png")

    assert info.size == path.stat().st_size
    with store.get("in/from-path") as obj:
        assert obj.read() == path.read_bytes()
        assert (obj.metadata, obj.content_type) == ({"origin": "disk"}, "image/png")


def test_head_describes_without_body(store: Any) -> None:
    put = store.put("h", b"12345", {"a": "1"}, "text/plain")

    info = store.head("h")

    assert (info.key, info.size, info.content_type, info.metadata) == ("h", 5, "text/plain", {"a": "1"})
    assert info.etag and info.etag == put.etag
    assert info.modified > 0
    assert store.put("h2", b"other").etag != info.etag


def test_metadata_survives_head_and_get_exactly(store: Any) -> None:
    store.put("m", b"x", ODD_METADATA)

    assert store.head("m").metadata == ODD_METADATA
    assert store.get("m").metadata == ODD_METADATA


@pytest.mark.parametrize("operation", ["get", "head"])
def test_unknown_key_is_not_found(store: Any, operation: str) -> None:
    with pytest.raises(NotFound, match="no-such-key"):
        getattr(store, operation)("in/no-such-key")
    with pytest.raises(LookupError):
        getattr(store, operation)("in/no-such-key")


def test_delete_is_idempotent(store: Any) -> None:
    store.put("d", b"x")

    store.delete("d")
    store.delete("d")
    store.delete("never-existed")

    with pytest.raises(NotFound):
        store.head("d")
    assert keys_of(store) == []


def test_overwrite_replaces_body_and_metadata(store: Any) -> None:
    store.put("o", b"first", {"v": "1"}, "text/plain")

    store.put("o", b"second!", {"w": "2"}, "application/json")

    with store.get("o") as obj:
        assert obj.read() == b"second!"
        assert obj.metadata == {"w": "2"}
        assert obj.content_type == "application/json"
    assert [(i.key, i.size) for i in store.list()] == [("o", 7)]


def test_copy_keeps_body_metadata_and_content_type(store: Any) -> None:
    store.put("staging/a", b"payload", {"n\u00e4me": "Caf\u00e9"}, "image/png")
    store.put("published/a", b"old", {"x": "1"})

    info = store.copy("staging/a", "published/a")
    store.delete("staging/a")

    assert (info.key, info.size) == ("published/a", 7)
    with store.get("published/a") as obj:
        assert obj.read() == b"payload"
        assert obj.metadata == {"n\u00e4me": "Caf\u00e9"}
        assert obj.content_type == "image/png"
    assert keys_of(store) == ["published/a"]


def test_copy_of_a_multipart_sized_object_is_intact(store: Any) -> None:
    body = os.urandom(9 * 1024 * 1024)  # above the 8 MiB part size of server-side copies
    store.put("big", io.BytesIO(body), {"k": "v"})

    store.copy("big", "big-copy")

    with store.get("big-copy") as obj:
        assert obj.metadata == {"k": "v"}
        assert hashlib.sha256(obj.read()).digest() == hashlib.sha256(body).digest()


def test_copy_of_a_missing_object_is_not_found(store: Any) -> None:
    with pytest.raises(NotFound, match="nothing-here"):
        store.copy("nothing-here", "dst")
    assert keys_of(store) == []


def test_if_absent_creates_once(store: Any) -> None:
    store.put("jobs/1/final", b"first", {"who": "a"}, if_absent=True)

    with pytest.raises(AlreadyExists):
        store.put("jobs/1/final", b"second", {"who": "b"}, if_absent=True)

    with store.get("jobs/1/final") as obj:
        assert obj.read() == b"first"
        assert obj.metadata == {"who": "a"}


def test_if_absent_has_one_winner_among_concurrent_writers(backend: BackendSetup, store: Any) -> None:
    if backend.kind == "aws":
        pytest.skip("moto's conditional put is check-then-act, not atomic (see docs/architecture.md)")
    winners: list[int] = []
    losers: list[int] = []
    start = threading.Barrier(8)

    def claim(n: int) -> None:
        start.wait()
        try:
            store.put("jobs/race/final", f"writer {n}".encode(), if_absent=True)
            winners.append(n)
        except AlreadyExists:
            losers.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(winners) == 1 and len(losers) == 7
    assert store.get("jobs/race/final").read() == f"writer {winners[0]}".encode()


def test_list_is_in_byte_order_and_filters_by_prefix(store: Any) -> None:
    names = ["a~", "aé", "a/c", "a-b", "b", "a/b", "a", "ab", "A"]
    for name in names:
        store.put(name, name.encode())

    def listed(prefix: str = "") -> list[str]:
        keys = keys_of(store, prefix)
        if backend_kind(store) == "seaweedfs":  # SeaweedFS lists folder by folder, not byte order
            keys.sort(key=lambda k: k.encode())
        return keys

    assert listed() == sorted(names, key=lambda k: k.encode())
    assert listed() == ["A", "a", "a-b", "a/b", "a/c", "ab", "a~", "aé", "b"]
    assert listed("a/") == ["a/b", "a/c"]
    assert listed("a") == ["a", "a-b", "a/b", "a/c", "ab", "a~", "aé"]
    assert listed("aé") == ["aé"]
    assert listed("c") == []
    assert {i.key: i.size for i in store.list("a/")} == {"a/b": 3, "a/c": 3}


def test_list_starts_after_a_key_as_s3_start_after_does(store: Any) -> None:
    for name in ["log/001", "log/002", "log/003", "log/010", "other/002"]:
        store.put(name, b"1")

    assert [i.key for i in store.list("log/", start_after="log/002")] == ["log/003", "log/010"]
    assert [i.key for i in store.list("log/", start_after="log/0025")] == ["log/003", "log/010"]
    assert [i.key for i in store.list("log/", start_after="log/010")] == []
    everything = ["log/001", "log/002", "log/003", "log/010"]
    assert [i.key for i in store.list("log/", start_after="a")] == everything


def test_list_has_no_wildcards(store: Any) -> None:
    for name in ["x%y", "x_y", "xay", "x%"]:
        store.put(name, b"1")

    assert keys_of(store, "x%") == ["x%", "x%y"]
    assert keys_of(store, "x_") == ["x_y"]


def test_key_and_key_below_it_coexist(store: Any) -> None:
    store.put("a", b"file")
    store.put("a/b", b"below")

    assert store.get("a").read() == b"file"
    assert store.get("a/b").read() == b"below"
    store.delete("a")
    assert store.get("a/b").read() == b"below"


def test_longest_and_unicode_keys_work(store: Any) -> None:
    # S3's 1,024 bytes include the store's own key prefix, if it has one.
    room = 1024 - len(getattr(store, "prefix", "").encode())
    # Folders of 99 bytes: SeaweedFS, like a file system, refuses one very long path segment.
    longest = ("k/" + "/".join(["x" * 99] * 11))[:room].rstrip("/")
    longest += "y" * (room - len(longest.encode()))
    assert len(longest.encode()) == room
    unicode = "in/ünï ☃ 𝄞/a b+c=d"

    store.put(longest, b"long")
    store.put(unicode, b"uni")

    assert store.get(longest).read() == b"long"
    assert store.get(unicode).read() == b"uni"
    assert keys_of(store) == [unicode, longest]


@pytest.mark.parametrize(
    "key",
    ["", "x" * 1025, "é" * 513, "../x", "a/../b", "a/./b", "/abs", "nul\x00"],
    ids=["empty", "1025-bytes", "1026-utf8-bytes", "dotdot", "inner-dotdot", "dot", "absolute", "nul"],
)
def test_invalid_keys_are_refused_and_nothing_is_written(store: Any, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.put(key, b"x", if_absent=True)
    with pytest.raises(InvalidKey):
        store.get(key)

    assert keys_of(store) == []


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"ok": "1", "count": 3}, "count"),
        ({"flag": None}, "flag"),
        ({"small": "x", "huge": "y" * 2100}, "huge"),
        ({f"k{i}": "v" * 100 for i in range(30)}, "k19"),
    ],
    ids=["int", "none", "one-large-value", "many-fields"],
)
def test_invalid_metadata_names_the_field_and_writes_nothing(
    store: Any, metadata: dict[str, Any], field: str
) -> None:
    with pytest.raises(MetadataError, match=field):
        store.put("meta", b"x", metadata)

    with pytest.raises(NotFound):
        store.head("meta")


def test_invalid_metadata_leaves_an_existing_object_alone(store: Any) -> None:
    store.put("keep", b"old", {"v": "1"})

    with pytest.raises(MetadataError):
        store.put("keep", b"new", {"v": 2})  # type: ignore[dict-item]

    assert store.get("keep").read() == b"old"


# -- what only the embedded store can show ----------------------------------------------------


@pytest.fixture
def embedded(backend: BackendSetup) -> BackendSetup:
    if backend.kind != "embedded":
        pytest.skip("embedded store only")
    return backend


def test_fresh_store_works_without_ensure(embedded: BackendSetup, tmp_path: Path) -> None:
    from remotejob.backends.local import LocalStore

    store = LocalStore(tmp_path / "new" / "store")

    store.put("k", b"v")

    assert store.get("k").read() == b"v"
    assert store.location == f"file://{tmp_path / 'new' / 'store'}"


def test_keys_never_become_file_names(embedded: BackendSetup, tmp_path: Path) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    keys = ["in/escape..txt", "CON", "a\\b", "x" * 1024, "a", "a/b"]

    for key in keys:
        store.put(key, key.encode() + bytes(INLINE_MAX))  # too large to be inline: a blob file

    assert {p.name for p in root.iterdir()} <= {"blobs", "index.db", "index.db-wal", "index.db-shm"}
    blobs = sorted(p.name for p in (root / "blobs").iterdir())
    assert len(blobs) == len(keys)
    assert all(len(name) == 32 and int(name, 16) >= 0 for name in blobs)
    assert [store.get(key).read() for key in keys] == [key.encode() + bytes(INLINE_MAX) for key in keys]


def test_unusable_folder_is_backend_unavailable(embedded: BackendSetup, tmp_path: Path) -> None:
    from remotejob.backends.local import LocalStore

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = LocalStore(blocker)

    with pytest.raises(BackendUnavailable, match=str(blocker)):
        store.ensure()
    with pytest.raises(BackendUnavailable):
        store.put("k", b"v")


def test_stores_in_two_processes_share_objects(embedded: BackendSetup, tmp_path: Path) -> None:
    import subprocess
    import sys

    from remotejob.backends.local import LocalStore

    root = tmp_path / "shared"
    LocalStore(root).put("from-parent", b"hello")
    script = (
        "import sys\nfrom remotejob.backends.local import LocalStore\n"
        "s = LocalStore(sys.argv[1])\n"
        "s.put('from-child', s.get('from-parent').read() + b' back', if_absent=True)\n"
    )

    subprocess.run([sys.executable, "-c", script, str(root)], check=True, cwd=Path(__file__).parent.parent)

    assert LocalStore(root).get("from-child").read() == b"hello back"


@pytest.mark.parametrize("size", [8, INLINE_MAX + 1], ids=["inline", "blob"])
def test_reader_keeps_its_body_while_the_key_is_overwritten(
    embedded: BackendSetup, tmp_path: Path, size: int
) -> None:
    from remotejob.backends.local import LocalStore

    store = LocalStore(tmp_path / "s")
    old, new = b"old body".ljust(size, b"."), b"new body".ljust(size, b".")
    store.put("k", old)

    with store.get("k") as obj:
        store.put("k", new)
        store.delete("k")
        assert obj.read() == old

    assert list((tmp_path / "s" / "blobs").iterdir()) == []


# -- the embedded store keeps small bodies in its index ------------------------------------------

OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    modified REAL NOT NULL
) WITHOUT ROWID
"""
"""The index's table before small bodies were kept in it."""


def blob_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs").iterdir())


def index_row(root: Path, key: str) -> tuple[str, bytes | None]:
    """The ``blob`` and ``data`` the index holds for ``key``."""
    with closing(sqlite3.connect(root / "index.db")) as conn:
        row = conn.execute("SELECT blob, data FROM objects WHERE key = ?", (key.encode(),)).fetchone()
    assert row is not None
    return str(row[0]), row[1]


def data_columns(root: Path) -> list[str]:
    with closing(sqlite3.connect(root / "index.db")) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(objects)") if row[1] == "data"]


def test_the_inline_limit_is_64_kib(embedded: BackendSetup) -> None:
    from remotejob.backends import local_store

    assert getattr(local_store, "INLINE_MAX", None) == INLINE_MAX


def test_a_small_bytes_body_writes_no_blob_file_and_a_large_one_does(
    embedded: BackendSetup, tmp_path: Path
) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    small, largest_inline, large = b"status", os.urandom(INLINE_MAX), os.urandom(INLINE_MAX + 1)

    infos = {key: store.put(key, body, {"k": key}, "application/json")
             for key, body in [("small", small), ("edge", largest_inline), ("empty", b"")]}

    assert blob_files(root) == []
    assert index_row(root, "small") == ("inline", small)
    store.put("view", memoryview(bytearray(b"abcd")).cast("I"))  # type: ignore[arg-type]  # 1 item, 4 bytes
    assert index_row(root, "view") == ("inline", b"abcd")
    store.put("large", large)
    store.put("stream", io.BytesIO(small))  # streams and paths always go to a blob file
    assert len(blob_files(root)) == 2
    assert index_row(root, "large")[1] is None and index_row(root, "stream")[1] is None
    for key, body in [("small", small), ("edge", largest_inline), ("empty", b""), ("large", large),
                      ("stream", small), ("view", b"abcd")]:
        with store.get(key) as obj:
            assert obj.read() == body
            assert obj.size == len(body)
    assert store.head("small") == infos["small"]
    edge = store.head("edge")
    assert (edge.metadata, edge.content_type) == ({"k": "edge"}, "application/json")
    assert [(i.key, i.size) for i in store.list()] == [
        ("edge", INLINE_MAX), ("empty", 0), ("large", INLINE_MAX + 1),
        ("small", 6), ("stream", 6), ("view", 4),
    ]


def test_an_inline_body_has_the_etag_of_the_same_bytes_in_a_blob(
    embedded: BackendSetup, tmp_path: Path
) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)

    inline = store.put("inline", b"same bytes")
    in_blob = store.put("blob", io.BytesIO(b"same bytes"))

    assert index_row(root, "inline")[1] == b"same bytes" and index_row(root, "blob")[1] is None
    assert inline.etag == in_blob.etag == hashlib.md5(b"same bytes").hexdigest()  # noqa: S324
    assert store.head("inline").etag == store.head("blob").etag == inline.etag


def test_overwrite_and_delete_across_inline_and_blob_leave_no_file(
    embedded: BackendSetup, tmp_path: Path
) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    large, larger = os.urandom(INLINE_MAX + 1), os.urandom(INLINE_MAX + 2)

    store.put("k", large, {"v": "1"})
    assert len(blob_files(root)) == 1
    store.put("k", b"small", {"v": "2"})
    assert blob_files(root) == []
    assert store.get("k").read() == b"small" and store.head("k").metadata == {"v": "2"}
    store.put("k", larger, {"v": "3"})
    assert len(blob_files(root)) == 1
    assert store.get("k").read() == larger and store.head("k").size == INLINE_MAX + 2
    store.put("k", b"again")
    store.delete("k")
    assert blob_files(root) == []
    assert keys_of(store) == []

    store.put("once", b"small", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("once", large, if_absent=True)
    store.put("once-large", large, if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put("once-large", b"small", if_absent=True)
    assert store.get("once").read() == b"small" and store.get("once-large").read() == large
    assert len(blob_files(root)) == 1
    store.delete("once-large")
    store.delete("once")
    assert blob_files(root) == []


def test_a_copy_of_an_inline_object_is_inline_and_of_a_blob_a_link(
    embedded: BackendSetup, tmp_path: Path
) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    large = os.urandom(INLINE_MAX + 1)
    store.put("small", b"small", {"a": "1"}, "text/plain")
    store.put("large", large)
    store.put("dst-was-large", large)
    store.put("dst-was-small", b"x")

    store.copy("small", "small-copy")
    store.copy("small", "dst-was-large")
    store.copy("large", "large-copy")
    store.copy("large", "dst-was-small")

    assert index_row(root, "small-copy") == ("inline", b"small")
    assert index_row(root, "dst-was-large") == ("inline", b"small")
    assert store.head("small-copy").metadata == {"a": "1"}
    assert store.get("small-copy").read() == b"small"
    linked = root / "blobs" / index_row(root, "large-copy")[0]
    assert linked.stat().st_ino == (root / "blobs" / index_row(root, "large")[0]).stat().st_ino
    assert linked.stat().st_nlink == 3  # large, large-copy, dst-was-small
    assert len(blob_files(root)) == 3  # the three links, and the replaced blob of dst-was-large is gone
    for key in ("small", "small-copy", "dst-was-large", "large", "large-copy", "dst-was-small"):
        store.delete(key)
    assert blob_files(root) == []


@pytest.mark.parametrize(
    ("column", "value"),
    [("blob", "0" * 32), ("blob", ""), ("blob", "../../x"), ("data", None), ("data", "text")],
    ids=["inline-with-a-blob-name", "inline-empty-blob", "inline-escaping-blob", "inline-without-data",
         "inline-text"],
)
def test_an_altered_inline_row_is_refused(
    embedded: BackendSetup, tmp_path: Path, column: str, value: str | None
) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    store.put("k", b"inline")
    with closing(sqlite3.connect(root / "index.db")) as conn, conn:
        conn.execute(f"UPDATE objects SET {column} = ? WHERE key = ?", (value, b"k"))  # noqa: S608

    for attempt in (lambda: store.get("k"), lambda: store.head("k"), lambda: store.copy("k", "c")):
        with pytest.raises(BackendUnavailable, match="not a blob of this store"):
            attempt()
    store.put("k", b"overwritten")
    assert store.get("k").read() == b"overwritten"
    store.delete("k")
    assert keys_of(store) == [] and blob_files(root) == []


def test_a_blob_row_given_inline_data_is_refused(embedded: BackendSetup, tmp_path: Path) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    store = LocalStore(root)
    store.put("k", io.BytesIO(b"in a blob"))
    with closing(sqlite3.connect(root / "index.db")) as conn, conn:
        conn.execute("UPDATE objects SET data = ? WHERE key = ?", (b"planted", b"k"))

    with pytest.raises(BackendUnavailable, match="not a blob of this store"):
        store.get("k")
    store.delete("k")
    assert blob_files(root) == []


def make_old_index(root: Path) -> bytes:
    """A store as the previous version left it: the old table, one object in a blob file."""
    body = b"stored before inline bodies"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / ("ab" * 16)).write_bytes(body)
    with closing(sqlite3.connect(root / "index.db")) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(OLD_SCHEMA)
        conn.execute(
            "INSERT INTO objects (key, blob, size, metadata, content_type, etag, modified) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (b"old", "ab" * 16, len(body), '{"v": "old"}', "text/plain",
             hashlib.md5(body).hexdigest(), 1.0),  # noqa: S324
        )
    return body


def test_an_old_index_is_migrated_when_opened(embedded: BackendSetup, tmp_path: Path) -> None:
    from remotejob.backends.local import LocalStore

    root = tmp_path / "s"
    body = make_old_index(root)
    assert data_columns(root) == []

    store = LocalStore(root)
    store.put("new", b"inline now")
    LocalStore(root).put("again", b"opened twice")  # a second opening finds the column there

    assert data_columns(root) == ["data"]
    assert index_row(root, "new") == ("inline", b"inline now")
    with store.get("old") as obj:
        assert (obj.read(), obj.metadata, obj.content_type) == (body, {"v": "old"}, "text/plain")
    store.put("old", b"small now")  # its blob file goes
    assert blob_files(root) == []
    assert keys_of(store) == ["again", "new", "old"]


def test_processes_opening_an_old_index_at_once_all_migrate_it(
    embedded: BackendSetup, tmp_path: Path
) -> None:
    import subprocess
    import sys

    root = tmp_path / "s"
    body = make_old_index(root)
    go = tmp_path / "go"
    script = (
        "import os, sys, time\nfrom remotejob.backends.local import LocalStore\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.001)\n"
        "s = LocalStore(sys.argv[1])\n"
        "s.put('from/' + sys.argv[3], sys.argv[3].encode())\n"
        "assert s.get('old').read() == " + repr(body) + "\n"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", script, str(root), str(go), str(n)],
                         cwd=Path(__file__).parent.parent)
        for n in range(6)
    ]
    go.touch()

    assert [child.wait(timeout=60) for child in children] == [0] * 6
    assert data_columns(root) == ["data"]
    from remotejob.backends.local import LocalStore

    store = LocalStore(root)
    assert {key: store.get(key).read() for key in keys_of(store, "from/")} == {
        f"from/{n}": str(n).encode() for n in range(6)
    }
