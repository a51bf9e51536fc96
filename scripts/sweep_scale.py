"""Scale options of the depth sweep (resume, recompute, precision, data parallel), kept out of depth_sweep.py's main logic.

depth_sweep.py calls `add_arguments` (flags), `setup` (process group under torchrun),
`scale_config` (what config.json records of them) and, per run, `RunHooks`:

    --checkpoint-every K   checkpoint model, optimizer, RNG, data position and the run's
                           counters to <run>/checkpoints every K steps (safetensors + JSON,
                           atomic, checksummed, last --keep-checkpoints kept). Rerunning the
                           same command resumes each run from its newest valid checkpoint
                           (a finished run is not retrained) and metrics.jsonl ends up with
                           every step exactly once. Other model / training settings are
                           refused; --steps (not below the checkpoint), --log-every,
                           --eval-every, --metric-rows, --max-nonfinite may change: printed
                           and listed in config.json's "resumes".
    --recompute 0|auto|K   keep only every K mixing layers' input stream, recompute the
                           rest in backward (auto: paper's sqrt(n L / (n + 2))).
    --dtype bfloat16       bf16 weights and activations, mixing weights float32 (phi, bias,
                           alpha; the history variant's logits and gate).
    torchrun --nproc_per_node N scripts/depth_sweep.py ...
                           DDP data parallel (torch backend): each rank trains on its slice
                           of every global batch; rank 0 writes the files (the other ranks
                           write theirs to a temporary directory and read checkpoints from
                           rank 0's).
"""
from __future__ import annotations

import os
import tempfile

from mhc_core.experiments.checkpoints import RunCheckpointer

ACC_KEYS = ("losses", "events", "streak", "ratio_acc", "gains_max")


def add_arguments(p) -> None:
    g = p.add_argument_group("scale: resume, memory, precision, data parallel")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every K steps to <run>/checkpoints; rerun the same command to resume (0 = off)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept per run")
    g.add_argument("--recompute", default="0",
                   help="recompute blocks: 0 (off), auto (paper: sqrt(n L / (n + 2)) mixing layers) or a block size")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: weights and activations in bf16, mixing weights (phi, bias, alpha; history: logits, gate) float32")


class Dist:
    """Data-parallel placement of this process (a single process unless under torchrun)."""

    def __init__(self, info=None, shared_out: str | None = None):
        self.info, self.shared_out = info, shared_out

    @property
    def rank(self) -> int:
        return self.info.rank if self.info is not None else 0

    @property
    def world(self) -> int:
        return self.info.world if self.info is not None else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(args) -> Dist:
    """Validate the scale flags; under torchrun join the process group and point the
    other ranks' outputs to a temporary directory. Sets args.dist (and, on other ranks,
    args.out, no_plots, no_progress)."""
    args.dist = _setup(args)
    return args.dist


def _setup(args) -> Dist:
    if args.checkpoint_every < 0:
        raise SystemExit(f"--checkpoint-every must be an integer >= 0 (0 = off), got {args.checkpoint_every}")
    if args.keep_checkpoints < 1:
        raise SystemExit(f"--keep-checkpoints must be an integer >= 1, got {args.keep_checkpoints}")
    if args.recompute not in ("0", "auto") and not (args.recompute.isdigit() and int(args.recompute) > 0):
        raise SystemExit(f"--recompute must be 0, auto or a positive integer, got {args.recompute!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if args.backend != "torch":
        raise SystemExit("torchrun launch needs --backend torch (MLX: see mhc_core_mlx.training.distributed)")
    import atexit

    from mhc_core_torch.training.distributed import init_from_env, shutdown

    info = init_from_env()
    atexit.register(shutdown)
    if args.batch % info.world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {info.world} ranks")
    dist = Dist(info, shared_out=args.out)
    if not dist.is_main:
        args.out = tempfile.mkdtemp(prefix=f"mhc-sweep-rank{info.rank}-")
        args.no_plots = args.no_progress = True
    return dist


def scale_config(args) -> dict:
    """What config.json records of these options, and the flags that rerun them."""
    dist = getattr(args, "dist", None) or Dist()
    flags = ["--checkpoint-every", str(args.checkpoint_every), "--keep-checkpoints", str(args.keep_checkpoints),
             "--recompute", args.recompute, "--dtype", args.dtype]
    return {"checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
            "recompute": args.recompute, "dtype": args.dtype, "world_size": dist.world, "rerun_flags": flags}


FINGERPRINT_ARGS = ("backend", "dtype", "recompute", "batch", "task", "lr", "warmup", "grad_clip", "seed",
                    "patch", "eval_size")


def fingerprint(args, cfg) -> dict:
    """What must match for a checkpoint to continue a run (steps and logging may change)."""
    return {"model": cfg.as_dict(), **{k: getattr(args, k, None) for k in FINGERPRINT_ARGS}}


SCHEDULE_ARGS = ("steps", "log_every", "eval_every", "metric_rows", "max_nonfinite")


def schedule(args) -> dict:
    """The settings a resume may change (how long to train, what is logged when); a change
    is announced and recorded in config.json's "resumes", never applied silently."""
    return {k: getattr(args, k, None) for k in SCHEDULE_ARGS}


def check_not_past_steps(loaded, steps: int, directory: str) -> None:
    """SystemExit when checkpoint `loaded` has more steps done than this run's --steps (the
    log and weights would belong to a longer run than config.json says)."""
    if loaded.step > steps:
        raise SystemExit(f"{loaded.path} has {loaded.step} steps done, more than --steps {steps}: a run cannot be "
                         f"cut back; pass --steps >= {loaded.step}, another --out, or delete {directory}")


def schedule_changes(loaded, want: dict) -> dict:
    """{setting: [at the checkpoint, now]} of the SCHEDULE_ARGS that differ ({'schedule':
    ['unrecorded', ...]} for a checkpoint written before they were recorded)."""
    saved = loaded.meta.get("schedule")
    if saved is None:
        return {"schedule": ["unrecorded", want]}
    return {k: [saved.get(k), v] for k, v in want.items() if saved.get(k) != v}


def check_fingerprint(loaded, want: dict, directory: str) -> None:
    """SystemExit naming the settings that differ when checkpoint `loaded` was written by a
    run of other settings than `want`."""
    saved = loaded.meta.get("fingerprint", {})
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise SystemExit(f"{loaded.path} was written by a run with different settings ({', '.join(diff)}); "
                         f"use another --out or delete {directory} to start over")


class RunHooks:
    """Per-run glue: wraps the trainer (dtype, recompute, DDP), resumes, checkpoints.

        hooks = RunHooks(args, run_dir, cfg, trainer, data)
        start, acc = hooks.resume(acc); trainer = hooks.trainer
        with hooks.open_log() as log: ... hooks.step_done(step + 1, acc_now)
    """

    def __init__(self, args, run_dir: str, cfg, trainer, data):
        dist = getattr(args, "dist", None) or Dist()
        self.args, self.dist, self.data = args, dist, data
        self.base = trainer
        self._apply_dtype_and_recompute(cfg)
        self.ckpt = None
        if args.checkpoint_every:
            ckpt_dir = run_dir if dist.shared_out is None else os.path.join(dist.shared_out, os.path.basename(run_dir))
            self.ckpt = RunCheckpointer(ckpt_dir, args.checkpoint_every, keep=args.keep_checkpoints,
                                        readonly=not dist.is_main)
        self.log_path = os.path.join(run_dir, "metrics.jsonl")
        self.resumes: list[dict] = []  # every resume of this run: step, settings changed
        self.trainer = trainer  # wrapped for DDP after resume (DDP broadcasts rank 0's weights)
        # what must match for a checkpoint to continue this run (steps and logging may change)
        self.fingerprint = fingerprint(args, cfg)

    def _apply_dtype_and_recompute(self, cfg) -> None:
        model = self.base.model
        if self.args.dtype == "bfloat16":
            if self.args.backend == "torch":
                import torch

                from mhc_core_torch.training.precision import cast_except_mixing
                cast_except_mixing(model, torch.bfloat16)
            else:
                import mlx.core as mx

                from mhc_core_mlx.training.precision import cast_except_mixing
                cast_except_mixing(model, mx.bfloat16)
        block = self.args.recompute
        if block != "0":
            from mhc_core.recompute import resolve_block

            model.recompute = resolve_block("auto" if block == "auto" else int(block), cfg.n, cfg.n_mixing_layers)

    def _checkpoint_module(self):
        if self.args.backend == "torch":
            from mhc_core_torch.training import checkpoint
        else:
            from mhc_core_mlx.training import checkpoint
        return checkpoint

    def resume(self, acc: dict) -> tuple[int, dict]:
        """(first step to run, the run's counters) from the newest valid checkpoint, with the
        trainer and data position restored; (0, acc) when there is none or checkpoints are off."""
        start = 0
        if self.ckpt is not None:
            peek = self.ckpt.store.load_latest(warn=False)  # check before resume() cuts the log back
            if peek.found:
                check_fingerprint(peek, self.fingerprint, self.ckpt.store.directory)
                check_not_past_steps(peek, self.args.steps, self.ckpt.store.directory)
            loaded = self.ckpt.resume()
            if loaded.found:
                check_fingerprint(loaded, self.fingerprint, self.ckpt.store.directory)
                check_not_past_steps(loaded, self.args.steps, self.ckpt.store.directory)
                changed = schedule_changes(loaded, schedule(self.args))
                self.resumes = loaded.meta.get("resumes", []) + [{"step": loaded.step, "changed": changed}]
                self._checkpoint_module().restore(self.base.model, self.base.opt, loaded.tensors, loaded.meta)
                self.data.position = loaded.meta["data_position"]
                acc = {k: loaded.meta["run"][k] for k in ACC_KEYS}
                start = loaded.step
                if self.dist.is_main:
                    print(f"[resume] {os.path.basename(os.path.dirname(self.ckpt.store.directory))}: "
                          f"step {start} of {self.args.steps} ({loaded.path})", flush=True)
                    if changed:
                        print("[resume]   changed since that checkpoint (recorded in config.json 'resumes'): "
                              + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), flush=True)
        if self.dist.world > 1:
            from mhc_core_torch.training.distributed import DataParallelTrainer

            self.trainer = DataParallelTrainer(self.base, self.dist.info)
        return start, acc

    def open_log(self):
        """metrics.jsonl: appended to when checkpointing (cut back to the checkpoint by
        resume), else written fresh."""
        return self.ckpt.open_log() if self.ckpt is not None else open(self.log_path, "w")

    def step_done(self, steps_done: int, acc: dict) -> None:
        """Checkpoint after `steps_done` steps when due (and at the last step)."""
        if self.ckpt is None:
            return

        def capture():
            meta = {"data_position": self.data.position, "run": {k: acc[k] for k in ACC_KEYS},
                    "fingerprint": self.fingerprint, "schedule": schedule(self.args), "resumes": self.resumes}
            return self._checkpoint_module().capture(self.base.model, self.base.opt, meta=meta)

        self.ckpt.step_done(steps_done, capture, final=steps_done == self.args.steps)
