"""Write tiny_suite.jsonl: held-out prompts of the embedded models' synthetic suite (recipes/tasks.py).

    python clients/recipes/lm_eval_tasks/make_tiny_suite.py            # 4 per task x 9 tasks = 36 prompts
    python clients/recipes/lm_eval_tasks/make_tiny_suite.py --per-task 10

Each line is {"task", "prompt", "answer"}; the lm-eval task tiny_suite.yaml reads it.
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for `recipes`

from recipes.tasks import heldout_set  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--per-task", type=int, default=4)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", type=Path, default=HERE / "tiny_suite.jsonl")
args = parser.parse_args()

examples = heldout_set(args.per_task, seed=args.seed)
with args.out.open("w") as f:
    for ex in examples:
        f.write(json.dumps({"task": ex.task, "prompt": ex.prompt, "answer": ex.answer}) + "\n")
print(f"wrote {len(examples)} prompts to {args.out}")
