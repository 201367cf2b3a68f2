"""How long `check` and `plan` take for a config with a 100,000-prefix set.

Goal (issue 2): plan in well under two seconds. Measures the in-process pipeline stages
and the whole CLI as a user runs it (interpreter start-up included).
Run: python3 benchmarks/bench_plan.py [--write]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIG_SET_CONFIG as CONFIG  # noqa: E402
from common import compile_bytecode, publish, random_prefixes, summary  # noqa: E402

PREFIXES = 100_000
RUNS = 5



def timed(func) -> list[float]:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    from markroute.compile import compile_plan
    from markroute.config import load_model
    from markroute.plan import nfttext

    compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "big.txt").write_text("\n".join(random_prefixes(PREFIXES)) + "\n")
        config = Path(tmp) / "markroute.yaml"
        config.write_text(CONFIG)
        model, _ = load_model(str(config))
        assert model is not None
        rows = [
            ("load + validate (check)", timed(lambda: load_model(str(config)))),
            ("compile to Plan", timed(lambda: compile_plan(model))),
            # a fresh plan each time: a plan formats its set elements as text once, on first use
            ("compile + render nft text", timed(lambda: nfttext.render(compile_plan(model).nft_document()))),
        ]
        for label, args in (("CLI `markroute check`", ["check"]), ("CLI `markroute plan --format nft`", ["plan", "--format", "nft"])):
            rows.append((label, timed(lambda a=args: subprocess.run(
                [sys.executable, "-m", "markroute", *a, "-c", str(config)], check=True, capture_output=True))))
    body = f"Config: 2 uplinks, a `sets:` file of {PREFIXES:,} random IPv4 prefixes used by one policy, a balance group.\n\n"
    body += "| stage | time |\n|---|---|\n" + "".join(f"| {label} | {summary(s)} |\n" for label, s in rows)
    publish("Plan and check with 100,000 prefixes", body)


if __name__ == "__main__":
    main()
