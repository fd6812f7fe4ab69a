"""RearView's FIFO session queue expressed as index ranges (pipeline/detectors/rearview/windows.py)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.detectors.rearview.windows import (
    eviction_count, home_window, window_bounds, window_count, window_membership,
)


def _replay_queue(num_flows: int, queue_size: int, evict: int):
    """Literal FIFO replay: returns the graphs built and the window each flow leaves in."""
    queue, graphs, home = [], [], {}
    for flow in range(num_flows):
        queue.append(flow)
        if len(queue) == queue_size:
            graphs.append(list(queue))
            for old in queue[:evict]:
                home[old] = len(graphs) - 1
            queue = queue[evict:]
    if queue:
        graphs.append(list(queue))
        for old in queue:
            home[old] = len(graphs) - 1
    return graphs, home


@pytest.mark.parametrize("queue_size,evict", [(10, 8), (10, 10), (10, 1), (3, 2), (2000, 1600)])
@pytest.mark.parametrize("num_flows", [0, 1, 9, 10, 11, 18, 19, 20, 37, 4100])
def test_index_windows_equal_a_literal_fifo_replay(num_flows, queue_size, evict):
    graphs, home = _replay_queue(num_flows, queue_size, evict)
    bounds = window_bounds(num_flows, queue_size, evict)
    assert [list(range(start, stop)) for start, stop in bounds] == graphs
    assert window_count(num_flows, queue_size, evict) == len(graphs)
    assert home_window(num_flows, queue_size, evict).tolist() == [home[i] for i in range(num_flows)]
    flow_index, window_id = window_membership(num_flows, queue_size, evict)
    expected = sorted((flow, window) for window, graph in enumerate(graphs) for flow in graph)
    assert sorted(zip(flow_index.tolist(), window_id.tolist())) == expected


def test_default_queue_evicts_four_fifths_and_keeps_400_flows_of_context():
    assert eviction_count(2000, 0.8) == 1600
    bounds = window_bounds(5000, 2000, 1600)
    assert bounds.tolist() == [[0, 2000], [1600, 3600], [3200, 5000]]


def test_every_flow_has_exactly_one_home_window_containing_it():
    flow_index, window_id = window_membership(4321, 2000, 1600)
    home = home_window(4321, 2000, 1600)
    homes = {(f, w) for f, w in zip(flow_index.tolist(), window_id.tolist()) if home[f] == w}
    assert sorted(f for f, _ in homes) == list(range(4321))


@pytest.mark.parametrize("queue_size,fraction", [(0, 0.8), (10, 0.0), (10, 1.5)])
def test_invalid_queue_settings_are_rejected(queue_size, fraction):
    with pytest.raises(ValueError):
        eviction_count(queue_size, fraction)
