"""Image files users bring: a JPEG cut short, a phone photo with an EXIF orientation, a disk that fills up.

`ssddet check` must find a truncated JPEG (its header is intact: only decoding fails); every command must skip it
with a counted warning (or stop with one line under --on-bad-image stop), never with a worker's traceback; EXIF
orientation is applied everywhere; a checkpoint that cannot be written keeps the previous one.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_coco_dict, write_coco
from PIL import Image

import ssddet
from ssddet.cli import main
from ssddet.data.coco import image_size_from_file, load_coco
from ssddet.data.dataset import CocoDetection
from ssddet.data.images import BadImages, UnreadableImage, read_rgb
from ssddet.engine.checkpoint import atomic_save
from ssddet.errors import UserError

TINY_TRAIN = ["--epochs", "1", "--min-size", "64", "--max-size", "96", "--batch-size", "2",
              "--set", "ssddet.trunk_dim=32"]


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut a file short, as an interrupted copy or download leaves it (a JPEG keeps its header)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def subprocess_env() -> dict:
    """The environment of an `ssddet` subprocess: this checkout's package, one thread per process."""
    src = str(Path(ssddet.__file__).parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run(argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one error line of a failed command (progress bars share stderr, so not "the only line")."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ truncated JPEG
def test_truncated_jpeg_opens_but_does_not_decode(tmp_path):
    """The case itself: PIL reads the header (size known) and fails only when decoding."""
    ann = write_coco(tmp_path / "d", tiny_coco_dict())
    path = truncate(tmp_path / "d/images/b.jpg")
    with Image.open(path) as im:
        assert im.size == (96, 72)
    assert image_size_from_file(path) == (96, 72)
    with pytest.raises(UnreadableImage, match=r"b\.jpg: cannot read image \(image id 2\): image file is truncated"):
        read_rgb(path, 2)
    rec = load_coco(ann).records[1]
    item = CocoDetection([rec])[0]
    assert isinstance(item, UnreadableImage) and item.image_id == 2


def test_check_decodes_every_image_and_lists_the_truncated_one(tiny_coco, capsys):
    root, ann, _ = tiny_coco
    truncate(root / "images/b.jpg")
    rc, out, err = run(["check", "--ann", ann, "--workers", "2"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert ("warning: 1 image(s) cannot be decoded (training and evaluation skip them with a warning; repair or "
            "remove the files):") in out
    line = next(ln for ln in out.splitlines() if ln.startswith(f"  {root / 'images/b.jpg'}"))
    assert "(image 2, annotations [21] + 1 crowd box(es)): image file is truncated" in line
    assert out.splitlines()[-1].startswith("OK, except 1 image(s) that cannot be decoded")
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and out.splitlines()[-1] == "FAILED --strict: 1 image(s) cannot be decoded"
    text, status = ssddet.check(ann, strict=True)
    assert status == 1 and "images/b.jpg (image 2" in text
    # --no-images opens nothing: the annotations alone are fine
    rc, out, _ = run(["check", "--ann", ann, "--no-images", "--strict"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "OK"


def test_check_fails_when_no_readable_image_has_a_box(tiny_coco, capsys):
    root, ann, _ = tiny_coco
    for name in ("a", "b", "d", "e"):
        truncate(root / f"images/{name}.jpg")
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 2 and "error: no usable box in an image that can be decoded" in out


def test_bad_images_policy():
    err = UnreadableImage("x/a.jpg", 7, "image file is truncated")
    bad = BadImages("skip")
    bad.add(err)
    bad.add(err)
    assert bad.count == 2 and bad.files == {"x/a.jpg": "image file is truncated"}
    with pytest.raises(UserError, match=r"^x/a\.jpg: cannot read image \(image id 7\): image file is truncated "
                                        r"\(--on-bad-image skip"):
        BadImages("stop").add(err)
    with pytest.raises(UserError, match="data.on_bad_image must be one of skip, stop"):
        BadImages("ignore")


def test_a_batch_carries_its_unreadable_images_through_pickling_and_pinning(monkeypatch):
    """A worker pickles the Batch to the main process, and pin_memory (CUDA runs) rebuilds it: `bad` survives."""
    import pickle

    from torch.utils.data._utils.pin_memory import pin_memory

    from ssddet.data.dataset import Batch, collate

    err = UnreadableImage("x/a.jpg", 7, "image file is truncated")
    batch = pickle.loads(pickle.dumps(collate([(torch.zeros(3, 2, 2), {"boxes": torch.zeros(1, 4)}), err])))
    images, targets = batch
    assert len(images) == 1 and [e.image_id for e in batch.bad] == [7] and str(batch.bad[0]) == str(err)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: self.clone())  # no CUDA needed
    pinned = pin_memory(batch)
    assert isinstance(pinned, Batch) and pinned.bad == batch.bad and torch.equal(pinned[0][0], images[0])
    empty = collate([err])
    assert tuple(empty) == ((), ()) and len(empty.bad) == 1  # a batch of unreadable images only


@pytest.fixture(scope="module")
def truncated_run(tmp_path_factory):
    """A 1-epoch SSD-Det run (1 loader worker) on the tiny set whose training image a.jpg (2 boxes) is cut short;
    -> (data dir, run dir, exit status, stderr)."""
    root = tmp_path_factory.mktemp("truncated")
    data = root / "data"
    write_coco(data, tiny_coco_dict())
    truncate(data / "images/a.jpg")
    # a subprocess: the user's view (all that reaches stderr, the log included), with a worker process whose
    # failure must not print a traceback
    proc = subprocess.run([sys.executable, "-m", "ssddet.cli", "train", "--data", str(data), "--workers", "1",
                           "--out", str(root / "run"), *TINY_TRAIN], capture_output=True, text=True,
                          env=subprocess_env())
    yield data, root / "run", proc.returncode, proc.stderr
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints (see conftest._drop_tmp_path_of_passed_tests)


def test_training_skips_a_truncated_jpeg_and_counts_it(truncated_run):
    _, out, rc, err = truncated_run
    assert rc == 0, err
    assert "Traceback" not in err
    assert "images/a.jpg: cannot read image (image id 1): image file is truncated" in err  # the warning
    assert "1 unreadable image read(s) skipped over the run" in err  # the run's summary
    records = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["skipped_images"] for r in epochs] == [1] and epochs[0]["iteration"] == 1  # the step still ran
    assert json.loads((out / "metrics.json").read_text())["skipped_images"] == 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["skipped_images"] == 1


def test_training_with_no_readable_training_image_stops(tmp_path, capsys):
    """Every training image with boxes cut short: no step can be taken, so the run stops with one line (it
    used to "finish" with an untrained model_final.pt and exit status 0)."""
    from ssddet.cli import main

    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    for name in ("a.jpg", "b.jpg"):
        truncate(data / "images" / name)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--workers", "0", "--out", str(out), *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "ssddet train: error: epoch 1: no training step: no training image could be read" in err
    assert not (out / "model_final.pt").exists()
    # `ssddet check` says so up front (the val image still has boxes, so the set as a whole is not empty)
    assert main(["check", "--data", str(data)]) == 2
    text = capsys.readouterr().out.splitlines()
    assert "error: no usable box in a training image (split 'train') that can be decoded" in text
    assert text[-1] == "NOT USABLE as is (see errors above)"


TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_ddp_skips_a_batch_of_only_unreadable_images_on_every_rank(tmp_path):
    """2 processes, batch 1, one of the 2 training images unreadable: the rank that drew it has an empty batch, so
    both ranks skip the step (a rank that stepped alone would wait for the other's gradients forever), and the
    epoch record sums the ranks' skips."""
    data = tmp_path / "data"
    write_coco(data, tiny_coco_dict())
    truncate(data / "images/a.jpg")
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "ssddet.cli", "train", "--data", str(data),
           "--workers", "0", "--device", "cpu", "--out", str(out), *TINY_TRAIN, "--batch-size", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"kind": "epoch"' in x]
    assert [(e["skipped_images"], e["iteration"]) for e in epochs] == [(1, 0)]


def test_on_bad_image_stop_is_one_line_from_a_worker(tiny_coco, tmp_path, capsys, one_torch_thread):
    root, _, _ = tiny_coco
    truncate(root / "images/a.jpg")
    rc, _, err = run(["train", "--data", root, "--workers", "1", "--out", tmp_path / "run", *TINY_TRAIN,
                      "--set", "data.on_bad_image=stop"], capsys)
    assert rc == 2 and "Original Traceback" not in err
    line = error_line(err)
    assert f"ssddet train: error: {root / 'images/a.jpg'}: cannot read image (image id 1): image file is truncated (" \
        in line and line.endswith("(--on-bad-image skip: skip unreadable images with a warning)")


def test_on_bad_image_is_a_validated_config_field(tmp_path, capsys):
    rc, out, _ = run(["train", "--print-config", "--on-bad-image", "stop"], capsys)
    assert rc == 0 and json.loads(out)["data"]["on_bad_image"] == "stop"
    rc, out, _ = run(["train", "--print-config"], capsys)
    assert json.loads(out)["data"]["on_bad_image"] == "skip"
    rc, _, err = run(["train", "--print-config", "--set", "data.on_bad_image=ignore"], capsys)
    assert rc == 2 and "data.on_bad_image must be one of skip, stop, got 'ignore'" in error_line(err)


def test_eval_leaves_an_unreadable_image_out(truncated_run, capsys, one_torch_thread):
    data, out, rc, _ = truncated_run
    assert rc == 0
    ck = out / "model_final.pt"
    rc, text, err = run(["eval", "--data", data, "--checkpoint", ck, "--split", "train", "--workers", "1"], capsys)
    assert rc == 0 and "Traceback" not in err
    assert text.startswith("train (2 images, 1 unreadable left out): AP=")
    rc, _, err = run(["eval", "--data", data, "--checkpoint", ck, "--split", "train", "--workers", "1",
                      "--on-bad-image", "stop"], capsys)
    assert rc == 2 and "images/a.jpg: cannot read image (image id 1): image file is truncated" in error_line(err)


def test_no_readable_evaluation_image_is_an_error_not_an_ap_of_zero(truncated_run, tmp_path, capsys, monkeypatch,
                                                                     one_torch_thread):
    """Every image of the split unreadable: `eval` and the training loop's evaluation stop with one line (an AP of
    0 would read like a model that found nothing)."""
    from ssddet.engine import evaluate as ev

    data, out, rc, _ = truncated_run
    assert rc == 0
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    truncate(copy / "images/d.jpg")  # the only val image
    rc, _, err = run(["eval", "--data", copy, "--checkpoint", out / "model_final.pt", "--workers", "0"], capsys)
    assert rc == 2 and "no image of split 'val' could be read: no AP to report" in error_line(err)
    dset = load_coco(copy / "annotations.json", copy)
    records = dset.select("val")

    def unreadable_all(detector, loader, device, label_to_cat, progress=True, bad=None):
        for r in records:
            bad.files[str(r.path)] = "truncated"
        return []

    monkeypatch.setattr(ev, "predict", unreadable_all)
    with pytest.raises(UserError, match="none of the 1 images to evaluate could be read"):
        ev.evaluate_sharded(None, None, torch.device("cpu"), dset, records, bad=BadImages())


def test_refine_audit_show_predict_skip_or_stop(truncated_run, tmp_path, capsys, caplog, one_torch_thread):
    data, out, rc, _ = truncated_run
    assert rc == 0
    ck = out / "checkpoint.pt"
    # refine: the unreadable image's boxes keep their input box
    dst = tmp_path / "refined.json"
    rc, text, _ = run(["refine", "--checkpoint", ck, "--out", dst], capsys)
    assert rc == 0 and "skipped 1 unreadable image(s): their boxes keep the input box" in text
    d = json.loads(dst.read_text())
    assert d["info"]["ssddet_refine"]["stats"]["skipped_images"] == 1
    assert {a["id"] for a in d["annotations"] if "noisy_bbox" in a} == {21}  # a.jpg's 11 and 12 untouched
    # audit: its annotations are not ranked
    rc, text, _ = run(["audit", "--checkpoint", ck, "--ann", data / "annotations.json", "--out", tmp_path / "a.csv"],
                      capsys)
    assert rc == 0 and "audited 4 annotations" in text and "skipped 1 unreadable image(s)" in text
    # show: not drawn
    rc, text, _ = run(["show", "--ann", data / "annotations.json", "--out", tmp_path / "show"], capsys)
    assert rc == 0 and text.startswith("wrote 3 image(s)")
    assert "skipped 1 unreadable image(s) of the 4 picked" in caplog.text
    rc, _, err = run(["show", "--ann", data / "annotations.json", "--out", tmp_path / "show2", "--on-bad-image",
                      "stop"], capsys)
    assert rc == 2 and "images/a.jpg: cannot read image (image id 1)" in error_line(err)
    # predict: skipped and counted, or one line
    rc, _, _ = run(["predict", "--checkpoint", out / "model_final.pt", data / "images", "--out", tmp_path / "p"],
                   capsys)
    assert rc == 0 and "skipped 1 unreadable file(s)" in caplog.text
    rc, _, err = run(["predict", "--checkpoint", out / "model_final.pt", data / "images", "--out", tmp_path / "p2",
                      "--on-bad-image", "stop"], capsys)
    assert rc == 2 and "images/a.jpg: cannot read image: image file is truncated" in error_line(err)


# ------------------------------------------------------------------ EXIF orientation
RED = (220, 20, 20)


def exif_photo(path: Path, displayed: Image.Image, orientation: int = 6) -> Path:
    """Save `displayed` as a phone does: the sensor's (unrotated) pixels plus the EXIF tag that rotates them back
    (6: rotate 90 degrees clockwise to display)."""
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # exif_transpose undoes it with ROTATE_270
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif, quality=95)
    return path


def exif_dataset(root: Path, json_size: tuple[int, int]) -> Path:
    """One 48x80 (portrait, as displayed) photo stored landscape with orientation 6; a red object at
    x 8..24, y 40..64 of the displayed picture, boxed there (as a labelling tool shows it)."""
    shown = Image.new("RGB", (48, 80), (128, 128, 128))
    shown.paste(RED, (8, 40, 24, 64))
    exif_photo(root / "images/p.jpg", shown)
    coco = {"images": [{"id": 1, "file_name": "images/p.jpg", "width": json_size[0], "height": json_size[1]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 40, 16, 24], "area": 384,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "red"}]}
    return write_coco(root, coco, images=False)


def test_exif_rotated_photo_boxes_land_on_the_object(tmp_path, capsys):
    ann = exif_dataset(tmp_path / "d", (48, 80))
    with Image.open(tmp_path / "d/images/p.jpg") as im:
        assert im.size == (80, 48)  # stored landscape
    assert image_size_from_file(tmp_path / "d/images/p.jpg") == (48, 80)
    image, target = CocoDetection(load_coco(ann).records)[0]
    assert image.shape == (3, 80, 48)
    x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
    assert (x0, y0, x1, y1) == (8, 40, 24, 64)
    inside = image[:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].mean(dim=(1, 2)) * 255
    assert inside[0] > 180 and inside[1] < 70 and inside[2] < 70, inside  # red: the object, not the background
    assert torch.equal(read_rgb(tmp_path / "d/images/p.jpg"), (image * 255).round().to(torch.uint8))  # show/predict
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "OK"


def test_check_warns_when_the_json_has_the_unrotated_size(tmp_path, capsys):
    ann = exif_dataset(tmp_path / "d", (80, 48))  # the stored size: boxes may be in the unrotated frame
    rc, out, _ = run(["check", "--ann", ann], capsys)
    assert rc == 0 and "warning: 1 image(s): EXIF-rotated photo whose JSON width/height are its unrotated size" in out
    assert "image size differs" not in out
    rc, out, _ = run(["check", "--ann", ann, "--strict"], capsys)
    assert rc == 1 and "1 EXIF-rotated image(s) sized unrotated in the JSON" in out.splitlines()[-1]


# ------------------------------------------------------------------ full disk
def _full_disk(real_save, when):
    def save(obj, f, *args, **kwargs):
        if when(obj):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    return save


def test_atomic_save_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _full_disk(torch.save, lambda obj: True))
    with pytest.raises(UserError) as e:
        atomic_save({"epoch": 2}, path)
    assert str(e.value) == f"could not write {path} (the previous one is kept): {os.strerror(errno.ENOSPC)}"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_training_on_a_full_disk_stops_with_one_line(tiny_coco, tmp_path, monkeypatch, capsys, one_torch_thread):
    """The second epoch's checkpoint cannot be written: exit 2, one line, the first epoch's checkpoint intact."""
    root, _, _ = tiny_coco
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _full_disk(torch.save, lambda obj: isinstance(obj, dict)
                                                  and "optimizer" in obj and obj["epoch"] == 2))
    rc, _, err = run(["train", "--data", root, "--workers", "0", "--out", out, *TINY_TRAIN, "--epochs", "2",
                      "--max-iters-per-epoch", "1", "--method", "vanilla"], capsys)
    assert rc == 2
    assert error_line(err).endswith(f"ssddet train: error: could not write {out / 'checkpoint.pt'} (the previous one "
                                    f"is kept): {os.strerror(errno.ENOSPC)}")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob("*.tmp"))


def test_any_other_full_disk_write_is_one_line(tiny_coco, tmp_path, monkeypatch, capsys):
    root, ann, _ = tiny_coco

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", no_space)
    rc, _, err = run(["noise", "--ann", ann, "--out", tmp_path / "noisy.json"], capsys)
    assert rc == 2
    assert error_line(err) == f"ssddet noise: error: {tmp_path / 'noisy.json'}: {os.strerror(errno.ENOSPC)}"


def test_a_strip_image_is_padded_to_16_to_1():
    """An image longer than 16:1 gets zeros below (or to the right) up to that ratio; the pixel frame, and so every
    box, stays where it was. Others are returned as they are."""
    from ssddet.data.images import pad_to_aspect

    strip = torch.ones(3, 3, 2000)
    out = pad_to_aspect(strip)
    assert out.shape == (3, 125, 2000) and torch.equal(out[:, :3], strip) and out[:, 3:].abs().sum() == 0
    assert pad_to_aspect(torch.ones(3, 1000, 10)).shape == (3, 1000, 63)  # ceil(1000 / 16) = 63
    square = torch.ones(3, 50, 60)
    assert pad_to_aspect(square) is square


def test_a_2000x3_strip_trains_and_predicts(tmp_path, capsys, one_torch_thread):
    """torchvision's resize would make a 2000x3 image 0 px high at --max-size 96 and stop training and predict."""
    coco = tiny_coco_dict()
    coco["images"].append({"id": 9, "file_name": "images/strip.jpg", "width": 2000, "height": 3})
    coco["annotations"].append({"id": 99, "image_id": 9, "category_id": coco["categories"][0]["id"],
                                "bbox": [100, 0, 300, 3], "area": 900, "iscrowd": 0})
    data = tmp_path / "data"
    write_coco(data, coco)
    records = load_coco(data / "annotations.json", data).records
    image, target = CocoDetection([r for r in records if r.image_id == 9])[0]
    assert image.shape == (3, 125, 2000) and target["boxes"].tolist() == [[100.0, 0.0, 400.0, 3.0]]
    rc, _, err = run(["train", "--data", data, "--out", tmp_path / "run", "--method", "vanilla", "--set",
                      "train.max_iters_per_epoch=3", "--set", "data.flip=0", *TINY_TRAIN], capsys)
    assert rc == 0, err
    rc, text, err = run(["predict", "--checkpoint", tmp_path / "run/model_final.pt", data / "images/strip.jpg",
                         "--out", tmp_path / "p"], capsys)
    assert rc == 0 and "Traceback" not in err, err
