"""Where a run shows up in the MLflow UI."""

from training.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, Tracker, default_experiment, experiment_link


def test_experiments_per_trainer_tagged_and_linked_to_the_model_training_view(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert default_experiment("", "clip") == "mmtrain-clip" and default_experiment("", "vlm", sweep=True) == "mmtrain-vlm-sweeps"
    assert default_experiment("mine", "clip") == "mine"
    tracker = Tracker(uri, "mmtrain-clip", "a-run")
    experiment = tracker.client.get_experiment_by_name("mmtrain-clip")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    # MLflow 3.17's UI opens on GenAI traces whatever the tag says; this link opens the runs table.
    assert experiment_link(uri, "mmtrain-clip") == \
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    assert experiment_link(uri, "no-such-experiment") == "" and experiment_link("none", "mmtrain-clip") == ""
