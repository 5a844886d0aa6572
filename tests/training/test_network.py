"""The whole network: gradient check end to end, parameters vs buffers, PreciseBN, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.conftest import numerical_gradient, rel_error
from training.layers import mean_squared_error, softmax_cross_entropy
from training.network import MLP, BlockStats, MLPConfig
from training.optim import SGD, Adam, decays, flush_subnormal, scheduled_lr


def small_net(activation: str = "tanh", batchnorm: bool = True, n_out: int = 3, seed: int = 0) -> MLP:
    cfg = MLPConfig(
        n_in=4, n_out=n_out, hidden=(5, 6), activation=activation, batchnorm=batchnorm, dtype="float64"
    )
    return MLP(cfg, np.random.default_rng(seed))


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("batchnorm", [True, False])
def test_whole_network_gradient(activation, batchnorm):
    rng = np.random.default_rng(7)
    net = small_net(activation, batchnorm)
    for _, p, _ in net.parameters():  # move off the initial gamma=1, beta=0, bias=0
        p += rng.standard_normal(p.shape) * 0.3
    x = rng.standard_normal((8, 4))
    y = rng.integers(0, 3, 8)

    def loss() -> float:
        return softmax_cross_entropy(net.forward(x, training=True), y)[0]

    _, d = softmax_cross_entropy(net.forward(x, training=True), y)
    net.backward(d)
    analytic = {name: g.copy() for name, _, g in net.parameters()}
    for name, p, _ in net.parameters():
        assert rel_error(analytic[name], numerical_gradient(loss, p)) < 1e-6, name


def test_regression_head_gradient():
    rng = np.random.default_rng(3)
    net = small_net("tanh", True, n_out=2)
    x, t = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    _, d = mean_squared_error(net.forward(x, training=True), t)
    net.backward(d)
    gW = net.head.dW.copy()
    num = numerical_gradient(lambda: mean_squared_error(net.forward(x, training=True), t)[0], net.head.W)
    assert rel_error(gW, num) < 1e-6


def test_parameters_and_buffers_are_kept_apart():
    net = small_net()
    params = {name for name, _, _ in net.parameters()}
    buffers = set(net.buffers())
    assert not params & buffers
    assert {"blocks.0.bn.gamma", "blocks.0.bn.beta", "blocks.0.linear.W", "head.W", "head.b"} <= params
    assert "blocks.0.linear.b" not in params  # BN's beta does the bias's job
    assert buffers == {f"blocks.{i}.bn.running_{s}" for i in (0, 1) for s in ("mean", "var")}
    assert "blocks.0.linear.b" in {n for n, _, _ in small_net(batchnorm=False).parameters()}


def test_optimizer_leaves_buffers_alone_and_decays_only_weights():
    rng = np.random.default_rng(0)
    net = small_net()
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    _, d = softmax_cross_entropy(net.forward(x, training=True), y)
    net.backward(d)
    buffers = {k: v.copy() for k, v in net.buffers().items()}
    params = {n: p.copy() for n, p, _ in net.parameters()}
    SGD(lr=0.1, momentum=0.0, weight_decay=0.5).step(net)
    assert all(np.array_equal(buffers[k], v) for k, v in net.buffers().items())
    for name, p, g in net.parameters():
        expected = params[name] - 0.1 * (g + (0.5 * params[name] if decays(name) else 0))
        assert np.allclose(p, expected), name
    assert decays("head.W") and not decays("blocks.0.bn.gamma") and not decays("head.b")


def test_adam_first_step_moves_each_weight_by_lr():
    net = small_net()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    _, d = softmax_cross_entropy(net.forward(x, training=True), y)
    net.backward(d)
    before = net.head.W.copy()
    Adam(lr=0.01, weight_decay=0.0).step(net)
    # first step: m = (1-b1) g, v = (1-b2) g^2; with the bias correction folded into the step size
    # (Kingma & Ba 2015, end of section 2) each weight moves by lr * |g| / (|g| + eps / sqrt(1 - b2))
    g = np.abs(net.head.dW)
    eps_hat = 1e-8 / np.sqrt(1 - 0.999)
    assert np.allclose(np.abs(net.head.W - before), 0.01 * g / (g + eps_hat), rtol=1e-9, atol=1e-15)


def test_adam_moments_never_go_subnormal_and_steps_match_float64():
    # A weight whose gradient stops (a dead ReLU unit's): its moments decay geometrically, through the
    # subnormal range where float32 arithmetic is slow. They are set to zero there; the steps still match
    # Adam computed in float64 without any flushing.
    b1, b2, lr = 0.5, 0.9, 0.01  # fast decays: the subnormal range is reached in a few hundred steps
    opt = Adam(lr=lr, betas=(b1, b2))
    p = np.array([0.3, -0.2, 0.1], np.float32)
    ref, m, v = p.astype(np.float64), np.zeros(3), np.zeros(3)
    tiny = np.finfo(np.float32).smallest_normal
    seen_subnormal_in_float64 = False
    for t in range(1, 1200):
        g = np.array([0.05, -0.01, 0.2]) if t <= 5 else np.zeros(3)
        opt.t = t
        opt.update("w.W", p, g.astype(np.float32))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        ref -= lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + 1e-8)
        seen_subnormal_in_float64 |= bool(((v > 0) & (v < tiny)).any())
        for moment in (opt.state["w.W"]["m"], opt.state["w.W"]["v"]):
            assert not ((moment != 0) & (np.abs(moment) < tiny)).any(), t
    assert seen_subnormal_in_float64  # the unflushed moments do pass through float32's subnormal range
    np.testing.assert_allclose(p, ref, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormal_rounds_only_the_smallest_values(dtype):
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    exponents = rng.uniform(np.log10(float(info.smallest_subnormal)), 3, 20_000)
    x = (rng.choice([-1.0, 1.0], 20_000) * 10.0**exponents).astype(dtype)
    x[:4] = [0, info.smallest_normal, -info.smallest_subnormal, info.smallest_normal * 0.75]
    y = x.copy()
    flush_subnormal(y)
    tiny = info.smallest_normal
    assert not ((y != 0) & (np.abs(y) < tiny)).any()  # no subnormal left
    assert (y[np.abs(x) < tiny / 2] == 0).all()
    big = np.abs(x) >= 4 * (1.5 * tiny / info.eps) / info.eps  # 4 c / eps: c is below half their spacing
    np.testing.assert_array_equal(y[big], x[big])  # the values that matter are not touched
    change = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert (change <= np.maximum(float(tiny), np.spacing(np.abs(x)).astype(np.float64))).all()


def test_schedules():
    assert scheduled_lr(1.0, "none", 5, 10) == 1.0
    assert scheduled_lr(1.0, "cosine", 0, 10) == 1.0
    assert scheduled_lr(1.0, "cosine", 5, 10) == pytest.approx(0.5)
    assert [scheduled_lr(1.0, "step", e, 8) for e in (0, 4, 6)] == pytest.approx([1.0, 0.1, 0.01])


def test_state_dict_round_trip():
    a, b = small_net(seed=0), small_net(seed=1)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 4))
    assert np.array_equal(a.forward(x, training=False), b.forward(x, training=False))


def test_precise_statistics_equal_batch_average():
    """PreciseBN over one full batch is exactly that batch's mean and unbiased variance at each BN layer."""
    rng = np.random.default_rng(0)
    net = small_net("relu")
    x = rng.standard_normal((20, 4))
    (m0, v0), (m1, v1) = net.precise_statistics(x, batch_size=20, rng=rng)
    z0 = net.blocks[0].linear.forward(x, training=False)
    assert np.allclose(m0, z0.mean(0)) and np.allclose(v0, z0.var(0, ddof=1))
    a0 = net.blocks[0].act.forward(
        net.blocks[0].bn.gamma * (z0 - z0.mean(0)) / np.sqrt(z0.var(0) + 1e-5) + net.blocks[0].bn.beta, False
    )
    z1 = net.blocks[1].linear.forward(a0, training=False)
    assert np.allclose(m1, z1.mean(0)) and np.allclose(v1, z1.var(0, ddof=1))
    before = {k: v.copy() for k, v in net.buffers().items()}
    net.precise_statistics(x, batch_size=8, rng=rng)
    assert all(np.array_equal(before[k], v) for k, v in net.buffers().items())


def test_same_seed_same_network():
    a, b = small_net(seed=5), small_net(seed=5)
    assert all(np.array_equal(pa, pb) for (_, pa, _), (_, pb, _) in zip(a.parameters(), b.parameters()))


def test_forward_reports_each_block_and_batch_statistics_leave_the_network_alone():
    rng = np.random.default_rng(0)
    net = small_net("relu")
    x = rng.standard_normal((9, 4))
    # test time, running statistics: pre-activations by hand, no batch statistics reported
    seen: list[BlockStats] = []
    out = net.forward(x, training=False, stats=seen)
    h = x
    for b, s in zip(net.blocks, seen):
        assert b.bn is not None
        z = (
            b.bn.gamma * (h @ b.linear.W - b.bn.running_mean) / np.sqrt(b.bn.running_var + b.bn.eps)
            + b.bn.beta
        )
        np.testing.assert_allclose(s.preactivation, z, rtol=1e-12)
        assert s.mean is None and s.var is None
        h = np.maximum(z, 0)
    np.testing.assert_allclose(out, h @ net.head.W + net.head.b, rtol=1e-12)
    # batch statistics without training: each block normalized by its own batch, nothing updated or cached
    buffers = {k: v.copy() for k, v in net.buffers().items()}
    seen = []
    net.forward(x, training=False, stats=seen, batch_statistics=True)
    h = x
    for b, s in zip(net.blocks, seen):
        assert b.bn is not None and b.bn.cache is None
        z = h @ b.linear.W
        np.testing.assert_allclose(s.mean, z.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s.var, z.var(0), rtol=1e-12)
        np.testing.assert_allclose(
            s.preactivation, b.bn.gamma * (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5) + b.bn.beta
        )
        h = np.maximum(s.preactivation, 0)
    assert all(np.array_equal(buffers[k], v) for k, v in net.buffers().items())
    # a training step reports the same batch statistics, and does update the running ones
    seen_train: list[BlockStats] = []
    net.forward(x, training=True, stats=seen_train)
    assert all(np.allclose(a.mean, b.mean) and np.allclose(a.var, b.var) for a, b in zip(seen, seen_train))
    assert not np.array_equal(buffers["blocks.0.bn.running_mean"], net.buffers()["blocks.0.bn.running_mean"])
