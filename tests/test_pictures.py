"""`explain --html/--png/--svg`: the calculation as a picture, checked in a real browser.

Headless Chromium (Debian's `chromium`, installed by .ci/run) opens each page with name
resolution disabled; the tests read the DOM it rendered, its console log (the page's
content security policy reports every load it blocks there) and its screenshot. The numbers
in the picture are compared with those of `explain --json` on the same input.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pwconv.jobs.explain import format_value
from tests.conftest import WORKED_M, assert_clean_error, leftovers, run_cli, write_geotiff

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it)"
)
pytest.importorskip("matplotlib")


def _chromium(tmp_path, page, *args):
    proc = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *args,
            page.resolve().as_uri(),
        ],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", "replace")


def _rendered(tmp_path, page):
    """The DOM Chromium rendered, after checking that nothing was refused or logged."""
    dom, log = _chromium(tmp_path, page, "--dump-dom")
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return dom


def _texts(markup):
    """Every text node's content (SVG <text> and HTML alike), whitespace trimmed."""
    return {t.strip() for t in re.findall(r">([^<>]+)<", markup) if t.strip()}


def _explain(tmp_path, *args):
    proc = run_cli("explain", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


@needs_chromium
def test_worked_example_page_shows_the_four_sums_and_loads_nothing(tmp_path):
    np.save(tmp_path / "M.npy", WORKED_M)
    doc = _explain(tmp_path, "M.npy", "2,3", "--layout", "CHW", "--html", "explain.html")
    assert doc["pictures"][0]["path"] == "explain.html" and doc["results"][0]["sum"] == 17
    page = tmp_path / "explain.html"
    dom = _rendered(tmp_path, page)
    texts = _texts(dom)
    assert {"17", "22", "27", "32"} <= texts  # every output value of the 2x2 plane is drawn
    assert "(2 * 2) x 2  @  2 x 1  =  (2 * 2) x 1" in texts  # the matrix view
    assert any("2x2x2 (C, H, W)" in t for t in texts) and any("1x2x2" in t for t in texts)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page.read_text())
    _, _ = _chromium(tmp_path, page, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1400,1100")
    from PIL import Image

    with Image.open(tmp_path / "shot.png") as shot:
        pixels = np.asarray(shot.convert("RGB"))
    assert pixels.shape[:2] == (1100, 1400)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100 and pixels.std() > 20  # not blank


def _cases(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "hwc.npy", rng.normal(size=(40, 50, 6)).astype(np.float32))
    np.save(tmp_path / "w6.npy", rng.normal(size=(3, 6)))
    np.save(tmp_path / "nchw.npy", rng.integers(-9, 9, size=(2, 5, 7, 8)))
    np.save(tmp_path / "long.npy", rng.normal(size=(6, 7, 192)).astype(np.float32))
    np.save(tmp_path / "w192.npy", rng.normal(size=(4, 192)).astype(np.float32))
    x = rng.random((4, 9, 10)).astype(np.float32)
    x[2, 3, 4] = -1
    write_geotiff(tmp_path / "scene.tif", x, ["blue", "green", "red", "nir08"], nodata=-1)
    np.savez(
        tmp_path / "model.npz",
        **{"head.weight": rng.normal(size=(2, 4, 1, 1)), "head.bias": rng.normal(size=2)},
    )
    return [
        ("hwc.npy", "w6.npy", "--at", "20,31"),
        ("nchw.npy", "1,2,-3,4,0;0,1,1,1,1", "--layout", "NCHW", "--at", "1,3,5"),
        ("long.npy", "w192.npy", "--at", "3,3", "--filters", "1,3"),
        ("scene.tif", "0,0,-1,1", "--at", "3,4"),  # a nodata pixel
        ("scene.tif", "model.npz:head.weight", "--bias", "model.npz:head.bias", "--at", "8,9"),
    ]


@needs_chromium
def test_the_numbers_drawn_are_those_of_explain_json(tmp_path):
    for i, (inp, weights, *options) in enumerate(_cases(tmp_path)):
        page = f"case{i}.html"
        doc = _explain(tmp_path, inp, weights, *options, "--html", page, "--svg", f"case{i}.svg")
        texts = _texts(_rendered(tmp_path, tmp_path / page))
        svg_texts = _texts((tmp_path / f"case{i}.svg").read_text())
        assert ET.parse(tmp_path / f"case{i}.svg").getroot().tag.endswith("svg")
        for item in doc["results"][:2]:  # the table lists the first two filters term by term
            assert format_value(item["sum"]) in svg_texts, (inp, item["sum"])
            first = item["terms"][0]
            assert {format_value(first[0]), format_value(first[1]), format_value(first[2])} <= svg_texts
        if len(doc["pixel"]["channels"]) > 8:  # a long channel vector is elided as the text does
            assert f"{len(doc['pixel']['channels']) - 8} more" in svg_texts
        assert any(weights.split(":")[-1] in t for t in texts)  # the weights' name (a tensor's included)
        shape = "x".join(map(str, doc["input"]["shape"]))
        assert any(shape in t for t in svg_texts)
        if doc["pixel"]["nodata"]:
            assert any("this pixel is nodata" in t for t in texts)


def test_png_is_a_picture_of_the_stated_size(tmp_path):
    from PIL import Image

    np.save(tmp_path / "M.npy", WORKED_M)
    doc = _explain(tmp_path, "M.npy", "2,3", "--layout", "CHW", "--png", "fig.png")
    (entry,) = doc["pictures"]
    assert entry["format"] == "png" and entry["bytes"] == (tmp_path / "fig.png").stat().st_size
    with Image.open(tmp_path / "fig.png") as picture:
        assert picture.format == "PNG" and picture.size == (entry["width"], entry["height"]) == (1400, 900)
        assert np.asarray(picture.convert("L")).std() > 10


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--html", "old.html"), ("old.html", "exists", "--overwrite")),
        (("--png", "fig.jpg"), ("expected a .png file for --png",)),
        (("--html", "a.html", "--svg", "a.html"), ("expected a .svg file for --svg",)),
        (("--html", "same.html", "--png", "same.html"), ("expected a .png file for --png",)),
    ],
)
def test_bad_picture_targets_are_refused_before_any_work(tmp_path, args, fragments):
    np.save(tmp_path / "M.npy", WORKED_M)
    (tmp_path / "old.html").write_text("keep")
    proc = run_cli("explain", "M.npy", "2,3", "--layout", "CHW", *args, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    assert (tmp_path / "old.html").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.npy", "old.html"] and not leftovers(tmp_path)


def test_overwrite_replaces_the_pictures_together(tmp_path):
    np.save(tmp_path / "M.npy", WORKED_M)
    (tmp_path / "old.html").write_text("keep")
    doc = _explain(
        tmp_path, "M.npy", "2,3", "--layout", "CHW", "--html", "old.html", "--png", "p.png", "--overwrite"
    )
    assert [p["path"] for p in doc["pictures"]] == ["old.html", "p.png"]
    assert "<svg" in (tmp_path / "old.html").read_text()


def _table_values(page_text, table_id):
    """The rows of an HTML table of the page, as lists of cell texts."""
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page_text, re.S)
    assert body, table_id
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)]


def _fit(tmp_path, *args):
    proc = run_cli("fit", *args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)[0]


def _cube(tmp_path):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(50, 60, 6)) @ rng.normal(size=(6, 6))).astype(np.float32)
    np.save(tmp_path / "cube.npy", x)
    np.save(tmp_path / "target.npy", x @ rng.normal(size=(6, 2)).astype(np.float32) + 1.5)
    return x


@needs_chromium
@pytest.mark.parametrize("method", ["pca", "mnf"])
def test_fit_report_holds_the_banks_numbers_and_renders_cleanly(tmp_path, method):
    x = _cube(tmp_path)
    doc = _fit(tmp_path, method, "cube.npy", "-k", "3", "-o", "bank.npz", "--report", "fit.html")
    assert doc["report"]["path"] == "fit.html"
    page = (tmp_path / "fit.html").read_text()
    with np.load(tmp_path / "bank.npz") as bank:
        weights, bias = bank["weights"], bank["bias"]
        spectrum = bank["eigenvalues"] if method == "mnf" else None
    rows = _table_values(page, "bank")
    got = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(got[:, :-1], weights, rtol=1e-7)
    np.testing.assert_allclose(got[:, -1], bias, rtol=1e-7, atol=1e-12)
    table = np.array([[float(v) for v in row[1:4]] for row in _table_values(page, "spectrum")])
    if method == "mnf":
        np.testing.assert_allclose(table[:, 0], spectrum, rtol=1e-8)
    else:  # every variance of the covariance, largest first; the kept ones are the bank's
        want = np.linalg.eigvalsh(np.cov(x.reshape(-1, 6).astype(np.float64), rowvar=False))[::-1]
        np.testing.assert_allclose(table[:, 0], want, rtol=1e-6)
        np.testing.assert_allclose(table[:3, 1], doc["explained_variance"] / want.sum(), rtol=1e-6)
    assert [row[4] for row in _table_values(page, "spectrum")] == ["kept"] * 3 + [""] * 3
    texts = _texts(_rendered(tmp_path, tmp_path / "fit.html"))
    assert any(t.startswith("k = 3:") for t in texts)


@needs_chromium
def test_lstsq_report_shows_r2_per_target_channel(tmp_path):
    _cube(tmp_path)
    doc = _fit(tmp_path, "lstsq", "cube.npy", "target.npy", "-o", "map.npz", "--report", "map.html")
    page = (tmp_path / "map.html").read_text()
    r2 = [float(row[1]) for row in _table_values(page, "r2")]
    np.testing.assert_allclose(r2, doc["r2"], rtol=1e-8)
    texts = _texts(_rendered(tmp_path, tmp_path / "map.html"))
    assert any("R\N{SUPERSCRIPT TWO} = " in t for t in texts)


def test_a_bad_report_target_leaves_no_bank(tmp_path):
    _cube(tmp_path)
    (tmp_path / "old.html").write_text("keep")
    for target, fragment in (("fit.png", "expected a .html file for --report"), ("old.html", "exists")):
        proc = run_cli(
            "fit", "pca", "cube.npy", "-k", "2", "-o", "bank.npz", "--report", target, cwd=tmp_path
        )
        assert_clean_error(proc, 2, fragment)
        assert not (tmp_path / "bank.npz").exists() and not (tmp_path / "fit.png").exists()
    assert (tmp_path / "old.html").read_text() == "keep"


def test_python_api_explain_displays_in_a_notebook_with_the_clis_numbers(tmp_path):
    import pwconv

    shown = pwconv.explain(WORKED_M, np.array([2, 3]), at=(1, 1), layout="CHW")
    np.save(tmp_path / "M.npy", WORKED_M)
    cli = _explain(tmp_path, "M.npy", "2,3", "--layout", "CHW", "--at", "1,1")
    assert shown.doc["results"][0]["sum"] == cli["results"][0]["sum"] == 32
    assert shown.doc["input"]["path"] == "array"
    fragment = shown._repr_html_()
    assert fragment.startswith('<div class="pwconv-explain"><svg') and {"17", "22", "27", "32"} <= _texts(
        fragment
    )
    assert "1*5 + 8*3 = 29" not in shown.text and "4*2 + 8*3 = 32" in shown.text
    entry = shown.save(str(tmp_path / "api.png"))
    assert (entry["width"], entry["height"]) == (1400, 900) and (
        tmp_path / "api.png"
    ).stat().st_size == entry["bytes"]


def test_python_api_fit_returns_the_report_and_writes_the_bank(tmp_path):
    import pwconv

    x = _cube(tmp_path)
    report = pwconv.fit("pca", x, str(tmp_path / "bank.npz"), k=2)
    assert report.doc["components"] == 2 and report.doc["inputs"] == ["array"]
    fragment = report._repr_html_()
    assert fragment.startswith('<div class="pwconv-fit">') and "<svg" in fragment
    rows = _table_values(fragment, "bank")
    with np.load(tmp_path / "bank.npz") as bank:
        np.testing.assert_allclose([[float(v) for v in r[1:-1]] for r in rows], bank["weights"], rtol=1e-7)


def test_a_picture_target_that_is_the_input_is_refused_even_with_overwrite(tmp_path):
    from PIL import Image

    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    proc = run_cli("explain", "in.png", "1,1,1", "--png", "in.png", "--overwrite", cwd=tmp_path)
    assert_clean_error(proc, 2, "is the same file as 'in.png', which is read")
    assert (tmp_path / "in.png").read_bytes() == before and not leftovers(tmp_path)
