#!/usr/bin/env bash
# CI: requirements.lock still matches pyproject.toml. Compiles the lock again (scripts/lock-requirements.sh,
# starting from the committed lock so that nothing moves by itself) and compares:
#   - any package or version that differs is drift: pyproject.toml changed without the lock, or the lock was
#     edited by hand. Fails, showing the difference and the command that fixes it;
#   - a hash in the lock that PyPI does not list for that release fails too (a file replaced or mistyped);
#   - files PyPI added to a release after the lock was written (a new platform's wheel) only warn: the
#     hashes in the lock still pin what the image installs.
# Needs PyPI (uv asks it for the releases and their hashes).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
fresh="$(mktemp -d)/requirements.lock"
cp requirements.lock "$fresh"
scripts/lock-requirements.sh "$fresh"
python3 - requirements.lock "$fresh" <<'PY'
import re
import sys


def parse(path: str) -> dict[str, set[str]]:
    """name==version -> its hashes, from a requirements file written by uv pip compile --generate-hashes."""
    pins: dict[str, set[str]] = {}
    current = None
    for line in open(path).read().splitlines():
        pin = re.match(r"^([A-Za-z0-9._\[\],-]+==[^\s\\;]+)", line)
        if pin:
            current = pin.group(1).lower()
            pins[current] = set()
        for digest in re.findall(r"--hash=(sha256:[0-9a-f]{64})", line):
            pins[current].add(digest)
    return pins


committed, fresh = parse(sys.argv[1]), parse(sys.argv[2])
problems = [f"  only in the committed lock: {pin}" for pin in sorted(committed.keys() - fresh.keys())]
problems += [f"  missing from the committed lock: {pin}" for pin in sorted(fresh.keys() - committed.keys())]
for pin in sorted(committed.keys() & fresh.keys()):
    if not committed[pin]:
        problems.append(f"  {pin} has no hash")
    unknown = committed[pin] - fresh[pin]
    if unknown:
        problems.append(f"  {pin}: hashes PyPI does not list for it: {', '.join(sorted(unknown))}")
    added = fresh[pin] - committed[pin]
    if added:
        print(f"note: PyPI now lists {len(added)} more file(s) for {pin}; the lock keeps the ones it pinned")
if problems:
    print("requirements.lock has drifted from pyproject.toml:")
    print("\n".join(problems))
    print("Run scripts/lock-requirements.sh and commit requirements.lock.")
    sys.exit(1)
print(f"requirements.lock matches pyproject.toml: {len(committed)} packages, "
      f"{sum(len(hashes) for hashes in committed.values())} hashes")
PY
echo "lock drift check: $((SECONDS - started)) s"
