"""How close a resumed run's weights must be to the uninterrupted run's.

They are almost always bitwise equal, but the order of fp32 sums inside the CPU kernels is not
promised from one process to the next: a resumed DPO once differed by one ULP (7.5e-9), and a ko-en
GRPO resumed mid-stage once ended 1.6e-5 away (Adam divides by the root of tiny second moments, so a
ULP in an early gradient grows over the following steps). One optimizer step moves every LoRA tensor
of the test jobs by >= 4.5e-4 (test_trainer checks > 5x this bound on each run), so the bound still
fails a lost or repeated step, a wrong RNG stream or a lost optimizer state.
"""

from __future__ import annotations

RESUME_ATOL = 5e-5


def max_change(a: dict, b: dict) -> dict[str, float]:
    """Largest |a - b| of each tensor of two state dicts with the same keys."""
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    return {key: (a[key] - b[key]).abs().max().item() for key in a}


def assert_same_weights(expected: dict, resumed: dict, label: str) -> None:
    change = max_change(expected, resumed)
    worst = max(change, key=change.get)
    assert change[worst] <= RESUME_ATOL, f"{label} {worst}: max |Δ| {change[worst]}"
