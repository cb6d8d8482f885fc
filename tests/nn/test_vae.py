import pytest
import torch
from torch.distributions import Normal, kl_divergence

from recot.nn import MF, FactorizationRows, MultDAE, MultVAE, NeuMF
from recot.nn.uservec import negative_log_likelihood
from recot.ot import concentration_loss


def rows(users=6, items=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.arange(users), (torch.rand(users, items, generator=g) < 0.2).float()


def test_multvae_architecture_and_kl_annealing():
    users, x = rows()
    vae = MultVAE(total_anneal_steps=1000, anneal_cap=0.2)
    vae.build(10, 30)
    assert [tuple(l.weight.shape) for l in vae.encoder] == [(600, 30), (400, 600)]  # I -> 600 -> 2 x 200
    assert [tuple(l.weight.shape) for l in vae.decoder] == [(600, 200), (30, 600)]  # 200 -> 600 -> I
    assert vae.beta(0) == 0 and vae.beta(50) == pytest.approx(0.05) and vae.beta(10_000) == 0.2
    torch.manual_seed(0)
    vae.train()
    logits = vae(users, x)
    assert logits.shape == (6, 30)
    reg = vae.regularization(50)
    assert set(reg) == {"kl"} and reg["kl"] > 0
    vae.eval()  # evaluation: no dropout, z = mean: deterministic
    torch.testing.assert_close(vae(users, x), vae(users, x))
    mu, logvar = vae.encode(x)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    vae.train()
    vae.dropout = 0.0  # the KL of the last training forward is the one of this encoding
    vae(users, x)
    torch.testing.assert_close(vae.regularization(50)["kl"], 0.05 * expected)
    assert vae.log_values(50) == {"beta": pytest.approx(0.05)}


def test_multdae_and_the_multinomial_likelihood():
    users, x = rows()
    dae = MultDAE(weight_penalty=0.5)
    dae.build(10, 30)
    assert [tuple(l.weight.shape) for l in (*dae.encoder, *dae.decoder)] == [(200, 30), (30, 200)]
    dae.train()
    logits = dae(users, x)
    penalty = 0.5 * sum(l.weight.pow(2).sum() for l in (*dae.encoder, *dae.decoder))
    torch.testing.assert_close(dae.regularization(0)["l2"], penalty)
    # Eq. 9 is the concentration term with alpha = 0
    torch.testing.assert_close(negative_log_likelihood("multinomial", logits, x),
                               concentration_loss(logits.log_softmax(1), x, 0.0))
    with pytest.raises(ValueError, match="dropout"):
        MultDAE(dropout=1.0)


def test_factorization_rows_score_all_items_of_the_batch_users():
    users, x = rows(users=4, items=9)
    torch.manual_seed(0)
    mf = FactorizationRows(MF(embedding_dim=16), likelihood="gaussian")
    mf.build(10, 9)
    batch = torch.tensor([7, 2, 2, 9])
    logits = mf(batch, x)
    u, i = mf.backbone.embed()
    torch.testing.assert_close(logits, u[batch] @ i.T)
    torch.testing.assert_close(negative_log_likelihood("gaussian", logits, x), (x - logits).pow(2).sum(1))
    logits.sum().backward()
    touched = mf.backbone.user_embedding.weight.grad.abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == [2, 7, 9]  # only the batch's users

    neumf = FactorizationRows(NeuMF(gmf_dim=16, mlp_layers=[32, 50]), likelihood="bernoulli")
    neumf.build(10, 9)
    u, i = neumf.backbone.embed()
    logits = neumf(batch, x)
    torch.testing.assert_close(logits, neumf.backbone.pair_score(u[batch][:, None], i[None]))
    torch.testing.assert_close(negative_log_likelihood("bernoulli", logits, x),
                               torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1))
    with pytest.raises(ValueError, match="likelihood"):
        FactorizationRows(MF(), likelihood="poisson")
    with pytest.raises(ValueError, match="was built for"):
        neumf.build(11, 9)
