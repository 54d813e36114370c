"""The embedded store keeps every read and write inside its folder, and distinct keys apart.

Each test puts a canary folder beside the store (``tmp/canary/secret.txt``, ``tmp/canary/empty``)
and attacks the store, through keys or through links and files planted inside its folder. After
the attack nothing outside the store's folder has changed (the canary is byte-identical and no
file appeared) and no read returned the canary's bytes: a hostile key is refused with
``InvalidKey`` or stored inside the folder under exactly that key, and a planted link makes the
store fail with a clear error instead of being followed.

The store's folder itself is the caller's choice and may be reached through links; what is inside
it is not trusted.
"""

from __future__ import annotations

import os
import re
import sqlite3
import unicodedata
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import remotejob
from remotejob.backends import local_store
from remotejob.backends.base import ObjectStore
from remotejob.backends.local import LocalStore
from remotejob.errors import BackendUnavailable, InvalidKey, NotFound

SECRET = b"canary: no store may read, change or delete this\n"


# -- the canary and what "untouched" means ------------------------------------------------------


@dataclass
class Site:
    """A temporary folder holding a canary folder and the store's folder (``inside``)."""

    tmp: Path
    inside: Path
    before: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    @property
    def canary(self) -> Path:
        return self.tmp / "canary"

    def outside(self) -> dict[str, tuple[str, bytes]]:
        """Every file, folder and link under ``tmp`` but outside ``inside``, with its content."""
        found: dict[str, tuple[str, bytes]] = {}
        for folder, subfolders, files in os.walk(self.tmp):
            subfolders[:] = [name for name in subfolders if Path(folder, name) != self.inside]
            for name in subfolders + files:
                path = Path(folder, name)
                if path == self.inside:
                    continue
                relative = str(path.relative_to(self.tmp))
                if path.is_symlink():
                    found[relative] = ("link", os.fsencode(os.readlink(path)))
                elif path.is_dir():
                    found[relative] = ("folder", b"")
                else:
                    found[relative] = ("file", path.read_bytes())
        return found

    def assert_untouched(self, *stores: ObjectStore) -> None:
        """Nothing outside the store's folder changed, and no stored key reads the canary."""
        assert self.outside() == self.before
        for store in stores:
            for info in store.list():
                try:
                    with store.get(info.key) as obj:
                        assert SECRET not in obj.read()
                except BackendUnavailable:
                    pass


def make_site(tmp: Path, inside: str) -> Site:
    canary = tmp / "canary"
    canary.mkdir()
    (canary / "secret.txt").write_bytes(SECRET)
    (canary / "empty").write_bytes(b"")  # SQLite would take an empty file for a new database
    site = Site(tmp, tmp / inside)
    site.before = site.outside()
    return site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """The canary at ``tmp/canary``, the store's folder at ``tmp/store``."""
    return make_site(tmp_path, "store")


@pytest.fixture
def store(site: Site) -> LocalStore:
    store = LocalStore(site.inside)
    store.ensure()
    return store


@pytest.fixture
def queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Site, remotejob.Queue]]:
    """A job system on the embedded backend in ``tmp/home``, the canary beside it."""
    for name in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES", "REMOTEJOB_HOME"):
        monkeypatch.delenv(name, raising=False)
    site = make_site(tmp_path, "home")
    yield site, remotejob.connect("escape", home=site.inside, wait_time=0)


@pytest.fixture
def bodies_in_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep even small bodies in blob files, for the tests of links and files planted among them
    (the store otherwise keeps bodies of up to ``INLINE_MAX`` bytes in its index)."""
    monkeypatch.setattr(local_store, "INLINE_MAX", -1)


def blob_path(store: LocalStore, key: str) -> Path:
    """The file holding ``key``'s body, as the index names it."""
    with closing(sqlite3.connect(store.root / "index.db")) as conn:
        (blob,) = conn.execute("SELECT blob FROM objects WHERE key = ?", (key.encode(),)).fetchone()
    return store.root / "blobs" / str(blob)


# -- keys ---------------------------------------------------------------------------------------

REFUSED_KEYS = {
    "../canary/secret.txt": "'..' segment",
    "in/../../canary/x": "'..' segment",
    "..": "'..' segment",
    "a/..": "'..' segment",
    "a/./b": "'.' or '..' segment",
    ".": "'.' or '..' segment",
    "./canary": "'.' or '..' segment",
    "/etc/passwd": "is absolute",
    "//server/share/x": "is absolute",
    "/": "is absolute",
    "a\x00b": "contains NUL",
    "../canary/secret.txt\x00.png": "contains NUL",
    "\x00": "contains NUL",
    "x" * 1025: "1025 bytes",
    "a/" * 512 + "b": "1025 bytes",
    "é" * 513: "1026 bytes",
    "a\udc80b": "not valid Unicode",
    "": "empty",
}


@pytest.mark.parametrize(("key", "problem"), REFUSED_KEYS.items(), ids=[repr(k)[:40] for k in REFUSED_KEYS])
def test_a_hostile_key_is_refused_naming_the_problem(
    site: Site, store: LocalStore, key: str, problem: str
) -> None:
    for attempt in (
        lambda: store.put(key, b"x"),
        lambda: store.put(key, b"x", if_absent=True),
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.copy(key, "k"),
        lambda: store.copy("k", key),
    ):
        with pytest.raises(InvalidKey, match=re.escape(problem)):
            attempt()

    assert list(store.list()) == []
    site.assert_untouched(store)


def test_the_canarys_own_absolute_path_is_refused(site: Site, store: LocalStore) -> None:
    key = str(site.canary / "secret.txt")

    with pytest.raises(InvalidKey, match="is absolute"):
        store.put(key, b"overwritten?")
    with pytest.raises(InvalidKey, match="is absolute"):
        store.get(key)
    site.assert_untouched(store)


STORED_KEYS = [
    "C:\\x",
    "C:\\Windows\\win.ini",
    "a\\..\\..\\b",
    "..\\..\\canary\\secret.txt",
    "\\\\server\\share\\x",
    "%2e%2e/canary/secret.txt",
    "%2e%2e%2fcanary%2fsecret.txt",
    "\uff0e\uff0e/canary/secret.txt",  # fullwidth full stops: NFKC makes them '..'
    "\u2025/canary/secret.txt",  # two dot leader
    "..\u200b/canary/secret.txt",  # '..' and a zero-width space
    "...",
    ".../canary",
    "..a/b..",
    ".hidden",
    "a//b",
    "a///",
    "a/",
    "trailing/slash/",
    "a. ",
    "x" * 255,
    "x" * 256,
    "y" * 1024,
    "/".join(["z" * 255] * 4) + "z",  # four 255-byte segments, 1,024 bytes in all
    "blobs",
    "blobs/" + "0" * 32,
    "index.db",
    "index.db-wal",
    "canary/secret.txt",
    "secret.txt",
    "~/x",
    "$HOME/x",
    "a\nb",
    "\x7f\x01",
    "CON",
    "nul.txt",
]


@pytest.mark.parametrize("key", STORED_KEYS, ids=[repr(k)[:40] for k in STORED_KEYS])
def test_an_odd_key_is_stored_inside_and_read_back_under_exactly_that_key(
    site: Site, store: LocalStore, key: str
) -> None:
    body = b"body of " + key.encode()

    store.put(key, body)
    store.copy(key, "copied")

    assert store.get(key).read() == body
    assert store.get("copied").read() == body
    assert store.head(key).key == key
    assert [info.key for info in store.list(key)] == [key]
    site.assert_untouched(store)
    store.delete(key)
    assert [info.key for info in store.list()] == ["copied"]
    site.assert_untouched(store)


@pytest.mark.parametrize("key", ["../canary/secret.txt", "a/../../canary/secret.txt", "/etc/passwd", "a\x00"])
def test_queue_objects_refuse_hostile_keys(queue: tuple[Site, remotejob.Queue], key: str) -> None:
    site, q = queue

    with pytest.raises(InvalidKey):
        q.store("in", {"key": key, "body": b"x"})
    with pytest.raises(InvalidKey):
        q.retrieve("in", key)
    with pytest.raises(InvalidKey):
        q.remove("out", key)
    with pytest.raises(InvalidKey):
        q.status(key)
    site.assert_untouched(q.object_store)


@pytest.mark.parametrize(
    "key", ["C:\\x", "..\\..\\canary\\secret.txt", "%2e%2e/canary", "\uff0e\uff0e/canary", "a//b/"]
)
def test_queue_objects_keep_odd_keys_inside(queue: tuple[Site, remotejob.Queue], key: str) -> None:
    site, q = queue

    assert q.store("in", {"key": key, "body": b"mine"}) == key

    assert q.retrieve("in", key).read() == b"mine"
    with pytest.raises(NotFound):
        q.status(key)  # stored, never triggered
    q.remove("in", key)
    with pytest.raises(NotFound):
        q.retrieve("in", key)
    site.assert_untouched(q.object_store)


@pytest.mark.parametrize("name", ["../../canary/secret.txt", "../x", "/abs", "a/./b", "nul\x00"])
def test_an_asset_named_to_escape_is_refused_and_nothing_is_published(
    queue: tuple[Site, remotejob.Queue], name: str
) -> None:
    site, q = queue
    job_id = q.submit({"key": "job", "body": b"input"})
    job = q.next("pending", timeout=0)
    assert job is not None and job.id == job_id

    with pytest.raises(InvalidKey):
        job.complete(assets=[{"key": name, "body": b"output"}])

    assert [info.key for info in q.object_store.list("out/")] == []
    site.assert_untouched(q.object_store)


def test_an_asset_filename_with_a_path_publishes_under_its_base_name(
    queue: tuple[Site, remotejob.Queue],
) -> None:
    site, q = queue
    q.submit({"key": "job", "body": b"input"})
    job = q.next("pending", timeout=0)
    assert job is not None

    job.complete(assets=[{"filename": "../../canary/secret.txt", "body": b"output"},
                         {"key": "C:\\report.txt", "body": b"report"}])

    assert q.retrieve("out", "job/secret.txt").read() == b"output"
    assert q.retrieve("out", "job/C:\\report.txt").read() == b"report"
    assert sorted(q.status("job").outputs) == ["C:\\report.txt", "secret.txt"]
    site.assert_untouched(q.object_store)


# -- links and files planted inside the store's folder -------------------------------------------


@pytest.mark.usefixtures("bodies_in_files")
def test_a_blobs_folder_replaced_by_a_link_is_refused(site: Site, store: LocalStore) -> None:
    store.put("k", b"mine")
    blobs = store.root / "blobs"
    for blob in blobs.iterdir():
        blob.unlink()
    blobs.rmdir()
    blobs.symlink_to(site.canary, target_is_directory=True)

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        store.put("new", b"written into the canary?")
    with pytest.raises(BackendUnavailable, match="symbolic link"):
        LocalStore(store.root).put("new", b"written into the canary?")
    with pytest.raises(BackendUnavailable, match="symbolic link"):
        store.get("k")
    store.delete("k")
    site.assert_untouched(store)


@pytest.mark.usefixtures("bodies_in_files")
def test_a_blob_replaced_by_a_link_to_the_canary_is_not_read(site: Site, store: LocalStore) -> None:
    store.put("k", b"mine")
    blob = blob_path(store, "k")
    blob.unlink()
    blob.symlink_to(site.canary / "secret.txt")

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        store.get("k")
    site.assert_untouched(store)


@pytest.mark.usefixtures("bodies_in_files")
def test_a_blob_replaced_by_a_link_to_the_canary_is_not_copied(site: Site, store: LocalStore) -> None:
    store.put("k", b"mine")
    blob = blob_path(store, "k")
    blob.unlink()
    blob.symlink_to(site.canary / "secret.txt")

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        store.copy("k", "copy")

    assert [info.key for info in store.list()] == ["k"]
    site.assert_untouched(store)


@pytest.mark.usefixtures("bodies_in_files")
def test_overwriting_and_deleting_a_linked_blob_removes_the_link_not_the_canary(
    site: Site, store: LocalStore
) -> None:
    store.put("k", b"mine")
    store.put("other", b"other")
    for key in ("k", "other"):
        blob = blob_path(store, key)
        blob.unlink()
        blob.symlink_to(site.canary / "secret.txt")

    store.put("k", b"new body")
    store.delete("other")

    assert store.get("k").read() == b"new body"
    assert sorted(p.name for p in (store.root / "blobs").iterdir()) == [blob_path(store, "k").name]
    site.assert_untouched(store)


def plant_link_at_next_blob(
    store: LocalStore, target: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """Blob names are random: fix the next one, so a link can be planted where the store writes."""
    name = "ab" * 16
    monkeypatch.setattr(local_store, "_new_blob_name", lambda: name)
    (store.root / "blobs" / f"{name}{suffix}").symlink_to(target)


@pytest.mark.usefixtures("bodies_in_files")
def test_a_link_planted_as_the_temporary_file_is_not_written_through(
    site: Site, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_link_at_next_blob(store, site.canary / "secret.txt", monkeypatch, ".part")

    with pytest.raises(BackendUnavailable, match="exists"):
        store.put("k", b"written through the link?")
    site.assert_untouched(store)


@pytest.mark.usefixtures("bodies_in_files")
def test_a_link_planted_as_the_next_blob_is_replaced_not_written_through(
    site: Site, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant_link_at_next_blob(store, site.canary / "secret.txt", monkeypatch, "")

    store.put("k", b"mine")

    assert store.get("k").read() == b"mine"
    site.assert_untouched(store)


@pytest.mark.usefixtures("bodies_in_files")
def test_a_blob_replaced_by_a_fifo_is_refused_without_blocking(site: Site, store: LocalStore) -> None:
    store.put("k", b"mine")
    blob = blob_path(store, "k")
    blob.unlink()
    os.mkfifo(blob)
    # Hold the FIFO open for writing, so that a store which opens it does not block forever.
    writer = os.open(blob, os.O_RDWR | os.O_NONBLOCK)
    try:
        with pytest.raises(BackendUnavailable, match="not a regular file"):
            store.get("k")
    finally:
        os.close(writer)
    site.assert_untouched(store)


@pytest.mark.parametrize("target", ["new.db", "empty", "secret.txt"])
def test_an_index_planted_as_a_link_is_refused(site: Site, target: str) -> None:
    (site.inside / "blobs").mkdir(parents=True)
    (site.inside / "index.db").symlink_to(site.canary / target)

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        LocalStore(site.inside).put("k", b"indexed in the canary?")
    site.assert_untouched()


@pytest.mark.parametrize("name", ["index.db-wal", "index.db-shm", "index.db-journal"])
def test_an_index_side_file_planted_as_a_link_is_refused(site: Site, name: str) -> None:
    (site.inside / "blobs").mkdir(parents=True)
    (site.inside / name).symlink_to(site.canary / "empty")

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        LocalStore(site.inside).put("k", b"logged in the canary?")
    site.assert_untouched()


@pytest.mark.parametrize("name", ["queues.db", "queues.db-wal"])
def test_a_queue_database_planted_as_a_link_is_refused(site: Site, name: str) -> None:
    site.inside.mkdir()
    (site.inside / name).symlink_to(site.canary / "new.db")
    from remotejob.backends.local import SqliteQueues

    with pytest.raises(BackendUnavailable, match="symbolic link"):
        SqliteQueues(site.inside / "queues.db").send("q", "queued in the canary?")
    site.assert_untouched()


@pytest.mark.parametrize("inline", [False, True], ids=["blob", "inline"])
@pytest.mark.parametrize("blob", ["../../canary/secret.txt", "/proc/self/environ", "", ".", "inline"])
def test_an_index_entry_naming_a_file_outside_the_blobs_is_refused(
    site: Site, store: LocalStore, blob: str, inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not inline:
        monkeypatch.setattr(local_store, "INLINE_MAX", -1)
    elif blob == "inline":
        pytest.skip("that is an inline row's own marker")
    store.put("k", b"mine")
    with closing(sqlite3.connect(store.root / "index.db")) as conn, conn:
        conn.execute("UPDATE objects SET blob = ? WHERE key = ?", (blob, b"k"))

    with pytest.raises(BackendUnavailable, match="not a blob of this store"):
        store.get("k")
    with pytest.raises(BackendUnavailable, match="not a blob of this store"):
        store.copy("k", "copy")
    store.put("k", b"overwritten")
    store.delete("k")
    site.assert_untouched(store)


# -- distinct keys never collide ------------------------------------------------------------------

DISTINCT_KEYS = [
    "key", "Key", "KEY",
    "café", "cafe\u0301",  # NFC and NFD
    "\u00c5", "\u212b", "A\u030a",  # Å as a letter, as the angstrom sign, decomposed
    "ﬁle", "file", "ｆｉｌｅ",  # ligature and fullwidth
    "ß", "ss", "SS", "ı", "i", "İ",
    "a", "a.", "a..", "a ", "a. ", " a", "a\t",
    "a/b", "a_b", "a\\b", "a//b", "a/b/", "a%2Fb", "a:b", "a／b",
    "CON", "con", "CON.txt", "aux", "*?<>|\"",
    "\ufeffa", "a\u200d", "𝄞", "\U0010ffff", "\x01", "\x7f", "\u0085",
    "x" * 1023 + "a", "x" * 1023 + "b", "a" + "x" * 1023, "x" * 1022,
    "dir", "dir/", "dir/file", "dir/file/", "dir.", "dir-",
    "blobs", "index.db", "0" * 32, "blobs/" + "0" * 32,
]


def assert_distinct_keys_round_trip(store: LocalStore, keys: list[str]) -> None:
    """Store each key with its own body; each reads back its own, and listings are exact."""
    bodies = {key: f"{index}:{key!r}".encode() for index, key in enumerate(keys)}
    for key, body in bodies.items():
        store.put(key, body)

    for key, body in bodies.items():
        assert store.get(key).read() == body
    in_byte_order = sorted(keys, key=lambda k: k.encode())
    assert [info.key for info in store.list()] == in_byte_order
    for key in keys:
        prefix = key[: len(key) // 2]
        assert [info.key for info in store.list(prefix)] == [k for k in in_byte_order if k.startswith(prefix)]


def test_distinct_keys_never_collide(site: Site, store: LocalStore) -> None:
    assert len(set(DISTINCT_KEYS)) == len(DISTINCT_KEYS)

    assert_distinct_keys_round_trip(store, DISTINCT_KEYS)
    site.assert_untouched(store)


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # hypothesis is in the test extras; without it the list above still runs
    pass
else:
    import tempfile

    def _variants(key: str) -> list[str]:
        """Keys that a careless store might map to the same file as ``key``."""
        return [
            key,
            unicodedata.normalize("NFC", key),
            unicodedata.normalize("NFD", key),
            unicodedata.normalize("NFKC", key),
            key.lower(),
            key.upper(),
            key + ".",
            key + " ",
            key + "/",
            key.replace("/", "_"),
            key.replace("/", "\\"),
        ]

    def _valid(key: str) -> bool:
        try:
            local_store.validate_key(key)
        except InvalidKey:
            return False
        return True

    _bases = st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12
    ) | st.sampled_from(["a/b", "Straße", "café", "ﬁ", "x. ", "dir/"])
    _key_sets = st.lists(_bases, min_size=1, max_size=6).map(
        lambda bases: sorted({v for base in bases for v in _variants(base) if _valid(v)})
    ).filter(bool)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(keys=_key_sets)
    def test_distinct_keys_never_collide_whatever_they_are(keys: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            assert_distinct_keys_round_trip(LocalStore(tmp), keys)
