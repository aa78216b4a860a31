"""The CLI prints what deployments carry as plain text: brackets in it are never markup."""

from __future__ import annotations

import pytest

from flotilla.cli.deployments import print_view

# Text a request controls (a region pin, an image name, a job's output) with Rich markup in it.
TRICKY = "x[/] [bold]y[/bold]"


def test_status_why_prints_reasons_and_outputs_with_brackets_as_they_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = {
        "id": "d-1",
        "status": "CREATE_FAILED",
        "status_reason": f"No site meets the deployment requirements: a: {TRICKY}",
        "outputs": {"log": TRICKY},
        "attempts": [
            {
                "number": 1,
                "site": "alpha",
                "outcome": "failed",
                "cause_code": "job_failed",
                "cause": TRICKY,
                "placement": {
                    "candidates": [
                        {"site": "alpha", "score": 7.5, "explanation": ["SLA preference 1.00 x4"]}
                    ],
                    "more_candidates": 2,
                    "rejected": [{"site": "beta", "reasons": [f"not in region '{TRICKY}'"]}],
                },
            }
        ],
    }

    print_view(view, why=True)
    printed = capsys.readouterr().out

    assert f"reason: No site meets the deployment requirements: a: {TRICKY}" in printed
    assert f"attempt 1 at alpha: failed job_failed: {TRICKY}" in printed
    assert "    alpha: 7.5 (SLA preference 1.00 x4)" in printed
    assert "    ... 2 more candidates" in printed
    assert f"    beta: rejected: not in region '{TRICKY}'" in printed
    assert f'output log = "{TRICKY}"' in printed
