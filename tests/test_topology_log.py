"""topology.jsonl: appended per update, read back as events, cut back to the checkpoint's step on resume."""

import json

import torch

from sparsetrain.experiment.rundir import RunDir
from sparsetrain.experiment.topology_log import append_event, read_events, truncate_events
from sparsetrain.topology import topology_event


def _event(step, active):
    before = {"w": torch.tensor([True, True, False, False])}
    after = {"w": torch.arange(4) < active}
    return topology_event(step, before, after, {"w": before["w"] | after["w"]}, drop_fraction=0.5)


def test_append_read_truncate(tmp_path):
    path = RunDir(tmp_path).topology_file
    events = [_event(100, 1), _event(200, 2), _event(300, 3)]
    for event in events:
        append_event(path, event)
    assert read_events(path) == events
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [100, 200, 300]

    with open(path, "a") as handle:  # a crash mid-write leaves a torn line
        handle.write('{"step": 400, "lay')
    assert read_events(path) == events
    assert truncate_events(path, 200) == 2
    assert read_events(path) == events[:2]
    assert path.read_text().endswith("\n") and "400" not in path.read_text()
    append_event(path, events[2])  # the replayed update is logged once
    assert read_events(path) == events


def test_missing_file_has_no_events(tmp_path):
    assert read_events(tmp_path / "topology.jsonl") == []
    assert truncate_events(tmp_path / "topology.jsonl", 10) == 0
