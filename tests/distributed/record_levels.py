"""Run the ``carelab`` CLI with every GRPO accuracy-reward call recorded: step, rank, row ids and levels.

Used by tests/distributed/test_launch.py under ``torchrun`` and as one process, to compare what the curriculum
actually fed the trainer step by step (not only its planned log). Usage: ``record_levels.py LOG_PREFIX ARGS…``.
"""

from __future__ import annotations

import functools
import json
import os
import sys


def main() -> None:
    """Wrap the first reward function with a recorder, then hand the remaining arguments to the CLI."""
    from carelab.care import rewards
    from carelab.cli import app

    prefix, args = sys.argv[1], sys.argv[2:]
    build = rewards.reward_functions

    def recording_reward_functions(*a, **k):
        funcs = build(*a, **k)

        @functools.wraps(funcs[0])
        def recorded(*fa, **kw):
            with open(f"{prefix}.rank{os.environ.get('RANK', '0')}.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": kw["trainer_state"].global_step, "ids": list(kw["id"]),
                                     "levels": list(kw["level"])}) + "\n")
            return funcs[0](*fa, **kw)

        return [recorded, *funcs[1:]]

    rewards.reward_functions = recording_reward_functions
    app(args, prog_name="carelab")


if __name__ == "__main__":
    main()
