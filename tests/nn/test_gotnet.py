"""GOTNet: exact reduction to each backbone, OT clustering of planted clusters, attention, mixup, state and resume."""
from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from datamodules import SyntheticSpec, load_interactions
from recot.nn import GOTNet, LightGCN, NGCF, PinSage, Recommender
from recot.nn.gotnet import NonLocalAttention, OTClustering, OTSettings, cluster_count
from recot.ot import ot_kmeans
from tests.conftest import CONFIGS, results, run_cli

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # graphs of a few hundred nodes; two threads would oversubscribe pytest -n 2
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return load_interactions("synthetic", synthetic=SyntheticSpec(num_users=60, num_items=40, max_items_per_user=15))


BACKBONES = {
    "lightgcn": lambda: LightGCN(embedding_dim=8, num_layers=3),
    "ngcf": lambda: NGCF(embedding_dim=8, layer_sizes=[6, 10], node_dropout=0.2, message_dropout=0.1),
    "pinsage": lambda: PinSage(embedding_dim=8, layer_sizes=[8, 6], num_walks=5, num_neighbors=4, walk_seed=3),
}


def bpr(model: Recommender, users, pos, neg) -> torch.Tensor:
    u, i = model.embed()
    score = model.pair_score(u[users], i[pos]) - model.pair_score(u[users], i[neg])
    return F.softplus(-score).mean() + sum(model.auxiliary_losses().values())


# --- Sec. 4.4.2: beta = gamma = 0 and lambda = 1 is the backbone ------------------------------------------------------
@pytest.mark.parametrize("name,mix_into_next", [(n, False) for n in sorted(BACKBONES)] + [("ngcf", True)])
def test_equals_the_backbone_exactly_in_scores_and_gradients(name, mix_into_next, data):
    torch.manual_seed(0)
    plain = BACKBONES[name]()
    plain.bind(data)
    torch.manual_seed(0)
    wrapped = GOTNet(BACKBONES[name](), num_user_clusters=0.1, num_item_clusters=4, beta=0.0, gamma=0.0,
                     train_lambda=1.0, eval_lambda=1.0, seed=1, mix_into_next=mix_into_next)
    wrapped.bind(data)
    wrapped.backbone.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(2)
    users, pos, neg = (torch.randint(0, n, (32,), generator=g) for n in (60, 40, 40))
    for step in range(2):  # training mode (NGCF's dropout on, the same global draws), twice: the state moves on
        for model in (plain, wrapped):
            model.train()
            model.zero_grad()
            torch.manual_seed(10 + step)
            bpr(model, users, pos, neg).backward()
        assert wrapped.auxiliary_losses() == {}
        torch.manual_seed(10 + step)
        expected = Recommender.embed(plain)  # the backbone's own layer loop, same dropout draws
        torch.manual_seed(10 + step)
        got = wrapped.embed()
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        for (key, p), q in zip(plain.named_parameters(), wrapped.backbone.parameters()):
            assert torch.equal(p.grad, q.grad), key
        own = [p for n, p in wrapped.named_parameters() if not n.startswith("backbone.")]
        assert own and all(p.grad is None or not p.grad.any() for p in own)
        assert bool(wrapped.users[0].clustering.ready)  # the non-local branch did run
    plain.eval(), wrapped.eval()
    users = torch.arange(60)
    a, b = plain.embed(), wrapped.embed()
    torch.testing.assert_close(wrapped.score(users, b[0], b[1]), plain.score(users, a[0], a[1]), rtol=1e-6,
                               atol=1e-7)  # LightGCN's own embed() is its stacked fast path: equal up to rounding


@pytest.mark.parametrize("cluster_every", [1, 2])
def test_batch_rows_give_the_same_rows_and_gradients_as_all_rows(cluster_every, data):
    """The ranking task passes the batch's rows (Recommender.embed): attention for those rows only must change
    neither their values nor any gradient, on clustering and non-clustering batches."""
    g = torch.Generator().manual_seed(5)
    users, pos, neg = torch.randint(0, 60, (24,), generator=g), *torch.randint(0, 40, (2, 24), generator=g)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=5, num_item_clusters=4, seed=3,
                       cluster_every=cluster_every)
        model.bind(data)
        model.train()
        models.append(model)
    for step in range(3):
        outs = []
        for model, rows in zip(models, (None, (users, torch.cat([pos, neg])))):
            model.zero_grad()
            u, i = model.embed(rows=rows)
            loss = F.softplus(model.pair_score(u[users], i[neg]) - model.pair_score(u[users], i[pos])).mean()
            (loss + sum(model.auxiliary_losses().values())).backward()
            outs.append((u[users], i[pos], i[neg]))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=f"step {step}: {name}")
        assert models[1].users[0].last_attention.shape[1] == users.unique().numel()


def test_batch_node_clustering_solves_eq8_on_the_batch_rows_only(data):
    """cluster_nodes="batch": Eq. 8 over the batch's distinct users/items (marginals 1/n) equals ot_kmeans on those
    rows from the stored centroids; only their potentials are stored and only their embeddings get gradients."""
    torch.manual_seed(0)
    model = GOTNet(LightGCN(embedding_dim=8, num_layers=1), num_user_clusters=3, num_item_clusters=4, seed=3,
                   cluster_nodes="batch", beta=1.0, gamma=1.0)
    model.bind(data)
    model.train()
    users, items = torch.tensor([3, 7, 11, 20, 21, 35, 50]), torch.tensor([0, 2, 5, 9, 17, 33])
    model.embed(rows=(users, items))  # first batch: centroids drawn from the batch's points
    side = model.users[0]
    before_f, before_g, centroids = (side.clustering.f.clone(), side.clustering.g.clone(),
                                     side.clustering.centroids.clone())
    model.zero_grad()
    u, i = model.embed(rows=(users, torch.cat([items, items[:2]])))  # repeated ids count once
    sum(model.auxiliary_losses().values()).backward()
    grad = model.backbone.user_embedding.weight.grad
    outside = torch.ones(60, dtype=torch.bool)
    outside[users] = False
    assert grad[users].abs().sum() > 0 and (grad[outside] == 0).all()
    assert torch.equal(side.clustering.f[:, outside], before_f[:, outside])
    assert not torch.equal(side.clustering.f[:, users], before_f[:, users])
    with torch.no_grad():  # the same step by hand
        points = model.backbone.user_embedding.weight[users] @ side.projection[0].T
        cost = lambda x, c: (lambda raw: raw / raw.amax())(((x[..., :, None, :] - c[..., None, :, :]) ** 2).sum(-1))
        ref = ot_kmeans(points[None], 3, eps=0.01, n_iter=1, cost=cost, normalize=None, init=centroids,
                        potentials=(before_f[:, users], before_g), max_iter=100,
                        tol=1e-3, check_every=1, grad="envelope", method="scaling")
    torch.testing.assert_close(side.clustering.centroids, ref.centroids, rtol=1e-4, atol=1e-5)
    assert torch.equal(u[outside], torch.zeros_like(u[outside]))


def test_weight_decay_reaches_only_gotnets_own_weights(data):
    """weight_decay regularises the projections of Eqs. 7 and 10 (their optimiser group), not the backbone."""
    norms = []
    for decay in (0.0, 1.0):
        torch.manual_seed(0)
        model = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=5, num_item_clusters=4, seed=3,
                       weight_decay=decay)
        model.bind(data)
        groups = model.param_groups()
        assert groups[-1]["weight_decay"] == decay and all("weight_decay" not in g for g in groups[:-1])
        opt = torch.optim.Adam(groups, lr=0.05)
        g = torch.Generator().manual_seed(5)
        model.train()
        for _ in range(20):
            users, pos, neg = torch.randint(0, 60, (24,), generator=g), *torch.randint(0, 40, (2, 24), generator=g)
            opt.zero_grad()
            bpr(model, users, pos, neg).backward()
            opt.step()
        norms.append(sum(m.out.weight.norm() for m in (*model.users, *model.items)).item())
    assert norms[1] < 0.5 * norms[0]


def test_the_paper_settings_differ_from_the_backbone(data):
    torch.manual_seed(0)
    model = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=0.1, num_item_clusters=4)
    model.bind(data)
    model.eval()
    u, _ = model.embed()
    assert not torch.allclose(u, model.backbone.embed()[0])
    assert (model.beta, model.gamma, model.heads, model.settings.eps, model.eval_lambda) == (0.01, 0.01, 1, 0.01, 0.5)


# --- Eqs. 7-8: balanced OT k-means ---------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["greenkhorn", "sinkhorn"])
def test_clustering_step_recovers_planted_clusters_with_balanced_sizes(solver):
    g = torch.Generator().manual_seed(0)
    k, per, d = 5, 24, 4
    centers = 4.0 * torch.randn(k, d, generator=g, dtype=F64)
    labels = torch.arange(k).repeat_interleave(per)
    perm = torch.randperm(k * per, generator=g)
    labels = labels[perm]
    points = (centers[labels] + 0.3 * torch.randn(k * per, d, generator=g, dtype=F64))[None]  # (H=1, N, d)
    settings = OTSettings(solver=solver, iters=100, tol=1e-5, block=8)  # block: rows/columns per greedy step
    step = OTClustering(1, k * per, k, d, settings).double()
    for _ in range(6):  # mini-batch Lloyd steps from random points, each warm-started by the last
        centroids, loss, stats = step(points, g, update=True)
    plan = ot_kmeans(points, k, eps=0.01, n_iter=1, init=step.centroids, max_iter=500, tol=1e-8).plan[0]
    assign = plan.argmax(-1)
    sizes = torch.bincount(assign, minlength=k)
    assert sizes.tolist() == [per] * k  # balanced
    for c in range(k):  # each planted cluster is exactly one found cluster
        assert torch.unique(assign[labels == c]).numel() == 1
    torch.testing.assert_close(plan.sum(0), torch.full((k,), 1 / k, dtype=F64), atol=1e-6, rtol=0)
    assert stats["cluster_entropy"] == pytest.approx(1.0) and stats["ot_err"] <= 1e-3
    assert loss.shape == (1,) and torch.isfinite(loss).all()
    assert torch.cdist(centers, centroids[0]).min(-1).values.max() < 0.3


def test_cluster_counts_are_counts_or_fractions():
    assert cluster_count(0.01, 29858, "K") == 299  # Gowalla users: K = 1%
    assert cluster_count(0.01, 40981, "P") == 410
    assert cluster_count(0.001, 100, "K") == 1 and cluster_count(7, 5, "K") == 5 and cluster_count(12, 100, "K") == 12
    with pytest.raises(ValueError, match="num_user_clusters as a fraction must lie in"):
        cluster_count(1.5, 10, "num_user_clusters")
    with pytest.raises(ValueError, match=">= 1"):
        cluster_count(0, 10, "K")
    with pytest.raises(ValueError, match="solver must be"):
        GOTNet(LightGCN(), solver="badmm")
    with pytest.raises(TypeError, match="recot.nn.Recommender"):
        GOTNet(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="call bind"):
        GOTNet(LightGCN()).embed()


# --- Eqs. 9-10: attention ------------------------------------------------------------------------------------------
def test_attention_weights_sum_to_one_over_centroids_for_every_head():
    torch.manual_seed(0)
    module = NonLocalAttention(heads=3, num_points=50, num_clusters=6, dim_in=4, dim_out=7, settings=OTSettings())
    x = torch.randn(50, 4)
    out, loss, _ = module(x, torch.Generator().manual_seed(0), cluster=True)
    assert out.shape == (50, 7) and loss.shape == ()
    a = module.last_attention
    assert a.shape == (3, 50, 6) and (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(3, 50))
    # Eq. 9 by hand for one head and node: softmax of scaled dot products with that head's centroids
    q = x[7] @ module.projection[1].T
    c = module.clustering.centroids[1]
    torch.testing.assert_close(a[1, 7], torch.softmax(c @ q / 2.0, 0))


# --- Eq. 11: mixup --------------------------------------------------------------------------------------------------
def test_mixup_is_seeded_in_training_and_fixed_in_evaluation(data):
    def make(seed):
        torch.manual_seed(0)
        m = GOTNet(LightGCN(embedding_dim=8, num_layers=3), num_user_clusters=0.1, num_item_clusters=4, seed=seed)
        m.bind(data)
        return m

    a, b, c = make(5), make(5), make(6)
    expected = torch.rand(3, generator=torch.Generator().manual_seed(5), dtype=F64).tolist()
    rng = torch.get_rng_state()
    ua = a.embed()[0]
    assert torch.equal(torch.get_rng_state(), rng)  # only the model's own generator is drawn from
    assert a._lambdas == expected and 0 < min(expected) and max(expected) < 1
    assert torch.equal(ua, b.embed()[0]) and not torch.allclose(ua, c.embed()[0])
    a.embed()
    assert a._lambdas != expected  # a new draw per batch
    a.eval()
    state = (a.generator.get_state(), [t.clone() for t in a.buffers()], a.batches)
    e1, e2 = a.embed(), a.embed()
    assert a._lambdas == [0.5] * 3 and torch.equal(e1[0], e2[0])
    assert torch.equal(state[0], a.generator.get_state()) and a.batches == state[2]
    assert all(torch.equal(x, y) for x, y in zip(state[1], a.buffers()))  # evaluation writes no state


@pytest.mark.parametrize("mix_into_next", [False, True])
def test_eval_mixture_is_lambda_weighted_and_enters_the_readout(mix_into_next, data):
    torch.manual_seed(0)
    m = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=0.1, num_item_clusters=4, eval_lambda=0.3,
               mix_into_next=mix_into_next)
    m.bind(data)
    m.embed()  # one training step stores the centroids
    m.eval()
    layers = [m.initial()]
    expected = [layers[0][0]]
    for layer in range(2):
        local = m.backbone.propagate(layer, *layers[-1])
        non_local = [m.users[layer](layers[-1][0], m.generator, cluster=False)[0],
                     m.items[layer](layers[-1][1], m.generator, cluster=False)[0]]
        mixed = [0.3 * a + 0.7 * b for a, b in zip(local, non_local)]  # Eq. 11
        expected.append(mixed[0])
        layers.append(mixed if mix_into_next else local)  # readout only: the backbone's own chain goes on
    users, _ = m.embed()  # LightGCN's readout: the mean over the layers
    torch.testing.assert_close(users, sum(expected) / 3)


def test_generator_and_cluster_state_are_part_of_the_state_dict(data):
    torch.manual_seed(0)
    a = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=0.1, num_item_clusters=4, seed=3)
    a.bind(data)
    a.embed()
    a.embed()
    state = a.state_dict()
    assert "_extra_state" in state and "users.0.clustering.centroids" in state
    b = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=0.1, num_item_clusters=4, seed=99)
    b.bind(data)
    b.load_state_dict(state)
    assert b.batches == 2
    for x, y in zip(a.embed(), b.embed()):  # the same next draws and the same warm start
        assert torch.equal(x, y)


def test_cluster_every_skips_the_solve_and_the_loss_between_clusterings(data):
    torch.manual_seed(0)
    m = GOTNet(LightGCN(embedding_dim=8, num_layers=2), num_user_clusters=0.1, num_item_clusters=4, cluster_every=2)
    m.bind(data)
    m.embed()
    assert set(m.auxiliary_losses()) == {"uOT", "iOT"}
    before = m.users[1].clustering.centroids.clone()
    u, _ = m.embed()
    assert m.auxiliary_losses() == {} and torch.equal(before, m.users[1].clustering.centroids)
    u.sum().backward()  # the attention still trains the projections
    assert m.users[1].projection.grad.abs().sum() > 0
    m.embed()
    assert set(m.auxiliary_losses()) == {"uOT", "iOT"}
    logged = m.log_values()
    assert {"L_uOT", "L_iOT", "user_cluster_entropy", "item_cluster_entropy", "user_ot_iters", "item_ot_iters",
            "user_ot_err", "item_ot_err"} <= set(logged)
    assert m.log_values() == {}  # per-epoch means: consumed once per epoch


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_other_gradient_modes_train(grad, data):
    torch.manual_seed(0)
    m = GOTNet(LightGCN(embedding_dim=8, num_layers=1), num_user_clusters=0.1, num_item_clusters=4, grad=grad,
               solver="sinkhorn", ot_iters=50)
    m.bind(data)
    g = torch.Generator().manual_seed(2)
    loss = bpr(m, *(torch.randint(0, n, (16,), generator=g) for n in (60, 40, 40)))
    loss.backward()
    assert torch.isfinite(m.users[0].projection.grad).all() and m.users[0].projection.grad.abs().sum() > 0


def test_ot_kmeans_warm_start_from_potentials():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200, 3, generator=g, dtype=F64)
    first = ot_kmeans(x, 4, eps=0.01, n_iter=1, init=x[:, :4], max_iter=2000, tol=1e-6)
    again = dict(eps=0.01, n_iter=1, init=x[:, :4], max_iter=2000, tol=1e-6, check_every=1)
    cold = ot_kmeans(x, 4, **again)
    warm = ot_kmeans(x, 4, potentials=(first.ot.f, first.ot.g), **again)
    assert int(warm.ot.n_iter) == 1 < int(cold.ot.n_iter)
    torch.testing.assert_close(warm.plan, cold.plan, atol=1e-6, rtol=0)


# --- through the CLI -----------------------------------------------------------------------------------------------
SYNTHETIC = ["--data.init_args.dataset", "synthetic", "--data.init_args.split", "auto",
             "--data.init_args.synthetic.num_users", "300", "--data.init_args.synthetic.num_items", "200",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def fit(root, config: str, name: str, epochs: int, *extra) -> dict:
    run_cli("fit", "--config", CONFIGS / "gotnet" / config, "--run_root", root, "--name", name, *SYNTHETIC,
            "--trainer.max_epochs", epochs, "--trainer.check_val_every_n_epoch", epochs, *extra)
    return results(root / name)


def test_cli_training_decreases_the_loss_and_logs_the_ot_terms(tmp_path):
    out = fit(tmp_path, "ml-100k.yaml", "run", 6, "--model.init_args.optimizer.init_args.lr", "0.01")
    assert (out["method"], out["backbone"]) == ("GOTNet", "LightGCN")
    with open(tmp_path / "run" / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [r for r in rows if r.get("train/loss")]
    losses = [float(r["train/bpr"]) for r in epochs]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.03, losses
    for key in ("train/uOT", "train/iOT", "model/L_uOT", "model/L_iOT", "model/user_cluster_entropy",
                "model/item_ot_iters"):
        assert all(r[key] for r in epochs), key
    assert float(epochs[-1]["model/user_cluster_entropy"]) > 0.8  # balanced clusters
    assert out["test"]["test/recall@20"] > 0.1


@pytest.mark.parametrize("config,backbone", [("ml-100k-ngcf.yaml", "NGCF"), ("ml-100k-pinsage.yaml", "PinSage")])
def test_cli_other_backbones_run_a_shrunk_epoch(config, backbone, tmp_path):
    out = fit(tmp_path, config, "run", 1, "--trainer.limit_train_batches", "2", "--trainer.logger", "false")
    assert (out["method"], out["backbone"]) == ("GOTNet", backbone)
    assert out["test"] and all(v == v for v in out["test"].values())


def test_cli_resume_restores_the_mixup_generator_exactly(tmp_path):
    common = ["--test_after_fit", "false", "--trainer.check_val_every_n_epoch", "1", "--trainer.logger", "false",
              "--trainer.limit_train_batches", "3"]
    fit(tmp_path, "ml-100k.yaml", "straight", 3, *common)
    fit(tmp_path, "ml-100k.yaml", "resumed", 2, *common)
    fit(tmp_path, "ml-100k.yaml", "resumed", 3, *common, "--ckpt_path", "last")
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 9
    extra = "model._extra_state"
    assert torch.equal(a["state_dict"][extra]["generator"], b["state_dict"][extra]["generator"])
    assert a["state_dict"][extra]["batches"] == 9
    for name, value in a["state_dict"].items():
        if name != extra:
            assert torch.equal(value, b["state_dict"][name]), name
