"""Does Batch Norm do what the paper says, on this code and real data? ``python -m experiments``.

Ioffe & Szegedy (2015) claim that Batch Norm stabilises the distribution of each layer's inputs, allows
higher learning rates, speeds up training, regularises a little, and needs population (EWMA) statistics
at test time. This package measures each claim on the bundled digits and on MNIST-1D (Greydanus 2020) with
the numpy MLP of :mod:`training.network`, trained by :func:`training.train.train` (its per-step callback
records what the experiments watch), and writes a Markdown report with PNG plots::

    make experiments                                # the full run, into docs/experiments/ (one BLAS thread)
    python -m experiments --quick --out /tmp/x      # a tiny budget (seconds), for tests

One module per job: :mod:`experiments.data` (the two data sets), :mod:`experiments.runs` (one training run
and the grid of them), :mod:`experiments.analysis` (summaries and the verdict on each claim),
:mod:`experiments.plots`, :mod:`experiments.report` (the Markdown) and :mod:`experiments.cli` (the command).
:mod:`experiments.adaptation` is a second experiment, Batch Norm at serving time (AdaBN), with its own
command: ``python -m experiments.adaptation``.
Lives beside ``training/``, not in it: the experiments are not shipped with the package.

Everything is seeded: the same command gives the same numbers. Nothing is set at import: ``make
experiments`` runs BLAS on one thread (``OPENBLAS_NUM_THREADS=1``; the matrices are small, threads only add
contention). Matplotlib (the ``plots`` extra) is imported lazily, with the Agg backend.
"""
