"""The console: the training progress line (step/total, percentage, loss, samples/s and an ETA from
the pace so far), and the Ray notices the driver does not print."""

import io

from mmtrain.training.tracking.progress import Progress, duration


def test_the_line_shows_step_of_total_and_an_eta_from_the_pace_since_the_first_line():
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    first = progress.line(
        100,
        1500,
        {
            "train/loss": 3.14159,
            "train/samples_per_s": 1234.5,
            "train/lr": 0.001,
            "step": 100,
            "epoch": 0,
            "train/data_wait_fraction": 0.5,
        },
    )
    assert first == (
        "[mmtrain] step 100/1500 (7%) loss 3.142, 1,234 samples/s; data_wait_fraction=0.5, epoch=0, lr=0.001"
    )  # no pace yet; in the order they read
    now[0] += 60.0  # 600 steps a minute
    line = progress.line(700, 1500, {"train/loss": 2.0, "train/samples_per_s": 1000.0, "val/zero_shot_top1": 0.5})
    assert line == (
        "[mmtrain] step 700/1500 (47%) loss 2, 1,000 samples/s, ETA 1m20s; val/zero_shot_top1=0.5"
    )  # the evaluation keeps its prefix: it is not the training's
    assert progress.line(1500, 1500, {"train/loss": 1.0}) == "[mmtrain] step 1500/1500 (100%) loss 1"


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]


def test_ray_notices_are_dropped_by_rays_own_log_filter_and_errors_are_not():
    """The pattern mmtrain gives RAY_DEDUP_LOGS_SKIP_REGEX, run through Ray's LogDeduplicator (the
    driver's filter of worker and raylet lines), on lines Ray 2.60 printed in a dry run."""
    from ray._private.ray_logging import LogDeduplicator

    from mmtrain.jobs.cli import RAY_NOTICES

    notices = [
        "[2026-12-02 01:50:18,968 E 6397 6466] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
        "and ID: '87c7' has constructor arguments in the object store and max_restarts > 0. If the arguments in "
        "the object store go out of scope or are lost, the actor restart will fail.",
        "[2026-12-02 01:50:29,333 E 6756 6784] core_worker.cc:2465: Actor with class name: 'MapWorker(ReadReadShards"
        "->MapBatches(decode_and_augment)->MapBatches(Tokenize))' and ID: '49a2' has constructor arguments in the "
        "object store and max_restarts > 0.",
        "WARNING: 8 PYTHON worker processes have been started on node: 26a9 with address: 192.0.2.2, which is 4x "
        "the maximum expected startup concurrency (2).",
    ]
    kept = [
        "[mmtrain] step 5/24 (21%) loss 4.145, 37 samples/s",
        "[2026-12-02 01:50:18,968 E 6397 6466] core_worker.cc:2465: Actor with class name: 'SampleLedger' and "
        "ID: '1' has constructor arguments in the object store and max_restarts > 0.",  # not one of Ray's own
        "[2026-12-02 01:50:18,968 E 6397 6466] core_worker.cc:1201: Unhandled error (suppress with "
        "'RAY_IGNORE_UNHANDLED_ERRORS=1'): ray::RayTrainWorker.run() (pid=6538)",
    ]
    deduplicator = LogDeduplicator(agg_window_s=0, allow_re=None, skip_re=RAY_NOTICES)
    out = deduplicator.deduplicate({"ip": "1", "pid": 2, "lines": notices + kept})
    assert [line for batch in out for line in batch["lines"]] == kept


def test_a_log_file_gets_workers_lines_without_colour_codes(monkeypatch, capsys):
    """Ray wraps each forwarded worker line's prefix in colour codes, terminal or not; the command
    turns them off when its output is not a terminal (pytest's captured stdout is not one)."""
    from ray._private.worker import print_worker_logs

    from mmtrain.jobs.cli import main

    monkeypatch.setenv("RAY_COLOR_PREFIX", "unset by the test")
    monkeypatch.delenv("RAY_COLOR_PREFIX")  # restored (to unset) after the test
    assert main(["config", "show", "clip/tiny"]) == 0
    printed = io.StringIO()
    print_worker_logs(
        {
            "pid": 7,
            "ip": "1",
            "localhost": "1",
            "actor_name": "RayTrainWorker",
            "lines": ["[mmtrain] step 5/24 (21%) loss 4.149"],
        },
        printed,
    )
    assert printed.getvalue() == "(RayTrainWorker pid=7) [mmtrain] step 5/24 (21%) loss 4.149\n"
