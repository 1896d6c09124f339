"""Where does a trained SSD-Det refiner lose box quality? Re-runs the refiner of a run's checkpoint.pt over its
training split (eval mode, every object, no flip) and prints the mean IoU with `true_bbox` of: the noisy boxes,
the bag before/after SPSD (mean / max / top-10), b̂, b̃ and alternative picking rules for the final box
(class score only, SISD only, other k, the oracle top-k by true IoU as the upper bound of any picking rule).

Picking rules are free to compare on one checkpoint: b̃ is detached and feeds only the detector, so the
refiner's own training does not depend on how b̃ is picked.

    python benchmarks/refiner_diagnostics.py benchmarks/results/bccd/ssddet_large/checkpoint.pt [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from ssddet.data.boxes import aligned_iou
from ssddet.data.splits import training_split_json
from ssddet.engine.refine import load_refiner_method, refine_chunks
from ssddet.models.ssddet.merge import topk_merge
from ssddet.models.ssddet.sisd import spatial_confidence


def picks(bags: dict, b_hat: torch.Tensor, clean: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """-> {rule: Tensor[M] IoU with the clean boxes} for the final-box rules compared."""
    b2, cls2 = bags["bag2"], bags["cls2"]
    iou_bag = aligned_iou(b2, clean[:, None])  # [M, P]
    out = {"bag2 mean box": aligned_iou(b2.mean(1), clean)}
    rules = {"cls": cls2}
    if "sisd" in bags:
        u = spatial_confidence(bags["sisd"])
        u_abs = (bags["sisd"] * 0.5 + 0.5).clamp(min=0)
        rules.update({"cls*U'": cls2 * u, "U'": u, "cls*U_abs": cls2 * u_abs, "cls*U'^2": cls2 * u * u})
    for name, s in rules.items():
        for kk in sorted({1, 3, k, 15}):
            box, _ = topk_merge(b2, s, kk)
            out[f"{name} k={kk}"] = aligned_iou(box, clean)
    # perfect SISD: ranked by its target IoU(B2, b̂); oracle: ranked by the IoU with the clean box
    for name, ref in (("perfect-SISD", aligned_iou(b2, b_hat[:, None])), ("oracle", iou_bag)):
        for kk in (1, 3, k):
            onehot = torch.zeros_like(ref).scatter(1, ref.topk(min(kk, b2.shape[1]), 1).indices, 1.0)
            box, _ = topk_merge(b2, onehot, kk)
            out[f"{name} k={kk}"] = aligned_iou(box, clean)
    return out


def accumulate(acc: dict, res, clean: torch.Tensor, k: int) -> None:
    """Append this chunk's per-object IoUs (RefinerOutput `res`, its refined objects' clean boxes
    Tensor[M, 4] in the resized frame) to `acc` {row name: list of Tensor[M]}."""
    sel = res.selected[0]
    bags = res.bags
    acc["noisy"].append(aligned_iou(bags["gt"], clean))
    acc["b_hat (stage I)"].append(aligned_iou(res.stage1[0][sel], clean))
    acc["b_tilde (final)"].append(aligned_iou(res.refined[0][sel], clean))
    for name in ("bag0", "bag1", "bag2"):
        if name in bags:
            iou = aligned_iou(bags[name], clean[:, None])
            acc[f"{name} mean"].append(iou.mean(1))
            acc[f"{name} max"].append(iou.max(1).values)
            acc[f"{name} top10"].append(iou.topk(min(10, iou.shape[1]), 1).values.mean(1))
    if "bag2" in bags:
        for rule, v in picks(bags, res.stage1[0][sel], clean, k).items():
            acc[rule].append(v)
        if "sisd" in bags:
            # SISD quality: Pearson correlation (within each bag) of U with the IoU to b̂ (its target) and to the
            # clean box
            u = bags["sisd"]
            for ref_name, ref in (("b_hat", res.stage1[0][sel]), ("clean", clean)):
                t = aligned_iou(bags["bag2"], ref[:, None])
                acc[f"corr(U, IoU {ref_name})"].append(_rowcorr(u, t))


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--json", help="write the table as JSON here")
    ap.add_argument("--max-images", type=int, default=0)
    ap.add_argument("--bn-batch-stats", action="store_true",
                    help="BatchNorm on per-image batch statistics, as during from-scratch training")
    a = ap.parse_args()
    device = torch.device("cpu")
    method, cfg, _ = load_refiner_method(a.checkpoint, device)
    if a.bn_batch_stats:
        for mod in method.detector.backbone.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.train()
    k = int(method.refiner.cfg.top_k)
    _, _, records = training_split_json(cfg.data)
    if a.max_images:
        records = records[: a.max_images]
    acc: dict[str, list[torch.Tensor]] = defaultdict(list)
    for rec, part, res, back in refine_chunks(method, records, device):
        if rec.true_boxes is None:
            continue
        sel = res.selected[0]
        clean = (torch.from_numpy(rec.true_boxes[part]).float().to(device) / back)[sel]  # resized frame
        accumulate(acc, res, clean, k)
    table = {name: float(torch.cat(v).float().nanmean()) for name, v in acc.items()}
    width = max(map(len, table))
    for name, v in table.items():
        print(f"{name:<{width}}  {v:.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": a.checkpoint, "num_objects": len(torch.cat(acc["noisy"])), "iou": table}, f,
                      indent=1)


def _rowcorr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: Tensor[M]."""
    a = a.float() - a.float().mean(1, keepdim=True)
    b = b.float() - b.float().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)


if __name__ == "__main__":
    main()
