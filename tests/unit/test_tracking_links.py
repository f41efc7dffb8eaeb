"""Where a run shows up in the MLflow UI."""

from mmtrain.training.tracking.tracker import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    Tracker,
    default_experiment,
    experiment_link,
)


def test_experiments_per_trainer_tagged_and_linked_to_the_model_training_view(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        default_experiment("", "clip") == "mmtrain-clip"
        and default_experiment("", "vlm", sweep=True) == "mmtrain-vlm-sweeps"
    )
    assert default_experiment("mine", "clip") == "mine"
    tracker = Tracker(uri, "mmtrain-clip", "a-run")
    experiment = tracker.client.get_experiment_by_name("mmtrain-clip")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    # MLflow 3.17's UI opens on GenAI traces whatever the tag says; this link opens the runs table.
    assert (
        experiment_link(uri, "mmtrain-clip")
        == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
    )
    assert experiment_link(uri, "no-such-experiment") == "" and experiment_link("none", "mmtrain-clip") == ""


def test_an_evaluation_figure_is_rendered_once_and_logged_as_png_and_step_image(tmp_path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 2))
    figure.add_subplot().imshow([[0, 1], [1, 0]])
    renders = []
    original = figure.savefig
    figure.savefig = lambda *args, **kwargs: renders.append(1) or original(*args, **kwargs)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "mmtrain-clip", "a-run")
    tracker.log_figure_at_step(figure, "figures/similarity_step000010.png", "val/similarity", 10)
    assert len(renders) == 1
    assert [a.path for a in tracker.client.list_artifacts(tracker.run_id, "figures")] == [
        "figures/similarity_step000010.png"
    ]
    images = [a.path for a in tracker.client.list_artifacts(tracker.run_id, "images")]
    assert any(path.startswith("images/val~similarity+step+10+") for path in images), images
    downloaded = tracker.download_artifacts("figures/similarity_step000010.png", tmp_path / "down")
    assert downloaded.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
