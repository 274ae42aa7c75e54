"""tools/make_synthetic.py: a folder of good images -> one MVTec-layout category with exact masks."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from adkit.core.image_io import read_rgb
from adkit.evaluate.synthetic import DATASET_KINDS, KINDS, MAX_AREA, MIN_AREA, make_defect
from adkit.datasets import split_train_val

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "make_synthetic.py"
N_GOOD, RATIO, PER_KIND, SEED = 6, 0.34, 3, 5  # 2 held out: defect 2 reuses held-out image 0


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def load_tool():
    spec = importlib.util.spec_from_file_location("make_synthetic", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_good_images(folder):
    """Six small good images from scikit-image's textures: grey, colour, in a subfolder, a JPEG."""
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    brick, gravel = data.brick(), data.gravel()
    images = {"a.png": brick[:96, :128], "b.png": brick[100:196, 200:328], "sub/c.png": gravel[:96, :128],
              "sub/d.jpg": gravel[200:296, 100:228],
              "e.png": cv2.cvtColor(data.astronaut()[:96, 300:428], cv2.COLOR_RGB2BGR),
              "f.png": np.stack([brick[300:396, :128]] * 3, -1) // 2 + 40}
    for name, image in images.items():
        assert cv2.imwrite(str(folder / name), np.ascontiguousarray(image))
    return sorted(str(Path(name)) for name in images)


def decoded_tree(root):
    """{relative path: decoded pixels (PNG) or parsed JSON}: byte-level PNGs vary with zlib."""
    tree = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            if path.suffix == ".png":
                tree[rel] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tobytes()
            else:
                tree[rel] = json.loads(path.read_text())
    return tree


def made_by(parent, name, good, *extra):
    result = run_tool("--good_dir", good, "--output_dir", parent / name, "--test_ratio", RATIO,
                      "--per_kind", PER_KIND, "--seed", SEED, *extra)
    assert result.returncode == 0, result.stderr
    return parent / name


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(good folder, its sorted relative image paths, the made category folder)."""
    base = tmp_path_factory.mktemp("synthetic")
    sources = write_good_images(base / "photos")
    return base / "photos", sources, made_by(base / "data", "part", base / "photos")


def manifest(category):
    return json.loads((category / "synthetic.json").read_text())


def test_tree_is_exactly_the_mvtec_layout(made):
    _, _, category = made
    n_held = round(N_GOOD * RATIO)
    names = [f"{i:03d}" for i in range(PER_KIND)]
    expected = {f"train/good/{i:03d}.png" for i in range(N_GOOD - n_held)}
    expected |= {f"test/good/{i:03d}.png" for i in range(n_held)}
    expected |= {f"test/{kind}/{n}.png" for kind in DATASET_KINDS for n in names}
    expected |= {f"ground_truth/{kind}/{n}_mask.png" for kind in DATASET_KINDS for n in names}
    expected.add("synthetic.json")
    found = {p.relative_to(category).as_posix() for p in category.rglob("*") if p.is_file()}
    assert found == expected
    assert not [p for p in category.parent.iterdir() if p.name.startswith(".")]  # no temp left
    info = manifest(category)
    assert info["seed"] == SEED and info["kinds"] == list(DATASET_KINDS)
    assert info["counts"] == {"train_good": N_GOOD - n_held, "test_good": n_held,
                              "defects": {kind: PER_KIND for kind in DATASET_KINDS}}
    assert info["arguments"]["per_kind"] == PER_KIND and info["arguments"]["test_ratio"] == RATIO


def test_masks_are_exactly_the_pixels_changed_on_the_held_out_image(made):
    _, _, category = made
    info = manifest(category)
    held = {e["file"] for e in info["test_good"]}
    assert len(info["defects"]) == PER_KIND * len(DATASET_KINDS)
    for entry in info["defects"]:
        assert entry["drawn_on"] in held  # never a training image
        source = read_rgb(str(category / entry["drawn_on"]))
        defect = read_rgb(str(category / entry["file"]))
        mask = cv2.imread(str(category / entry["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask == 255, (defect != source).any(-1))
        assert MIN_AREA <= (mask == 255).mean() <= MAX_AREA


def test_train_and_test_good_are_disjoint_and_cover_the_good_images(made):
    good, sources, category = made
    info = manifest(category)
    train = [e["source"] for e in info["train"]]
    held = [e["source"] for e in info["test_good"]]
    assert not set(train) & set(held) and sorted(train + held) == sources
    # the documented split: split_train_val(sorted images, --test_ratio, --seed), a seeded
    # permutation of the sorted images whose first round(n * ratio) are held out
    assert (train, held) == split_train_val(sources, RATIO, SEED)
    order = np.random.default_rng(SEED).permutation(N_GOOD)
    assert held == sorted(sources[i] for i in order[:len(held)])
    for entry in info["train"] + info["test_good"]:  # pixels as read, unchanged
        np.testing.assert_array_equal(read_rgb(str(category / entry["file"])),
                                      read_rgb(str(good / entry["source"])))
    train_pixels = {read_rgb(str(category / e["file"])).tobytes() for e in info["train"]}
    assert not {read_rgb(str(category / e["file"])).tobytes() for e in info["test_good"]} & train_pixels


def test_defects_follow_the_documented_generator(made):
    _, _, category = made
    info = manifest(category)
    held = [read_rgb(str(category / e["file"])) for e in info["test_good"]]
    for kind in ("crack", "colour_shift"):
        for i in range(PER_KIND):
            rng = np.random.default_rng([SEED, list(KINDS).index(kind), i])
            image, _ = make_defect(held[i % len(held)], kind, rng)
            np.testing.assert_array_equal(read_rgb(str(category / f"test/{kind}/{i:03d}.png")), image)


def test_same_seed_same_dataset_other_seed_other_defects_kinds_independent(made, tmp_path):
    good, _, category = made
    again = made_by(tmp_path, "again", good)
    first, second = decoded_tree(category), decoded_tree(again)
    first["synthetic.json"]["arguments"].pop("output_dir")
    second["synthetic.json"]["arguments"].pop("output_dir")
    assert first == second
    other = decoded_tree(made_by(tmp_path, "other", good, "--seed", SEED + 1))
    assert other["test/crack/000.png"] != first["test/crack/000.png"]
    # one kind alone: the same crack defects as when drawn among all kinds
    alone = decoded_tree(made_by(tmp_path, "alone", good, "--kinds", "crack"))
    for i in range(PER_KIND):
        assert alone[f"test/crack/{i:03d}.png"] == first[f"test/crack/{i:03d}.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_image_size_resizes_everything(made, tmp_path):
    good, _, _ = made
    category = made_by(tmp_path, "small", good, "--image_size", 48, "--kinds", "stain,missing_piece")
    shapes = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2] for p in category.rglob("*.png")}
    assert shapes == {(48, 48)}


def test_the_toolkit_loader_reads_the_dataset(made):
    from adkit.datasets.mvtec import MVTecCategory

    _, _, category = made
    loaded = MVTecCategory(str(category.parent), category.name)
    assert len(loaded.train_paths()) == manifest(category)["counts"]["train_good"]
    items = loaded.test_items()
    assert {item.defect_type for item in items} == {"good", *DATASET_KINDS}
    for item in items:
        if item.defect_type == "good":
            assert item.mask_path is None
        else:
            stem = Path(item.path).stem
            assert Path(item.mask_path) == category / "ground_truth" / item.defect_type / f"{stem}_mask.png"


# ---------------------------------------------------------------------------------------------
# Bad input: one error line, exit 2, nothing written

def assert_refused(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""


def nothing_left(tmp_path, *keep):
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.fixture
def few(tmp_path):
    """Two readable good images in tmp_path/good."""
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), data.brick()[i * 64:i * 64 + 64, :64])
    return folder


@pytest.mark.parametrize("options, words", [
    (["--kinds", "scratch,smudge"], ["--kinds", "'smudge'", "crack", "colour_shift"]),
    (["--kinds", "crack,crack"], ["--kinds", "twice"]),
    (["--test_ratio", "0"], ["--test_ratio"]),
    (["--test_ratio", "1.5"], ["--test_ratio"]),
    (["--test_ratio", "abc"], ["--test_ratio"]),
    (["--per_kind", "0"], ["--per_kind"]),
    (["--per_kind", "2.5"], ["--per_kind"]),
    (["--image_size", "16"], ["--image_size"]),
])
def test_bad_options_are_refused(few, tmp_path, options, words):
    result = run_tool("--good_dir", few, "--output_dir", tmp_path / "out" / "part", *options)
    assert_refused(result, *words)
    assert nothing_left(tmp_path, "good")


@pytest.mark.slow
def test_bad_good_dirs_are_refused(tmp_path):
    out = tmp_path / "new" / "part"
    absent = run_tool("--good_dir", tmp_path / "absent", "--output_dir", out)
    assert_refused(absent, "--good_dir", "not found")
    (tmp_path / "empty").mkdir()
    assert_refused(run_tool("--good_dir", tmp_path / "empty", "--output_dir", out), "--good_dir", "no images")
    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "a.png"), data.brick()[:64, :64])
    assert_refused(run_tool("--good_dir", tmp_path / "one", "--output_dir", out), "--good_dir", "at least 2")
    assert nothing_left(tmp_path, "empty", "one")


def test_unreadable_or_tiny_images_are_found_before_anything_is_written(few, tmp_path):
    (few / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "new" / "part"
    assert_refused(run_tool("--good_dir", few, "--output_dir", out), "zz_broken.png", "cannot decode")
    assert nothing_left(tmp_path, "good")
    (few / "zz_broken.png").unlink()
    cv2.imwrite(str(few / "tiny.png"), data.brick()[:20, :40])
    assert_refused(run_tool("--good_dir", few, "--output_dir", out), "tiny.png", "32x32", "--image_size")
    assert nothing_left(tmp_path, "good")


def test_existing_output_is_refused_and_untouched(few, tmp_path):
    out = tmp_path / "part"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_refused(run_tool("--good_dir", few, "--output_dir", out), "--output_dir", "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert nothing_left(tmp_path, "good", "part")
    inside = run_tool("--good_dir", few, "--output_dir", few / "made")
    assert_refused(inside, "--output_dir", "inside --good_dir")


def test_interrupted_run_leaves_nothing(few, tmp_path, monkeypatch, capsys):
    tool = load_tool()
    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 3:  # some files are written by now
            raise KeyboardInterrupt
        return make_defect(*args)

    monkeypatch.setattr(tool, "make_defect", interrupted)
    with pytest.raises(SystemExit) as stop:
        tool.main(["--good_dir", str(few), "--output_dir", str(tmp_path / "deep" / "new" / "part")])
    assert stop.value.code == 130 and len(calls) == 3
    assert nothing_left(tmp_path, "good")  # no temp folder, no parent folders
    assert "Traceback" not in capsys.readouterr().err
