r"""GTN, the graph transport network (Klicpera/Gasteiger, Lienen & Günnemann, ICML 2021, Sec. 6): a GNN embeds the
nodes of both graphs, entropic OT on the BP matrix matches them (deletions and insertions at learnable,
norm-based costs: *learnable unbalanced OT*), and the transport cost, passed through a small output layer, is the
predicted graph distance. Trained with MSE by :class:`recot.tasks.GraphDistanceTask`.

* GNN (:class:`GTNEncoder`): ``L`` message-passing layers (PyG :class:`~torch_geometric.nn.MessagePassing`)
  :math:`y^{(l)} = \sigma(W^{(l)} h^{(l-1)} + b^{(l)})`,
  :math:`h^{(l)} = y^{(l)} + r \sum_{j \in N(i)} \mathrm{Bil}(y^{(l)}_j, e_{ij})`: sum aggregation (so the degree is
  represented), edge labels through one bilinear map shared by the layers, :math:`r = 1/\bar d` (average degree)
  or symmetric degree normalisation in the hidden layers. Node embedding: :math:`[y^{(1)}, h^{(1)}, ..., h^{(L)}]`,
  through an MLP for one head.
* Matching (:func:`recot.ot.bp.bp_sinkhorn`): node cost :math:`\|x_i - y_j\|` (the official GTN) or its square,
  deletion cost :math:`c_{i,\epsilon} = \|\alpha \odot x_i\|` (same power), :math:`\alpha` learnable;
  :math:`\varepsilon = \lambda \bar D / \log(\min(n, m) + 1)` per pair, :math:`\bar D` the mean training distance
  per node. ``unbalanced="kl"`` (KL-relaxed marginals) and ``"balanced"`` are the paper's ablations (full solver).
* Multi-head OT: ``H`` linear maps of the embeddings, each head its own :math:`\varepsilon`
  (:math:`\lambda\,\beta^{k}`, :math:`k = -H/2 .. H/2 - 1`), the ``H`` costs through an MLP.
* Full, sparse, Nyström or LCN Sinkhorn by ``solver``; approximations use deterministic clusterings, so a pair gets
  the same distance alone or padded in any batch.

Pairs come as two PyG batches ``(g1, g2)`` of equal size; they are padded to ``(B, n_max, D)`` with masks.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import degree, to_dense_batch

from recot.ot.bp import BP_SOLVERS, bp_sinkhorn
from recot.ot.cost import check_point_cost, pairwise_cost
from recot.ot.neighbours import lsh_projections
from recot.ot.sinkhorn import sinkhorn

__all__ = ["GTN", "GTNConv", "GTNEncoder"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "leaky_relu": F.leaky_relu, "relu": F.relu, "sigmoid": torch.sigmoid, "linear": lambda x: x}


class GTNConv(MessagePassing):
    r"""One GTN layer: returns :math:`(y, \; y + r \sum_{j} m_{ij})` with :math:`y = \sigma(W h + b)` and
    :math:`m_{ij} = \mathrm{Bil}(y_j, e_{ij})` (or :math:`y_j`), times :math:`1/\sqrt{d_i d_j}` with ``deg_norm``."""

    def __init__(self, in_channels: int, out_channels: int, act: Callable[[Tensor], Tensor], deg_norm: bool,
                 renorm: float):
        super().__init__(aggr="add")
        self.lin = nn.Linear(in_channels, out_channels)
        self.act, self.deg_norm, self.renorm = act, deg_norm, renorm

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor] = None,
                bilinear: Optional[nn.Bilinear] = None) -> tuple[Tensor, Tensor]:
        y = self.act(self.lin(x))
        norm = None
        if self.deg_norm:
            deg = degree(edge_index[0], y.shape[0], dtype=y.dtype)
            inv = torch.where(deg > 0, deg.clamp_min(1).rsqrt(), torch.zeros_like(deg))
            norm = inv[edge_index[0]] * inv[edge_index[1]]
        agg = self.propagate(edge_index, y=y, norm=norm, edge_attr=edge_attr if bilinear is not None else None,
                             bilinear=bilinear)
        return y, y + agg * (1.0 if self.deg_norm else self.renorm)

    def message(self, y_j: Tensor, norm: Optional[Tensor], edge_attr: Optional[Tensor],
                bilinear: Optional[nn.Bilinear]) -> Tensor:
        if norm is not None:
            y_j = y_j * norm[:, None]
        return y_j if edge_attr is None else bilinear(y_j, edge_attr)


class GTNEncoder(nn.Module):
    """The GNN of GTN: node embeddings ``(N, out_size)`` from a PyG batch with one-hot ``x`` (and ``edge_attr``).

    ``aggregation="mlp"``: the layer outputs concatenated and mapped by a 2-layer MLP to ``emb_size`` (one head);
    ``"concat"``: the concatenation itself, ``(num_layers + 1) * emb_size`` (multi-head).
    """

    def __init__(self, num_node_features: int, num_edge_features: int, emb_size: int, num_layers: int, act: str,
                 deg_norm_hidden: bool, avg_degree: float, aggregation: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        fn = ACTIVATIONS[act]
        renorm = 1.0 / max(avg_degree, 1e-6)
        self.layers = nn.ModuleList(
            [GTNConv(num_node_features if i == 0 else emb_size, emb_size, fn, deg_norm_hidden and i > 0, renorm)
             for i in range(num_layers)])
        self.bilinear = nn.Bilinear(emb_size, num_edge_features, emb_size, bias=False) if num_edge_features else None
        cat = (num_layers + 1) * emb_size
        if aggregation == "mlp":
            self.head = nn.Sequential(nn.Linear(cat, cat), nn.LeakyReLU(), nn.Linear(cat, emb_size))
            self.out_size = emb_size
        elif aggregation == "concat":
            self.head, self.out_size = None, cat
        else:
            raise ValueError(f"aggregation must be 'mlp' or 'concat', got {aggregation!r}")

    def forward(self, data) -> Tensor:
        x, edge_attr = data.x, getattr(data, "edge_attr", None)
        outs = []
        for i, layer in enumerate(self.layers):
            y, x = layer(x, data.edge_index, edge_attr, self.bilinear)
            if i == 0:
                outs.append(y)
            outs.append(x)
        h = torch.cat(outs, -1)
        return h if self.head is None else self.head(h)


class GTN(nn.Module):
    r"""Graph transport network (module docstring). Built for the data by :meth:`build`.

    Args:
        emb_size, num_layers, act, deg_norm_hidden: the GNN (paper: 32, 3, leaky ReLU).
        num_heads: OT heads ``H`` (paper: 1 or 8). head_reg_basis: :math:`\beta` of the heads' regularisations.
        sinkhorn_reg: :math:`\lambda`, the regularisation relative to the mean per-node distance.
        unbalanced: ``"bp"`` (BP matrix, learnable deletion costs), ``"kl"`` (KL-relaxed marginals with
            :math:`\rho = \text{marginal\_reg}\cdot\varepsilon`) or ``"balanced"`` (mass spread uniformly).
        solver: ``"full"``, ``"sparse"``, ``"nystrom"``, ``"lcn"`` (the latter three with ``unbalanced="bp"``).
        cost: ``"euclidean"`` (the official GTN's; Laplacian kernel for Nyström / LCN) or ``"sq_euclidean"``
            (Gaussian kernel).
        dense_bp: full solver on the dense ``(n + m)^2`` BP matrix by :func:`recot.ot.sinkhorn` (GTN's ``full_bp``)
            instead of the structured BP kernel (same problem, several times faster on a CPU).
        max_iter, tol, grad: Sinkhorn iterations (GTN: a fixed number, ``tol=0``), gradient mode
            (``"envelope"``: analytic; ``"unroll"``).
        landmarks, neighbours, n_clusters, n_hashes, n_bands, kmeans_iter: of the approximations
            (:func:`recot.ot.bp.bp_sinkhorn`; ``neighbours`` = the method: ``kmeans``, ``crosspolytope``,
            ``hyperplane``).
        extensive: the target grows with the graph size (GED); otherwise the cost is divided by ``n + m``.
        seed: of the LSH projections (a buffer: fixed for the model's life, saved in checkpoints).
        calibrate: start training in the target range (:meth:`calibrate_scale`, called by
            :class:`recot.tasks.GraphDistanceTask` on the first training batch; multi-head: the output MLP starts as
            the mean of the heads' costs). ``False``: the official GTN start, whose embedding scale
            :math:`\bar D/\sqrt{D}` assumes embedding differences of norm :math:`\sqrt{D}`; at initialisation the
            predictions are then 20-60x below the targets (AIDS30, Pref. att., Pref. att. 200), and
            :math:`\varepsilon`, set relative to :math:`\bar D`, is as many times too large for the actual costs.
    """

    def __init__(self, emb_size: int = 32, num_layers: int = 3, act: str = "leaky_relu", deg_norm_hidden: bool = True,
                 num_heads: int = 1, head_reg_basis: float = 1.0, sinkhorn_reg: float = 0.1, unbalanced: str = "bp",
                 marginal_reg: float = 10.0, solver: str = "full", dense_bp: bool = False, cost: str = "euclidean",
                 max_iter: int = 500,
                 tol: float = 0.0, grad: str = "envelope", landmarks: int = 10, neighbours: str = "kmeans",
                 n_clusters: int = 10, n_hashes: int = 1, n_bands: int = 1, kmeans_iter: int = 10,
                 extensive: bool = True, seed: int = 0, calibrate: bool = True):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if unbalanced not in ("bp", "kl", "balanced"):
            raise ValueError(f"unbalanced must be 'bp', 'kl' or 'balanced', got {unbalanced!r}")
        if solver not in BP_SOLVERS:
            raise ValueError(f"solver must be one of {BP_SOLVERS}, got {solver!r}")
        if solver != "full" and unbalanced != "bp":
            raise ValueError(f"solver={solver!r} is implemented for the BP matrix: set unbalanced='bp'")
        check_point_cost(cost)
        self.emb_size, self.num_layers, self.act, self.deg_norm_hidden = emb_size, num_layers, act, deg_norm_hidden
        self.num_heads, self.head_reg_basis, self.sinkhorn_reg = num_heads, head_reg_basis, sinkhorn_reg
        self.unbalanced, self.marginal_reg, self.solver, self.cost = unbalanced, marginal_reg, solver, cost
        self.dense_bp = dense_bp
        self.max_iter, self.tol, self.grad = max_iter, tol, grad
        self.approx = dict(landmarks=landmarks, method=neighbours, n_clusters=n_clusters, n_hashes=n_hashes,
                           n_bands=n_bands, kmeans_iter=kmeans_iter, cluster_init="farthest")
        self.extensive, self.seed, self.calibrate = extensive, seed, calibrate
        self.sizes: Optional[dict] = None

    # --- construction for the data ---------------------------------------------------------------------------
    def build(self, num_node_features: int, num_edge_features: int, dist_scale: float, avg_degree: float) -> None:
        """Create the layers for the data: one-hot feature sizes, the mean per-node distance :math:`\\bar D` of the
        training pairs (scales embeddings and :math:`\\varepsilon`) and the average degree (GNN renormalisation)."""
        sizes = dict(num_node_features=int(num_node_features), num_edge_features=int(num_edge_features),
                     dist_scale=float(dist_scale), avg_degree=float(avg_degree))
        if self.sizes is not None:
            if self.sizes != sizes:
                raise RuntimeError(f"GTN was built for {self.sizes}, the data has {sizes}")
            return
        self.encoder = GTNEncoder(num_node_features, num_edge_features, self.emb_size, self.num_layers, self.act,
                                  self.deg_norm_hidden, avg_degree, "mlp" if self.num_heads == 1 else "concat")
        dim = self.encoder.out_size
        # deletion/insertion cost scales (BP only: an unused parameter would break DDP's gradient bookkeeping)
        self.alpha = nn.Parameter(torch.ones(dim)) if self.unbalanced == "bp" else None
        if self.num_heads == 1:
            self.head_proj = None
            self.output = nn.Linear(1, 1)
            nn.init.ones_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        else:
            self.head_proj = nn.Linear(dim, self.num_heads * dim, bias=False)
            self.output = nn.Sequential(nn.Linear(self.num_heads, self.emb_size), nn.LeakyReLU(),
                                        nn.Linear(self.emb_size, 1))
            if self.calibrate:  # start as the mean head cost (costs are >= 0: the LeakyReLU passes them)
                with torch.no_grad():
                    self.output[0].weight[0].fill_(1.0 / self.num_heads)
                    self.output[0].bias[0] = 0.0
                    self.output[2].weight.zero_()
                    self.output[2].weight[0, 0] = 1.0
                    self.output[2].bias.zero_()
        # embeddings scaled so that node costs start at the scale of the targets per node
        self.emb_scale = (dist_scale / math.sqrt(dim) if self.cost == "euclidean" else math.sqrt(dist_scale / dim))
        self.dist_scale = dist_scale
        # data-dependent factor of the embedding scale (calibrate_scale); saved with the model
        self.register_buffer("emb_gain", torch.ones(()))
        self.register_buffer("calibrated", torch.tensor(not self.calibrate))
        if self.approx["method"] in ("crosspolytope", "hyperplane"):
            g = torch.Generator().manual_seed(self.seed)
            proj = torch.stack([lsh_projections(dim, self.approx["n_clusters"], self.approx["method"],
                                                self.approx["n_bands"], generator=g)
                                for _ in range(self.approx["n_hashes"])])
            self.register_buffer("projections", proj)
        else:
            self.projections = None
        self.sizes = sizes

    @property
    def built(self) -> bool:
        return self.sizes is not None

    @torch.no_grad()
    def calibrate_scale(self, g1, g2, y: Tensor, reduce: Callable[[Tensor], Tensor] = lambda t: t,
                        rounds: int = 5, tol: float = 0.05, max_pairs: int = 32) -> float:
        r"""Scale the embeddings so that the mean predicted distance of the pairs ``(g1, g2)`` matches the mean of
        their targets ``y`` (once, before training: a data-dependent initialisation). The node and deletion costs
        are homogeneous in the embedding scale (degree 1, or 2 for ``sq_euclidean``), the plans are not (they
        depend on it through :math:`\varepsilon`): fixed-point rounds in log scale, each step accepted only if
        the mean prediction stays positive and gets closer to the target (else halved, up to 3 times; Nyström /
        LCN kernels break down, with negative values, when the costs grow large against :math:`\varepsilon`).
        ``reduce`` sums over processes (DDP: every process gets the same factor). At most ``max_pairs`` pairs of
        the batch are used (each round costs forward passes). Returns the factor; sets ``calibrated``."""
        power = 1.0 if self.cost == "euclidean" else 2.0
        if int(g1.num_graphs) > max_pairs:
            keep = list(range(max_pairs))
            g1, g2 = Batch.from_data_list(g1.index_select(keep)), Batch.from_data_list(g2.index_select(keep))
            y = y[:max_pairs]

        def log_ratio() -> float:  # log(mean target / mean prediction); nan if the prediction is not usable
            total = reduce(torch.stack([y.sum(), self(g1, g2).sum()]).double())
            ok = bool(total[0] > 0 and total[1] > 0 and torch.isfinite(total).all())
            return float((total[0] / total[1]).log()) if ok else float("nan")

        current = log_ratio()
        for _ in range(rounds):
            if not math.isfinite(current) or abs(current) < tol:
                break
            start, step, accepted = float(self.emb_gain), current / power, False
            for _ in range(4):
                self.emb_gain.fill_(start * math.exp(step))
                new = log_ratio()
                if math.isfinite(new) and abs(new) < abs(current):
                    current, accepted = new, True
                    break
                step /= 2
            if not accepted:
                self.emb_gain.fill_(start)
                break
        self.calibrated.fill_(True)
        return float(self.emb_gain)

    # --- forward ------------------------------------------------------------------------------------------------
    def embed(self, g1, g2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Padded node embeddings ``(B, n, D), (B, m, D)`` and masks, heads folded into the batch (``H B``)."""
        B = int(g1.num_graphs)
        scale = self.emb_scale * self.emb_gain
        x, mx = to_dense_batch(self.encoder(g1) * scale, g1.batch, batch_size=B)
        y, my = to_dense_batch(self.encoder(g2) * scale, g2.batch, batch_size=B)
        if self.head_proj is not None:  # (B, n, H D) -> (H B, n, D), head-major
            H, D = self.num_heads, x.shape[-1]
            x = self.head_proj(x).view(B, -1, H, D).permute(2, 0, 1, 3).reshape(H * B, -1, D)
            y = self.head_proj(y).view(B, -1, H, D).permute(2, 0, 1, 3).reshape(H * B, -1, D)
            mx, my = mx.repeat(H, 1), my.repeat(H, 1)
        return x, y, mx, my

    def transport_costs(self, g1, g2) -> Tensor:
        """OT cost of every head and pair, ``(B, H)``."""
        x, y, mx, my = self.embed(g1, g2)
        HB = x.shape[0]
        B = HB // self.num_heads
        n, m = mx.sum(-1).to(x.dtype), my.sum(-1).to(x.dtype)
        if self.unbalanced == "bp":
            eps = self.sinkhorn_reg * self.dist_scale / torch.log(torch.minimum(n, m).clamp_min(1) + 1)
        else:
            eps = self.sinkhorn_reg * self.dist_scale / torch.log(torch.maximum(n, m).clamp_min(2))
        if self.num_heads > 1 and self.head_reg_basis != 1.0:
            k = torch.arange(-(self.num_heads // 2), self.num_heads - self.num_heads // 2, dtype=x.dtype,
                             device=x.device)
            eps = eps * (self.head_reg_basis ** k).repeat_interleave(B)
        if self.unbalanced == "bp":
            power = 1 if self.cost == "euclidean" else 2
            del_cost = (self.alpha * x).norm(dim=-1) ** power
            ins_cost = (self.alpha * y).norm(dim=-1) ** power
            res = bp_sinkhorn(x, y, del_cost, ins_cost, eps=eps, mask_a=mx, mask_b=my, solver=self.solver,
                              dense_bp=self.dense_bp, cost=self.cost, max_iter=self.max_iter, tol=self.tol,
                              grad=self.grad,
                              projections=self.projections, **self.approx)
            value = res.value
        else:
            value = self._plain_ot(x, y, mx, my, n, m, eps)
        if not self.extensive:
            value = value / (n + m).clamp_min(1)
        return value.view(self.num_heads, B).transpose(0, 1)

    def _plain_ot(self, x, y, mx, my, n, m, eps) -> Tensor:
        """The ablations: KL-relaxed (unit mass per node) or balanced (mass max(n, m) on both sides) OT."""
        c = pairwise_cost(x, y, self.cost)
        if self.unbalanced == "kl":
            a, b, reg_m = mx.to(x.dtype), my.to(x.dtype), self.marginal_reg
        else:
            mass = torch.maximum(n, m)[:, None]
            a, b, reg_m = mx * (mass / n.clamp_min(1)[:, None]), my * (mass / m.clamp_min(1)[:, None]), None
        res = sinkhorn(c / eps[:, None, None], a, b, eps=1.0, mask_a=mx, mask_b=my, reg_m=reg_m,
                       max_iter=self.max_iter, tol=self.tol, grad=self.grad)
        return res.value * eps

    def forward(self, g1, g2) -> Tensor:
        """Predicted distances ``(B,)`` of the pairs ``(g1[k], g2[k])``."""
        if not self.built:
            raise RuntimeError("GTN.build(...) must be called first (GraphDistanceTask does it in setup)")
        costs = self.transport_costs(g1, g2)
        return self.output(costs).squeeze(-1)

    def log_values(self) -> dict[str, Tensor]:
        """Learned deletion-cost scale (mean |alpha|) and the calibrated embedding gain, logged each epoch."""
        if not self.built:
            return {}
        out = {"emb_gain": self.emb_gain.detach().clone()}
        if self.alpha is not None:
            out["alpha"] = self.alpha.detach().abs().mean()
        return out
