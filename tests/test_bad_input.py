"""Bad user input: one clear message and exit code 2 (no traceback), or a counted warning where skipping
is sane.

`ssddet.cli.main` returns 2 for a UserError; argparse errors raise SystemExit(2).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_coco_dict, write_coco, write_image

from ssddet.cli import main
from ssddet.config import ModelConfig
from ssddet.data.coco import load_coco
from ssddet.data.dataset import CocoDetection, training_records
from ssddet.data.images import UnreadableImage
from ssddet.errors import UserError


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, *needles):
    assert rc == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


# ------------------------------------------------------------------ fatal annotation-file problems
def _dict_case(mutate):
    def make(root: Path) -> Path:
        coco = tiny_coco_dict()
        mutate(coco)
        return write_coco(root, coco)
    return make


def _text_case(text):
    def make(root: Path) -> Path:
        path = write_coco(root, tiny_coco_dict())
        path.write_text(text() if callable(text) else text)
        return path
    return make


def _dup_image(c):
    c["images"][1]["id"] = 1


def _dup_ann(c):
    c["annotations"][1]["id"] = 11


def _dup_cat(c):
    c["categories"][1]["id"] = 3


def _no_size_no_file(root: Path) -> Path:
    coco = tiny_coco_dict()
    path = write_coco(root, coco)
    coco["images"][0]["width"] = None
    path.write_text(json.dumps(coco))
    (root / "images/a.jpg").unlink()
    return path


FATAL = {
    "malformed JSON": (_text_case('{"images": [,]}'), "not valid JSON"),
    "truncated JSON": (_text_case(lambda: json.dumps(tiny_coco_dict())[:200]), "not valid JSON"),
    "empty file": (_text_case(""), "annotation file is empty"),
    "JSON nested too deeply": (_text_case("[" * 100000 + "]" * 100000), "JSON nested too deeply"),
    "top-level list": (_text_case("[1, 2]"), "top level must be a JSON object"),
    "missing images": (_dict_case(lambda c: c.pop("images")), "missing top-level key 'images'"),
    "missing annotations": (_dict_case(lambda c: c.pop("annotations")),
                            "missing top-level key 'annotations'"),
    "missing categories": (_dict_case(lambda c: c.pop("categories")), "missing top-level key 'categories'"),
    "categories not a list": (_dict_case(lambda c: c.update(categories={"id": 1})),
                              "'categories' must be a list, got dict"),
    "images not a list": (_dict_case(lambda c: c.update(images="a.jpg")), "'images' must be a list, got str"),
    "empty categories": (_dict_case(lambda c: c.update(categories=[])), "'categories' is empty"),
    "category without id": (_dict_case(lambda c: c["categories"][1].pop("id")),
                            "categories[1] needs an integer 'id'"),
    "duplicate image ids": (_dict_case(_dup_image), "duplicate image id 1"),
    "duplicate annotation ids": (_dict_case(_dup_ann), "duplicate annotation id 11"),
    "duplicate category ids": (_dict_case(_dup_cat), "duplicate category id 3"),
    "image without id": (_dict_case(lambda c: c["images"][2].pop("id")), "images[2] needs an integer 'id'"),
    "image with string id": (_dict_case(lambda c: c["images"][0].update(id="1")),
                             "images[0] needs an integer 'id'"),
    "image without file_name": (_dict_case(lambda c: c["images"][0].pop("file_name")),
                                "image 1 has no 'file_name'"),
    "annotation not an object": (_dict_case(lambda c: c["annotations"].insert(0, [1, 2])),
                                 "annotations[0] is not an object"),
    "annotation id is a list": (_dict_case(lambda c: c["annotations"][0].update(id=[11])),
                                "annotations[0] has an invalid id [11]"),
    "no size and unreadable file": (_no_size_no_file, "image 1 (images/a.jpg) has no valid width/height"),
}


@pytest.mark.parametrize("case", list(FATAL))
def test_fatal_annotation_problems(case, tmp_path, capsys):
    make, problem = FATAL[case]
    ann = make(tmp_path / "ds")
    rc, out, err = run(["check", "--ann", ann], capsys)
    assert_one_error(rc, err, f"ssddet check: error: {ann}", problem)
    assert out == ""
    with pytest.raises(UserError, match=None) as e:
        load_coco(ann)
    assert str(ann) in str(e.value) and problem in str(e.value)
    # the same file through `ssddet eval --data` and `ssddet train --data`
    rc, _, err = run(["eval", "--data", ann.parent, "--results", tmp_path / "none.json"], capsys)
    assert_one_error(rc, err, problem)


def test_annotation_file_not_found(tmp_path, capsys):
    rc, _, err = run(["check", "--ann", tmp_path / "nope.json"], capsys)
    assert_one_error(rc, err, f"{tmp_path / 'nope.json'}: annotation file not found")
    rc, _, err = run(["check", "--data", tmp_path], capsys)
    assert_one_error(rc, err, "annotations.json: annotation file not found")
    rc, _, err = run(["check"], capsys)
    assert_one_error(rc, err, "give --ann JSON or --data DIR")


# ------------------------------------------------------------------ fatal image-file problems (check)
def test_image_file_missing(tiny_coco, capsys):
    root, ann, _ = tiny_coco
    (root / "images/b.jpg").unlink()
    rc, out, err = run(["check", "--ann", ann], capsys)
    assert rc == 2 and "Traceback" not in err
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: 1 image(s): image file missing, e.g. {root / 'images/b.jpg'} (image 2)"]
    assert "NOT USABLE" in out
    rc, _, _ = run(["check", "--ann", ann, "--no-images"], capsys)
    assert rc == 0
    # loading it for training fails early, naming the file
    rc, _, err = run(["eval", "--data", root, "--split", "train", "--results", ann], capsys)
    assert_one_error(rc, err, "1 image file(s) not found", "images/b.jpg (image 2)")


def test_image_file_not_an_image(tiny_coco, capsys):
    """Not an image: listed with its annotations; usable (training skips it), but --strict fails."""
    root, ann, _ = tiny_coco
    (root / "images/a.jpg").write_text("this is not a JPEG")
    rc, out, err = run(["check", "--ann", ann], capsys)
    assert rc == 0 and "Traceback" not in err and not [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert f"  {root / 'images/a.jpg'} (image 1, annotations [11, 12]): cannot identify image file" in out
    assert out.splitlines()[-1].startswith("OK, except 1 image(s) that cannot be decoded")
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and out.splitlines()[-1] == "FAILED --strict: 1 image(s) cannot be decoded"
    rec = load_coco(ann).records[0]
    item = CocoDetection([rec])[0]  # returned, not raised: it must cross a DataLoader worker as a value
    assert isinstance(item, UnreadableImage) and isinstance(item, UserError) and item.image_id == 1
    assert re.search(r"images/a\.jpg: cannot read image \(image id 1\): cannot identify image file", str(item))


def test_no_usable_box_at_all(tmp_path, capsys):
    coco = tiny_coco_dict()
    for a in coco["annotations"]:
        a["bbox"] = [1, 2, 3]
    ann = write_coco(tmp_path / "ds", coco)
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 2
    assert "error: no usable box in the dataset" in out
    assert "warning: 7 annotation(s): bbox is not 4 finite numbers (skipped) (e.g. ids [11, 12, 21])" in out


# ------------------------------------------------------------------ skipped / repaired with a counted warning
def _ann_case(image_id=1, **fields):
    def mutate(c):
        c["annotations"].append({"id": 99, "image_id": image_id, "category_id": 3, "bbox": [10, 10, 20, 20],
                                 **fields})
    return mutate


WARN = {
    "unknown image": (_ann_case(image_id=1234), "unknown image_id (skipped)"),
    "unknown category": (_ann_case(category_id=5), "unknown category_id (skipped)"),
    "bbox wrong length": (_ann_case(bbox=[1, 2, 3, 4, 5]), "bbox is not 4 finite numbers (skipped)"),
    "bbox missing": (_ann_case(bbox=None), "bbox is not 4 finite numbers (skipped)"),
    "bbox with strings": (_ann_case(bbox=["1", "2", "3", "4"]), "bbox is not 4 finite numbers (skipped)"),
    "bbox NaN": (_ann_case(bbox=[1, float("nan"), 3, 4]), "bbox is not 4 finite numbers (skipped)"),
    "bbox inf": (_ann_case(bbox=[1, 2, float("inf"), 4]), "bbox is not 4 finite numbers (skipped)"),
    "bbox beyond float": (_ann_case(bbox=[1, 2, 10**400, 4]), "bbox is not 4 finite numbers (skipped)"),
    "negative width": (_ann_case(bbox=[30, 10, -5, 20]), "non-positive width/height (skipped)"),
    "zero height": (_ann_case(bbox=[30, 10, 5, 0]), "non-positive width/height (skipped)"),
    "entirely outside": (_ann_case(bbox=[100, 10, 20, 20]), "outside the image (nothing left after clipping) "
                                                            "(skipped)"),
    "partially outside": (_ann_case(bbox=[70, 50, 20, 20]), "clipped"),
}


@pytest.mark.parametrize("case", list(WARN))
def test_counted_warnings(case, tmp_path, capsys, caplog):
    mutate, kind = WARN[case]
    coco = tiny_coco_dict()
    mutate(coco)
    ann = write_coco(tmp_path / "ds", coco)
    rc, out, err = run(["check", "--ann", ann], capsys)
    assert rc == 0 and "Traceback" not in err
    assert f"warning: 1 annotation(s): {kind} (e.g. ids [99])" in out.splitlines()
    assert out.splitlines()[-1] == "OK"
    # --strict: the same summary, then a failure naming the finding, exit 1
    rc, strict_out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and strict_out.splitlines()[:-1] == out.splitlines()[:-1]
    assert strict_out.splitlines()[-1] == f"FAILED --strict: 1 annotation(s) {kind}"
    data = load_coco(ann)
    assert data.warnings[kind] == 1 and sum(data.warnings.values()) == 1
    assert data.warning_examples[kind] == [99]
    assert f"1 annotation(s): {kind} (e.g. ids [99])" in caplog.text
    boxes = {int(a): b for r in data.records for a, b in zip(r.ann_ids, r.boxes)}
    if kind == "clipped":
        np.testing.assert_allclose(boxes.pop(99), [70, 50, 80, 64])  # 80x64 image
    assert 99 not in boxes
    assert sorted(boxes) == [11, 12, 21, 41, 42, 51]  # the good boxes are all kept


@pytest.mark.parametrize("true_bbox", [[1, 2], [30, 10, -5, 20], [1, float("nan"), 3, 4]])
def test_an_invalid_true_bbox_is_a_counted_warning(tmp_path, true_bbox):
    """The box itself is kept; its image's clean boxes become unknown, and that is said, not silent."""
    from ssddet.data.coco import BAD_TRUE_BOX

    coco = tiny_coco_dict()
    for a in coco["annotations"]:
        a["true_bbox"] = a["bbox"]
    _ann_case(true_bbox=true_bbox)(coco)
    data = load_coco(write_coco(tmp_path / "ds", coco))
    assert data.warnings[BAD_TRUE_BOX] == 1 and data.warning_examples[BAD_TRUE_BOX] == [99]
    image1 = next(r for r in data.records if r.image_id == 1)
    assert 99 in image1.ann_ids.tolist() and image1.true_boxes is None
    assert all(r.true_boxes is not None for r in data.records if len(r.boxes) and r.image_id != 1)


def test_one_file_under_two_image_ids_is_a_counted_warning(tmp_path, capsys):
    """The val image 4 names the training image's file: counted per image, shown with its id, fails --strict."""
    from ssddet.data.coco import SHARED_FILE

    coco = tiny_coco_dict()
    coco["images"][3].update(file_name="images/./a.jpg", width=80, height=64)  # a.jpg, spelled differently
    ann = write_coco(tmp_path / "ds", coco)
    data = load_coco(ann)
    assert data.warnings[SHARED_FILE] == 1 and data.warning_examples[SHARED_FILE] == [4]
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0 and f"warning: 1 image(s): {SHARED_FILE} (e.g. ids [4])" in out.splitlines()
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and out.splitlines()[-1] == f"FAILED --strict: 1 image(s) {SHARED_FILE}"


def test_image_size_differs_from_json(tiny_coco, capsys):
    root, ann, _ = tiny_coco
    write_image(root / "images/a.jpg", 40, 128)  # JSON: 80x64
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0
    assert (f"warning: 1 image(s): image size differs from JSON (boxes will be rescaled), e.g. "
            f"{root / 'images/a.jpg'} (image 1)") in out
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and out.splitlines()[-1] == "FAILED --strict: 1 image(s) rescaled"
    image, t = CocoDetection(load_coco(ann).records[:1])[0]
    assert image.shape == (3, 128, 40)
    torch.testing.assert_close(t["boxes"], torch.tensor([[5., 20., 20., 60.], [20., 40., 30., 100.]]))


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_rgba_images(tmp_path, capsys, mode):
    coco = tiny_coco_dict()
    coco["images"][0]["file_name"] = "images/a.png"
    root = tmp_path / "ds"
    ann = write_coco(root, coco)
    write_image(root / "images/a.png", 80, 64, mode=mode)
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0 and f"warning: 1 image(s): non-RGB image ({mode}) converted to RGB" in out
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)  # no box changes: not a --strict finding
    assert rc == 0 and out.splitlines()[-1] == "OK"
    image, _ = CocoDetection(load_coco(ann).records[:1])[0]
    assert image.shape == (3, 64, 80)


def test_category_without_boxes(tmp_path, capsys):
    coco = tiny_coco_dict()
    coco["categories"].append({"id": 50, "name": "ghost"})
    ann = write_coco(tmp_path / "ds", coco)
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0
    assert "warning: categories without any box: ['ghost']" in out
    assert "boxes per category: cat3=2, cat7=2, cat42=2, ghost=0" in out
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and out.splitlines()[-1] == "FAILED --strict: 1 category(ies) without any box"


def test_missing_width_height_read_from_file(tmp_path, capsys):
    coco = tiny_coco_dict()
    root = tmp_path / "ds"
    ann = write_coco(root, coco)
    del coco["images"][1]["width"], coco["images"][1]["height"]
    coco["images"][3]["width"] = "64"  # not a number
    ann.write_text(json.dumps(coco))
    data = load_coco(ann)
    recs = {r.image_id: r for r in data.records}
    assert (recs[2].width, recs[2].height) == (96, 72) and (recs[4].width, recs[4].height) == (64, 64)
    kind = "image width/height missing in JSON (read from the file)"
    assert data.warnings[kind] == 2
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0 and f"warning: 2 image(s): {kind} (e.g. ids [2, 4])" in out
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)  # sizes from the files change no box
    assert rc == 0 and out.splitlines()[-1] == "OK"


def test_check_strict_on_a_clean_set_and_on_several_findings(tiny_coco, tmp_path, capsys):
    _, ann, _ = tiny_coco
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "OK"
    coco = tiny_coco_dict()
    for mutate in (_ann_case(image_id=1234), _ann_case(bbox=[70, 50, 20, 20])):
        mutate(coco)
    coco["annotations"][-1]["id"] = 100
    coco["categories"].append({"id": 50, "name": "ghost"})
    ann = write_coco(tmp_path / "ds", coco)
    rc, out, _ = run(["check", "--ann", ann, "--strict", "--no-images"], capsys)
    assert rc == 1 and out.splitlines()[-1] == ("FAILED --strict: 1 annotation(s) clipped; 1 annotation(s) "
                                                "unknown image_id (skipped); 1 category(ies) without any box")
    # an unusable set stays exit 2, --strict or not
    for a in coco["annotations"]:
        a["bbox"] = [1, 2, 3]
    ann.write_text(json.dumps(coco))
    rc, out, _ = run(["check", "--ann", ann, "--strict", "--no-images"], capsys)
    assert rc == 2 and out.splitlines()[-1] == "NOT USABLE as is (see errors above)"


# ------------------------------------------------------------------ training / CLI arguments
def test_empty_training_set(tmp_path, capsys):
    coco = tiny_coco_dict()
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in (4, 5)]  # val/test only
    root = tmp_path / "ds"
    write_coco(root, coco)
    data = load_coco(root / "annotations.json")
    with pytest.raises(UserError, match=r"annotations\.json: the training set is empty after filtering "
                                        r"\(3 images, none with a usable box\)"):
        training_records(data.select("train"), keep_empty=False, src=data.ann_path)
    argv = ["train", "--data", root, "--device", "cpu", "--out", tmp_path / "run", "--workers", "0"]
    rc, _, err = run(argv, capsys)
    assert_one_error(rc, err, "the training set is empty after filtering")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("level", ["1", "2.5", "-0.2"])
def test_noise_level_out_of_range(tiny_coco, level, capsys):
    _, ann, _ = tiny_coco
    rc, out, err = run(["noise", "--ann", ann, "--noise", level], capsys)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert f"argument --noise: noise level must be in [0, 1), got {level}" in err
    rc, _, err = run(["train", "--data", ann.parent, "--noise", level], capsys)
    assert rc == 2 and "noise level must be in [0, 1)" in err


@pytest.mark.parametrize("text,problem", [("[1, 2]", "top level must be a JSON object"),
                                          ('{"images": [1], "annotations": [], "categories": []}',
                                           "images[0] is not an object"),
                                          ('{"images": [], "annotations": [], "categories": [' + "7" * 5000 + "]}",
                                           "not valid JSON")])
def test_noise_on_malformed_file(tmp_path, capsys, text, problem):
    ann = tmp_path / "bad.json"
    ann.write_text(text)
    rc, _, err = run(["noise", "--ann", ann, "--noise", "0.2"], capsys)
    assert_one_error(rc, err, f"ssddet noise: error: {ann}: {problem}")


def test_noise_unknown_split(tiny_coco, capsys):
    _, ann, _ = tiny_coco
    rc, _, err = run(["noise", "--ann", ann, "--split", "trainval"], capsys)
    assert_one_error(rc, err, f"{ann}: no image has split 'trainval'")


def test_unknown_backbone(capsys):
    rc, _, err = run(["train", "--backbone", "foo"], capsys)
    assert rc == 2 and "argument --backbone: invalid choice: 'foo'" in err and "Traceback" not in err
    from ssddet.models.detector import build_detector

    with pytest.raises(UserError, match="unknown backbone 'foo'"):
        build_detector(ModelConfig(backbone="foo"), 3)


def test_unknown_method(capsys):
    rc, _, err = run(["train", "--method", "foo"], capsys)
    assert rc == 2 and "argument --method: invalid choice: 'foo'" in err and "Traceback" not in err


@pytest.mark.parametrize("item", ["foo.bar=1", "train.nope=3", "train.epochs", "ssddet=1"])
def test_set_unknown_key(tmp_path, capsys, item):
    rc, _, err = run(["train", "--out", tmp_path / "run", "--set", item], capsys)
    assert_one_error(rc, err, f"--set {item}: expected SECTION.KEY=VALUE with a known config field")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ['"x"', "1.5", "true", "NaN"])
def test_set_noise_that_is_no_level(tmp_path, capsys, value):
    rc, _, err = run(["train", "--out", tmp_path / "run", "--set", f"data.noise={value}"], capsys)
    assert_one_error(rc, err, "data.noise must be a noise level in [0, 1) or null")


def test_device_names(tmp_path, capsys):
    """One resolver for every --device / train.device: "auto" picks CUDA only where it exists; a bad name, or
    CUDA where there is none, is one line naming the value."""
    from ssddet.engine.device import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device 'cuda:1': CUDA is not available"):
            resolve_device("cuda:1")
    rc, _, err = run(["train", "--out", tmp_path / "run", "--device", "gpu0", "--epochs", "1"], capsys)
    assert_one_error(rc, err, "unknown device 'gpu0' (choose auto, cpu, cuda or cuda:N)")


def test_eval_needs_checkpoint_or_results(tiny_coco, capsys):
    root, _, _ = tiny_coco
    rc, _, err = run(["eval", "--data", root], capsys)
    assert_one_error(rc, err, "give --checkpoint (a trained model) or --results (a COCO results file)")


@pytest.mark.parametrize("content, problem", [
    (torch.zeros(3), "not an ssddet checkpoint (expected model_best.pt"),
    ({"model": {}, "meta": {}}, "not an ssddet checkpoint (its model weights or metadata are missing)"),
    ({"method": {}, "config": {}}, "not an ssddet checkpoint (no detector weights in it)"),
    ("text", "cannot load checkpoint: not a torch.save file"),
])
def test_eval_of_a_file_that_is_no_model(tiny_coco, tmp_path, capsys, content, problem):
    root, _, _ = tiny_coco
    ckpt = tmp_path / "model.pt"
    if content == "text":
        ckpt.write_text("101 not a model\n")
    else:
        torch.save(content, ckpt)
    rc, _, err = run(["eval", "--data", root, "--checkpoint", ckpt], capsys)
    assert rc != 0 and problem in err and "Traceback" not in err, err


def test_data_dir_without_annotations(tmp_path, capsys):
    rc, _, err = run(["eval", "--data", tmp_path, "--results", tmp_path / "r.json"], capsys)
    assert_one_error(rc, err, f"{tmp_path}: expected annotations.json inside the dataset directory")


def test_noise_and_refine_write_standard_json_whatever_the_input_holds(tiny_coco, tmp_path):
    """A bbox of NaN / Infinity (tokens Python's json reads) is written as null, not as a token other JSON
    readers reject; the rest of the file is unchanged."""
    from ssddet.data.coco import write_json

    data, ann, coco = tiny_coco
    coco["annotations"][0]["bbox"] = [float("nan"), 1.0, float("inf"), 2.0]
    ann.write_text(json.dumps(coco))
    out = tmp_path / "noisy.json"
    assert main(["noise", "--ann", str(ann), "--noise", "0.2", "--out", str(out)]) == 0

    def strict(token):
        raise AssertionError(f"non-standard JSON token {token}")

    d = json.loads(out.read_text(), parse_constant=strict)
    assert d["annotations"][0]["bbox"] == [None, 1.0, None, 2.0]
    assert len(d["annotations"]) == len(coco["annotations"])
    path = write_json(tmp_path / "sub" / "x.json", {"a": (1, float("-inf")), "b": {"c": float("nan")}, "d": "NaN"})
    assert json.loads(path.read_text(), parse_constant=strict) == {"a": [1, None], "b": {"c": None}, "d": "NaN"}
