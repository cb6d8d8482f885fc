"""AlignmentTask + AlignmentDataModule through the CLI (configs/ot/alignment.yaml, shrunk)."""
import pytest
import torch

from datamodules.alignment import AlignmentDataModule
from recot.tasks.alignment import match_accuracy
from tests.conftest import CONFIGS, results, run_cli

SMALL = ["--data.init_args.num_points", "400", "--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("solver,args", [("lcn", "{landmarks: 40, n_clusters: 4, max_iter: 200, tol: 1.0e-3}"),
                                         ("full", "{max_iter: 200, tol: 1.0e-3}")])
def test_wasserstein_procrustes_recovers_the_rotation(tmp_path, solver, args):
    dm = AlignmentDataModule(num_points=400)
    dm.setup()
    x, y, match = dm.batch
    before = match_accuracy(x, y, match)
    run_cli("fit", "--config", CONFIGS / "ot" / "alignment.yaml", *SMALL, "--run_root", tmp_path, "--name", solver,
            "--model.init_args.solver", solver, "--model.init_args.solver_args", args)
    acc = results(tmp_path / solver)["test"]["test/acc"]
    assert acc > 0.95 and acc > before + 0.1, (before, acc)
    ckpt = torch.load(next((tmp_path / solver).glob("best-epoch*.ckpt")), weights_only=True)
    q = ckpt["state_dict"]["q"]
    torch.testing.assert_close(q @ q.T, torch.eye(16), atol=1e-4, rtol=0)  # a rotation
