"""Schemathesis driven from Python: one run of every phase against a running Corral, reduced to figures.

Shared by the bounded run in the test suite (tests/security/test_schema_fuzz.py) and the full run
(bench/fuzz_api.py, `make fuzz`), so both count cases and failures the same way.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

PHASES = ("examples", "coverage", "fuzzing", "stateful")

# Every check schemathesis has that needs no threshold; max_response_time needs one and is the load suite's
# business, object_level_authorization needs two identities per run (tests/security/test_authorization.py
# sweeps that systematically instead).
CHECKS = (
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
    "response_headers_conformance", "positive_data_acceptance", "negative_data_rejection", "use_after_free",
    "ensure_resource_availability", "missing_required_header", "ignored_auth", "unsupported_method",
    "allow_header_conformance",
)


# Findings of this check are counted and printed but do not fail a run: it holds the server to "every value the
# schema allows is accepted", which a 400 for a business rule breaks without being a defect (a product name
# already taken, a licence hash that is not the catalogue's, an id of nothing): passing it needs fixtures the
# generator cannot know. Every other check fails the run, negative_data_rejection included ("every value the
# schema forbids is refused").
ADVISORY = {"RejectedPositiveData"}


@dataclass
class FuzzResult:
    label: str
    cases: int = 0
    cases_with_failures: int = 0
    errored_cases: int = 0
    operations_tested: int = 0
    seconds: float = 0.0
    stop_reason: str = ""
    failures: list[str] = field(default_factory=list)  # one line per unique failure: operation, status, title
    advisories: list[str] = field(default_factory=list)  # the same for the ADVISORY checks
    errors: list[str] = field(default_factory=list)  # errors of the run itself (schema, network, ...)
    cases_by_phase: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        phases = ", ".join(f"{name} {count}" for name, count in sorted(self.cases_by_phase.items()))
        return (f"{self.label}: {self.cases} cases ({phases}) on {self.operations_tested} operations in "
                f"{self.seconds:.0f} s; {len(self.failures)} unique failures ({len(self.advisories)} advisory findings) "
                f"in {self.cases_with_failures} cases; "
                f"{self.errored_cases} errored cases, {len(self.errors)} run errors; stopped: {self.stop_reason}")


def fuzz_config(*, token: str, seed: int, max_examples: int, max_steps: int = 20, cache_dir: str | None = None,
                phases: tuple[str, ...] = PHASES) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": seed,
        "workers": 1,
        "cache": {"enabled": False, "directory": cache_dir or tempfile.gettempdir()},
        "generation": {"max-examples": max_examples, "mode": "all", "no-shrink": True},
        "phases": {
            "examples": {"enabled": "examples" in phases},
            "coverage": {"enabled": "coverage" in phases},
            "fuzzing": {"enabled": "fuzzing" in phases},
            "stateful": {"enabled": "stateful" in phases, "max-steps": max_steps},
        },
        "checks": {name: {"enabled": True} for name in CHECKS},
        "auth": {"openapi": {"ApiKeyAuth": {"bearer": token}}},
    })


def run_schema(schema: schemathesis.BaseSchema, *, label: str) -> FuzzResult:
    """Run every phase of ``schema`` and count what happened. Every operation is in, the two that revoke a key
    too: the fuzzer's own key (its id is in every key listing) cannot revoke itself (a 409)."""
    statistic = Statistic()
    result = FuzzResult(label=label)
    started = time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            before = statistic.total_cases
            statistic.on_scenario_finished(event.recorder)
            phase = event.phase.value
            result.cases_by_phase[phase] = result.cases_by_phase.get(phase, 0) + statistic.total_cases - before
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.info.title}: {event.info.message}"[:500])
        elif isinstance(event, events.FatalError):
            result.errors.append(f"fatal: {event.exception!r}"[:500])
        elif isinstance(event, events.EngineFinished):
            result.stop_reason = event.stop_reason.value
            if event.failures:
                statistic.record_run_check_failures(event.failures, label="after_run")
    result.seconds = time.monotonic() - started
    result.cases = statistic.total_cases
    result.cases_with_failures = statistic.cases_with_failures
    result.errored_cases = statistic.errored_cases
    result.operations_tested = len(statistic.tested_operations)
    for label, grouped in statistic.failures.items():
        for group in grouped.values():
            status = group.response.status_code if group.response is not None else None
            for failure in group.failures:
                line = f"{label} -> {status}: {failure.title}: {failure.message}"[:800]
                if group.code_sample:  # the request that failed, as a curl command
                    line += f"\n    {group.code_sample[:1200]}"
                (result.advisories if type(failure).__name__ in ADVISORY else result.failures).append(line)
    return result
