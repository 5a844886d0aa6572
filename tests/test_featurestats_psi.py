"""featurestats' PSI: the score training (adapt, experiments) and the service compare rows with."""

from __future__ import annotations

import numpy as np
import pytest

from featurestats import bin_frequencies, input_statistics, psi, sample_psi
from service.drift import psi as service_psi


def test_psi_closed_form_and_the_services():
    live = np.array([[0.5, 0.5], [1.0, 0.0]])
    train = np.array([[0.5, 0.5], [0.5, 0.5]])
    eps = 1e-4
    p, q = (1.0 + eps) / (1.0 + 2 * eps), (0.5 + eps) / (1.0 + 2 * eps)
    r = eps / (1.0 + 2 * eps)
    expected = (p - q) * np.log(p / q) + (r - q) * np.log(r / q)
    assert psi(live, train, eps) == pytest.approx([0.0, expected])
    np.testing.assert_allclose(psi(live, train, eps), service_psi(live, train, eps))


def test_sample_psi_of_its_own_sample_is_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 3))
    stats = input_statistics(x)
    np.testing.assert_allclose(bin_frequencies(x, stats.decile_edges), stats.decile_freqs)
    assert sample_psi(x, stats).max() < 1e-9
    shifted = sample_psi(x + np.array([0.0, 0.5, 1.0]), stats)
    assert shifted[0] < 1e-9 < shifted[1] < shifted[2]
    assert 0.2 < shifted[1] < 0.35  # ~0.25 for a half-std shift of a Gaussian on deciles (docs/drift.md)
