"""`ssddet train --config`: a saved config.json reruns the same run (flags not given leave it alone, flags
given override it) and `--print-config` shows the resolved config without training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssddet.cli import build_parser, main
from ssddet.config import PAPER_REFINER, Config, SSDDetConfig, resolve_trunk_precision, resolved_model
from ssddet.config_overrides import config_from_args, train_flags
from ssddet.errors import UserError


def _resolve(*args: str) -> Config:
    return config_from_args(build_parser().parse_args(["train", *args]))


def _saved_run_config(tmp_path: Path) -> tuple[Path, dict]:
    """A config.json as a run directory holds it, every flag-settable field away from its default."""
    cfg = Config()
    cfg.data.data_dir, cfg.data.images, cfg.data.noise, cfg.data.noise_seed = "data/bccd", "img", 0.4, 7
    cfg.data.keep_empty, cfg.data.num_workers = True, 0
    cfg.model.backbone, cfg.model.min_size, cfg.model.max_size = "resnet50_fpn", 480, 800
    cfg.model.backbone_weights, cfg.model.weights = "r50.pth", "det.pth"
    cfg.model.box_bg_iou_thresh = 0.45
    t = cfg.train
    t.method, t.epochs, t.lr, t.batch_size, t.lr_schedule, t.warmup_iters = "oamil", 20, 0.02, 4, "cosine", 50
    t.seed, t.eval_every, t.max_iters_per_epoch, t.amp, t.nan_policy, t.device = 3, 2, 9, True, "skip", "cpu"
    t.output = str(tmp_path / "old_run")
    cfg.ssddet.top_k, cfg.ssddet.sampler, cfg.ssddet.trunk_precision = 5, "large", "fp32"  # config.json: resolved
    cfg.oamil.oaie_num = 2
    path = tmp_path / "old_run" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg.to_dict(), indent=2))
    return path, cfg.to_dict()


def test_config_file_reloads_identically(tmp_path):
    path, saved = _saved_run_config(tmp_path)
    assert _resolve("--config", str(path), "--out", saved["train"]["output"]).to_dict() == saved
    # without --output: the same settings in a fresh run directory (never the saved run's own)
    got = _resolve("--config", str(path)).to_dict()
    assert got["train"].pop("output").startswith("runs/oamil-")
    saved["train"].pop("output")
    assert got == saved


def test_given_flags_override_the_config_file(tmp_path):
    path, saved = _saved_run_config(tmp_path)
    got = _resolve("--config", str(path), "--out", "o", "--epochs", "3", "--noise", "0.1", "--no-amp",
                   "--method", "vanilla", "--set", "ssddet.top_k=2").to_dict()
    saved["train"].update(epochs=3, amp=False, method="vanilla", output="o")
    saved["data"]["noise"] = 0.1
    saved["ssddet"]["top_k"] = 2
    assert got == saved


def test_every_train_flag_reaches_its_field():
    """Each table row is wired: the flag given alone changes exactly its field."""
    default = _resolve("--out", "o").to_dict()  # the defaults as a run resolves them
    for flag, field, opts in train_flags():
        section, key = field.split(".")
        if opts.get("action") is not None:  # --x / --no-x
            args, want = [flag if not default[section][key] else f"--no-{flag[2:]}"], not default[section][key]
        else:
            if "choices" in opts:
                value = next(str(c) for c in opts["choices"] if c != default[section][key])
            else:
                value = "17" if opts.get("type") is int else ("0.25" if "type" in opts else "x")  # float | str
            args, want = [flag, value], opts.get("type", str)(value)
        got = _resolve("--out", "o", *args).to_dict()
        assert got[section][key] == want != default[section][key], flag
        got[section][key] = default[section][key]
        got["train"]["output"] = default["train"]["output"]
        if flag == "--method":  # the method also names the R-CNN ignore band (`resolve_bg_iou_thresh`)
            got["model"]["box_bg_iou_thresh"] = default["model"]["box_bg_iou_thresh"]
        if flag == "--device":  # ... and the device the trunks' precision (`resolve_trunk_precision`)
            got["ssddet"]["trunk_precision"] = default["ssddet"]["trunk_precision"]
        assert got == default, flag


def test_refiner_preset_over_a_config_file(tmp_path):
    cfg = Config()
    for k, v in PAPER_REFINER.items():
        setattr(cfg.ssddet, k, v)
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(cfg.to_dict()))
    cfg.ssddet.trunk_precision = resolve_trunk_precision("auto")  # as a run resolves it
    assert _resolve("--config", str(path)).ssddet == cfg.ssddet  # not given: the file's paper settings stay
    fast = SSDDetConfig(trunk_precision=cfg.ssddet.trunk_precision)
    assert _resolve("--config", str(path), "--refiner", "fast").ssddet == fast
    assert _resolve("--refiner", "paper").ssddet == cfg.ssddet


def test_print_config_prints_the_resolved_config_and_does_not_train(tmp_path, capsys):
    path, saved = _saved_run_config(tmp_path)
    out = tmp_path / "new_run"
    assert main(["train", "--config", str(path), "--out", str(out), "--lr", "0.03", "--print-config"]) == 0
    saved["train"].update(lr=0.03, output=str(out))
    assert json.loads(capsys.readouterr().out) == saved
    assert not out.exists()


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    d = Config()
    for flag, value in (("--epochs EPOCHS", d.train.epochs), ("--lr LR", d.train.lr),
                        ("--backbone", d.model.backbone), ("--noise-seed", d.data.noise_seed),
                        ("--amp, --no-amp", d.train.amp)):
        assert flag in text and f"(default: {value})" in text, flag
    assert d.data.noise is None and "--noise NOISE" in text and "(default: none, the boxes as given)" in text


def test_resume_continues_the_run_where_output_says_even_if_it_moved(tmp_path):
    path, saved = _saved_run_config(tmp_path)  # its config.json says train.output = tmp/old_run
    moved = tmp_path / "moved"
    path.parent.rename(moved)
    cfg = _resolve("--out", str(moved), "--resume", "--epochs", "99")
    assert cfg.train.output == str(moved)  # not the recorded tmp/old_run, which no longer exists
    assert cfg.train.epochs == saved["train"]["epochs"]  # the run's own settings, flags ignored


def test_api_train_checks_like_the_cli(tmp_path):
    import ssddet
    from ssddet.errors import UserError

    with pytest.raises(UserError, match="--resume needs --out"):
        ssddet.train(resume=True, epochs=1)
    with pytest.raises(UserError, match="must be >= 1"):
        ssddet.train(epochs=0, output=tmp_path / "r")  # a Path is accepted for a path field
    with pytest.raises(UserError, match="expected a int"):
        ssddet.train(epochs="six")


@pytest.mark.parametrize("args, bag", [
    ((), "large"),  # the user's own boxes: noise level unknown
    (("--noise", "0.2"), "large"),
    (("--noise", "0.4"), "large"),
    (("--noise", "0.4", "--set", "ssddet.sampler=small"), "small"),  # an explicit preset wins
    (("--set", "ssddet.sampler=by-noise"), "small"),  # the released configs' rule, asked for: no noise -> small
    (("--noise", "0.3", "--set", "ssddet.sampler=by-noise"), "large"),
    (("--set", "ssddet.sampler=auto"), "auto"),
    (("--refiner", "paper"), "large"),
])
def test_sampler_is_resolved_when_the_run_starts(args, bag):
    """The default bag is the same at every noise level; "by-noise" (the released configs' rule: small bag at
    10/20 % noise, large at 30/40 %) is resolved into the config so eval/refine and --config reruns rebuild it."""
    assert SSDDetConfig().sampler == "large"
    assert _resolve(*args).ssddet.sampler == bag


def test_default_config_does_not_depend_on_the_noise_level():
    """A user's own noisy JSON trained without --noise resolves the same config as --noise on the same boxes,
    the noise fields aside."""
    plain = _resolve("--output", "o").to_dict()
    noised = _resolve("--output", "o", "--noise", "0.4").to_dict()
    for cfg in (plain, noised):
        cfg["data"].pop("noise")
    assert plain == noised


def test_trust_with_a_bag_it_was_not_set_for_warns(caplog):
    """The trust threshold is the large bag's: a smaller bag agrees with noisy boxes as well, so the run says so."""
    with caplog.at_level("WARNING", logger="ssddet"):
        _resolve("--output", "o")
        assert "trust_" not in caplog.text
        _resolve("--output", "o", "--set", "ssddet.sampler=small", "--set", "ssddet.trust_agreement=0.68")
    assert "ssddet.trust_mode=0.72 was set for the large bag" in caplog.text
    assert "ssddet.trust_agreement=0.68 was set for the large bag" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssddet"):
        _resolve("--output", "o", "--set", "ssddet.sampler=small", "--set", "ssddet.trust_mode=0")
    assert "trust_" not in caplog.text


def test_unknown_sampler_is_a_user_error():
    with pytest.raises(UserError, match="ssddet.sampler must be one of"):
        _resolve("--set", "ssddet.sampler=huge")


def test_api_and_cli_build_the_same_config(tmp_path):
    """`ssddet.train_config` (behind `ssddet.train`) and `ssddet train` go through one path: the same settings
    give the same run config, flags by name or by --set, a config file underneath."""
    import ssddet

    path, _ = _saved_run_config(tmp_path)
    cli = _resolve("--config", str(path), "--data", "d", "--noise", "0.3", "--epochs", "3", "--out", "o",
                   "--refiner", "paper", "--set", "ssddet.top_k=5")
    api = ssddet.train_config(path, data="d", noise=0.3, epochs=3, out="o", refiner="paper",
                              sets=["ssddet.top_k=5"])
    assert api.to_dict() == cli.to_dict()
    by_name = ssddet.train_config(path, **{"data.data_dir": "d", "data.noise": 0.3, "train.epochs": 3},
                                  output="o", refiner="paper", **{"ssddet.top_k": 5})
    assert by_name.to_dict() == cli.to_dict()
    # no run directory given: a fresh one for both, never the config file's own run
    assert _resolve("--config", str(path)).train.output.startswith("runs/oamil-")
    assert ssddet.train_config(path).train.output.startswith("runs/oamil-")


def test_resume_takes_the_run_config_in_the_api_as_in_the_cli(tmp_path, caplog):
    import ssddet

    path, saved = _saved_run_config(tmp_path)
    run = path.parent
    with caplog.at_level("INFO", logger="ssddet"):
        api = ssddet.train_config(resume=True, out=run, epochs=99)
    assert "ignored: epochs" in caplog.text
    cli = _resolve("--out", str(run), "--resume", "--epochs", "99")
    assert api.to_dict() == cli.to_dict() == {**saved, "train": {**saved["train"], "output": str(run)}}


def test_old_spelling_of_out_still_names_the_run_directory():
    assert _resolve("--output", "o").train.output == _resolve("--out", "o").train.output == "o"


def test_the_rcnn_ignore_band_is_the_methods_unless_given():
    """model.box_bg_iou_thresh: null resolves to the training method's value, so config.json records a number."""
    assert _resolve().model.box_bg_iou_thresh == 0.4  # SSD-Det: its detector's targets are still moving
    assert _resolve("--method", "vanilla").model.box_bg_iou_thresh == 0.5  # torchvision's: none ignored
    assert _resolve("--method", "oamil").model.box_bg_iou_thresh == 0.5
    assert _resolve("--set", "model.box_bg_iou_thresh=0.5").model.box_bg_iou_thresh == 0.5
    assert _resolve("--method", "vanilla", "--set", "model.box_bg_iou_thresh=0.3").model.box_bg_iou_thresh == 0.3
    cfg = Config()  # not through train_config (a Config handed to the Trainer): the same values
    assert resolved_model(cfg).box_bg_iou_thresh == 0.4 and cfg.model.box_bg_iou_thresh is None
    cfg.train.method = "oamil"
    assert resolved_model(cfg).box_bg_iou_thresh == 0.5
    for bad in ("abc", "true", "0.7", "-0.1"):
        with pytest.raises(UserError, match="box_bg_iou_thresh must be a number in"):
            _resolve("--set", f"model.box_bg_iou_thresh={bad}")


def test_training_fractions_must_lie_in_0_1():
    assert _resolve("--set", "ssddet.det_ramp=0.3").ssddet.det_ramp == 0.3
    for key in ("warmup_frac", "det_ramp"):
        for bad in ("1.5", "-0.1"):
            with pytest.raises(UserError, match=f"ssddet.{key} must be a fraction of training"):
                _resolve("--set", f"ssddet.{key}={bad}")
    with pytest.raises(UserError, match="ssddet.trust_mode must be a number in"):
        _resolve("--set", "ssddet.trust_mode=1.2")
    with pytest.raises(UserError, match="ssddet.trust_window must be a whole number"):
        _resolve("--set", "ssddet.trust_window=0")


def test_resuming_a_run_that_predates_a_changed_default_goes_on_as_it_started(tmp_path):
    """A config.json without model.box_bg_iou_thresh was trained at torchvision's 0.5: resuming keeps 0.5, where a
    fresh SSD-Det run gets 0.4 (and so for every config_overrides.PREDATED field)."""
    run = tmp_path / "old_run"
    run.mkdir()
    saved = Config().to_dict()
    saved["train"]["output"] = str(run)
    del saved["model"]["box_bg_iou_thresh"], saved["ssddet"]["refiner_decay_epochs"]
    (run / "config.json").write_text(json.dumps(saved))
    assert _resolve("--out", str(run), "--resume").model.box_bg_iou_thresh == 0.5
    saved["model"]["box_bg_iou_thresh"] = None  # written by this version: the method's value
    (run / "config.json").write_text(json.dumps(saved))
    assert _resolve("--out", str(run), "--resume").model.box_bg_iou_thresh == 0.4
    # the refiner's early decay: a run that predates it decays at train.lr_steps
    assert _resolve("--out", str(run), "--resume").ssddet.refiner_decay_epochs == 0.0
    assert _resolve("--out", str(tmp_path / "new")).ssddet.refiner_decay_epochs == 4.0


@pytest.mark.parametrize("content, problem", [
    ({"train": {"epochs": "2"}}, "c.json: train.epochs: expected a int, got '2'"),
    ({"train": {"epochs": None}}, "c.json: train.epochs must not be null"),
    ({"train": 5}, "c.json: config section 'train' must be an object, got int"),
    ({"model": {"min_size": 1.5}}, "c.json: model.min_size: expected a int, got 1.5"),
    ({"train": {"lr_steps": 0.5}}, "c.json: train.lr_steps: expected a list, got 0.5"),
])
def test_a_config_file_gets_the_type_checks_of_set(tmp_path, content, problem):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError) as e:
        _resolve("--config", str(path))
    assert problem in str(e.value)


def test_config_file_values_of_the_right_type_and_nullable_nulls_load(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 3.0, "lr": 1}, "model": {"box_bg_iou_thresh": None}}))
    cfg = _resolve("--config", str(path))
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int) and cfg.train.lr == 1


@pytest.mark.parametrize("setting, problem", [
    ("train.lr=-1", "train.lr must be a positive number"), ("train.lr=NaN", "train.lr must be a positive number"),
    ("train.eval_every=0", "train.eval_every must be >= 1"),
    ("train.lr_schedule=\"step\"", "train.lr_schedule must be one of multistep, cosine"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"), ("data.flip=3", "data.flip is a probability"),
])
def test_training_numbers_are_checked_before_any_data_is_read(setting, problem):
    with pytest.raises(UserError, match=problem):
        _resolve("--set", setting)
