"""The dask engine and Zarr storage: equal to the numpy engine on every scheduler."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from pwconv import pointwise_conv
from pwconv.core.layout import parse_layout
from pwconv.core.reference import reference_conv

from .conftest import assert_clean_error, cli_in_process, leftovers, run_cli

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

import pwconv.dask as pwdask  # noqa: E402

CASES = [
    ((6, 7, 8), "channels-last", 4, 1, 1, False),
    ((8, 6, 7), "channels-first", 4, 2, 1, True),
    ((3, 9, 7, 6), "NHWC", 6, 3, 2, True),
    ((3, 6, 9, 7), "NCHW", 2, 1, 3, False),
]


def _problem(shape, layout, k, groups, with_bias, seed):
    """Input, filters and optional bias for one of CASES."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[parse_layout(layout, len(shape)).channel_axis]
    w = rng.standard_normal((k, c // groups)).astype(np.float32)
    bias = rng.standard_normal(k) if with_bias else None
    return x, w, bias


@pytest.mark.parametrize(("shape", "layout", "k", "groups", "stride", "with_bias"), CASES)
@pytest.mark.parametrize("chunk", [1, 3])
def test_dask_api_equals_numpy_engine(shape, layout, k, groups, stride, with_bias, chunk):
    x, w, bias = _problem(shape, layout, k, groups, with_bias, seed=sum(shape))
    xd = da.from_array(x, chunks=chunk)
    lazy = pwdask.pointwise_conv(xd, w, bias, layout=layout, groups=groups, stride=stride, chunk_bytes=256)
    result = lazy.compute(scheduler="threads")
    expected = pointwise_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    assert result.shape == expected.shape and result.dtype == expected.dtype
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        result, reference_conv(x, w, bias, layout=layout, groups=groups, stride=stride), rtol=1e-5, atol=1e-5
    )
    assert lazy.chunks[parse_layout(layout, len(shape)).channel_axis] == (k,)


def test_channel_axis_is_one_chunk_and_others_bounded():
    x = da.zeros((64, 64, 32), chunks=(8, 8, 4), dtype=np.float32)
    y = pwdask.pointwise_conv(x, np.ones((5, 32), np.float32), chunk_bytes=64 * 32 * 4 * 16)
    assert y.chunks[2] == (5,)
    assert max(max(c) for c in y.chunks[:2]) * 64 <= 64 * 16 * 64


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 30, 16)).astype(np.float32)
    w = rng.standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    zarr.create_array(store=str(tmp_path / "x.zarr"), data=x, chunks=(10, 30, 16), zarr_format=3)
    return tmp_path, x, w


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
@pytest.mark.parametrize(
    ("src", "dst"), [("x.npy", "y.zarr"), ("x.zarr", "y.npy"), ("x.zarr", "y.zarr"), ("x.npy", "y.npy")]
)
def test_cli_formats_and_schedulers(files, scheduler, src, dst):
    root, x, w = files
    proc = run_cli("apply", src, "w.npy", "-o", dst, "--engine", "dask", "--scheduler", scheduler, cwd=root)
    assert proc.returncode == 0, proc.stderr
    result = (
        np.asarray(zarr.open_array(str(root / dst), mode="r")[...])
        if dst.endswith(".zarr")
        else np.load(root / dst)
    )
    np.testing.assert_allclose(result, x @ w.T, rtol=1e-5, atol=1e-5)
    assert "dask (" + scheduler in proc.stderr


def test_zarr_round_trip_with_numpy_engine_and_attributes(files):
    root, x, w = files
    assert run_cli("apply", "x.zarr", "w.npy", "-o", "y.zarr", cwd=root).returncode == 0
    stored = zarr.open_array(str(root / "y.zarr"), mode="r")
    assert stored.metadata.zarr_format == 3
    assert stored.attrs["weights_source"] == "w.npy"
    np.testing.assert_allclose(stored[...], x @ w.T, rtol=1e-5, atol=1e-5)
    again = run_cli("apply", "x.zarr", "w.npy", "-o", "y.zarr", cwd=root)
    assert_clean_error(again, 2, "exists", "--overwrite")
    assert run_cli("apply", "y.zarr", "1,1,1", "-o", "z.npy", cwd=root).returncode == 0
    np.testing.assert_allclose(np.load(root / "z.npy")[..., 0], (x @ w.T).sum(axis=-1), rtol=1e-4, atol=1e-4)


def test_hdf5_output_refused_with_processes(files):
    root, _, _ = files
    proc = run_cli(
        "apply", "x.npy", "w.npy", "-o", "y.h5", "--engine", "dask", "--scheduler", "processes", cwd=root
    )
    assert_clean_error(proc, 2, "HDF5", "threads or synchronous")
    assert not (root / "y.h5").exists() and leftovers(root) == []
    ok = run_cli(
        "apply", "x.npy", "w.npy", "-o", "y.h5", "--engine", "dask", "--scheduler", "threads", cwd=root
    )
    assert ok.returncode == 0, ok.stderr


def test_missing_extra_is_named(files, monkeypatch):
    from pwconv.errors import MissingExtraError, require_extra

    real = __import__("importlib").import_module

    def fake(name, *args):
        if name.startswith(("dask", "zarr", "distributed")):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr("importlib.import_module", fake)
    with pytest.raises(MissingExtraError, match=r"pip install 'pwconv\[dask\]'"):
        require_extra("dask.array", "dask", "--engine dask")


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    ) as local:
        yield local


@pytest.mark.parametrize(("shape", "layout", "k", "groups", "stride", "with_bias"), CASES)
def test_local_cluster_equals_numpy_engine(tmp_path, cluster, shape, layout, k, groups, stride, with_bias):
    x, w, bias = _problem(shape, layout, k, groups, with_bias, seed=7)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", w)
    args = [
        "apply",
        "x.npy",
        "w.npy",
        "-o",
        "y.zarr",
        "--engine",
        "dask",
        "--scheduler",
        cluster.scheduler_address,
        "--layout",
        layout,
        "--groups",
        str(groups),
        "--stride",
        str(stride),
    ]
    if bias is not None:
        args += ["--bias", ",".join(repr(float(b)) for b in bias)]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = pointwise_conv(x, w, bias, layout=layout, groups=groups, stride=stride)
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "y.zarr"), mode="r")[...], expected, rtol=1e-5, atol=1e-5
    )


def _slow(block):
    time.sleep(0.05)
    return block


def test_worker_killed_mid_job_still_gives_the_right_result(cluster):
    from distributed import Client

    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 16, 8)).astype(np.float32)
    w = rng.standard_normal((3, 8)).astype(np.float32)
    with Client(cluster) as client:
        slow = da.from_array(x, chunks=(2, 16, 8)).map_blocks(_slow, dtype=x.dtype)
        future = client.compute(pwdask.pointwise_conv(slow, w, chunk_bytes=2 * 16 * 8 * 4))
        time.sleep(0.4)
        victim = next(iter(cluster.workers.values()))
        victim.process.process.kill()  # the worker process dies; its nanny restarts it
        result = future.result(timeout=120)
    np.testing.assert_allclose(result, x @ w.T, rtol=1e-5, atol=1e-5)


def test_unreachable_scheduler_is_a_clear_error(files):
    root, _, _ = files
    proc = run_cli(
        "apply",
        "x.npy",
        "w.npy",
        "-o",
        "y.zarr",
        "--engine",
        "dask",
        "--scheduler",
        "tcp://127.0.0.1:9",
        cwd=root,
    )
    assert proc.returncode == 2, proc.stderr
    assert "tcp://127.0.0.1:9" in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "y.zarr").exists() and leftovers(root) == []


def test_plain_install_needs_no_extra_and_imports_nothing_heavy(files):
    root, x, w = files
    proc = cli_in_process(root, ["dask", "zarr", "distributed"], ["apply", "x.npy", "w.npy", "-o", "y.npy"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "loaded:"
    np.testing.assert_allclose(np.load(root / "y.npy"), x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("args, extra", [(["--engine", "dask"], "dask"), ([], "zarr")])
def test_without_the_extra_dask_and_zarr_are_refused_clearly(files, args, extra):
    root, _, _ = files
    out = "y.npy" if args else "y.zarr"
    proc = cli_in_process(
        root, ["dask", "zarr", "distributed"], ["apply", "x.npy", "w.npy", "-o", out, *args]
    )
    assert proc.returncode == 2, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("pwconv: error:") and f"pip install 'pwconv[{extra}]'" in first
    assert f"pip install -e '.[{extra}]'" in first  # the spelling from a clone
    assert "Traceback" not in proc.stderr
    assert not (root / out).exists() and leftovers(root) == []


def test_batch_walks_zarr_stores_in_folders(files):
    root, x, w = files
    (root / "tree").mkdir()
    zarr.create_array(store=str(root / "tree" / "a.zarr"), data=x, chunks=(20, 30, 16), zarr_format=3)
    np.save(root / "tree" / "b.npy", x)
    (root / "out").mkdir()
    proc = run_cli("batch", "w.npy", "tree", "x.csv", "--out-dir", "out", "--json", cwd=root)
    assert proc.returncode == 2, proc.stderr  # x.csv: not a known format
    import json

    status = {item["path"]: item["status"] for item in json.loads(proc.stdout)}
    assert status == {"tree/a.zarr": "ok", "tree/b.npy": "ok", "x.csv": "failed"}
    np.testing.assert_allclose(
        zarr.open_array(str(root / "out" / "a.pw.zarr"), mode="r")[...], x @ w.T, rtol=1e-5, atol=1e-5
    )


def test_dask_engine_uses_the_same_output_checks(files):
    root, x, w = files
    proc = run_cli(
        "apply", "x.npy", "w.npy", "-o", "y.npy", "--engine", "dask", "--compression", "gzip", cwd=root
    )
    assert_clean_error(proc, 2, "--compression", "HDF5 or Zarr")
    proc = run_cli("apply", "x.npy", "w.npy", "-o", "y.zarr:arr", "--engine", "dask", cwd=root)
    assert_clean_error(proc, 2, "without an array name")
    assert not (root / "y.npy").exists() and not (root / "y.zarr").exists() and leftovers(root) == []
    import h5py

    ok = run_cli(
        "apply",
        "x.npy",
        "w.npy",
        "-o",
        "y.h5",
        "--engine",
        "dask",
        "--chunks",
        "10,30,3",
        "--compression",
        "gzip",
        cwd=root,
    )
    assert ok.returncode == 0, ok.stderr
    with h5py.File(root / "y.h5") as handle:
        assert handle["data"].chunks == (10, 30, 3) and handle["data"].compression == "gzip"
        np.testing.assert_allclose(handle["data"][...], x @ w.T, rtol=1e-5, atol=1e-5)


def test_default_engine_streams_zarr_through_chunk_files(tmp_path):
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(11).standard_normal((64, 40, 8)).astype(np.float32)
    store = zarr.create_array(
        store=str(tmp_path / "in.zarr"), shape=x.shape, chunks=(5, 40, 8), dtype="float32", compressors=None
    )
    store[:] = x
    w = np.random.default_rng(12).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    proc = run_cli(
        "apply", "in.zarr", "w.npy", "-o", "out.zarr", "--max-memory", "16KiB", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["blocks"] > 1
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_allclose(out[...], x @ w.T, rtol=1e-5, atol=1e-5)
    chunk = sorted(p for p in (tmp_path / "in.zarr").rglob("*") if p.is_file() and p.name != "zarr.json")[0]
    chunk.write_bytes(chunk.read_bytes()[:-4])
    bad = run_cli("apply", "in.zarr", "w.npy", "-o", "bad.zarr", cwd=tmp_path)
    assert_clean_error(bad, 2, "chunk files", "damaged")
    assert not (tmp_path / "bad.zarr").exists() and leftovers(tmp_path) == []


def test_the_dask_engine_imports_none_of_dask_arrays_unused_integrations(tmp_path):
    pytest.importorskip("scipy")  # installed with the test extra: the case worth pinning
    np.save(tmp_path / "x.npy", np.ones((4, 4, 3), np.float32))
    code = (
        "import sys\n"
        "from pwconv.cli.app import main\n"
        "sys.argv = ['pwconv', 'apply', 'x.npy', '1,1,1', '-o', 'y.npy', '--engine', 'dask', '-q']\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    import importlib.util\n"
        "    print('loaded:', sorted(m for m in ('scipy', 'pandas', 'xarray') if sys.modules.get(m)), file=sys.stderr)\n"
        "    print('findable:', importlib.util.find_spec('scipy') is not None, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert "loaded: []" in proc.stderr and "findable: True" in proc.stderr, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.full((4, 4, 1), 3, np.float32))
