"""The training progress line: step/total, percentage, loss, samples/s and an ETA from the pace so far."""

from training.progress import Progress, duration


def test_the_line_shows_step_of_total_and_an_eta_from_the_pace_since_the_first_line():
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    first = progress.line(100, 1500, {"loss": 3.14159, "samples_per_s": 1234.5, "lr": 0.001, "step": 100})
    assert first == "[mmtrain] step 100/1500 (7%) loss 3.142, 1,234 samples/s; lr=0.001"  # no pace yet
    now[0] += 60.0  # 600 steps a minute
    line = progress.line(700, 1500, {"loss": 2.0, "samples_per_s": 1000.0, "eval/zero_shot_top1": 0.5})
    assert line == ("[mmtrain] step 700/1500 (47%) loss 2, 1,000 samples/s, ETA 1m20s; "
                    "eval/zero_shot_top1=0.5")
    assert progress.line(1500, 1500, {"loss": 1.0}) == "[mmtrain] step 1500/1500 (100%) loss 1"


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]
