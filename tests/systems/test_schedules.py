"""Loss-weight schedules."""
import pytest

from systems.schedules import scheduled


def test_constants_ramps_and_products_of_schedules():
    assert scheduled(0.3, 7) == 0.3
    assert scheduled({"start": 1.0, "end": 0.0, "end_step": 10}, 5) == 0.5
    assert scheduled({"start": 1.0, "end": 0.01, "start_step": 10, "end_step": 30, "kind": "exp"}, 20) == pytest.approx(0.1)
    warm_then_decay = [{"start": 0.0, "end": 5e-4, "end_step": 100},
                       {"start": 1.0, "end": 0.1, "start_step": 100, "end_step": 300, "kind": "exp"}]
    values = [scheduled(warm_then_decay, s) for s in (0, 50, 100, 200, 300, 1000)]
    assert values == pytest.approx([0.0, 2.5e-4, 5e-4, 5e-4 * 0.1**0.5, 5e-5, 5e-5])
