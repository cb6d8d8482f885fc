"""GTN at the start of training: how far the untrained predictions are from the targets, with and without
``calibrate`` (recot.nn.GTN.calibrate_scale), and the first Adam steps after the calibrated start.

    python benchmarks/gtn_start.py                     # AIDS30, Pref. att., Pref. att. 200 (full solver); one thread
    python benchmarks/gtn_start.py --steps 0           # only the start

Each dataset's first training batch (``--pairs`` pairs of a fixed subset of training pairs) is predicted by a fresh
GTN with the shipped config's settings (seed 0); the calibrated model then predicts a validation batch. ``--steps``
Adam steps (lr 0.01, the configs' weight decay) follow on AIDS30 with 1 and 8 heads; per step the printed figures
are the batch RMSE and the mean prediction / mean target.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {  # the shipped configs' model settings (configs/gtn/*.yaml)
    "aids30": dict(num_heads=1, sinkhorn_reg=0.1, deg_norm_hidden=True, max_iter=500),
    "aids30-8heads": dict(num_heads=8, head_reg_basis=2.0, sinkhorn_reg=0.075, deg_norm_hidden=True, max_iter=500),
    "pref_att": dict(num_heads=1, sinkhorn_reg=0.1, deg_norm_hidden=True, max_iter=500),
    "pref_att_200": dict(num_heads=1, sinkhorn_reg=0.5, deg_norm_hidden=False, max_iter=100, cost="sq_euclidean"),
}


def corr(a, b):
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def main() -> None:
    from datamodules.ged import GEDDataModule
    from recot.nn.gtn import GTN

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--data_dir", default=os.environ.get("RECOT_DATA") or str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | mean target | mean prediction, official start | corr. | calibrated gain | held-out mean prediction "
          "/ target | held-out RMSE | corr. |")
    print("|---|---|---|---|---|---|---|---|")
    data = {}
    for run, kw in SETTINGS.items():
        dataset = run.split("-")[0]
        if dataset not in data:
            dm = GEDDataModule(dataset, data_dir=args.data_dir, max_pairs=10 * args.pairs, max_eval_pairs=args.pairs,
                               batch_size=args.pairs, eval_batch_size=args.pairs)
            dm.setup("fit")
            data[dataset] = dm
        dm = data[dataset]
        torch.manual_seed(0)
        model = GTN(**kw)
        model.build(dm.num_node_features, dm.num_edge_features, dm.dist_scale, dm.avg_degree)
        g1, g2, y = next(iter(dm.train_dataloader()))
        with torch.no_grad():
            raw = model(g1, g2)
        gain = model.calibrate_scale(g1, g2, y)
        v1, v2, vy = next(iter(dm.val_dataloader()))
        with torch.no_grad():
            p = model(v1, v2)
        print(f"| {run} | {float(y.mean()):.4g} | {float(raw.mean()):.4g} | {corr(raw, y):.2f} | {gain:.3g} | "
              f"{float(p.mean()):.4g} / {float(vy.mean()):.4g} | {float(((p - vy) ** 2).mean().sqrt()):.4g} | "
              f"{corr(p, vy):.2f} |", flush=True)
    for run in ("aids30", "aids30-8heads")[: 2 if args.steps else 0]:
        dm = data["aids30"]
        torch.manual_seed(0)
        model = GTN(**SETTINGS[run])
        model.build(dm.num_node_features, dm.num_edge_features, dm.dist_scale, dm.avg_degree)
        decay = [q for q in model.parameters() if q.dim() > 1]
        rest = [q for q in model.parameters() if q.dim() <= 1]
        opt = torch.optim.Adam([{"params": decay, "weight_decay": 5e-3}, {"params": rest, "weight_decay": 0.0}],
                               lr=0.01)
        batches, trace = iter(dm.train_dataloader()), []
        for step in range(args.steps):
            g1, g2, y = next(batches)
            if step == 0:
                model.calibrate_scale(g1, g2, y)
            pred = model(g1, g2)
            loss = torch.nn.functional.mse_loss(pred, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            trace.append(f"{float(loss.detach().sqrt()):.1f} ({float(pred.detach().mean()):.0f}/{float(y.mean()):.0f})")
        print(f"{run}, first {args.steps} Adam steps after the calibrated start: " + ", ".join(trace), flush=True)


if __name__ == "__main__":
    main()
