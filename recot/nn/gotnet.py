r"""GOTNet (Chen et al., WWW'22): non-local attention to OT k-means centroids, mixed into any GNN backbone.

The reference implementation (the authors published none); every piece names the equation it implements.
Per backbone layer ``l = 0..L-1`` (inputs ``e^(l)``, the backbone's layer ``l -> l+1`` gives the local ``e^(l+1)``):

- Eqs. 7-8 (:class:`OTClustering`): project the ``N`` user (``M`` item) representations into ``H`` spaces,
  ``f^h(e) = W^h e``, and cluster each space into ``K`` (``P``) balanced clusters by entropic OT: marginals ``1/N``
  over the points and ``n_k / N = 1/K`` over the clusters, cost ``||f^h(e_i) - c_k||^2`` normalised by its max,
  eps relative to it, solved by :func:`recot.ot.ot_kmeans` (Sinkhorn or Greenkhorn, batched over the heads); the
  centroids are the plan-weighted means ``c_k = sum_i pi_ki f(e_i) / sum_i pi_ki``; ``L_OT`` is Eq. 8's objective
  in the cost's own units (the normalised objective times the max cost: the same plan, but a gradient that does not
  grow as 1 / scale when the embeddings shrink; with the normalised one, beta = 0.01 already stalled training).
- Eq. 9 (:class:`NonLocalAttention`): scaled dot-product attention of every node to the centroids of its layer,
  ``e'^(h) = sum_k softmax_k(f^h(e) . c_k / sqrt(d_l)) c_k``.
- Eq. 10: the heads concatenated and projected, ``e' = [e'^(1) || ... || e'^(H)] W`` (``H d_l -> d_{l+1}``).
- Eq. 11: mixup ``e''^(l+1) = lambda^(l) e^(l+1) + (1 - lambda^(l)) e'^(l+1)``, ``lambda^(l) ~ U(0, 1)`` per layer
  and training batch (shared by users and items), a fixed ``eval_lambda`` in evaluation.
- Eq. 12: ``L = L_BPR + beta sum_{l,h} L_uOT^(h,l) + gamma sum_{l,h} L_iOT^(h,l)`` (the two sums are
  :meth:`GOTNet.auxiliary_losses`; the ranking task adds them to BPR).

Where the mixture goes. The paper attends from "the original GNN embeddings e^(l-1) in Eq. (2)" (Sec. 4.3.1), keeps
"the major network architectures unchanged" (Sec. 4.4.2) and plugs Eq. 11 "into Eq. (3)-(4)" (Sec. 4.4.1): by default
(``mix_into_next=False``) the backbone's own propagation is untouched and ``e''^(l)`` replaces ``e^(l)`` in its
readout (Eq. 3) only. ``mix_into_next=True`` is the other reading: ``e''^(l)`` also becomes the next layer's input.
Either way, with ``lambda = 1`` and ``beta = gamma = 0`` GOTNet is exactly its backbone (Sec. 4.4.2).

Centroids across mini-batches (Algorithm 1, line 1: "initialize centroids" once, before the batch loop): each
layer/side keeps its centroids and the solver's potentials as buffers. A training forward runs ONE assignment
step of Eq. 8 against the stored centroids (drawn on the first batch), warm-starting the solver from the stored
potentials, and refines the centroids from the new plan (a mini-batch Lloyd step); the refined centroids are what
the attention of Eq. 9 uses and what the next batch starts from. Evaluation attends to the stored centroids, as batch
norm uses its running statistics: it is deterministic, costs no OT solve and writes no state, so validation never
changes training and ``recot test --ckpt_path`` reproduces the fit's numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from recot.nn.base import GraphData, Recommender, take_rows
from recot.ot import cost_scale, ot_kmeans, sq_euclidean

Solver = Literal["greenkhorn", "sinkhorn"]
GradMode = Literal["envelope", "implicit", "unroll"]


def cluster_count(spec: Union[int, float], n: int, name: str) -> int:
    """Number of clusters from ``spec``: an int ``>= 1`` is a count, a float in ``(0, 1]`` a fraction of ``n``
    (the paper: ``K ~ 0.01 N``, ``P ~ 0.01 M``), rounded, at least 1 and at most ``n``."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float)):
        raise TypeError(f"{name} must be an int (a count) or a float in (0, 1] (a fraction), got {spec!r}")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"{name} must be >= 1 when given as a count, got {spec}")
        return min(spec, n)
    if not 0.0 < spec <= 1.0:
        raise ValueError(f"{name} as a fraction must lie in (0, 1], got {spec}")
    return min(max(1, round(spec * n)), n)


@dataclass(frozen=True)
class OTSettings:
    """How Eq. 8 is solved (shared by every layer and side of one GOTNet).

    Attributes:
        eps: entropic regularisation relative to the max-normalised cost (paper: 0.01).
        solver: ``sinkhorn`` (default) or ``greenkhorn`` (the paper's). Both solve the same problem to the same
            fixed point and tolerance; the OT core's Greenkhorn is an order of magnitude slower here on a CPU: with
            ``K << N`` a cluster's marginal violation (mass 1/K) dwarfs a point's (1/N), so its greedy steps are
            mostly full column updates (a Sinkhorn half-step each) while the rows advance a block at a time, and each
            step pays Python overhead (measured: README, gotnet section; ``benchmarks/gotnet_gowalla.py --solvers``).
        method: Sinkhorn's arithmetic (:func:`recot.ot.sinkhorn`): ``scaling`` (default; scaling vectors with
            absorption: one exp pass, then two matrix-vector products per iteration) or ``log`` (log-sum-exp
            half-steps, several times slower on the N x K problems here); the same iterates and fixed point.
        iters: maximum solver iterations per assignment step; one Greenkhorn iteration is one sweep of
            ``ceil((N + K) / block)`` greedy block steps, the same O(N K) work as one Sinkhorn iteration.
        tol: stop earlier once the L1 marginal error is ``<= tol`` (checked once per iteration); 0 = exactly ``iters``.
        block: Greenkhorn rows/columns per greedy step; None = ``ceil((N + K) / 100)`` (see recot/ot/greenkhorn.py).
        grad: the OT core's gradient mode. ``envelope`` (default): the plan is a constant in backward, so no plan or
            iteration enters autograd memory; d L_OT / d cost = plan (Danskin), exact for Eq. 8's loss, and the
            centroids are differentiable through the points they average. ``implicit``: the plan too is
            differentiated through the fixed point (a K x K Cholesky solve per head). ``unroll``: through the steps.
        init: first centroids (first training batch), drawn from the model's generator: ``random`` (K distinct
            points) or ``kmeans++`` (better seeds, but K sequential passes over the points: ~30 s per layer and side
            at Gowalla's K = 299 on a loaded 2-core CPU). Later batches refine them, so the seeding matters little.
        nodes: the points of a training step's Eq. 8: ``all`` the N users (M items), or ``batch``: the training batch's
            distinct users (items), with marginals 1/n over them, a mini-batch k-means step (Sculley 2010) in
            Algorithm 1's loop "for each mini-batch": O(n K d) instead of O(N K d) per step, and gradients reach
            only the batch's rows. Evaluation attends to the stored centroids either way.
    """

    eps: float = 0.01
    solver: Solver = "sinkhorn"
    method: Literal["scaling", "log"] = "scaling"
    iters: int = 100
    tol: float = 1e-3
    block: Optional[int] = None
    grad: GradMode = "envelope"
    init: Literal["kmeans++", "random"] = "random"
    nodes: Literal["all", "batch"] = "all"

    def __post_init__(self):
        if self.solver not in ("greenkhorn", "sinkhorn"):
            raise ValueError(f"solver must be 'greenkhorn' or 'sinkhorn', got {self.solver!r}")
        if self.grad not in ("envelope", "implicit", "unroll"):
            raise ValueError(f"grad must be 'envelope', 'implicit' or 'unroll', got {self.grad!r}")
        if self.method not in ("scaling", "log"):
            raise ValueError(f"method must be 'scaling' or 'log', got {self.method!r}")
        if self.nodes not in ("all", "batch"):
            raise ValueError(f"nodes must be 'all' or 'batch', got {self.nodes!r}")
        if self.init not in ("kmeans++", "random"):
            raise ValueError(f"init must be 'kmeans++' or 'random', got {self.init!r}")
        if not self.eps > 0 or self.iters < 1 or self.tol < 0 or (self.block is not None and self.block < 1):
            raise ValueError(f"need eps > 0, iters >= 1, tol >= 0, block >= 1: got eps={self.eps}, "
                             f"iters={self.iters}, tol={self.tol}, block={self.block}")

    def solver_args(self, n: int, k: int) -> tuple[dict[str, Any], int]:
        """Keyword arguments for :func:`recot.ot.ot_kmeans` and the solver steps per iteration."""
        if self.solver == "sinkhorn":
            return {"max_iter": self.iters, "tol": self.tol, "check_every": 1, "method": self.method}, 1
        block = self.block or math.ceil((n + k) / 100)
        sweep = math.ceil((n + k) / block)
        return {"max_iter": self.iters * sweep, "tol": self.tol, "block": block, "check_every": sweep}, sweep


class OTClustering(nn.Module):
    """Eqs. 7-8 for one layer and one side: balanced OT k-means of ``(H, N, d)`` projected points into ``K`` clusters
    per head, with the centroids and the solver's potentials kept across batches.

    Buffers (part of the checkpoint): ``centroids (H, K, d)``, ``f (H, N)``, ``g (H, K)`` (the last potentials, the
    next solve's warm start) and ``ready`` (False until the first training step initialised them).
    """

    def __init__(self, heads: int, num_points: int, num_clusters: int, dim: int, settings: OTSettings):
        super().__init__()
        self.num_clusters, self.settings = num_clusters, settings
        self.register_buffer("centroids", torch.zeros(heads, num_clusters, dim))
        self.register_buffer("f", torch.zeros(heads, num_points))
        self.register_buffer("g", torch.zeros(heads, num_clusters))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def forward(self, points: torch.Tensor, generator: torch.Generator, update: bool,
                ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One assignment step of Eq. 8 and the centroid refinement.

        Args:
            points: ``(H, N, d)`` projected representations ``f^h(e_i)``, or ``(H, n, d)`` for the nodes ``ids``
                (distinct) only: Eq. 8 over this sample (marginals 1/n), warm-started from and storing their
                potentials (``nodes="batch"`` of :class:`OTSettings`).
            generator: draws the first centroids when none are stored yet.
            update: store the refined centroids and potentials (training) or leave the state untouched (evaluation).

        Returns:
            centroids ``(H, K, d)`` (differentiable wrt ``points``), ``L_OT`` per head ``(H,)`` (Eq. 8 in the units
            of the squared distances, i.e. with entropic weight ``eps * max cost``; gradients per the grad mode) and detached statistics: ``cluster_entropy`` (of the hard assignment's
            cluster sizes, divided by ``log K``: 1 = perfectly balanced), ``ot_iters`` (solver iterations), ``ot_err``
            (L1 marginal error).
        """
        s = self.settings
        heads, n, _ = points.shape
        kwargs, sweep = s.solver_args(n, self.num_clusters)
        ready = bool(self.ready)
        scales = []

        def cost(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            # Eq. 7's squared distances over their max, so that eps is relative to the cost's scale; the (detached)
            # max is kept to express L_OT in the cost's own units below
            raw = sq_euclidean(x, c)
            scales.append(cost_scale(raw.detach(), "max"))
            return raw / scales[-1][..., None, None]

        # copies: the buffers are overwritten below, while autograd may still need the values they held
        km = ot_kmeans(points, self.num_clusters, eps=s.eps, n_iter=1, solver=s.solver, cost=cost, normalize=None,
                       init=self.centroids.to(points, copy=True) if ready else s.init, generator=generator,
                       grad=s.grad,
                       potentials=((self.f if ids is None else self.f.index_select(1, ids)).to(points, copy=True),
                                   self.g.to(points, copy=True)) if ready else None,
                       **kwargs)
        # Eq. 8 in the units of ||f(e) - c||^2 with eps * scale as its entropic weight (the same plan): unlike the
        # normalised objective, its gradient does not grow as 1 / scale when the embeddings shrink
        loss = km.loss * scales[-1]
        if update:
            with torch.no_grad():
                self.centroids.copy_(km.centroids)
                if ids is None:
                    self.f.copy_(km.ot.f)
                else:
                    self.f.index_copy_(1, ids, km.ot.f.to(self.f))
                self.g.copy_(km.ot.g)
                self.ready.fill_(True)
        with torch.no_grad():
            assign = km.plan.argmax(-1)  # (H, N)
            sizes = torch.zeros(heads, self.num_clusters, dtype=points.dtype, device=points.device)
            sizes.scatter_add_(1, assign, torch.ones_like(assign, dtype=points.dtype))
            p = sizes / n
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1) / max(math.log(self.num_clusters), 1e-12)
            stats = {"cluster_entropy": entropy.mean(), "ot_iters": km.ot.n_iter.to(points.dtype).mean() / sweep,
                     "ot_err": km.ot.err.mean()}
        return km.centroids, loss, stats


def _rows(x: torch.Tensor, rows: torch.Tensor, x_rows: Optional[torch.Tensor]) -> torch.Tensor:
    """``x[rows]``, unless the caller already gathered it as ``x_rows``."""
    return take_rows(x, rows) if x_rows is None else x_rows


class NonLocalAttention(nn.Module):
    """Eqs. 7-10 for one layer and one side: ``(N, d_in) -> (N, d_out)`` cluster-aware representations.

    ``f^h(e) = W^h e`` (``W^h: d_in x d_in``, one per head, batched), OT clustering of every head
    (:class:`OTClustering`), attention of each node's ``f^h(e)`` to its head's centroids with weights
    ``softmax_k(f^h(e) . c_k / sqrt(d_in))`` (Eq. 9; the query is the projected node, in the centroids' space), and
    ``[e'^(1) || ... || e'^(H)] W_out`` with ``W_out: H d_in x d_out`` (Eq. 10, no bias).
    """

    def __init__(self, heads: int, num_points: int, num_clusters: int, dim_in: int, dim_out: int,
                 settings: OTSettings):
        super().__init__()
        self.heads, self.dim_in = heads, dim_in
        self.projection = nn.Parameter(torch.empty(heads, dim_in, dim_in))
        for w in self.projection:
            nn.init.xavier_uniform_(w)
        self.out = nn.Linear(heads * dim_in, dim_out, bias=False)
        nn.init.xavier_uniform_(self.out.weight)
        self.clustering = OTClustering(heads, num_points, num_clusters, dim_in, settings)
        self.last_attention: Optional[torch.Tensor] = None

    def attend(self, queries: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Eq. 9: ``queries (H, N, d)``, ``centroids (H, K, d)`` -> attention weights ``(H, N, K)``, rows sum to 1."""
        return torch.softmax(queries @ centroids.transpose(-1, -2) / math.sqrt(self.dim_in), dim=-1)

    def forward(self, x: torch.Tensor, generator: torch.Generator, cluster: bool,
                rows: Optional[torch.Tensor] = None, x_rows: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Optional[torch.Tensor], dict[str, torch.Tensor]]:
        """``x (N, d_in)`` -> ``e' (N, d_out)`` (or its ``rows``), ``L_OT`` summed over heads (None when not
        clustered), statistics.

        In training, ``cluster=True`` runs Eq. 8 from the stored centroids and stores the refined ones;
        ``cluster=False`` (``cluster_every > 1``) attends to the stored centroids as constants. In evaluation the
        stored centroids are used as they are (like batch norm's running statistics: evaluation is deterministic and
        changes no state); only a model that never trained clusters, from ``generator``, without storing anything.

        ``rows`` (optional distinct ids): attend for these rows only and return their ``(len(rows), d_out)``
        representations; ``x_rows`` may pass ``x[rows]`` when the caller has it. Eq. 8 sees every point, or with
        ``nodes="batch"`` in training these rows only.
        """
        weight = self.projection.transpose(-1, -2)
        clustering = (self.training and cluster) or not bool(self.clustering.ready)
        if clustering and self.training and rows is not None and self.clustering.settings.nodes == "batch":
            # (H, n, d_in): f^h(e) of the batch's rows
            points = torch.matmul(_rows(x, rows, x_rows).unsqueeze(0), weight)
            centroids, loss, stats = self.clustering(points, generator, update=True, ids=rows)
            loss = loss.sum()
        elif clustering:
            points = torch.matmul(x.unsqueeze(0), weight)  # (H, N, d_in): f^h(e)
            centroids, loss, stats = self.clustering(points, generator, update=self.training)
            loss = loss.sum()
            if rows is not None:
                points = points.index_select(1, rows)
        else:
            centroids, loss, stats = self.clustering.centroids.to(x, copy=True), None, {}
            points = torch.matmul((x if rows is None else _rows(x, rows, x_rows)).unsqueeze(0), weight)
        attention = self.attend(points, centroids)
        self.last_attention = attention.detach()
        mixed = attention @ centroids  # (H, n, d_in): e'^(h)
        out = self.out(mixed.transpose(0, 1).reshape(points.shape[1], self.heads * self.dim_in))
        return out, loss, stats


class GOTNet(Recommender):
    r"""GOTNet wrapped around any :class:`~recot.nn.Recommender` backbone with a layer loop (LightGCN, NGCF, PinSage).

    The wrapper re-runs the backbone's own ``initial`` / ``propagate`` / ``combine`` with Eqs. 7-11 after every
    propagation (see the module docstring); nothing in a backbone knows about GOTNet. The L2 penalty of BPR applies
    to the backbone's layer-0 embeddings (``initial``), as for the backbone alone.

    Args:
        backbone: the GNN (its layer widths come from ``backbone.layer_dims()``).
        num_user_clusters: K, a count or a fraction of the users (paper: 0.01, i.e. K ~ 1% of N).
        num_item_clusters: P, a count or a fraction of the items (paper: 0.01).
        heads: H, OT spaces per layer (paper: 1).
        beta, gamma: weights of ``sum L_uOT`` and ``sum L_iOT`` in Eq. 12 (paper: 0.01 each).
        eps: Eq. 8's entropic regularisation relative to the max-normalised cost (paper: 0.01).
        solver: ``sinkhorn`` (default) or ``greenkhorn`` (the paper's; much slower on a CPU, see
            :class:`OTSettings`).
        ot_method, ot_iters, ot_tol, block, grad, init: how each assignment step is solved, see
            :class:`OTSettings` (``ot_method`` is its ``method``).
        cluster_every: run Eq. 8 every this many training batches (1 = every batch, the paper's Algorithm 1). In
            between, attention (Eqs. 9-10) uses the last centroids as constants and the batch has no OT loss: an
            amortisation for large graphs, where the attention is cheap next to the clustering.
        train_lambda: None = ``lambda^(l) ~ U(0, 1)`` per layer and batch (Eq. 11); a number fixes it in training.
        eval_lambda: lambda in evaluation (default 0.5, the mean of U(0, 1): the expected training mixture).
        seed: seed of the model's generator (mixup draws, first centroids); None = ``torch.initial_seed()`` at build
            (the run's ``seed_everything`` under the CLI). Its state is saved in checkpoints (exact resume).
        mix_into_next: False (default) = Eq. 11's mixture enters the readout only; True = it is also the next
            layer's input (see the module docstring).
        weight_decay: the optimiser's weight decay on GOTNet's own weights (the projections f^h and W of Eqs. 7 and
            10), which nothing else regularises (BPR's L2 penalty is on the backbone's layer-0 embeddings); 0 = none.
        cluster_nodes: ``all`` (default): Eq. 8 over all N users / M items at every clustering step; ``batch``: over
            the training batch's distinct users / items (a mini-batch k-means step; see :class:`OTSettings`.nodes),
            the setting for large graphs. Needs the training batch's rows (the ranking task passes them) and
            ``mix_into_next=False``; otherwise all nodes are clustered.

    Cost per layer and head: ``O((N + M) d^2)`` for the projections and ``O((N + M) K d)`` for the cost, the
    centroids and the attention, plus the solver's iterations of ``O(N K + M P)`` each; with ``envelope`` gradients
    the solver keeps nothing for backward, so memory is ``O((N + M)(K + d))`` per layer and head.
    """

    def __init__(self, backbone: Recommender, num_user_clusters: Union[int, float] = 0.01,
                 num_item_clusters: Union[int, float] = 0.01, heads: int = 1, beta: float = 0.01,
                 gamma: float = 0.01, eps: float = 0.01, solver: Solver = "sinkhorn",
                 ot_method: Literal["scaling", "log"] = "scaling", ot_iters: int = 100,
                 ot_tol: float = 1e-3, block: Optional[int] = None, grad: GradMode = "envelope",
                 init: Literal["kmeans++", "random"] = "random", cluster_every: int = 1,
                 train_lambda: Optional[float] = None, eval_lambda: float = 0.5, seed: Optional[int] = None,
                 mix_into_next: bool = False, cluster_nodes: Literal["all", "batch"] = "all",
                 weight_decay: float = 0.0):
        super().__init__()
        if not isinstance(backbone, Recommender):
            raise TypeError(f"backbone must be a recot.nn.Recommender, got {type(backbone).__name__}")
        if heads < 1 or cluster_every < 1:
            raise ValueError(f"heads and cluster_every must be >= 1, got {heads}, {cluster_every}")
        if beta < 0 or gamma < 0:
            raise ValueError(f"beta and gamma must be >= 0, got {beta}, {gamma}")
        for name, lam in (("train_lambda", train_lambda), ("eval_lambda", eval_lambda)):
            if lam is not None and not 0.0 <= lam <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {lam}")
        self.backbone = backbone
        self.num_layers = backbone.num_layers
        self.trainable = backbone.trainable
        self.num_user_clusters, self.num_item_clusters = num_user_clusters, num_item_clusters
        self.heads, self.beta, self.gamma = heads, beta, gamma
        self.settings = OTSettings(eps=eps, solver=solver, method=ot_method, iters=ot_iters, tol=ot_tol, block=block,
                                   grad=grad, init=init, nodes=cluster_nodes)
        self.cluster_every, self.train_lambda, self.eval_lambda = cluster_every, train_lambda, eval_lambda
        self.seed = seed
        self.mix_into_next = mix_into_next
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = weight_decay
        self.generator = torch.Generator()
        self.batches = 0  # training forwards so far (cluster_every), checkpointed with the generator
        self.users: Optional[nn.ModuleList] = None
        self.items: Optional[nn.ModuleList] = None
        self._aux: dict[str, torch.Tensor] = {}
        self._epoch: dict[str, list[torch.Tensor]] = {}
        # per-forward bookkeeping, set by embed(): Eq. 11's lambdas, whether Eq. 8 runs, the OT losses and statistics
        self._lambdas = [float(eval_lambda)] * self.num_layers
        self._cluster = False
        self._losses: dict[str, list[torch.Tensor]] = {"uOT": [], "iOT": []}
        self._stats: dict[str, list[torch.Tensor]] = {}

    # --- construction ---------------------------------------------------------------------------------
    def bind(self, data: GraphData) -> None:
        self.backbone.bind(data)
        self.build(data.num_users, data.num_items)

    def reset_parameters_for(self, num_users: int, num_items: int) -> None:
        self.backbone.build(num_users, num_items)
        dims = self.backbone.layer_dims()
        k = cluster_count(self.num_user_clusters, num_users, "num_user_clusters")
        p = cluster_count(self.num_item_clusters, num_items, "num_item_clusters")
        self.users = nn.ModuleList(NonLocalAttention(self.heads, num_users, k, a, b, self.settings)
                                   for a, b in zip(dims, dims[1:]))
        self.items = nn.ModuleList(NonLocalAttention(self.heads, num_items, p, a, b, self.settings)
                                   for a, b in zip(dims, dims[1:]))
        self.generator.manual_seed(int(self.seed if self.seed is not None else torch.initial_seed()))
        self.batches = 0

    # --- checkpointed state beyond the weights: the generator (Eq. 11's draws) and the batch count --------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "batches": self.batches}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])

    # --- the layer loop -------------------------------------------------------------------------------------
    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.initial()

    def layer_dims(self) -> list[int]:
        return self.backbone.layer_dims()

    def combine(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.combine(layers)

    def embed(self, rows: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's layer loop with Eqs. 7-11 after each propagation, its readout over ``e^(0), e''^(1), ...,
        e''^(L)`` (Eq. 3); in training also the OT losses of Eq. 12 and the epoch's statistics.

        ``rows = (user ids, item ids)`` (the training batch's; see :meth:`Recommender.embed`): Eqs. 9-11 and the
        readout run for these rows only (the backbone's row-wise ``combine``) and the other rows of the result are 0.
        Clustering (Eq. 8) still uses every node. Ignored with ``mix_into_next`` (every row then feeds the next
        layer) and in evaluation."""
        if self.users is None:
            raise RuntimeError("GOTNet is not built: call bind(data) first (the ranking task does this in setup)")
        if self.training:
            self._lambdas = (torch.rand(self.num_layers, generator=self.generator, dtype=torch.float64).tolist()
                             if self.train_lambda is None else [float(self.train_lambda)] * self.num_layers)
            self._cluster = self.batches % self.cluster_every == 0
            self.batches += 1
        else:
            self._lambdas = [float(self.eval_lambda)] * self.num_layers
            self._cluster = False
        self._losses, self._stats = {"uOT": [], "iOT": []}, {}
        if rows is not None and self.training and not self.mix_into_next:
            out = self._embed_rows(rows[0].unique(), rows[1].unique())
        elif self.mix_into_next:
            u, i = self.backbone.initial()
            layers = [(u, i)]
            for layer in range(self.num_layers):
                u, i = self._mix(layer, (u, i), self.backbone.propagate(layer, u, i))
                layers.append((u, i))
            out = self.backbone.combine(layers)
        else:
            local = self.backbone.layer_outputs()
            out = self.backbone.combine([local[0]] + [self._mix(layer, local[layer], local[layer + 1])
                                                      for layer in range(self.num_layers)])
        self._aux = {}
        if self.training:
            for name, weight in (("uOT", self.beta), ("iOT", self.gamma)):
                if self._losses[name]:
                    total = torch.stack(self._losses[name]).sum()  # sum over layers (and heads): Eq. 12
                    self._stats[f"L_{name}"] = [total.detach()]
                    if weight > 0:
                        self._aux[name] = weight * total
            for key, values in self._stats.items():
                self._epoch.setdefault(key, []).append(torch.stack(values).mean())
        return out

    def _embed_rows(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The readout of the given (distinct) rows, scattered into zero ``(U, d), (I, d)``: the backbone's
        propagation runs on every node, the mixture and the readout on these rows only (a training batch touches a
        few thousand of Gowalla's 70k nodes)."""
        states = self.backbone.layer_outputs(stacked=True)  # (U + I, d_l) per layer
        ids, n = torch.cat([users, items + self.num_users]), users.numel()
        picked = [take_rows(x, ids).split([n, ids.numel() - n]) for x in states]
        local = [(x[: self.num_users], x[self.num_users:]) for x in states]  # views: read only by Eq. 8 on all nodes
        mixed = [picked[0]] + [self._mix(layer, local[layer], picked[layer + 1], rows=(users, items),
                                         inputs_rows=picked[layer]) for layer in range(self.num_layers)]
        cu, ci = self.backbone.combine(mixed)
        # distinct ids: index_copy must not see a row twice (its gradient would be counted twice)
        return (cu.new_zeros(self.num_users, cu.shape[1]).index_copy(0, users, cu),
                ci.new_zeros(self.num_items, ci.shape[1]).index_copy(0, items, ci))

    def propagate(self, layer: int, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's layer ``l -> l+1`` mixed with the non-local representations of the layer's inputs
        (Eq. 11): ``(U, d_l), (I, d_l) -> (U, d_{l+1}), (I, d_{l+1})``; a wrapper of GOTNet stacks these (the
        ``mix_into_next=True`` reading), while :meth:`embed` follows ``mix_into_next``. It uses the lambdas of the
        last :meth:`embed` (the evaluation lambda before any)."""
        return self._mix(layer, (users, items), self.backbone.propagate(layer, users, items))

    def _mix(self, layer: int, inputs: tuple[torch.Tensor, torch.Tensor], local: tuple[torch.Tensor, torch.Tensor],
             rows: tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None),
             inputs_rows: tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None)
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 11 for layer ``l -> l+1``: ``lambda * local + (1 - lambda) * e'`` with ``e'`` the non-local
        representations (Eqs. 7-10) of the layer's ``inputs`` (all rows, ``(U, d_l), (I, d_l)``); ``local`` holds
        the backbone's layer ``l + 1`` for all rows, or for ``rows`` only when given."""
        # evaluation before any training step (Lightning's sanity check) clusters from a private generator, so that
        # evaluating never moves the training stream
        gen = self.generator if self.training else torch.Generator().manual_seed(int(self.seed or 0) + layer)
        lam = self._lambdas[layer]
        out = []
        for side, modules, x, x_rows, loc, name, only in (
                ("user", self.users, inputs[0], inputs_rows[0], local[0], "uOT", rows[0]),
                ("item", self.items, inputs[1], inputs_rows[1], local[1], "iOT", rows[1])):
            nonlocal_x, loss, stats = modules[layer](x, gen, cluster=self._cluster, rows=only, x_rows=x_rows)
            if self.training:
                if loss is not None:
                    self._losses[name].append(loss)
                for key, value in stats.items():
                    self._stats.setdefault(f"{side}_{key}", []).append(value)
            out.append(lam * loc + (1.0 - lam) * nonlocal_x)  # Eq. 11
        return out[0], out[1]

    # --- scores, losses, optimiser groups, logs --------------------------------------------------------------
    def score(self, users: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return self.backbone.score(users, user_emb, item_emb)

    def pair_score(self, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return self.backbone.pair_score(user_emb, item_emb)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Eq. 12's ``beta sum_{l,h} L_uOT`` (``uOT``) and ``gamma sum_{l,h} L_iOT`` (``iOT``) of the last training
        forward (absent when the weight is 0 or the batch did not cluster), plus the backbone's own terms."""
        return {**self.backbone.auxiliary_losses(), **self._aux}

    def param_groups(self) -> list[dict]:
        groups = self.backbone.param_groups()
        own = [p for name, p in self.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
        return groups + [{"params": own, "weight_decay": self.weight_decay}] if own else groups

    def log_values(self) -> dict[str, float]:
        """Means over the training batches since the last call (the task calls this once per training epoch):
        ``L_uOT`` / ``L_iOT`` (unweighted, summed over layers and heads as in Eq. 12), and averaged over layers
        ``<side>_cluster_entropy`` (entropy of the hard-assignment cluster sizes over log K: 1 = balanced),
        ``<side>_ot_iters`` (solver iterations per assignment step), ``<side>_ot_err`` (its L1 marginal error), with
        ``<side>`` = user / item; plus the backbone's values."""
        values = dict(self.backbone.log_values())
        values.update({k: float(torch.stack(v).mean()) for k, v in self._epoch.items() if v})
        self._epoch = {}
        return values

    def extra_repr(self) -> str:
        s = self.settings
        return (f"clusters=({self.num_user_clusters}, {self.num_item_clusters}), heads={self.heads}, "
                f"beta={self.beta}, gamma={self.gamma}, eps={s.eps}, solver={s.solver}, ot_iters={s.iters}, "
                f"ot_tol={s.tol}, cluster_every={self.cluster_every}, train_lambda={self.train_lambda}, "
                f"eval_lambda={self.eval_lambda}")
