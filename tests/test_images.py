"""Images in and out: Pillow formats and TIFF, channels last, integer outputs that never wrap.

Real photos come from scikit-image's bundled data; the references are numpy and Pillow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
tifffile = pytest.importorskip("tifffile")
skimage_data = pytest.importorskip("skimage.data")

from .conftest import assert_clean_error, cli_in_process, leftovers, run_cli  # noqa: E402

REC601 = np.array([0.299, 0.587, 0.114])


def _photo(name: str) -> str:
    return os.path.join(os.path.dirname(skimage_data.__file__), name)


def _no_output(folder, name):
    assert not (folder / name).exists() and leftovers(folder) == []


def test_rec601_gray_on_a_photo_is_round_of_the_matmul(tmp_path):
    proc = run_cli("apply", _photo("astronaut.png"), "0.299,0.587,0.114", "-o", "gray.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rgb = np.asarray(Image.open(_photo("astronaut.png"))).astype(np.float64)
    gray = np.asarray(Image.open(tmp_path / "gray.png"))
    assert gray.dtype == np.uint8 and gray.shape == rgb.shape[:2]
    np.testing.assert_array_equal(gray, np.rint(rgb @ REC601).astype(np.uint8))


def test_rgb_to_ycbcr_agrees_with_pillow_within_one_level(tmp_path):
    matrix = "0.299,0.587,0.114;-0.168736,-0.331264,0.5;0.5,-0.418688,-0.081312"
    proc = run_cli(
        "apply", _photo("coffee.png"), matrix, "--bias", "0,128,128", "-o", "ycc.png", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    ours = np.asarray(Image.open(tmp_path / "ycc.png")).astype(int)
    pillow = np.asarray(Image.open(_photo("coffee.png")).convert("YCbCr")).astype(int)
    assert np.abs(ours - pillow).max() <= 1


def test_planar_16bit_five_channel_tiff_to_float32_tiff(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 65535, (5, 64, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", planes, planarconfig="separate", photometric="minisblack")
    with tifffile.TiffFile(tmp_path / "in.tif") as tif:
        assert tif.series[0].axes == "SYX"  # planar storage
    w = rng.standard_normal((3, 5))
    np.save(tmp_path / "w.npy", w)
    proc = run_cli("apply", "in.tif", "w.npy", "--dtype", "float32", "-o", "out.tif", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.dtype == np.float32 and out.shape == (64, 48, 3)
    x = np.moveaxis(planes, 0, -1).astype(np.float64)
    # float32 rounding, relative to the size of the terms summed (results can cancel to near 0)
    assert np.all(np.abs(out - x @ w.T) <= 1e-6 * (np.abs(x) @ np.abs(w).T))


@pytest.mark.parametrize("layout", ["tiled", "strips", "pages"])
def test_tiffs_stream_in_blocks_with_the_in_memory_result(tmp_path, layout):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (4, 256, 96), dtype=np.uint16)
    if layout == "tiled":
        tifffile.imwrite(
            tmp_path / "in.tif",
            data,
            photometric="minisblack",
            planarconfig="separate",
            tile=(32, 32),
            compression="zlib",
        )
    elif layout == "strips":
        tifffile.imwrite(
            tmp_path / "in.tif",
            np.moveaxis(data, 0, -1),
            photometric="minisblack",
            planarconfig="contig",
            rowsperstrip=8,
        )
    else:
        tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack")  # a stack of 4 pages
    args = ["apply", "in.tif", "1,2,3,4", "--dtype", "float64", "--json"]
    whole = run_cli(*args, "-o", "whole.npy", cwd=tmp_path)
    streamed = run_cli(*args, "--max-memory", "64KiB", "-o", "streamed.npy", cwd=tmp_path)
    assert whole.returncode == 0 and streamed.returncode == 0, (whole.stderr, streamed.stderr)
    assert json.loads(streamed.stdout)[0]["blocks"] > 1
    expected = np.moveaxis(data, 0, -1).astype(np.float64) @ np.array([1.0, 2, 3, 4])
    np.testing.assert_array_equal(np.load(tmp_path / "streamed.npy")[..., 0], expected)
    np.testing.assert_array_equal(np.load(tmp_path / "whole.npy"), np.load(tmp_path / "streamed.npy"))


def test_grayscale_is_h_w_1_and_16_bit_stays_16_bit(tmp_path):
    gray = (np.arange(40 * 30, dtype=np.uint16) * 50).reshape(40, 30)
    Image.fromarray(gray).save(tmp_path / "g16.png")
    proc = run_cli("apply", "g16.png", "2", "-o", "out.png", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)[0]
    assert report["input"]["shape"] == [40, 30, 1] and report["output"]["dtype"] == "uint16"
    out = np.asarray(Image.open(tmp_path / "out.png"))
    np.testing.assert_array_equal(out, np.minimum(gray.astype(int) * 2, 65535))
    assert report["output"]["clipped"]["high"] == int(np.count_nonzero(gray.astype(int) * 2 > 65535))


def test_results_saturate_and_the_report_counts_them(tmp_path):
    rgb = np.array([[[10, 20, 30], [200, 200, 200]], [[0, 0, 0], [255, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    proc = run_cli(
        "apply", "in.png", "1,1,1;-1,0,0", "--bias", "0,5", "-o", "out.png", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = np.asarray(Image.open(tmp_path / "out.png"))
    expected = rgb.astype(int) @ np.array([[1, 1, 1], [-1, 0, 0]]).T + [0, 5]
    np.testing.assert_array_equal(out, np.clip(expected, 0, 255))
    clipped = json.loads(proc.stdout)[0]["output"]["clipped"]
    assert clipped == {"low": int((expected < 0).sum()), "high": int((expected > 255).sum())}


def test_palette_images_are_expanded_and_said_so(tmp_path):
    Image.open(_photo("coffee.png")).convert("P").save(tmp_path / "pal.png")
    proc = run_cli("apply", "pal.png", "1,0,0", "-o", "red.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "palette image expanded to RGB" in proc.stderr
    red = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB"))[..., 0]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "red.png")), red)


def test_jpeg_output_takes_quality_and_says_it_is_lossy(tmp_path):
    proc = run_cli(
        "apply", _photo("astronaut.png"), "1,0,0;0,1,0;0,0,1", "-o", "a.jpg", "--quality", "90", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("lossy") == 1 and "quality 90" in proc.stderr
    back = np.asarray(Image.open(tmp_path / "a.jpg")).astype(float)
    assert np.abs(back - np.asarray(Image.open(_photo("astronaut.png")))).mean() < 4


def test_info_describes_an_image(tmp_path):
    proc = run_cli("info", _photo("astronaut.png"), "--json")
    assert proc.returncode == 0, proc.stderr
    item = json.loads(proc.stdout)[0]
    assert item["shape"] == [512, 512, 3]
    assert item["storage"] | {} == item["storage"] and item["storage"]["mode"] == "RGB"
    assert (
        item["storage"]["bit_depth"] == 8
        and item["storage"]["channels"] == 3
        and item["storage"]["pages"] == 1
    )


def test_batch_over_a_folder_of_images_with_an_output_format(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("coffee.png", "astronaut.png"):
        Image.open(_photo(name)).save(tmp_path / "in" / name.replace(".png", ".bmp"))
    proc = run_cli("batch", "0.299,0.587,0.114", "in", "--out-dir", "out", "--format", "png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut.pw.png", "coffee.pw.png"]
    rgb = np.asarray(Image.open(tmp_path / "in" / "coffee.bmp")).astype(float)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "coffee.pw.png")), np.rint(rgb @ REC601)
    )


def test_explain_a_pixel_of_an_image():
    proc = run_cli("explain", _photo("astronaut.png"), "0.299,0.587,0.114", "--at", "10,20", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[0]
    pixel = np.asarray(Image.open(_photo("astronaut.png")))[10, 20].astype(float)
    assert doc["pixel"]["channels"] == pixel.astype(int).tolist()
    assert abs(doc["results"][0]["sum"] - float(pixel @ REC601)) < 1e-9


# --- refused: exit 2, one line, no output ------------------------------------------------------


@pytest.mark.parametrize(
    "weights, output, fragments",
    [
        ("1,0,0;0,1,0;0,0,1;1,1,1;0,0,0", "five.png", ("5", "PNG", ".tif")),
        ("1,0,0;0,1,0;0,0,1", "rgb16.png", ("3", "uint16", ".tif")),
        ("1,0,0;0,1,0", "two.jpg", ("JPEG", "2")),
    ],
)
def test_channel_counts_a_format_cannot_hold(tmp_path, weights, output, fragments):
    extra = ("--dtype", "uint16") if "16" in output else ()
    proc = run_cli("apply", _photo("coffee.png"), weights, *extra, "-o", output, cwd=tmp_path)
    assert_clean_error(proc, 2, *fragments)
    _no_output(tmp_path, output)


def test_weights_for_another_channel_count_name_both(tmp_path):
    proc = run_cli("apply", _photo("coffee.png"), "1,1,1,1", "-o", "out.png", cwd=tmp_path)
    assert_clean_error(proc, 2, "4", "3")
    _no_output(tmp_path, "out.png")


@pytest.mark.parametrize("name", ["coffee.png", "rocket.jpg"])
def test_truncated_images(tmp_path, name):
    data = open(_photo(name), "rb").read()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    proc = run_cli("apply", name, "1,1,1", "-o", "out.png", cwd=tmp_path)
    assert_clean_error(proc, 2, name)
    _no_output(tmp_path, "out.png")


def test_tiff_whose_tiles_point_past_the_end(tmp_path):
    data = np.ones((3, 128, 128), np.uint16)
    tifffile.imwrite(
        tmp_path / "t.tif", data, photometric="minisblack", planarconfig="separate", tile=(32, 32)
    )
    raw = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) - 20000])
    proc = run_cli("apply", "t.tif", "1,1,1", "-o", "out.tif", cwd=tmp_path)
    assert_clean_error(proc, 2, "t.tif")
    _no_output(tmp_path, "out.tif")


def test_decompression_bomb_is_refused_with_the_limit_and_the_fix(tmp_path):
    Image.new("RGB", (4000, 4000)).save(tmp_path / "big.png")
    env = {**os.environ, "PWCONV_MAX_IMAGE_PIXELS": "1000000"}
    proc = subprocess.run(
        [sys.executable, "-m", "pwconv", "apply", "big.png", "1,1,1", "-o", "out.png"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert_clean_error(proc, 2, "1000000", "PWCONV_MAX_IMAGE_PIXELS")
    _no_output(tmp_path, "out.png")


def test_missing_extra_is_named(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
    proc = cli_in_process(tmp_path, ["PIL", "PIL.Image"], ["apply", "x.png", "1,1,1", "-o", "y.npy"])
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'pwconv[image]'" in proc.stderr.splitlines()[0]


def test_a_large_tiled_tiff_streams_with_bounded_memory(tmp_path):
    """256 MiB uncompressed tiled TIFF (the README's 2 GiB figure is from benchmarks/images.py)."""
    rows = 4096
    with tifffile.TiffWriter(tmp_path / "big.tif") as tif:
        tile = np.ones((256, 256, 4), np.float32)
        tif.write(
            (tile for _ in range((rows // 256) * (4096 // 256))),
            shape=(rows, 4096, 4), dtype=np.float32, tile=(256, 256), photometric="minisblack", planarconfig="contig",
        )  # fmt: skip
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'pwconv', 'apply', 'big.tif', '1,1,1,1', '-o', 'y.npy',"
        " '--max-memory', '64MiB'])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) < 200 * 1024, proc.stdout  # KiB
    assert float(np.load(tmp_path / "y.npy", mmap_mode="r")[-1, -1, 0]) == 4.0


@pytest.mark.parametrize(
    "suffix, codec", [(".png", "deflate"), (".jpg", "jpeg"), (".gif", "lzw"), (".bmp", "none")]
)
def test_info_names_a_pictures_codec(tmp_path, suffix, codec):
    from PIL import Image

    picture = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    (picture.convert("P") if suffix == ".gif" else picture).save(tmp_path / f"p{suffix}")
    proc = run_cli("info", f"p{suffix}", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["storage"]["compression"] == codec
