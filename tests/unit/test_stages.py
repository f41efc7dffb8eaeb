"""The stages without Ray: a real shard through read -> decode/augment -> tokenize keeps the contract."""

import pyarrow.fs as pafs

from mmtrain.jobs.cli import main
from mmtrain.pipelines import contract
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.datasource import RAW_SCHEMA
from mmtrain.pipelines.stages import Tokenize, decode_and_augment
from mmtrain.pipelines.tar_samples import iter_raw_samples, to_record


def test_stages_produce_the_contract(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--train", "12", "--val", "4", "--image-size", "40"]) == 0
    columns = {name: [] for name in RAW_SCHEMA.names}
    with pafs.LocalFileSystem().open_input_stream(str(tmp_path / "train-00000.tar")) as stream:
        for raw in iter_raw_samples(stream):
            record = to_record(raw)
            for name, value in zip(
                RAW_SCHEMA.names,
                (
                    record.key,
                    record.image_bytes,
                    list(record.more_images),
                    record.caption,
                    record.label,
                    record.conversation,
                    "",
                    7 + len(columns["key"]),
                    0,
                    0,
                    record.index,
                    record.offset,
                ),
            ):
                columns[name].append(value)
    columns["bad_reason"][3] = "missing_caption"  # a row the reader marked bad is dropped here
    for train in (True, False):
        batch = decode_and_augment(
            columns, augment=AugmentConfig(image_size=32), train=train, max_pixels=10**6, keep_conversation=True
        )
        batch = Tokenize(str(tmp_path / "tokenizer.json"), context_length=20)(batch)
        contract.check_batch(batch, image_size=32, context_length=20)
        assert len(batch[contract.KEY]) == 11 and "caption" not in batch
        assert contract.CONVERSATION in batch


def test_augmentation_is_drawn_from_the_rows_seeds(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--train", "8", "--val", "4", "--image-size", "48"]) == 0
    with pafs.LocalFileSystem().open_input_stream(str(tmp_path / "train-00000.tar")) as stream:
        records = [to_record(raw) for raw in iter_raw_samples(stream)]

    def augmented(first_seed, rows=slice(None)):
        chosen = records[rows]
        columns = {
            "key": [r.key for r in chosen],
            "image_bytes": [r.image_bytes for r in chosen],
            "label": [r.label for r in chosen],
            "caption": [r.caption for r in chosen],
            "bad_reason": [""] * len(chosen),
            "epoch": [0] * len(chosen),
            "shard": [0] * len(chosen),
            "index": [r.index for r in chosen],
            "offset": [r.offset for r in chosen],
            "augment_seed": [first_seed + r.index if first_seed >= 0 else -1 for r in chosen],
        }
        return decode_and_augment(
            columns, augment=AugmentConfig(image_size=24), train=True, max_pixels=10**6, keep_conversation=False
        )[contract.IMAGE]

    assert (augmented(100) == augmented(100)).all()  # same seeds, same crops and flips
    assert (augmented(100) != augmented(200)).any()
    assert (augmented(-1) != augmented(-1)).any()  # unseeded: fresh randomness each time
    # a sample's crop is its own: the same in any block (a resumed run regroups the rows)
    whole = augmented(100)
    assert (augmented(100, slice(3, None)) == whole[3:]).all()
    assert (augmented(100, slice(2, 5)) == whole[2:5]).all()


def test_a_conversation_the_lms_chat_template_refuses_is_counted_not_fatal(tmp_path):
    """A template that raises (roles out of the order it requires) costs that sample, not the run."""
    import numpy as np
    from transformers import AutoTokenizer

    from mmtrain.pipelines import bad_samples
    from mmtrain.pipelines.position import BadSample, pack
    from mmtrain.pipelines.stages import TokenizeConversations
    from mmtrain.training.models.language_model import make_tiny_lm

    lm = make_tiny_lm(tmp_path / "lm", ["what colour?", "red"] * 20, vocab_size=280, hidden_size=16, layers=1, heads=2)
    tokenizer = AutoTokenizer.from_pretrained(lm)
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('the first turn must be "
        "the user') }}{% endif %}" + tokenizer.chat_template
    )
    tokenizer.save_pretrained(lm)

    class Ledger:  # stands in for the SampleLedger actor
        def __init__(self):
            self.calls, self.actors = [], 0
            self.record = self
            self.actor_started = type("Method", (), {"remote": lambda _: setattr(self, "actors", self.actors + 1)})()

        def remote(self, good, bad):
            self.calls.append((good, bad))

    ledger = Ledger()
    stage = TokenizeConversations(str(lm), num_image_tokens=2, max_length=32, captions=False, ledger=ledger)
    good = '[{"from": "human", "value": "<image>\\nwhat colour?"}, {"from": "gpt", "value": "red"}]'
    refused = '[{"from": "gpt", "value": "<image> red"}, {"from": "human", "value": "what colour?"}]'
    out = stage(
        {
            contract.KEY: np.array(["a", "b"]),
            "caption": np.array(["x", "y"]),
            contract.CONVERSATION: np.array([good, refused]),
            contract.IMAGE: np.zeros((2, 4, 4, 3), np.uint8),
            contract.LABEL: np.array([0, 1]),
            contract.POSITION: pack(3, 1, [10, 11]),
        }
    )
    assert list(out[contract.KEY]) == ["a"]
    assert ledger.calls == [(-1, [BadSample(3, 1, 11, -1, bad_samples.BAD_CONVERSATION)])]
    assert ledger.actors == 1  # the pool's actor counted once, at construction
