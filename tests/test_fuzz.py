"""The fuzz bench, small: a few hundred requests per service through its real port (bench/fuzz_services.py has the
10,000-request run). Nothing a client sends ends as INTERNAL or UNKNOWN, no response text holds a traceback, a
heap address or a long echo of the request, the service logs no traceback, and afterwards it answers a valid
request and health says SERVING."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from fuzz_services import SERVICES, run

EXPECTED_AFTER = {("reward-aesthetic", "ScoreMap"): "FAILED_PRECONDITION"}  # maps are the coherence model's


@pytest.mark.parametrize("service", list(SERVICES))
def test_a_small_fuzz_answers_every_request_with_a_deliberate_status(tmp_path, service):
    n = 60 if service == "generator" else 150  # the generator's valid requests sample 20 steps: slower
    result = run(tmp_path, n, seed=7, names=[service])[service]
    assert result["requests"] == n
    assert not {"INTERNAL", "UNKNOWN"} & set(result["codes"]), result["codes"]
    assert result["leak_count"] == 0, result["leaks"]
    assert result["log_tracebacks"] == 0
    assert result["health_after"] == "SERVING"
    for method, code in result["valid_after"].items():
        assert code == EXPECTED_AFTER.get((service, method), "OK"), (method, code)
    assert result["codes"].get("INVALID_ARGUMENT", 0) > n // 3  # most fuzzed requests are refused by name
