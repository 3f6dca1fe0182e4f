"""The generated-data cache rule and atomic writes."""
import json
import os
import threading

import pytest

from data.cache import MARKER, UserDataError, check_user_folder, ensure_generated, resolve_root
from training.io import atomic_json, atomic_write, relink
from tests.folder_digest import tree


def _builder(calls, content="x"):
    def build(tmp):
        calls.append(tmp)
        with open(os.path.join(tmp, "a.txt"), "w") as f:
            f.write(content)
        os.makedirs(os.path.join(tmp, "sub"))
    return build


def _read(root, name):
    with open(os.path.join(root, name)) as f:
        return f.read()


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_builds_once_and_rebuilds_when_any_param_changes(tmp_path):
    calls = []
    root = str(tmp_path / "gen")
    params = {"n": 3, "snr_db": [0, 5], "max_order": 1}
    assert ensure_generated(root, params, _builder(calls), "test") == root
    assert len(calls) == 1 and _read(root, "a.txt") == "x"
    assert not any(e.startswith(".building") for e in os.listdir(root))
    ensure_generated(root, dict(params), _builder(calls), "test")
    assert len(calls) == 1  # cache hit (tuples/lists compare equal after the json round trip)
    for key, value in [("snr_db", [0, 10]), ("max_order", 0), ("n", 4)]:
        ensure_generated(root, {**params, key: value}, _builder(calls, key), "test")
        assert _read(root, "a.txt") == key
        assert json.loads(_read(root, MARKER))["params"][key] == value
    assert len(calls) == 4


def test_a_users_folder_is_refused_and_left_byte_identical(tmp_path):
    user = tmp_path / "mydata"
    (user / "texts").mkdir(parents=True)
    (user / "texts" / "000001.txt").write_text("a person walks forward#a/DET person/NOUN#0.0#0.0\n")
    (user / "_split").mkdir()
    (user / "_split" / "train.json").write_text("[]")
    before = tree(user)
    names = sorted(os.listdir(user))
    with pytest.raises(UserDataError, match=r"mydata.*--data.generate false"):
        ensure_generated(str(user), {"n": 1}, _builder([]), "radar clips")
    assert tree(user) == before and sorted(os.listdir(user)) == names


def test_a_killed_build_is_rebuilt(tmp_path):
    root = tmp_path / "gen"

    def dies(tmp):
        with open(os.path.join(tmp, "half.txt"), "w") as f:
            f.write("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ensure_generated(str(root), {"n": 1}, dies)
    assert not (root / MARKER).exists()
    calls = []
    ensure_generated(str(root), {"n": 1}, _builder(calls))
    assert len(calls) == 1 and sorted(p for p in os.listdir(root) if not p.startswith(".")) == ["a.txt", "sub"]


def test_two_processes_build_once(tmp_path):
    calls, root = [], str(tmp_path / "gen")
    threads = [threading.Thread(target=ensure_generated, args=(root, {"n": 1}, _builder(calls)))
               for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(calls) == 1


def test_relative_roots_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("some/rel") == str(tmp_path / "some" / "rel")
    assert ensure_generated("rel", {"n": 1}, _builder([])) == str(tmp_path / "rel")
    with pytest.raises(UserDataError, match="no such folder"):
        check_user_folder("missing")


def test_atomic_writes_and_relink(tmp_path):
    p = tmp_path / "f.json"
    atomic_json(str(p), {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        atomic_write(str(p), boom)
    assert json.loads(p.read_text()) == {"a": 1}          # the old file survives a failed write
    src = tmp_path / "step_1.pt"
    src.write_bytes(b"1")
    relink(str(src), str(tmp_path / "best.pt"))
    relink(str(src), str(tmp_path / "best.pt"))      # relinking to the same file
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "f.json", "step_1.pt"]


def test_derived_dir_keeps_caches_out_of_a_users_folder(tmp_path, monkeypatch):
    from data.cache import derived_dir
    monkeypatch.chdir(tmp_path)
    user = str(tmp_path / "mine")
    assert derived_dir(user, "radar", generated=True) == user
    d = derived_dir(user, "radar", generated=False)
    assert d.startswith(str(tmp_path / "data_cache" / "radar" / "derived")) and not d.startswith(user)
    assert derived_dir(user, "radar", False, cache_dir="/elsewhere").startswith("/elsewhere/radar/")
    assert derived_dir(user, "radar", False) != derived_dir(user + "2", "radar", False)


def test_detect_layout_finds_forces_and_lists(tmp_path):
    from data.layout import Layout, detect_layout, exists
    layouts = [Layout("npz", exists("mmwave"), "mmwave/*.npz"),
               Layout("mmexpert", exists("udoppler", "*"), "udoppler/{id}A.npy")]
    (tmp_path / "udoppler").mkdir()
    with pytest.raises(UserDataError, match=r"(?s)matches none.*npz: mmwave/\*\.npz.*mmexpert"):
        detect_layout(str(tmp_path), layouts)
    (tmp_path / "udoppler" / "000001A.npy").write_bytes(b"")
    assert detect_layout(str(tmp_path), layouts).name == "mmexpert"
    assert detect_layout(str(tmp_path), layouts, forced="mmexpert").name == "mmexpert"
    with pytest.raises(UserDataError, match="--data.format npz expects mmwave"):
        detect_layout(str(tmp_path), layouts, forced="npz")
    with pytest.raises(UserDataError, match="unknown"):
        detect_layout(str(tmp_path), layouts, forced="hdf5")
