"""The training loop: :func:`train` runs what a :class:`~rsrestore.train.config.TrainConfig` describes.

Per step, the loop sets the learning rate, calls the config's objective (:mod:`rsrestore.train.objectives`) under
autocast, checks the loss is finite, back-propagates (with loss scaling for float16), clips gradients, steps the
optimiser and the EMA, and logs; every ``val_every`` steps it validates the EMA (or plain) weights, keeping the best
by PSNR; every ``ckpt_every`` steps and at the end it writes a checkpoint (:mod:`rsrestore.train.checkpoint`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .. import distributed as dist_utils
from ..losses import build_loss
from ..models import registry
from .checkpoint import (
    Checkpoint,
    atomic_save_weights,
    atomic_write_bytes,
    resume_point,
    sweep_temporaries,
    write_checkpoint,
)
from .config import ConfigError, TrainConfig, config_to_dict, load_config, model_change, plain
from .ema import EMA
from .loaders import EpochSampler, build_dataset, collate, describe_dataset, to_device
from .objectives import OBJECTIVES, ObjectiveContext
from .rng import rng_state, seed_all, set_rng_state
from .runlog import CsvLog, tensorboard
from .schedules import learning_rate

__all__ = ["TrainResult", "Trainer", "train", "train_from_config"]

VAL_METRICS = ("psnr", "ssim")


@dataclass
class TrainResult:
    """What a call to :func:`train` did: where it wrote, where it stopped, and the last validation scores."""

    out_dir: Path
    step: int
    epoch: int
    total_steps: int
    finished: bool
    final_weights: Path | None
    val_scores: dict[str, float]
    best_psnr: float | None
    wall_time_s: float


class Trainer:
    """One process's side of a run: builds everything from the config, then :meth:`fit` runs the steps."""

    def __init__(self, cfg: TrainConfig, ctx: dist_utils.DistContext, resume: bool = False) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        run = cfg.run

        # Same initial weights on every rank (DDP would broadcast rank 0's anyway, but EMA copies are made first).
        seed_all(run.seed)
        self.spec = registry.get_spec(cfg.model.name)
        model_cls, _ = self.spec.classes()
        self.model_cfg = registry.build_config(self.spec, cfg.model.config)
        model = model_cls(self.model_cfg).to(self.device)
        # Initial weights go in before the EMA copy, the optimiser and the DDP wrapper are made from the model; a run
        # resumed from a checkpoint takes its weights from there instead.
        self.init_info: dict[str, Any] | None = None
        if cfg.model.init_weights and not (resume and (self.ckpt_root / "latest").exists()):
            self.init_info = load_init_weights(model, cfg.model.init_weights)
        if cfg.model.train_only:
            freeze_all_but(model, cfg.model.train_only)
        if run.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.ema = EMA(model, run.ema) if run.ema is not None else None
        self.model = dist_utils.wrap(model, ctx, run.find_unused_parameters)

        loss = build_loss(cfg.loss.name, **cfg.loss.params)
        for key, needed in getattr(loss, "model_config_requirements", {}).items():
            if getattr(self.model_cfg, key, needed) != needed:
                raise ValueError(
                    f"loss {cfg.loss.name!r} needs model.config.{key} = {needed!r}, got {getattr(self.model_cfg, key)!r}"
                )
        if isinstance(loss, nn.Module):
            loss = loss.to(self.device)
        self.objective = functools.partial(OBJECTIVES[cfg.objective.name], **cfg.objective.params)
        self.objective_ctx = ObjectiveContext(
            loss=loss, model_kwargs=dict(getattr(loss, "model_kwargs", {}) or {}), needs_sar=self.spec.needs_sar
        )

        self.train_set = build_dataset(cfg.data.train, run.seed, "data.train")
        self.val_set: Dataset | None = None
        if cfg.data.val is not None:
            val = build_dataset(cfg.data.val, run.seed, "data.val")
            if run.max_val_images is not None and run.max_val_images < len(val):
                val = Subset(val, range(run.max_val_images))
            self.val_set = val
        per_step = cfg.data.batch_size * ctx.world_size
        self.steps_per_epoch = len(self.train_set) // per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"data.train: {len(self.train_set)} sample(s) do not fill one global batch of {per_step} "
                f"(data.batch_size {cfg.data.batch_size} x {ctx.world_size} process(es))"
            )
        limits = []
        if run.steps is not None:
            limits.append(run.steps)
        if run.epochs is not None:
            limits.append(run.epochs * self.steps_per_epoch)
        self.total_steps = min(limits)
        self.total_epochs = math.ceil(self.total_steps / self.steps_per_epoch)

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(f"model {cfg.model.name!r} has no trainable parameters")
        opt_cls = torch.optim.Adam if cfg.optim.name == "adam" else torch.optim.AdamW
        self.optimizer = opt_cls(
            params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay
        )
        self.params = params
        self.amp_dtype: torch.dtype | None = None
        if run.amp:
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                self.amp_dtype = torch.float16
            else:
                self.amp_dtype = torch.bfloat16
        # Loss scaling is only needed for float16, whose small exponent range underflows gradients.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_psnr: float | None = None
        self.best_step: int | None = None
        self.last_val: dict[str, float] = {}
        self.elapsed_before = 0.0
        self.lr = cfg.optim.lr
        self.checked_batch = False

    # ----------------------------------------------------------------------------------------------------------------

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        for key in ("input", "target"):
            if key not in batch:
                raise ConfigError(f"data.train: dataset items have no {key!r} (keys: {sorted(batch)})")
        # A SAR model given no "sar" is left to the model, which knows whether its config uses SAR bands at all.
        self.checked_batch = True

    def train_loader(self) -> DataLoader:
        cfg = self.cfg
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.train_set),
            cfg.data.batch_size,
            seed=cfg.run.seed,
            epoch=self.epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            start_batch=self.batch_in_epoch,
        )
        # Worker seeds come from this generator, not from the global RNG that dropout uses.
        g = torch.Generator().manual_seed((cfg.run.seed * 1_000_003 + self.epoch) * 4099 + self.ctx.rank)
        return DataLoader(
            self.train_set,
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            generator=g,
        )

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        self.model.train()
        batch = to_device(batch, self.device, self.cfg.run.channels_last)
        with self.autocast():
            out = self.objective(self.model, batch, self.objective_ctx)
        total = out.loss
        if not bool(torch.isfinite(total.detach())):
            raise FloatingPointError(
                f"the loss is {float(total)} at step {self.step} (epoch {self.epoch}); lower optim.lr or set "
                "run.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        logged = {"loss": float(total.detach())}
        if self.cfg.run.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.run.grad_clip)
            logged["grad_norm"] = float(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        logged.update(out.logs)
        return logged

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from ..metrics.full_reference import compute_metrics, mean_metrics

        assert self.val_set is not None
        model = self.ema.module if self.ema is not None else self.raw_model
        was_training = model.training
        model.eval()
        loader = DataLoader(
            self.val_set, batch_size=self.cfg.data.val_batch_size, shuffle=False, collate_fn=collate,
            num_workers=self.cfg.data.num_workers,
            # A loader without a generator draws its worker seed from the global RNG; validating must not move it.
            generator=torch.Generator().manual_seed(0),
        )
        # A generator seeded alike at every validation: scores compare across steps and the training RNG stays put.
        ctx = dataclasses.replace(
            self.objective_ctx, training=False, generator=torch.Generator(self.device).manual_seed(self.cfg.run.seed)
        )
        per_image: list[dict[str, list[float]]] = []
        loss_sum, count = 0.0, 0
        for batch in loader:
            batch = to_device(batch, self.device, self.cfg.run.channels_last)
            with self.autocast():
                out = self.objective(model, batch, ctx)
            if out.prediction is None:
                raise ValueError(f"objective {self.cfg.objective.name!r} returned no prediction to validate")
            n = batch["input"].shape[0]
            loss_sum += float(out.loss) * n
            count += n
            pred = out.prediction.float().clamp(0.0, 1.0)
            target = batch["target"].float().clamp(0.0, 1.0)
            per_image.append(compute_metrics(pred, target, names=VAL_METRICS))
        model.train(was_training)
        scores = {f"val_{k}": v for k, v in mean_metrics(per_image).items()}
        scores["val_loss"] = loss_sum / max(count, 1)
        return scores

    # ----------------------------------------------------------------------------------------------------------------

    def final_module(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def save_checkpoint(self) -> None:
        rng = dist_utils.all_gather_object(rng_state(), self.ctx)
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"name": self.cfg.schedule.name, "lr": self.lr},
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "best_psnr": self.best_psnr,
                "best_step": self.best_step,
                "last_val": self.last_val,
                "wall_time_s": self.elapsed(),
                "world_size": self.ctx.world_size,
                "config": config_to_dict(self.cfg),
                "init_weights": self.init_info,
            }
            write_checkpoint(
                self.ckpt_root, self.step, self.raw_model, self.ema.module if self.ema is not None else None, state,
                {"step": str(self.step), "model": self.cfg.model.name}, self.cfg.run.keep_checkpoints,
            )
        dist_utils.barrier(self.ctx)

    def checkpoint_problem(self, ckpt: Checkpoint) -> str | None:
        """Why ``ckpt`` cannot continue this run, or None. A changed model config is an error of its own: an older
        checkpoint of the same run would not fix it."""
        saved = ckpt.state.get("config")
        if isinstance(saved, Mapping):
            change = model_change(saved.get("model"), self.cfg.model)
            if change:
                raise ConfigError(
                    f"cannot resume {ckpt.path}: {change}; resume with the model section the run started with, "
                    "or start a new run in another run.out_dir"
                )
        expected = {k: tuple(v.shape) for k, v in self.raw_model.state_dict().items()}
        for name, tensors in (("model.safetensors", ckpt.model), ("ema.safetensors", ckpt.ema)):
            if tensors is None:
                continue
            found = {k: tuple(v.shape) for k, v in tensors.items()}
            if found != expected:
                return f"{name} does not hold this model's tensors"
        return None

    def load_checkpoint(self, ckpt: Checkpoint) -> None:
        state = ckpt.state
        self.raw_model.load_state_dict(ckpt.model)
        if self.ema is not None:
            # A run that turns EMA on when resuming starts its average from the current weights.
            self.ema.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_psnr = state.get("best_psnr")
        self.best_step = state.get("best_step")
        self.last_val = dict(state.get("last_val") or {})
        self.elapsed_before = float(state.get("wall_time_s", 0.0))
        self.init_info = state.get("init_weights", self.init_info)
        rng = state["rng"]
        if len(rng) != self.ctx.world_size:
            warnings.warn(
                f"resuming a {len(rng)}-process run with {self.ctx.world_size} process(es): data order and random "
                "draws will differ from an uninterrupted run",
                stacklevel=2,
            )
            seed_all(self.cfg.run.seed + 1 + self.ctx.rank + self.step)
        else:
            set_rng_state(rng[self.ctx.rank])
        if self.batch_in_epoch > self.steps_per_epoch:
            raise ValueError(
                f"{ckpt.path} stopped after batch {self.batch_in_epoch} of an epoch that now has "
                f"{self.steps_per_epoch}: the dataset or batch size changed since"
            )

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.started)

    def write_final(self, data_description: dict[str, Any]) -> Path:
        path = self.out_dir / "final.safetensors"
        best = self.out_dir / "best.safetensors"
        module, final_step = self.final_module(), self.step
        if self.cfg.run.final_weights == "best" and self.best_step is not None and best.is_file():
            module, final_step = _loaded(module, best), self.best_step
        atomic_save_weights(module, path, {"model": self.cfg.model.name, "step": str(final_step)})
        meta = {
            "model": self.cfg.model.name,
            "config": plain(dataclasses.asdict(self.model_cfg)),
            "sha256": registry.sha256_of(path),
            "file": path.name,
            "ema": self.ema is not None,
            "steps": self.step,
            "final_weights": self.cfg.run.final_weights,
            "final_step": final_step,
            "epochs": self.step / self.steps_per_epoch,
            "global_batch_size": self.cfg.data.batch_size * self.ctx.world_size,
            "world_size": self.ctx.world_size,
            "wall_time_s": round(self.elapsed(), 3),
            "train_data": data_description,
            "init_weights": self.init_info,
            "val_scores": self.last_val,
            "best_val_psnr": self.best_psnr,
            "best_step": self.best_step,
            "value_range": [0.0, 1.0],
            "loss": {"name": self.cfg.loss.name, "params": plain(self.cfg.loss.params)},
            "train_config": config_to_dict(self.cfg),
            "torch_version": torch.__version__,
        }
        atomic_write_bytes(self.out_dir / "final.json", (json.dumps(meta, indent=2, default=str) + "\n").encode())
        return path

    # ----------------------------------------------------------------------------------------------------------------

    def fit(self, resume: bool, stop_after: int | None) -> TrainResult:
        cfg, ctx, run = self.cfg, self.ctx, self.cfg.run
        self.started = time.perf_counter()
        if ctx.is_main:
            sweep_temporaries(self.out_dir, self.ckpt_root)
        ckpt = None
        if resume:
            ckpt, skipped = resume_point(self.ckpt_root, self.checkpoint_problem)
            if ckpt is not None and skipped and ctx.is_main:
                print(f"warning: resuming from {ckpt.path.name}; skipped {'; '.join(skipped)}", file=sys.stderr)
        if ckpt is not None:
            self.load_checkpoint(ckpt)
        else:
            if resume and ctx.is_main:
                print(f"no checkpoint under {self.ckpt_root}: starting from scratch", file=sys.stderr)
            # Distinct streams per rank for dropout and the like; the weights were already initialised identically.
            seed_all(run.seed + 1 + ctx.rank)
        dist_utils.barrier(ctx)

        log = tb = bar = None
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log = CsvLog(self.out_dir / "log.csv", keep_until=self.step if ckpt is not None else None)
            tb = tensorboard(self.out_dir)
            if run.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        description = {"train": describe_dataset(cfg.data.train, self.train_set)}
        if self.val_set is not None and cfg.data.val is not None:
            description["val"] = describe_dataset(cfg.data.val, self.val_set)

        window: dict[str, list[float]] = {}
        last_ckpt = self.step if ckpt is not None else -1
        stopped = False
        try:
            while self.step < self.total_steps and not stopped:
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                for batch in self.train_loader():
                    if not self.checked_batch:
                        self.check_batch(batch)
                    self.lr = learning_rate(
                        cfg.optim, cfg.schedule, self.step, self.epoch, self.total_steps, self.total_epochs
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.lr
                    logged = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k, v in logged.items():
                        window.setdefault(k, []).append(v)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{logged['loss']:.4g}", lr=f"{self.lr:.3g}", refresh=False)

                    done = self.step >= self.total_steps
                    stopped = stop_after is not None and self.step >= stop_after and not done
                    row: dict[str, Any] = {}
                    if done or stopped or (run.log_every and self.step % run.log_every == 0):
                        names = sorted(window)
                        means = dist_utils.all_reduce_mean([sum(window[k]) / len(window[k]) for k in names], ctx)
                        row.update(
                            {"step": self.step, "epoch": self.epoch, "lr": self.lr, **dict(zip(names, means))}
                        )
                        window = {}
                    if self.val_set is not None and (done or (run.val_every and self.step % run.val_every == 0)):
                        if ctx.is_main:
                            self.last_val = self.validate()
                            row.update({"step": self.step, "epoch": self.epoch, **self.last_val})
                            psnr = self.last_val.get("val_psnr")
                            if psnr is not None and not math.isnan(psnr) and (
                                self.best_psnr is None or psnr > self.best_psnr
                            ):
                                self.best_psnr, self.best_step = psnr, self.step
                                atomic_save_weights(
                                    self.final_module(), self.out_dir / "best.safetensors",
                                    {"step": str(self.step), "val_psnr": f"{psnr:.6f}"},
                                )
                        dist_utils.barrier(ctx)
                    if row and log is not None:
                        row["time_s"] = round(self.elapsed(), 3)
                        log.write(row)
                        if tb is not None:
                            for k, v in row.items():
                                if k not in ("step", "epoch") and isinstance(v, float):
                                    tb.add_scalar(k, v, self.step)
                    if done or stopped or (run.ckpt_every and self.step % run.ckpt_every == 0):
                        self.save_checkpoint()
                        last_ckpt = self.step
                    if done or stopped:
                        break
            if self.step > 0 and last_ckpt != self.step:
                self.save_checkpoint()
            final_path = None
            finished = self.step >= self.total_steps
            if finished and ctx.is_main:
                if self.val_set is not None and not self.last_val:
                    self.last_val = self.validate()
                final_path = self.write_final(description)
            dist_utils.barrier(ctx)
        finally:
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        if finished and final_path is None:
            final_path = self.out_dir / "final.safetensors"
        return TrainResult(
            out_dir=self.out_dir,
            step=self.step,
            epoch=self.epoch,
            total_steps=self.total_steps,
            finished=finished,
            final_weights=final_path,
            val_scores=dict(self.last_val),
            best_psnr=self.best_psnr,
            wall_time_s=self.elapsed(),
        )


def _loaded(module: nn.Module, path: Path) -> nn.Module:
    """A copy of ``module`` holding the weights of the safetensors file ``path`` (the run's own, same tensors)."""
    twin = copy.deepcopy(module)
    twin.load_state_dict(registry.read_state_dict(path))
    return twin


def freeze_all_but(model: nn.Module, modules: Sequence[str]) -> None:
    """Leave only the parameters of ``modules`` (dotted names of submodules, ``model.train_only``) trainable."""
    names = [name for name, _ in model.named_parameters()]
    for module in modules:
        if not any(n.startswith(f"{module}.") for n in names):
            raise ConfigError(f"model.train_only: the model has no parameters under {module!r}; its modules with "
                              f"parameters: {sorted({n.split('.')[0] for n in names})}")
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(f"{module}.") for module in modules))


def load_init_weights(model: nn.Module, path: str) -> dict[str, Any]:
    """Load the weights file ``path`` (``model.init_weights``) into ``model`` in place: tensors matched by name, a
    subset of the model's allowed, every name and shape checked before anything is copied. Returns what the run's
    metadata records about it."""
    try:
        state = registry.read_state_dict(path)
    except registry.ModelError as e:
        raise ConfigError(f"model.init_weights: {e}") from None
    if hasattr(model, "adapt_init_state"):  # e.g. weights of the same model without its classical prior
        state = model.adapt_init_state(state)
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(
            f"model.init_weights: {path} holds {len(unknown)} tensor(s) this model does not have, e.g. {unknown[0]!r}; "
            "give weights of the same method"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ConfigError(
                f"model.init_weights: {k} in {path} has shape {tuple(v.shape)}, the model's has "
                f"{tuple(own[k].shape)}; set model.config to the config those weights were trained with"
            )
    model.load_state_dict(state, strict=False)
    return {"path": str(path), "sha256": registry.sha256_of(path), "tensors": len(state),
            "tensors_not_in_file": len(own) - len(state)}


def train(cfg: TrainConfig, resume: bool = False, *, stop_after: int | None = None) -> TrainResult:
    """Run the training that ``cfg`` describes (single process, or one rank of a torchrun launch).

    Args:
        cfg: a checked config (see :func:`load_config`).
        resume: continue from ``out_dir/checkpoints/latest``; without a checkpoint the run starts from scratch, so a
            preemptible job can always pass it.
        stop_after: end this invocation after that global step, with a checkpoint but without the final outputs, as
            a preempted job would (a later ``resume`` continues); for time-boxed jobs and for testing resumption.
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    out_dir = Path(cfg.run.out_dir)
    if not resume and (out_dir / "checkpoints" / "latest").exists():
        raise ConfigError(f"run.out_dir: {out_dir} already holds a run; resume it (--resume) or choose another out_dir")
    with _exit_on_sigterm():
        ctx = dist_utils.setup(cfg.run.device)
        try:
            return Trainer(cfg, ctx, resume).fit(resume, stop_after)
        finally:
            dist_utils.cleanup(ctx)


def train_from_config(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    resume: bool = False,
    *,
    stop_after: int | None = None,
) -> TrainResult:
    """``rsrestore train CONFIG.yaml [--resume] [--set key=value ...]``: :func:`load_config` then :func:`train`."""
    return train(load_config(path, overrides), resume=resume, stop_after=stop_after)


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM (what ``kill``, batch schedulers and torchrun send) ends a run as Ctrl-C does: as an exception, so
    that a write under way removes its temporary on the way out. The exit status is the usual 128 + 15."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
