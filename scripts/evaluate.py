"""Evaluate a checkpoint on lm-evaluation-harness tasks, in our own format (no conversion to Hugging Face).

    python scripts/evaluate.py --checkpoint out/tiny --tasks hellaswag,arc_easy [--device auto] [--dtype auto]
        [--batch-size 8] [--limit N] [--num-fewshot K] [--include-path DIR] [--no-builtin-tasks] [--output FILE]

Registers the "mini-llm" backend (inference/harness.py), runs lm-eval's own evaluator (simple_evaluate) and prints
its results table; --output writes lm-eval's results as JSON. Bad input (a missing checkpoint, an unknown task)
prints one `error: ...` line and exits with code 2. Needs `pip install -r requirements-dev.txt` (lm-eval).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a file, Python puts scripts/ first on sys.path, where this file would shadow the `evaluate` package that
# several lm-eval tasks import. The repository root takes its place.
if sys.path and Path(sys.path[0]).resolve() == REPO_ROOT / "scripts":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from core import cli  # noqa: E402
from core.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The evaluate.py flags."""
    p = cli.ArgumentParser(prog="evaluate.py", description="Run lm-evaluation-harness tasks on a checkpoint.",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a training run's out_dir (latest)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task, group or tag names (globs work)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    p.add_argument("--batch-size", type=int, default=8, help="requests per forward pass")
    p.add_argument("--limit", type=float, help="documents per task (a fraction if < 1); for quick checks only")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (None: each task's own)")
    p.add_argument("--max-gen-toks", type=int, default=256, help="new tokens at most, unless a task sets its own")
    p.add_argument("--include-path", help="directory of extra task YAML files (lm-eval's --include_path)")
    p.add_argument("--no-builtin-tasks", action="store_true",
                   help="look for tasks under --include-path only (skips indexing lm-eval's ~15k task files)")
    p.add_argument("--output", help="write lm-eval's results (JSON) to this file")
    p.add_argument("--bootstrap-iters", type=int, default=100000, help="resamples for stderr of non-mean metrics")
    return p


def _task_manager(args: argparse.Namespace):
    """lm-eval's TaskManager over the built-in tasks and/or --include-path; unknown task names are a UserError."""
    from lm_eval.tasks import TaskManager

    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise UserError(f"--include-path {args.include_path} is not a directory")
    if args.no_builtin_tasks and args.include_path is None:
        raise UserError("--no-builtin-tasks needs --include-path (there would be no task at all)")
    manager = TaskManager(include_path=args.include_path, include_defaults=not args.no_builtin_tasks)
    tasks = [t for t in args.tasks.split(",") if t]
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing or not tasks:
        where = f"under {args.include_path}" if args.no_builtin_tasks else "in lm-eval or --include-path"
        raise UserError(f"unknown task(s) {missing or args.tasks!r}: none found {where} (see `lm-eval ls tasks`)")
    return manager, tasks


def run(args: argparse.Namespace) -> dict:
    """Build the backend, run simple_evaluate, print lm-eval's table; return lm-eval's results."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import make_table

    from inference.harness import MiniLLM

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be > 0, got {args.limit}")
    manager, tasks = _task_manager(args)
    lm = MiniLLM(checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                 max_gen_toks=args.max_gen_toks)
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                              num_fewshot=args.num_fewshot, bootstrap_iters=args.bootstrap_iters, log_samples=False)
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"results written to {out}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run; a UserError is one `error:` line and exit code 2 (core.cli)."""
    args = build_parser().parse_args(argv)

    def start() -> None:
        run(args)

    return cli.run(start)


if __name__ == "__main__":
    cli.quiet_interrupts()
    sys.exit(main())
