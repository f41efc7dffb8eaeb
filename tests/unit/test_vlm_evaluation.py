"""VLM evaluation: conversations in either key style, with a system turn first, are asked their
first question and scored against the answer after it; loss and perplexity are per token."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from mmtrain.pipelines import contract
from mmtrain.pipelines.conversations import ConversationEncoder, first_exchange
from mmtrain.training.config.schema import ModuleLearningRates
from mmtrain.training.tasks.vlm import VlmTask
from tests.unit.test_vlm import _cfg, make_parts

STYLES = {
    "llava": [{"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}],
    "system_first": [
        {"from": "system", "value": "answer in one word."},
        {"from": "human", "value": "<image>\nwhat colour?"},
        {"from": "gpt", "value": "blue"},
    ],
    "role_content": [
        {"role": "user", "content": "<image>\nwhat shape?"},
        {"role": "assistant", "content": "a red circle beside a blue square on a white ground"},
    ],
}


def test_the_first_exchange_is_the_first_user_message_and_the_reply_after_it():
    exchange = first_exchange(STYLES["system_first"])
    assert (exchange.question, exchange.answer) == ("<image>\nwhat colour?", "blue")
    assert [m["role"] for m in exchange.prompt] == ["system", "user"]
    assert first_exchange(STYLES["role_content"]).answer.startswith("a red circle")
    assert first_exchange([{"from": "human", "value": "<image> hi"}]) is None
    assert first_exchange([{"from": "gpt", "value": "x"}, {"from": "human", "value": "<image>"}]) is None


@pytest.fixture(scope="module")
def task_and_model(tmp_path_factory):
    root, lm = make_parts(tmp_path_factory.mktemp("vlm_eval"))
    cfg = dataclasses.replace(
        _cfg(root, lm),
        stage="conversations",
        max_length=128,
        lrs=ModuleLearningRates(vision=0, projector=1e-3, lm=1e-3),
    )
    torch.manual_seed(0)
    task = VlmTask(cfg)
    return task, task.build_model()


def _numpy_batch(task, conversations):
    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=128)
    rows = [encoder.pad(encoder.encode(c)) for c in conversations]
    rng = np.random.default_rng(0)
    return {
        contract.IMAGE: rng.integers(0, 255, (len(rows), 1, 16, 16, 3), dtype=np.uint8),
        contract.NUM_IMAGES: np.ones(len(rows), np.int32),
        contract.INPUT_IDS: np.array([r[0] for r in rows], np.int32),
        contract.ATTENTION_MASK: np.array([r[1] for r in rows], np.uint8),
        contract.LABELS: np.array([r[2] for r in rows], np.int32),
        contract.KEY: np.array([f"k{i}" for i in range(len(rows))]),
        contract.CONVERSATION: np.array([json.dumps(c) for c in conversations]),
    }


def test_every_conversation_style_is_asked_its_first_question(task_and_model):
    task, model = task_and_model
    batches = [
        _numpy_batch(task, [STYLES["llava"], STYLES["system_first"]]),
        _numpy_batch(task, [STYLES["role_content"]]),
    ]
    evaluation = task.evaluate(model, batches, torch.device("cpu"))
    metrics = evaluation.metrics
    assert metrics["questions"] == 3
    assert [row["question"] for row in evaluation.table] == [
        "<image>\nwhat colour?",
        "<image>\nwhat colour?",
        "<image>\nwhat shape?",
    ]
    assert [row["expected"] for row in evaluation.table][:2] == ["red", "blue"]

    # per token: the token-weighted mean over both batches, not the mean of the two batch means
    prepared = [task.prepare_batch(b, torch.device("cpu")) for b in batches]
    sums = [float(task.loss_sum(model, p)[0]) for p in prepared]
    tokens = [int(p[contract.SUPERVISED_TOKENS]) for p in prepared]
    mean_of_means = (sums[0] / tokens[0] + sums[1] / tokens[1]) / 2
    assert abs(mean_of_means - sum(sums) / sum(tokens)) > 1e-3  # the batches' lengths differ enough to tell
    assert metrics["loss"] == pytest.approx(sum(sums) / sum(tokens), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]), rel=1e-5)


def test_the_questions_asked_are_the_first_of_each_shard_on_any_split(task_and_model):
    """EvalAssets.questions_per_shard fixes which samples are asked (the first N in shard order),
    however the eval rows fall to ranks: two ranks' shares ask exactly what one process asks."""
    from mmtrain.pipelines.position import pack
    from mmtrain.training.tasks.protocol import EvalAssets

    task, model = task_and_model
    conversations = [STYLES["llava"]] * 5
    batch = _numpy_batch(task, conversations)
    batch[contract.POSITION] = pack(np.zeros(5, np.int64), np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1]))
    assets = EvalAssets(questions_per_shard=(2, 1))  # shard 0's first 2, shard 1's first 1
    whole = task.evaluate(model, [batch], torch.device("cpu"), assets).metrics
    assert whole["questions"] == 3
    halves = [{name: values[rows] for name, values in batch.items()} for rows in (slice(0, 2), slice(2, 5))]
    asked = [task.evaluate(model, [half], torch.device("cpu"), assets).metrics["questions"] for half in halves]
    assert asked == [2, 1]


def test_multi_image_and_text_only_rows_are_asked_with_their_own_images(task_and_model):
    """Rows with two images, none, one, and a second image placed after the first reply: each is
    asked with the images its prompt shows, as generating that row alone with them would answer."""
    task, model = task_and_model
    rows = [
        ([{"from": "human", "value": "<image>\n<image>\nsame colour?"}, {"from": "gpt", "value": "no"}], 2),
        ([{"from": "human", "value": "what is two and two?"}, {"from": "gpt", "value": "four"}], 0),
        (STYLES["llava"], 1),
        (
            [
                {"from": "human", "value": "<image>\nwhat colour?"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "<image>\nand this one?"},
                {"from": "gpt", "value": "blue"},
            ],
            2,
        ),
    ]
    encoder = ConversationEncoder(task.tokenizer, task.tower.num_patches, 128)
    padded = [encoder.pad(encoder.encode(turns, images=n)) for turns, n in rows]
    rng = np.random.default_rng(5)
    batch = {
        contract.IMAGE: rng.integers(0, 255, (len(rows), 2, 16, 16, 3), dtype=np.uint8),
        contract.NUM_IMAGES: np.array([n for _, n in rows], np.int32),
        contract.INPUT_IDS: np.array([r[0] for r in padded], np.int32),
        contract.ATTENTION_MASK: np.array([r[1] for r in padded], np.uint8),
        contract.LABELS: np.array([r[2] for r in padded], np.int32),
        contract.KEY: np.array([f"k{i}" for i in range(len(rows))]),
        contract.CONVERSATION: np.array([json.dumps(turns) for turns, _ in rows]),
    }
    evaluation = task.evaluate(model, [batch], torch.device("cpu"))
    assert evaluation.metrics["questions"] == 4
    for row, ((turns, _), shown) in enumerate(zip(rows, (2, 0, 1, 1))):
        pixels = task.normalize(torch.from_numpy(batch[contract.IMAGE][row, :shown]), torch.device("cpu"))
        prompt = encoder.encode_prompt(first_exchange(turns).prompt)
        alone = model.generate(pixels, [prompt], task.cfg.eval.max_new_tokens, encoder.stop_ids, encoder.pad_id)[0]
        assert evaluation.table[row]["generated"] == task.tokenizer.decode(alone, skip_special_tokens=True)
