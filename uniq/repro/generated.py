"""The generated data sets' own constants (one definition, read by ``uniq.repro.data`` to
build the data and by ``uniq.repro.config`` for the run's key)."""

DATA_SEED = 0
"""Seed of the generated data set and of the ``data_fraction`` subset: fixed, not the run's."""

GENERATOR_CONSTANTS = {
    "synthetic": {"classes": 100, "size": 32, "noise": 0.8},
    "finegrain": {"classes": 20, "size": 16, "detail": 0.5,
                  "noise": 1.3},
}
"""The generated data sets' own constants, chosen (not tuned on any claim): ``synthetic`` has
CIFAR-100's shape; ``finegrain``'s detail and noise make the 2-pixel pattern hard enough that
bit width shows in accuracy on a laptop (README: the laptop profile). They are part of a run's
key (``uniq.repro.config``)."""
