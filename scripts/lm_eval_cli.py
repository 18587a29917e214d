"""lm-eval's own command line, with our "mini-llm" backend registered: every `lm_eval` flag and subcommand works.

    python scripts/lm_eval_cli.py --model mini-llm --model_args checkpoint=out/tiny,dtype=fp32 \
        --tasks hellaswag --device cpu --batch_size 8 [--include_path DIR] [--limit N] [--output_path DIR] ...

Why a launcher rather than the installed `lm_eval` command: lm-eval (0.4.13) only knows the models listed in its
own `lm_eval.models.MODEL_MAPPING` plus classes registered with `@register_model` in the same process. It reads no
entry points and has no plugin namespace (EleutherAI/lm-evaluation-harness#3282, #1621; `--include_package` is
an unmerged pull request, #3672), and `--include_path` only loads task YAML. Making the stock command see our
class would need code that runs at every interpreter start (a .pth file in site-packages) and our top-level
folders installed as packages, which this project avoids on purpose. This file imports the backend, which
registers it, then hands the command line to lm-eval's own entry point (adding `--device auto` when there is
no --device: lm-eval's own default is cuda:0).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# As in evaluate.py: scripts/ must not come first on sys.path (evaluate.py would shadow the `evaluate` package).
if sys.path and Path(sys.path[0]).resolve() == REPO_ROOT / "scripts":
    sys.path[0] = str(REPO_ROOT)
elif str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from core import cli  # noqa: E402


def start() -> None:
    """Register mini-llm, then run lm-eval's CLI on sys.argv."""
    from lm_eval.__main__ import cli_evaluate

    import inference.harness  # noqa: F401  (registers the "mini-llm" model)

    if "--device" not in sys.argv and not any(a.startswith("--device=") for a in sys.argv):
        # lm-eval's default is cuda:0, which its hf backend quietly replaces by the CPU when there is no GPU;
        # ours would refuse it, so without --device the backend chooses (cuda, else mps, else cpu).
        sys.argv += ["--device", "auto"]
    cli_evaluate()


if __name__ == "__main__":
    cli.quiet_interrupts()
    sys.exit(cli.run(start))  # a UserError of ours (a missing checkpoint, ...) is one `error:` line, exit code 2
