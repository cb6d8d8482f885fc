import csv
import math
from functools import partial

import pytest
import torch

from datamodules import SyntheticSpec, load_interactions
from recot.nn import LTOCF, LightGCN, Recommender
from recot.nn.ltocf import MIN_GAP
from recot.nn.sparse import SparseOperator
from recot.tasks import RankingTask
from tests.conftest import CONFIGS, QUICK, needs_data, results, run_cli


@pytest.fixture(scope="module")
def data():
    return load_interactions("synthetic", synthetic=SyntheticSpec(num_users=25, num_items=18, max_items_per_user=12))


def _like(model: LTOCF, source: torch.nn.Module) -> LTOCF:
    """``model`` with ``source``'s embedding tables; only the time logits may be left over."""
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"time_logits", "fixed_times"}
    return model


# --- the paper's special case: LT-OCF == LightGCN (Sec. 3.2.3, Eq. 13) ---------------------------------------------
@pytest.mark.parametrize("learnable_time", [True, False])
@pytest.mark.parametrize("final_time, step_size", [(4, None), (4, 1.0), (2, 1.0)])
def test_unit_times_euler_without_residual_is_lightgcn(data, learnable_time, final_time, step_size):
    torch.manual_seed(0)
    lightgcn = LightGCN(embedding_dim=8, num_layers=final_time)
    lightgcn.bind(data)
    model = LTOCF(embedding_dim=8, final_time=final_time, num_times=final_time - 1,
                  times=list(range(1, final_time)), learnable_time=learnable_time, solver="euler",
                  step_size=step_size, residual=False)
    model.bind(data)
    _like(model, lightgcn)
    assert model.times().tolist() == list(range(final_time + 1))
    for ours, theirs in zip(model.embed(), lightgcn.embed()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    users = torch.tensor([0, 3, 7])
    u, i = model.embed()
    lu, li = lightgcn.embed()
    torch.testing.assert_close(model.score(users, u[users], i), lightgcn.score(users, lu[users], li), rtol=0,
                               atol=1e-6)


def test_other_solvers_are_not_lightgcn(data):
    """The equivalence above is specific: RK4 or the residual form give other embeddings."""
    torch.manual_seed(0)
    lightgcn = LightGCN(embedding_dim=8, num_layers=4)
    lightgcn.bind(data)
    for kwargs in ({"solver": "rk4"}, {"solver": "euler", "residual": True}):
        model = LTOCF(embedding_dim=8, times=[1, 2, 3], **kwargs)
        model.bind(data)
        _like(model, lightgcn)
        assert (model.embed()[0] - lightgcn.embed()[0]).abs().max() > 1e-3


@pytest.mark.parametrize("residual", [False, True])
def test_embed_is_the_layer_loop(data, residual):
    """The stacked fast path equals initial / propagate / combine, which wrappers such as GOTNet re-run."""
    torch.manual_seed(0)
    model = LTOCF(embedding_dim=8, times=[0.5, 2.2, 3.0], solver="rk4", residual=residual)
    model.bind(data)
    for ours, loop in zip(model.embed(), Recommender.embed(model)):
        torch.testing.assert_close(ours, loop, rtol=1e-6, atol=1e-7)
    assert model.last_nfe == 16 and model.num_layers == 4


# --- exact solutions of the linear ODE --------------------------------------------------------------------------------
def _float64(model: LTOCF, data) -> LTOCF:
    model.bind(data)
    model.double()
    model.ode.func.operator = SparseOperator(data.adjacency.to(torch.float64), symmetric=True)
    return model


@pytest.mark.parametrize("residual", [False, True])
def test_accurate_solvers_give_the_exponential_of_the_adjacency(data, residual):
    """States of dx/dt = A x: x(t) = expm(t A) x(0); without the residual a segment outputs (expm(gap A) - I) x."""
    torch.manual_seed(0)
    model = _float64(LTOCF(embedding_dim=8, times=[0.6, 1.7, 3.2], solver="dopri5", rtol=1e-10, atol=1e-12,
                           residual=residual), data)
    a = data.adjacency.to_dense().double()
    x = torch.cat(model.initial())
    layers, times = [x], model.times().tolist()
    for t0, t1 in zip(times, times[1:]):
        step = torch.linalg.matrix_exp((t1 - t0) * a) @ layers[-1]
        layers.append(step if residual else step - layers[-1])
    expected = torch.stack(layers).mean(0)
    torch.testing.assert_close(torch.cat(model.embed()), expected, rtol=1e-7, atol=1e-9)


# --- learnable times ------------------------------------------------------------------------------------------------
def test_time_gradients_match_finite_differences(data):
    torch.manual_seed(0)
    model = _float64(LTOCF(embedding_dim=8, times=[0.8, 2.1, 2.9], solver="rk4"), data)

    def loss() -> torch.Tensor:
        u, i = model.embed()
        return (u[:10] * i[:10]).sum() + (u[3] * i).sum()

    loss().backward()
    grad = model.time_logits.grad.clone()
    assert (grad.abs() > 1e-4).all()
    h = 1e-6
    with torch.no_grad():
        for k in range(3):
            model.time_logits[k] += h
            up = loss()
            model.time_logits[k] -= 2 * h
            down = loss()
            model.time_logits[k] += h
            assert grad[k].item() == pytest.approx(((up - down) / (2 * h)).item(), rel=1e-6, abs=1e-9)


def test_times_train_with_their_own_learning_rate_and_stay_ordered(data):
    torch.manual_seed(0)
    model = LTOCF(embedding_dim=8, solver="rk4", time_lr=0.2)
    task = RankingTask(model, optimizer=partial(torch.optim.Adam, lr=1e-3))
    model.bind(data)
    opt = task.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.2]
    assert opt.param_groups[1]["params"] == [model.time_logits]
    assert opt.param_groups[1]["weight_decay"] == 0.0
    start = model.times().detach().clone()
    users = torch.arange(data.num_users)
    for _ in range(25):
        opt.zero_grad()
        u, i = model.embed()
        # push user scores of every item up: the layer mean then favours late (smoother, larger) states
        loss = -(u[users] @ i.T).mean()
        loss.backward()
        assert (model.time_logits.grad.abs() > 0).all()
        opt.step()
        t = model.times().float()  # strictly increasing also after rounding to the solver's dtype
        assert t[0] == 0 and t[-1] == 4 and (t[1:] - t[:-1] > 0).all()
    assert (model.times().detach() - start).abs().max() > 0.1  # the times did move


def test_time_parametrisation_is_ordered_for_any_logits():
    model = LTOCF(final_time=4.0, num_times=3)
    for logits in ([0.0, 0.0, 0.0], [40.0, -40.0, 12.0], [-80.0, -80.0, -80.0], [80.0, 79.0, -3.0]):
        with torch.no_grad():
            model.time_logits.copy_(torch.tensor(logits))
        t = model.times().float()
        assert (t[1:] - t[:-1] >= MIN_GAP * 4 * 0.99).all(), (logits, t)
        assert t[-1] == 4.0


def test_fixed_times_and_defaults():
    fixed = LTOCF(final_time=3.0, num_times=2, learnable_time=False)
    assert fixed.times().tolist() == [0.0, 1.0, 2.0, 3.0]  # t_i = i K / (T + 1), the paper's fixed setting
    assert not any("time" in name for name, _ in fixed.named_parameters())
    assert "fixed_times" in fixed.state_dict()
    fixed.build(4, 5)
    assert len(fixed.param_groups()) == 1
    shared = LTOCF(time_lr=None)
    shared.build(4, 5)
    assert len(shared.param_groups()) == 1 and any(p is shared.time_logits for p in shared.param_groups()[0]["params"])
    assert LTOCF(times=[0.5, 1.0, 3.5]).times().tolist() == pytest.approx([0, 0.5, 1.0, 3.5, 4.0])


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"times needs num_times = 3 values, got 2"):
        LTOCF(times=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"strictly increasing inside \(0, final_time=4"):
        LTOCF(times=[1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match=r"strictly increasing inside \(0, final_time=4"):
        LTOCF(times=[1.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="time_lr must be > 0"):
        LTOCF(time_lr=0.0)
    with pytest.raises(ValueError, match="final_time"):
        LTOCF(final_time=0)
    with pytest.raises(ValueError, match="dopri5 chooses its own steps"):
        LTOCF(solver="dopri5", step_size=0.5)
    model = LTOCF()
    model.build(3, 4)
    with pytest.raises(RuntimeError, match="call bind"):
        model.embed()


# --- through the CLI -----------------------------------------------------------------------------------------------
LTOCF_QUICK = [*QUICK, "--model.init_args.model", "recot.nn.LTOCF", "--model.init_args.model.init_args.embedding_dim",
               "16", "--model.init_args.model.init_args.time_lr", "0.01", "--model.init_args.model.init_args.solver",
               "euler", "--test_after_fit", "false"]


def _times(ckpt) -> torch.Tensor:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    model = LTOCF()
    model.time_logits.data.copy_(state["model.time_logits"])
    return model.times()[1:-1].detach()


def test_resume_restores_the_times_and_logs_them_every_epoch(tmp_path):
    common = [*LTOCF_QUICK, "--run_root", tmp_path]
    run_cli("fit", *common, "--name", "straight", "--trainer.max_epochs", "3")
    run_cli("fit", *common, "--name", "resumed", "--trainer.max_epochs", "2")
    run_cli("fit", *common, "--name", "resumed", "--trainer.max_epochs", "3", "--ckpt_path", "last")
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys() and "model.time_logits" in a["state_dict"]
    for name, weight in a["state_dict"].items():
        assert torch.equal(weight, b["state_dict"][name]), name
    # the time group's Adam state came back too
    assert len(b["optimizer_states"][0]["param_groups"]) == 2
    assert b["optimizer_states"][0]["param_groups"][1]["lr"] == 0.01
    times = _times(tmp_path / "straight" / "last.ckpt")
    assert (times - torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).abs().max() > 1e-3  # they were trained
    with open(tmp_path / "straight" / "logs" / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("model/t1")]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    logged = [float(rows[-1][f"model/t{k}"]) for k in (1, 2, 3)]
    assert logged == pytest.approx(times.tolist(), abs=1e-6)
    assert float(rows[-1]["model/nfe"]) == 4  # Euler: one evaluation in each of the 4 segments


SOLVER_ARGS = {
    "euler": [],
    "rk4": [],
    "rk4-adjoint": ["--model.init_args.model.init_args.adjoint", "true"],
    # one step per segment would make implicit Adams a pure RK4 (its first 3 steps are RK4 starters); its corrector
    # does not reach the official rtol 1e-7 in float32 within torchdiffeq's 4 iterations
    "implicit_adams": ["--model.init_args.model.init_args.step_size", "0.25", "--model.init_args.model.init_args.rtol",
                       "1e-5", "--model.init_args.model.init_args.atol", "1e-7"],
    # the official tolerances (1e-7 / 1e-9) cost ~160 evaluations per forward pass; looser keeps the test short
    "dopri5": ["--model.init_args.model.init_args.rtol", "1e-3", "--model.init_args.model.init_args.atol", "1e-4"],
}


@pytest.mark.filterwarnings("error:Functional iteration did not converge")
@pytest.mark.parametrize("variant", list(SOLVER_ARGS))
def test_each_solver_runs_a_shrunk_epoch_from_the_config(variant, tmp_path):
    data_dir = needs_data("ml-100k", "u.data").parent.parent
    solver = variant.split("-")[0]
    run_cli("fit", "--config", CONFIGS / "ltocf" / "ml-100k.yaml", "--run_root", tmp_path, "--name", variant,
            "--data.init_args.data_dir", data_dir, "--model.init_args.model.init_args.solver", solver,
            *SOLVER_ARGS[variant], "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
    out = results(tmp_path / variant)
    assert out["method"] == "LTOCF" and out["dataset"] == "ml-100k"
    assert out["test"] and all(math.isfinite(v) for v in out["test"].values())
    ckpt = torch.load(tmp_path / variant / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["init_args"]["solver"] == solver
    assert (_times(tmp_path / variant / "last.ckpt") != torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).any()
