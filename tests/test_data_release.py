"""`clbench-data` and users' own tasks (issue 26, finding 5): the release fetched from a URL is checked file by
file against the committed manifest before anything is installed (tested against a server on 127.0.0.1), a data
folder is verified, and a user declares tasks and streams in their own YAML and data folder."""
import functools
import http.server
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from benchmark.cli import data_main
from task_streams import DataConfig, TaskDataError, load_stream, release, resolve_data_dir

from .conftest import compose_cfg

TOP = "O-LoRA-" + release.manifest()["source"]["commit"]


def _archive(tmp_path: Path, name: str, change: str | None = None, extra: dict | None = None) -> Path:
    """A .tar.gz laid out as GitHub's archive of the O-LoRA commit, built from the local release; `change`
    (a release-relative file) gets one byte altered; `extra`: more members {name: bytes or ('link', target)}."""
    root = resolve_data_dir()
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        for rel, entry in release.manifest()["files"].items():
            body = (root / rel).read_bytes()
            if rel == change:
                body = body[:-2] + (b"X" if body[-2:-1] != b"X" else b"Y") + body[-1:]
            info = tarfile.TarInfo(f"{TOP}/{entry['member']}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for member, body in (extra or {}).items():
            info = tarfile.TarInfo(member)
            if isinstance(body, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, body[1]
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return path


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the test reads the command's stderr
            pass

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_manifest_is_the_release_used_here():
    assert release.verify(resolve_data_dir()) == []
    files = release.manifest()["files"]
    assert len(files) == 41 and files["instruction_config.json"]["member"] == "configs/instruction_config.json"


def test_fetch_from_a_loopback_server_installs_a_release_that_verifies(server, tmp_path, capsys):
    www, base = server
    _archive(www, "release.tar.gz")
    dest = tmp_path / "cache" / "cl_benchmark"
    assert data_main(["fetch", "--url", f"{base}/release.tar.gz", "--dest", str(dest)]) == 0
    assert "41 files checked" in capsys.readouterr().out
    assert release.verify(dest) == []
    assert data_main(["verify", "--data-dir", str(dest)]) == 0
    stream = load_stream("demo", DataConfig(data_dir=str(dest), train_per_class=1, test_per_class=1))
    assert stream.unlisted == {}  # the same bytes: the same data, whichever folder


def test_a_corrupted_archive_names_the_file_and_installs_nothing(server, tmp_path, capsys):
    www, base = server
    _archive(www, "bad.tar.gz", change="NLI/CB/test.json")
    dest = tmp_path / "cache" / "cl_benchmark"
    assert data_main(["fetch", "--url", f"{base}/bad.tar.gz", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "NLI/CB/test.json" in err and "nothing was installed" in err and len(err.strip().splitlines()) == 1
    assert not dest.exists()
    assert data_main(["fetch", "--url", f"{base}/absent.tar.gz", "--dest", str(dest)]) == 2
    assert "could not be downloaded" in capsys.readouterr().err


def test_archive_paths_and_links_never_decide_where_files_go(tmp_path):
    # a member outside the top folder and a link standing for a manifest file: neither is followed or written
    target = "LICENSE"
    hostile = _archive(tmp_path, "hostile.tar.gz", extra={"../../escape.txt": b"x", f"evil/{target}": ("link", "/etc/passwd")})
    dest = tmp_path / "dest"
    release.fetch(archive=hostile, dest=dest)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    installed = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert installed == sorted(release.manifest()["files"])
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_verify_names_a_changed_file(tmp_path, capsys):
    copy = tmp_path / "cl"
    shutil.copytree(resolve_data_dir(), copy)
    (copy / "WiC" / "WiC" / "labels.json").write_text('["True", "False", "Maybe"]')
    (copy / "COPA" / "COPA" / "test.json").unlink()
    assert data_main(["verify", "--data-dir", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "COPA/COPA/test.json: missing" in err and "(and 1 more)" in err


# ---------------------------------------------------------------- a user's own tasks
def _user_tasks(tmp_path: Path) -> Path:
    """tasks.yaml in the user's folder: one task of their own (CB's files under another name and instruction)
    and a stream mixing it with a release task."""
    src = resolve_data_dir() / "NLI" / "CB"
    data = tmp_path / "mydata" / "nli3"
    data.mkdir(parents=True)
    for f in ("train.json", "test.json", "labels.json"):
        shutil.copy(src / f, data / f)
    spec = tmp_path / "my_tasks.yaml"
    spec.write_text(
        "data_dir: mydata\n"
        "tasks:\n"
        "  my-nli: {version: 1, path: nli3, family: NLI, instruction: 'Does the premise entail the hypothesis? ',\n"
        "           splits: {train: {file: train}, test: {file: test}}}\n"
        "streams:\n"
        "  my_stream: {tasks: [my-nli, WiC]}\n")
    return spec


def test_a_user_task_and_stream_run_from_their_own_yaml_and_folder(tmp_path, tiny_run):
    spec = _user_tasks(tmp_path)
    stream = load_stream("my_stream", DataConfig(extra_tasks=str(spec), train_per_class=1, test_per_class=1))
    assert stream.task_names == ["my-nli", "WiC"]
    mine = stream.tasks[0]
    assert mine.test[0].prompt.startswith("Task:NLI\nDataset:my-nli\nDoes the premise entail")
    assert mine.provenance["test"]["source"] == "user:nli3/test.json" and mine.provenance["declared"]["path"] == "nli3"
    # the user's files are not the release's bytes under those names: they identify the run
    assert set(stream.unlisted) == {"user:nli3/train.json", "user:nli3/test.json", "user:nli3/labels.json"}

    rec = tiny_run(f"data.extra_tasks={spec}", "stream.name=my_stream", "data.train_per_class=1")
    assert rec["stream"]["tasks"] == ["my-nli", "WiC"] and rec["config"]["data"]["extra_tasks"] is None
    assert rec["identity"]["user_tasks"]["my-nli"]["family"] == "NLI"
    assert set(rec["identity"]["data_files"]) == set(stream.unlisted)
    assert str(tmp_path) not in json.dumps(rec)


@pytest.mark.parametrize("body, expected", [
    ("tasks: {WiC: {path: x, family: WiC, splits: {train: {file: train}, test: {file: test}}}}", "already a task"),
    ("tasks: {t: {path: ../x, family: SC, splits: {train: {file: train}, test: {file: test}}}}", "needs `path:`"),
    ("tasks: {t: {path: x, family: SC, splits: {train: {file: train}}}}", "needs `splits:`"),
    ("tasks: {t: {path: x, family: SC, splits: {train: {file: a}, test: {file: b}}, colour: red}}", "unknown key 'colour'"),
    ("tasks: {t: {path: x, family: SC, splits: {train: {file: a}, test: {file: b}}}}\nstreams: {s: {tasks: [t, nope]}}",
     "stream 's' needs"),
    ("tasks: [", "not a readable YAML"),
    ("just text", "must be a YAML mapping"),
])
def test_a_broken_user_task_file_is_one_line_naming_it(tmp_path, body, expected):
    from benchmark.errors import ClbenchError

    spec = tmp_path / "tasks.yaml"
    spec.write_text(body)
    with pytest.raises((TaskDataError, ClbenchError), match=expected) as e:
        compose_cfg(["model=tiny", f"data.extra_tasks={spec}", "stream.tasks=[WiC]"])
    assert str(spec) in str(e.value) and "\n" not in str(e.value)
