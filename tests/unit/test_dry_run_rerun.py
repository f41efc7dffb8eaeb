"""A second `mmtrain dry-run` into the same --out starts over: resuming would find every run at
its last step and train nothing."""

from mmtrain.jobs.dry_run import RUN_NAMES, clear_previous_runs


def test_a_second_dry_run_clears_checkpoints_and_keeps_the_mlflow_store(tmp_path):
    runs = tmp_path / "runs"
    for name in RUN_NAMES:
        (runs / name / "checkpoint_000").mkdir(parents=True)
    (runs / "mlflow.db").write_text("store")
    (runs / "someone-elses-run").mkdir()

    assert clear_previous_runs(runs) == list(RUN_NAMES)
    assert not any((runs / name).exists() for name in RUN_NAMES)
    assert (runs / "mlflow.db").read_text() == "store" and (runs / "someone-elses-run").is_dir()
    assert clear_previous_runs(runs) == []  # nothing left to clear
    assert clear_previous_runs(tmp_path / "never-made") == []
