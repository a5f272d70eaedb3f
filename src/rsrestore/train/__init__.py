"""Training engine: one YAML file describes a run; ``python -m rsrestore.train CONFIG.yaml [--resume] [--set k=v]``.

The same command under ``torchrun --nproc_per_node N`` trains with DistributedDataParallel (see
:mod:`rsrestore.distributed`). A run writes, under ``run.out_dir``::

    log.csv                               step, epoch, lr, loss (and its parts), val scores, wall time
    checkpoints/step_0001000/             model.safetensors, ema.safetensors (with EMA), state.pt
    checkpoints/latest                    name of the newest complete checkpoint
    best.safetensors                      weights with the best validation PSNR so far
    final.safetensors, final.json         weights at the end (the EMA weights when EMA is on) and their metadata
    tb/                                   TensorBoard events, only when tensorboard is installed

Reproducibility. Every random draw comes from a seeded source: the model is initialised under ``run.seed``; the
data order of epoch ``e`` is a permutation drawn from ``seed + e`` (:class:`EpochSampler`); datasets draw their crops
and flips from ``(seed, epoch, index)`` (their ``set_epoch`` is called); each rank's global RNGs (dropout) are
seeded per rank and saved in every checkpoint; loader workers get their seeds from a generator of their own, so
building a loader never consumes the global RNG. Together these make ``--resume`` exact: a run stopped after a
checkpoint at step k and resumed reaches bit-identical weights at step n, because the resumed run restarts the
interrupted epoch's sampler at the batch where it stopped instead of replaying the loader.

Checkpoints are written to a temporary folder and renamed into place, and ``latest`` is replaced atomically, so a
run killed while writing leaves the previous checkpoint intact; SIGTERM ends a run as Ctrl-C does, removing the
temporary of a write under way, and a run sweeps the temporaries that killed runs left. ``--resume`` from an
unreadable checkpoint falls back to the newest older one that reads (and says so); resuming with a changed model
config is an error naming what changed.

The package, one idea per module:

- :mod:`~rsrestore.train.config`: the YAML sections as dataclasses, strict parsing, ``--set`` overrides, validation
- :mod:`~rsrestore.train.objectives`: what a step computes, as functions chosen by ``objective.name``
- :mod:`~rsrestore.train.loop`: the :class:`~rsrestore.train.loop.Trainer` and :func:`train`
- :mod:`~rsrestore.train.checkpoint`: atomic writes, checkpoints, temporaries, :func:`export_weights`
- :mod:`~rsrestore.train.schedules`, :mod:`~rsrestore.train.loaders`, :mod:`~rsrestore.train.ema`,
  :mod:`~rsrestore.train.rng`, :mod:`~rsrestore.train.runlog`: learning rates, data feeding, weight averaging,
  random state, logs
- :mod:`~rsrestore.train.command`: the ``python -m rsrestore.train`` command line
"""

from .checkpoint import CheckpointError, export_weights
from .command import main
from .config import (
    ConfigError,
    DataSection,
    DatasetSpec,
    LossConfig,
    ModelSection,
    ObjectiveConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    parse_config,
)
from .ema import EMA
from .loaders import EpochSampler, collate
from .loop import TrainResult, train, train_from_config
from .objectives import OBJECTIVES, ObjectiveContext, StepOutput
from .schedules import learning_rate

__all__ = [
    "OBJECTIVES",
    "CheckpointError",
    "ConfigError",
    "DataSection",
    "DatasetSpec",
    "EMA",
    "EpochSampler",
    "LossConfig",
    "ModelSection",
    "ObjectiveConfig",
    "ObjectiveContext",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "collate",
    "config_to_dict",
    "export_weights",
    "learning_rate",
    "load_config",
    "main",
    "parse_config",
    "train",
    "train_from_config",
]
