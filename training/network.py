"""The MLP: ``[Linear (no bias) -> BatchNorm -> activation] * k -> Linear`` (logits or regression outputs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.layers import ACTIVATIONS, Array, BatchNorm, Layer, Linear, batchnorm_forward


@dataclass(frozen=True)
class MLPConfig:
    """Everything needed to rebuild the network's structure."""

    n_in: int
    n_out: int
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    batchnorm: bool = True
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


@dataclass(frozen=True)
class BlockStats:
    """What one hidden block saw in a forward pass (see :meth:`MLP.forward`'s ``stats``)."""

    preactivation: Array  # (N, H) the activation's input: after BN when there is one
    mean: (
        Array | None
    )  # (H,) the batch mean BN normalized with; None when BN used running statistics or is absent
    var: Array | None  # (H,) the biased batch variance, likewise


@dataclass
class Block:
    """One hidden layer: ``linear -> bn (optional) -> act``."""

    linear: Linear
    bn: BatchNorm | None
    act: Layer


class MLP:
    """A stack of hidden blocks and an output Linear layer.

    With ``batchnorm=True`` the hidden Linear layers have no bias (BN's ``beta`` does its job); without, they
    have one. The output layer always has a bias. ``parameters`` and ``buffers`` are kept apart.
    """

    def __init__(self, config: MLPConfig, rng: np.random.Generator) -> None:
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {config.activation!r}")
        self.config = config
        dtype = np.dtype(config.dtype)
        init = "he" if config.activation == "relu" else "xavier"
        self.blocks: list[Block] = []
        width = config.n_in
        for h in config.hidden:
            linear = Linear(width, h, bias=not config.batchnorm, rng=rng, init=init, dtype=dtype)
            bn = (
                BatchNorm(h, momentum=config.bn_momentum, eps=config.bn_eps, dtype=dtype)
                if config.batchnorm
                else None
            )
            self.blocks.append(Block(linear, bn, ACTIVATIONS[config.activation]()))
            width = h
        self.head = Linear(width, config.n_out, bias=True, rng=rng, init="xavier", dtype=dtype)

    @property
    def layers(self) -> list[Layer]:
        """All layers in forward order."""
        out: list[Layer] = []
        for b in self.blocks:
            out.append(b.linear)
            if b.bn is not None:
                out.append(b.bn)
            out.append(b.act)
        out.append(self.head)
        return out

    def forward(
        self,
        x: Array,
        training: bool,
        stats: list[BlockStats] | None = None,
        batch_statistics: bool = False,
    ) -> Array:
        """Logits (classification) or predictions (regression), shape ``(N, n_out)``.

        ``training=True`` is a training step: BN normalizes with the batch's statistics and updates its
        running ones, and every layer keeps what its backward needs. ``training=False`` has no side effect: BN
        uses its running statistics or, with ``batch_statistics=True``, the batch's own, as in training but
        with nothing updated or cached (PreciseBN, inspection; one row is allowed: every BN output is then
        ``beta``). When ``stats`` is a list, one :class:`BlockStats` per hidden block is appended to it.
        """
        h = x
        for b in self.blocks:
            z = b.linear.forward(h, training)  # (N, H)
            mean = var = None
            if b.bn is not None:
                if training:
                    z = b.bn.forward(z, True)
                    cache = b.bn.cache
                elif batch_statistics:
                    z, cache = batchnorm_forward(z, b.bn.gamma, b.bn.beta, b.bn.eps, True)
                else:
                    z, cache = b.bn.forward(z, False), None
                if cache is not None:
                    mean, var = cache.mean, cache.var
            if stats is not None:
                stats.append(BlockStats(z, mean, var))
            h = b.act.forward(z, training)
        return self.head.forward(h, training)

    def backward(self, dout: Array, input_grad: bool = False) -> Array | None:
        """Back-propagate ``dL/d(output)``, leaving the gradients on the layers.

        Returns ``dL/dx`` when ``input_grad``; by default the first layer skips that product, which training
        never needs (it is the largest matrix product of the backward pass for wide inputs).
        """
        layers = self.layers
        d = dout
        for layer in reversed(layers[1:]):
            d = layer.backward(d)
        first = layers[0]
        if isinstance(first, Linear):
            return first.backward(d, input_grad=input_grad)
        return first.backward(d)

    def _named(self) -> list[tuple[str, Layer]]:
        named: list[tuple[str, Layer]] = []
        for i, b in enumerate(self.blocks):
            named.append((f"blocks.{i}.linear", b.linear))
            if b.bn is not None:
                named.append((f"blocks.{i}.bn", b.bn))
        named.append(("head", self.head))
        return named

    def parameters(self) -> list[tuple[str, Array, Array]]:
        """``(name, parameter, gradient)`` triples; the gradient is the one left by the last backward."""
        out = []
        for prefix, layer in self._named():
            grads = layer.grads()
            for key, p in layer.params().items():
                out.append((f"{prefix}.{key}", p, grads[key]))
        return out

    def buffers(self) -> dict[str, Array]:
        """Running statistics (not learned, not touched by the optimizer)."""
        return {
            f"{prefix}.{key}": buf for prefix, layer in self._named() for key, buf in layer.buffers().items()
        }

    def state_dict(self) -> dict[str, Array]:
        """A copy of every parameter and buffer, by name."""
        state = {name: p.copy() for name, p, _ in self.parameters()}
        state.update({name: b.copy() for name, b in self.buffers().items()})
        return state

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Copy values back in place (the optimizer keeps references to the arrays)."""
        current = {name: p for name, p, _ in self.parameters()}
        current.update(self.buffers())
        if current.keys() != state.keys():
            raise KeyError(f"state keys differ: {sorted(current.keys() ^ state.keys())}")
        for name, arr in current.items():
            np.copyto(arr, state[name])

    def precise_statistics(
        self, x: Array, batch_size: int, rng: np.random.Generator
    ) -> list[tuple[Array, Array]]:
        """Population statistics of each BN layer with the weights frozen (PreciseBN, Wu & Johnson 2021).

        The data is cut into shuffled batches of ``batch_size`` (a trailing batch of fewer than 2 rows is
        dropped); every batch is normalized with its own statistics exactly as in training, and each BN layer's
        estimate is the equal-weight average over batches of the batch means and of the unbiased batch
        variances. Nothing on the network changes; returns ``[(mean, var), ...]`` per BN layer.
        """
        sums: list[tuple[Array, Array]] = [
            (np.zeros(b.bn.num_features), np.zeros(b.bn.num_features))
            for b in self.blocks
            if b.bn is not None
        ]
        order = rng.permutation(len(x))
        n_batches = 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            n = len(idx)
            if n < 2:
                continue
            seen: list[BlockStats] = []
            self.forward(x[idx], training=False, stats=seen, batch_statistics=True)
            for (mean_sum, var_sum), s in zip(sums, [s for s in seen if s.mean is not None]):
                assert s.var is not None
                mean_sum += s.mean
                var_sum += s.var * (n / (n - 1))  # the unbiased batch variance, as the EWMA is fed
            n_batches += 1
        if n_batches == 0:
            raise ValueError("precise statistics need at least one batch of 2 rows or more")
        return [(m / n_batches, v / n_batches) for m, v in sums]
