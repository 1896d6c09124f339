"""The training loop: SGD + warm-up + multistep/cosine LR, grad clipping, AMP on CUDA, DDP under torchrun,
per-epoch COCO evaluation, atomic checkpoints with full resume, JSON-lines + TensorBoard logs.

Under torchrun every process trains its share of each epoch (DistributedSampler), validates its share of the val
batches, and saves its RNG state into the checkpoint through rank 0, which alone writes files.

There is no hook interface (detectron2's HookBase): the end of an epoch is three calls in `_run` (evaluate, write
the epoch record, `_save`) whose order is the crash-safety argument (the record before the checkpoint, the RNG
gather as a collective before rank 0 goes on alone). Hooks would spread that order over classes without making
the loop shorter."""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .._version import __version__
from ..config import Config, resolved_model
from ..data.images import BadImages
from ..data.splits import load_train_val
from ..errors import TrainingError, UserError
from ..models.detector import build_detector
from ..models.methods import build_method
from .accel import Precision, build_sgd, maybe_sync_batchnorm, scaled_lr
from .checkpoint import atomic_save, deployable, load_checkpoint, rng_state, set_rng_state
from .distributed import any_rank, barrier, cleanup, gather_objects, init_distributed, is_main, mean_across_ranks
from .evaluate import evaluate_sharded, format_metrics
from .loaders import epoch_seed, make_loaders
from .log import Averager, RunLogger

log = logging.getLogger(__name__)
LOG_EVERY = 20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(it: int, total: int, cfg, steps: list | None = None) -> float:
    """Multiplier of the base LR at global iteration `it` of `total` (warm-up x schedule); `steps`: the
    multistep decay points of this parameter group (None: cfg.lr_steps)."""
    warm = 1.0
    if it < cfg.warmup_iters:
        warm = cfg.warmup_factor + (1 - cfg.warmup_factor) * it / cfg.warmup_iters
    progress = it / max(total, 1)
    if cfg.lr_schedule == "cosine":
        sched = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        sched = cfg.lr_gamma ** sum(progress >= s for s in (cfg.lr_steps if steps is None else steps))
    return warm * sched


def model_meta(cfg: Config, data) -> dict:
    return {"ssddet_version": __version__, "model": cfg.to_dict()["model"], "method": cfg.train.method,
            "num_classes": data.num_classes, "categories": data.categories,
            "box_coder": cfg.oamil.box_coder if cfg.train.method == "oamil" else "xywh"}


def _to_device(images, targets, device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def _check_finite(losses: dict, it: int, policy: str, device: torch.device | None = None) -> bool:
    """True if all finite. Otherwise stop with a message naming the term, or report a skip.
    Under DDP the decision is collective: a step skipped on one rank is skipped on all (a rank that skipped
    its backward alone would leave the others waiting in the gradient all-reduce)."""
    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
    if dist.is_initialized() and any_rank(bool(bad), device or torch.device("cpu")) and not bad:
        bad = {"(on another rank)": float("nan")}
    if not bad:
        return True
    msg = f"non-finite loss at iteration {it}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
    if policy == "stop":
        raise TrainingError(msg + " (lower --lr, or use --nan-policy skip to skip such steps)")
    log.warning("%s: step skipped", msg)
    return False


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, command: str | None = None):
        self.cfg = cfg
        self.out = Path(cfg.train.output)
        self.device, self.rank, self.world = init_distributed(cfg.train.device)
        self.main = is_main()
        seed_everything(cfg.train.seed + self.rank)
        self.splits = load_train_val(cfg.data)
        self.data = self.splits.train
        self.train_loader, self.val_loader, self.sampler = make_loaders(cfg, self.splits, self.world,
                                                                        self.rank, self.device)
        detector = build_detector(resolved_model(cfg), self.data.num_classes)
        method = build_method(cfg, detector, self.data.num_classes)
        self.method = maybe_sync_batchnorm(method, cfg.train.sync_bn, self.device, self.world,
                                           self.main).to(self.device)
        self.loader_gen = self.train_loader.generator
        self.model = self.method
        if self.world > 1:
            self.model = DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        lr = scaled_lr(cfg.train, self.world, self.main)
        self.optimizer = build_sgd(self.method.param_groups(lr, cfg.train), lr, cfg.train, self.device)
        self.iters_per_epoch = min(len(self.train_loader), cfg.train.max_iters_per_epoch or len(self.train_loader))
        self.total_iters = self.iters_per_epoch * cfg.train.epochs
        # one schedule per parameter group: a group may carry its own decay points ("lr_steps")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            functools.partial(lambda it, steps: lr_factor(it, self.total_iters, cfg.train, steps),
                              steps=g.get("lr_steps")) for g in self.optimizer.param_groups])
        self.precision = Precision(cfg.train, self.device, self.main)
        self.epoch, self.iteration, self.best, self.skipped = 0, 0, -1.0, 0
        # unreadable images: reads skipped over the run (all processes), under data.on_bad_image
        self.bad_images, self.skipped_images = BadImages(cfg.data.on_bad_image), 0
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.deadline, self.out_of_time = None, False  # time budget: a wall-clock limit, reached
        if cfg.train.deterministic:
            set_deterministic()
        resumed = resume and self._resume()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._write_run_files(command)
        self.logger = RunLogger(self.out, enabled=self.main)
        if resumed:
            # records of iterations after the checkpoint (a crashed run's partial epoch) are redone: drop them
            self.logger.truncate_after(self.iteration)

    # ---------------------------------------------------------------- run files and checkpoints
    def _write_run_files(self, command: str | None) -> None:
        (self.out / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        with open(self.out / "command.txt", "a", encoding="utf-8") as f:
            f.write(f"# ssddet {__version__}, torch {torch.__version__}\n{command or ' '.join(sys.argv)}\n")

    def _state(self, rngs: list[dict]) -> dict:
        """The checkpoint. `rngs`: every process's RNG state in rank order (ranks are seeded seed + rank and
        draw differently, so each resumes its own); "rng" keeps rank 0's for readers of one state."""
        return {"method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.precision.scaler.state_dict(),
                "epoch": self.epoch, "iteration": self.iteration, "best": self.best, "skipped": self.skipped,
                "skipped_images": self.skipped_images, "rng": rngs[0], "rng_ranks": rngs,
                "config": self.cfg.to_dict(), "ssddet_version": __version__,
                "meta": model_meta(self.cfg, self.data)}

    def _resume(self) -> bool:
        """Restore everything from OUTPUT/checkpoint.pt; False (fresh start) if there is none."""
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            log.warning("--resume: no checkpoint at %s, starting from scratch", path)
            return False
        if self.main:  # temp files of a save that a crash interrupted (atomic_save never renamed them)
            for tmp in self.out.glob("*.pt*.tmp"):
                tmp.unlink(missing_ok=True)
        hint = "delete it (or choose another --output) to start over"
        try:
            # on the CPU: the RNG states must stay CPU ByteTensors (torch.set_rng_state rejects a CUDA tensor);
            # load_state_dict moves the model and optimizer tensors to their parameters' device
            ck = load_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - truncated/corrupt/foreign file: a user-level error
            raise UserError(f"{path}: cannot resume, the checkpoint is unreadable or corrupt ({e}); "
                            f"{hint}") from None
        needed = ("method", "optimizer", "scheduler", "scaler", "epoch", "iteration", "best", "rng")
        missing = [k for k in needed if not isinstance(ck, dict) or k not in ck]
        if missing:
            raise UserError(f"{path}: cannot resume, not an ssddet training checkpoint (missing "
                            f"{', '.join(missing)}); {hint}")
        try:
            self.method.load_state_dict(ck["method"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            was = ck.get("config", {}).get("train", {}).get("method", "?")
            raise UserError(f"{path}: cannot resume, the checkpoint (method {was}) does not match this "
                            f"run's model/method ({self.cfg.train.method}, {self.cfg.model.backbone}): "
                            f"{e}") from None
        self.scheduler.load_state_dict(ck["scheduler"])
        self.precision.load_scaler(ck["scaler"])
        self.epoch, self.iteration = ck["epoch"], ck["iteration"]
        self.best, self.skipped = ck["best"], ck.get("skipped", 0)
        self.skipped_images = ck.get("skipped_images", 0)
        self._restore_rng(ck.get("rng_ranks") or [ck["rng"]])
        log.info("resumed from %s at epoch %d (iteration %d)", path, self.epoch, self.iteration)
        return True

    def _restore_rng(self, states: list[dict]) -> None:
        """This process's saved RNG state. Resumed with more processes than saved it, the extra ranks start
        from a fresh state of (seed, rank, iteration): the run goes on, but not bit-identical."""
        if len(states) != self.world and self.main:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the data order and the "
                        "random draws differ from an uninterrupted run", len(states), self.world)
        if self.rank < len(states):
            set_rng_state(states[self.rank])
        else:
            seed_everything(int(np.random.SeedSequence([self.cfg.train.seed, self.rank, self.iteration])
                                .generate_state(1)[0]))

    def _save(self, metrics: dict | None, final: bool = False) -> None:
        """End-of-epoch files. checkpoint.pt is written last: it is the commit point, so a crash anywhere in
        here re-runs the epoch on --resume, which rewrites the same model_best/model_final/metrics.json
        (otherwise a crash after the checkpoint could leave a stale model_final.pt or no model_best.pt for
        this epoch, that a resume would never rewrite)."""
        rngs = gather_objects(rng_state())  # a collective: before rank 0 alone goes on
        if not self.main:
            return
        meta = model_meta(self.cfg, self.data)
        if metrics is not None and metrics["AP"] > self.best:
            self.best = metrics["AP"]
            atomic_save(deployable(self.method.detector, {**meta, "epoch": self.epoch, "metrics": metrics}),
                        self.out / "model_best.pt")
        atomic_save(deployable(self.method.detector, {**meta, "epoch": self.epoch}),
                    self.out / "model_final.pt")
        if final and metrics:
            (self.out / "metrics.json").write_text(json.dumps({"val": metrics, "best_AP": self.best,
                                                               "skipped_images": self.skipped_images}, indent=2))
        atomic_save(self._state(rngs), self.out / "checkpoint.pt")

    # ---------------------------------------------------------------- loop
    def train_epoch(self) -> dict:
        self.method.train()
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.loader_gen.manual_seed(epoch_seed(self.cfg.train.seed, self.epoch, self.rank))
        avg = Averager()
        with tqdm(total=self.iters_per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                  disable=not self.main, leave=False, dynamic_ncols=True,
                  mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:  # closed on errors too
            for i, batch in enumerate(self.train_loader):
                if i >= self.iters_per_epoch:
                    break
                images, targets = self.bad_images.take(batch)  # unreadable images: dropped, or stop (on_bad_image)
                avg.add({"batch_images": float(len(images))})  # readable ones: 0 on every rank = nothing to learn
                # a batch of unreadable images only: no step, on every rank (DDP's all-reduce needs all of them)
                if any_rank(not images, self.device):
                    continue
                losses, stats = self.step(images, targets)
                avg.add({**losses, **stats})
                if self.main and self.iteration % LOG_EVERY == 0:
                    self.logger.write({"epoch": self.epoch + 1, "iteration": self.iteration,
                                       "lr": self.last_lr, **losses, **stats},
                                      self.iteration, "train")
                bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.3f}",
                                lr=f"{self.last_lr:.4f}")
                bar.update()
                if self.deadline is not None and any_rank(time.time() > self.deadline, self.device):
                    self.out_of_time = True
                    break
        return mean_across_ranks(avg.sums, avg.counts)

    def step(self, images, targets) -> tuple[dict, dict]:
        images, targets = _to_device(images, targets, self.device)
        progress = self.iteration / max(self.total_iters, 1)
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the LR this step uses (logged)
        with self.precision.autocast():
            losses, stats = self.model(images, targets, progress)
        self.iteration += 1
        self.optimizer.zero_grad(set_to_none=True)
        if not _check_finite(losses, self.iteration, self.cfg.train.nan_policy, self.device):
            return self._skip(stats)
        total = self.method.total_loss(losses)  # the config's loss weights; the log keeps the terms
        scaler = self.precision.scaler
        scaler.scale(total).backward()
        norm = None
        if self.cfg.train.clip_grad_norm:
            scaler.unscale_(self.optimizer)  # fp16: clip the true gradients, not the scaled ones
            norm = clip_per_group(self.optimizer, self.cfg.train.clip_grad_norm)
            # Finite losses can still give inf/NaN gradients, which would silently turn every weight into NaN.
            # (Under fp16 AMP the GradScaler detects them and skips the step itself.)
            if not self.precision.scaling and not _check_finite({"grad_norm": norm}, self.iteration,
                                                                self.cfg.train.nan_policy, self.device):
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(stats)
        scale = scaler.get_scale() if self.precision.scaling else None
        scaler.step(self.optimizer)
        scaler.update()
        self._advance_schedule()
        logged = {**losses, "loss": total, **({"grad_norm": norm} if norm is not None else {})}
        vals = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()
        out = dict(zip(logged, vals))  # one host sync (fp16: two more, in get_scale)
        if scale is not None:
            # fp16: update() lowers the scale exactly when the scaler skipped the step (inf/NaN gradients, by design
            # on the first steps at its initial 2^16); the logged grad_norm is then non-finite, and this says why
            out["amp_skipped"] = float(scaler.get_scale() < scale)
        return out, stats

    def _skip(self, stats: dict) -> tuple[dict, dict]:
        """A skipped step (nan_policy 'skip'): no update; the LR schedule advances and the step is counted."""
        self.skipped += 1
        self._advance_schedule()
        return {}, stats

    def _advance_schedule(self) -> None:
        """One step of the LR schedule, applied or skipped. A skipped first step (fp16's GradScaler skips the
        steps whose gradients overflow its initial 2^16 scale) has no optimizer.step() before it, which torch
        warns about: the schedule counts iterations, not updates, so that is intended here."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before", UserWarning)
            self.scheduler.step()

    def evaluate(self) -> dict:
        """COCO metrics on the val split, on every process (each predicts its share of the batches)."""
        return evaluate_sharded(self.method.detector, self.val_loader, self.device, self.splits.val,
                                self.splits.val_records, progress=self.main, bad=self.bad_images)

    def run(self) -> dict:
        try:
            return self._run()
        finally:  # also on TrainingError / KeyboardInterrupt: flush and close the TensorBoard writer
            self.logger.close()
            cleanup()

    def _run(self) -> dict:
        cfg = self.cfg.train
        metrics: dict = {}
        if cfg.time_budget_min:
            self.deadline = time.time() + 60.0 * cfg.time_budget_min
        if self.main:
            log.info("training %s on %d images (%d it/epoch), validating on %d; output %s", cfg.method,
                     len(self.train_loader.dataset), self.iters_per_epoch, len(self.splits.val_records),
                     self.out)
        while self.epoch < cfg.epochs:
            t0, bad_before = time.time(), self.bad_images.count
            train_means = self.train_epoch()
            if not train_means.get("batch_images"):  # every rank's every image unreadable (a collective mean)
                raise TrainingError(f"epoch {self.epoch + 1}: no training step: no training image could be read")
            self.epoch += 1
            metrics = {}
            stop = self.out_of_time
            if stop and self.main:
                log.warning("time budget of %g min reached at iteration %d (epoch %d cut short): stopping",
                            cfg.time_budget_min, self.iteration, self.epoch)
            t_eval = time.time()
            if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs or stop:
                metrics = self.evaluate()
                if self.main:
                    log.info("epoch %d val: %s", self.epoch, format_metrics(metrics))
            # unreadable images skipped this epoch (train, val) over the processes; a collective: also the barrier
            skipped_images = sum(gather_objects(self.bad_images.count - bad_before))
            self.skipped_images += skipped_images
            if self.main:
                # logged before the checkpoint: a crash in between re-runs the epoch, and the resumed run
                # drops this record (iteration > the checkpoint's); the other order would lose it for good
                self.logger.write({"epoch": self.epoch, "iteration": self.iteration,
                                   "seconds": time.time() - t0, "eval_seconds": round(time.time() - t_eval, 2),
                                   "skipped_steps": self.skipped, "skipped_images": skipped_images,
                                   "train": train_means, "val": metrics,
                                   **({"stopped": "time budget"} if stop else {})},
                                  self.epoch, "epoch")
                _log_epoch_stats(self.epoch, train_means)
            self._save(metrics or None, final=stop or self.epoch == cfg.epochs)
            if stop:
                break
        if self.main and self.skipped_images:  # the run's summary (per epoch: log.jsonl's skipped_images)
            log.warning("%d unreadable image read(s) skipped over the run%s; `ssddet check` lists every unreadable "
                        "file", self.skipped_images, f", e.g. {ex}" if (ex := self.bad_images.example()) else "")
        barrier()  # the ranks tear the process group down together: gloo can abort a rank whose peer left first
        return metrics


def clip_per_group(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    """Clip the gradient norm of each parameter group on its own; -> the total norm before clipping.

    One global norm would let the detector's gradient (its losses weigh 4x in SSD-Det, and a pretrained start
    begins with large norms) scale the refiner's randomly initialised heads, a separate group, down to nothing,
    and the refiner would not move the boxes (benchmarks/results/lite0_tuning.md). With one group (vanilla,
    OA-MIL) this is torch's clip_grad_norm_."""
    norms = [torch.nn.utils.clip_grad_norm_(g["params"], max_norm) for g in optimizer.param_groups if g["params"]]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def set_deterministic() -> None:
    """`train.deterministic`: deterministic kernels where PyTorch has them (warn where it has not)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)


def _log_epoch_stats(epoch: int, means: dict) -> None:
    names = ("loss", "iou_noisy", "iou_stage1", "iou_refined", "bag_iou_mean", "bag_iou_max")
    keys = [k for k in names if k in means]
    if keys:
        log.info("epoch %d train: %s", epoch, " ".join(f"{k}={means[k]:.3f}" for k in keys))


def train(cfg: Config, resume: bool = False, command: str | None = None) -> dict:
    return Trainer(cfg, resume=resume, command=command).run()
