"""The full schema fuzz (`make fuzz`): schemathesis, every phase, a fixed seed, against uvicorn + PostgreSQL +
Redis under production settings, with the keys of two tenants in different affiliate groups.

Each tenant's run uses its own all-scope key while the other tenant's objects exist, so a generated id can
land on them. Prints the cases per phase and every unique failure; exits 1 when there is any failure, or when
fewer cases than --min-cases were generated. Figures are in docs/reliability.md.

    .venv/bin/python bench/fuzz_api.py [--max-examples 60] [--seed 20261128] [--min-cases 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import production_env, recreate_database, spawn, stop, wait_until_up  # noqa: E402

DATABASE = "corral_sec_fuzz"
PORT = 8791


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=60, help="per operation and phase (default 60)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--min-cases", type=int, default=5000, help="fail when fewer cases ran in total")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    production_env(database=DATABASE, redis_db=12, broker_db=13)
    # DATABASE_URL, REDIS_URL and CELERY_BROKER_URL in the environment win (a shared machine: one's own
    # databases); the database is dropped and created again.
    recreate_database(urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from tests.security.fuzzing import fuzz_config, run_schema
    from tests.security.world import build_tenant

    import schemathesis

    tenants = [build_tenant("Alpha"), build_tenant("Bravo")]
    server = spawn([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(PORT),
                    "--log-level", "warning", "--no-access-log"], dict(os.environ))
    results = []
    try:
        wait_until_up(PORT, "/healthz")
        for tenant in tenants:
            config = fuzz_config(token=tenant.admin_key, seed=args.seed, max_examples=args.max_examples)
            schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{PORT}/api/v1/schema/", config=config)
            result = run_schema(schema, label=f"tenant {tenant.name}")
            print(result.summary(), flush=True)
            for line in result.failures + result.errors + [f"(advisory) {a}" for a in result.advisories]:
                print("  ", line, flush=True)
            results.append(result)
    finally:
        stop(server)
    total = sum(r.cases for r in results)
    failures = sum(len(r.failures) + len(r.errors) for r in results)
    print(f"total: {total} cases, {failures} unique failures and errors "
          f"({time.strftime('%Y-%m-%d')}, seed {args.seed}, max-examples {args.max_examples})")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    if total < args.min_cases:
        print(f"fewer than {args.min_cases} cases: raise --max-examples")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
