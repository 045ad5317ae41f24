"""``joulebench fetch``: real downloads from an HTTP server this module starts on 127.0.0.1.

The server serves files the tests write (a payload with a known hash, a corrupted copy, an
archive laid out like the published ones) plus two misbehaving paths: one that closes the
connection half way through the body and one that stalls. Every failure must leave nothing
under the target folder, not even the temp file.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from joulebench.cli import main
from joulebench.data import load_dataset
from joulebench.errors import EXIT_ENVIRONMENT, ConfigError, EnvironmentFault
from joulebench.fetch import (
    ARCHIVES,
    Archive,
    Checksum,
    download,
    fetch_archive,
    fetch_dataset,
    fetch_weights,
)
from joulebench.models import published_weights_url

PAYLOAD = np.random.default_rng(7).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    """Serves the directory, except /truncated/NAME (half the body, then the connection
    closes although Content-Length promised all of it) and /stall/NAME (half, then silence)."""

    def do_GET(self) -> None:
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind not in ("truncated", "stall"):
            return super().do_GET()
        body = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if kind == "stall":
            time.sleep(1.5)
        self.close_connection = True

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL) of a server on a free 127.0.0.1 port, stopped afterwards."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """tmp_path as the working directory, where the CLI's default --to folders land."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_keeps_a_file_whose_sha256_starts_with_the_published_prefix(server, tmp_path):
    served, base = server
    (served / "model-abc.pth").write_bytes(PAYLOAD)
    target = tmp_path / "out" / "model.pth"

    size = download(f"{base}/model-abc.pth", target, Checksum("sha256", PAYLOAD_SHA256[:8]))

    assert size == len(PAYLOAD)
    assert target.read_bytes() == PAYLOAD
    assert _left_in(target.parent) == ["model.pth"]  # the temp file was renamed, not copied


def test_download_checks_a_whole_md5(server, tmp_path):
    served, base = server
    (served / "archive.tar.gz").write_bytes(PAYLOAD)
    target = tmp_path / "archive.tar.gz"
    assert download(f"{base}/archive.tar.gz", target, Checksum("md5", PAYLOAD_MD5)) == len(PAYLOAD)
    assert hashlib.md5(target.read_bytes()).hexdigest() == PAYLOAD_MD5


@pytest.mark.parametrize("algorithm, expected", [("sha256", PAYLOAD_SHA256[:8]), ("md5", PAYLOAD_MD5)])
def test_a_corrupted_file_is_refused_and_nothing_is_kept(server, tmp_path, algorithm, expected):
    served, base = server
    corrupted = bytearray(PAYLOAD)
    corrupted[150_000] ^= 0x01  # one flipped bit
    (served / "file.bin").write_bytes(bytes(corrupted))
    out = tmp_path / "out"

    with pytest.raises(EnvironmentFault, match=f"has {algorithm} .*the published one is {expected[:12]}.*refused"):
        download(f"{base}/file.bin", out / "file.bin", Checksum(algorithm, expected))
    assert _left_in(out) == []


@pytest.mark.parametrize("route, options", [("truncated", {}), ("stall", {"timeout_s": 0.5})],
                         ids=["connection-closed-mid-body", "stalled-until-timeout"])
def test_a_download_stopped_halfway_is_refused_and_nothing_is_kept(server, tmp_path, route, options):
    served, base = server
    (served / "file.bin").write_bytes(PAYLOAD)
    out = tmp_path / "out"
    with pytest.raises(EnvironmentFault, match=f"stopped after {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        download(f"{base}/{route}/file.bin", out / "file.bin", Checksum("md5", PAYLOAD_MD5), **options)
    assert _left_in(out) == []


def test_a_missing_file_names_the_http_status(server, tmp_path):
    _, base = server
    with pytest.raises(EnvironmentFault, match=r"answered HTTP 404 for .*/absent\.bin; check the mirror"):
        download(f"{base}/absent.bin", tmp_path / "out" / "absent.bin", Checksum("md5", PAYLOAD_MD5))
    assert _left_in(tmp_path / "out") == []


def test_an_unreachable_host_says_there_is_no_network_and_how_to_get_the_files(closed_port, tmp_path):
    with pytest.raises(EnvironmentFault) as caught:
        download(f"http://127.0.0.1:{closed_port}/x.pth", tmp_path / "x.pth", Checksum("md5", PAYLOAD_MD5))
    message = str(caught.value)
    assert f"cannot reach 127.0.0.1:{closed_port}" in message
    assert "no network" in message and "`dvc pull`" in message
    assert "\n" not in message


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_an_archive_is_extracted_into_place_whole(server, tmp_path):
    served, base = server
    members = {"cifar-10-batches-py/data_batch_1": PAYLOAD, "cifar-10-batches-py/batches.meta": b"meta"}
    packed = _tar_gz(members)
    (served / "cifar-10-python.tar.gz").write_bytes(packed)
    archive = Archive("https://elsewhere.example/cifar-10-python.tar.gz", hashlib.md5(packed).hexdigest())
    to = tmp_path / "datasets"

    fetched = fetch_archive("cifar10", archive, to, mirror=base)

    assert fetched.path == to / "cifar10"
    assert fetched.outcome.startswith(f"downloaded, md5 {archive.md5[:12]}… verified")
    for name, data in members.items():
        assert (to / "cifar10" / name).read_bytes() == data
    assert _left_in(to) == ["cifar10"]  # neither the archive nor the scratch folder remains
    assert fetch_archive("cifar10", archive, to, mirror=base).outcome == "already present"


def test_an_archive_folder_becomes_the_dataset_folder(server, tmp_path):
    served, base = server
    packed = _tar_gz({"imagenette2-320/train/n01/a.JPEG": b"a", "imagenette2-320/val/n01/b.JPEG": b"b"})
    (served / "imagenette2-320.tgz").write_bytes(packed)
    archive = Archive(f"{base}/imagenette2-320.tgz", hashlib.md5(packed).hexdigest(), folder="imagenette2-320")

    fetch_archive("imagenette", archive, tmp_path)

    assert (tmp_path / "imagenette" / "train" / "n01" / "a.JPEG").read_bytes() == b"a"
    assert (tmp_path / "imagenette" / "val" / "n01" / "b.JPEG").read_bytes() == b"b"


def test_a_corrupted_cifar10_archive_from_a_mirror_leaves_no_dataset_folder(server, tmp_path):
    served, base = server
    (served / "cifar-10-python.tar.gz").write_bytes(_tar_gz({"cifar-10-batches-py/data_batch_1": PAYLOAD}))
    with pytest.raises(EnvironmentFault, match=f"the published one is {ARCHIVES['cifar10'].md5[:12]}"):
        fetch_dataset("cifar10", tmp_path / "datasets", mirror=base)
    assert _left_in(tmp_path / "datasets") == []


def test_weights_that_are_not_torchvisions_are_refused(server, tmp_path):
    served, base = server
    published_name = published_weights_url("resnet18").rsplit("/", 1)[-1]
    assert published_name == "resnet18-f37072fd.pth"
    (served / published_name).write_bytes(PAYLOAD)

    with pytest.raises(EnvironmentFault, match=r"sha256 .*the published one is f37072fd…: refused"):
        fetch_weights("resnet18", tmp_path / "weights", mirror=base)
    assert _left_in(tmp_path / "weights") == []


def test_tinynet_has_no_weights_to_fetch(tmp_path):
    with pytest.raises(ConfigError, match="tinynet has no published weights to fetch"):
        fetch_weights("tinynet", tmp_path)


def test_unknown_dataset_lists_the_accepted_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'mnist' to fetch; accepted: cifar10, imagenette, digits"):
        fetch_dataset("mnist", tmp_path)


def _run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """``joulebench ARGS`` in this process (no second torch import): exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exited:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_cli_fetch_weights_through_the_mirror_env_refuses_in_one_line(server, tmp_path, monkeypatch, capsys):
    served, base = server
    (served / "resnet18-f37072fd.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv("JOULEBENCH_MIRROR", base)

    code, _, err = _run_main(["fetch", "weights", "--model", "resnet18", "--to", str(tmp_path / "w")], capsys)

    assert code == EXIT_ENVIRONMENT  # the mirror's fault, not the options': a sweep would retry
    assert err.count("\n") == 1
    assert f"{base}/resnet18-f37072fd.pth has sha256 {PAYLOAD_SHA256[:12]}" in err
    assert _left_in(tmp_path / "w") == []


def test_cli_fetch_offline_says_so_in_one_line(closed_port, in_tmp, capsys):
    code, _, err = _run_main(["fetch", "dataset", "cifar10", "--mirror", f"http://127.0.0.1:{closed_port}"], capsys)
    assert code == EXIT_ENVIRONMENT
    assert err.startswith(f"joulebench: error: cannot reach 127.0.0.1:{closed_port}")
    assert "no network" in err and "`dvc pull`" in err
    assert err.count("\n") == 1
    assert _left_in(in_tmp / "data" / "datasets") == []


def test_cli_exports_digits_as_an_image_folder_the_data_module_reads(in_tmp, capsys):
    code, out, err = _run_main(["fetch", "dataset", "digits", "--to", "datasets"], capsys)
    assert code == 0, err
    assert out == "datasets/digits  exported from scikit-learn's copy (no network)\n"
    root = in_tmp / "datasets" / "digits"

    digits = load_digits()
    assert len(list((root / "train").rglob("*.png"))) == 1437  # the 80/20 stratified split
    assert len(list((root / "val").rglob("*.png"))) == 360
    # Every image keeps its label (its folder) and its 17 ink levels exactly.
    for path in sorted(root.rglob("*.png"))[::97]:
        index, label = int(path.stem), int(path.parent.name)
        assert label == digits.target[index]
        expected = np.rint(digits.images[index] * (255 / 16)).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(path)), expected)

    splits = load_dataset(f"imagefolder:{root}", in_tmp, image_size=32, seed=0)
    assert (len(splits.train), len(splits.val), splits.num_classes) == (1437, 360, 10)


def test_the_written_out_archives_are_the_ones_torchvision_publishes():
    """fetch.py spells Imagenette's URL and md5 out; torchvision's private table is the reference."""
    from torchvision import datasets

    assert (ARCHIVES["imagenette"].url, ARCHIVES["imagenette"].md5) == datasets.Imagenette._ARCHIVES["320px"]
    assert (ARCHIVES["cifar10"].url, ARCHIVES["cifar10"].md5) == (datasets.CIFAR10.url, datasets.CIFAR10.tgz_md5)
