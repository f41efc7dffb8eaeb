"""Loss masks across the chat-template families, with each family's Jinja template as published in
its tokenizer config, on a small byte-level BPE tokenizer built here: every reply and its
end-of-turn token supervised and nothing else; system prompts (kept, moved or folded as the
template does); multi-turn; trimming; control-token text inside a message stays text; and the
tokens are those of the template's own rendering of the conversation."""

import pytest
from transformers import PreTrainedTokenizerFast

from mmtrain.pipelines.chat_rendering import IMAGE_PLACEHOLDER
from mmtrain.pipelines.conversations import IGNORE_INDEX, ConversationEncoder
from mmtrain.pipelines.tokenizer import train_bpe_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, conversation roles "
    "must alternate user/assistant/user/assistant/...') }}{%- endif %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}{{- '[INST] ' + system_message + '\\n\\n' + "
    "message['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}"
    "{%- endif %}{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token}}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of "
    "an initial optional system message!') }}{%- endif %}{%- endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)
# ChatML with TRL's {% generation %} markers: transformers' own assistant mask is the reference.
CHATML_GENERATION = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

FAMILIES = {  # template, bos, eos, the end-of-turn token after a reply
    "chatml": (CHATML, None, "<|im_end|>", "<|im_end|>"),
    "llama2": (LLAMA2, "<s>", "</s>", "</s>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "gemma": (GEMMA, "<bos>", "<eos>", "<end_of_turn>"),
    "mistral": (MISTRAL, "<s>", "</s>", "</s>"),
    "phi3": (PHI3, "<s>", "<|endoftext|>", "<|end|>"),
}
CONTROL = [
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|endoftext|>",
]
CORPUS = [
    "what colour is the shape in the picture?",
    "red",
    "a blue square and a red circle",
    "you are terse.",
    "how many circles are there?",
    "three",
    "the tag and text",
    "   spaces   ",
] * 30

CONVERSATIONS = {
    "single": [{"from": "human", "value": "<image>\nwhat colour is the shape?"}, {"from": "gpt", "value": "red"}],
    "system": [
        {"from": "system", "value": "you are terse."},
        {"from": "human", "value": "<image>\nwhat colour?"},
        {"from": "gpt", "value": "a blue square"},
    ],
    "multi_turn": [
        {"from": "human", "value": "<image>\nhow many circles are there?"},
        {"from": "gpt", "value": "three"},
        {"from": "human", "value": "what colour?"},
        {"from": "gpt", "value": "red and blue"},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "you are terse."},
        {"role": "user", "content": "<image>\nhow many?"},
        {"role": "assistant", "content": "three"},
        {"role": "user", "content": "what colour?"},
        {"role": "assistant", "content": "red"},
    ],
    "whitespace": [{"from": "human", "value": "  <image> what colour?  "}, {"from": "gpt", "value": "  red  "}],
}


@pytest.fixture(scope="module")
def raw_tokenizer():
    return train_bpe_tokenizer(
        CORPUS, 400, special_tokens=tuple(["<pad>", IMAGE_PLACEHOLDER] + CONTROL), wrap=False, lowercase=False
    )


def _tokenizer(raw, family):
    template, bos, eos, _ = FAMILIES[family] if family in FAMILIES else (CHATML_GENERATION, None, "<|im_end|>", None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
        additional_special_tokens=[IMAGE_PLACEHOLDER] + CONTROL,
    )
    tokenizer.chat_template = template
    return tokenizer


def _supervised_runs(tokenizer, labels) -> list[str]:
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    return runs


def _squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_every_reply_and_its_end_of_turn_are_supervised_and_nothing_else(raw_tokenizer, family, name):
    tokenizer = _tokenizer(raw_tokenizer, family)
    end_of_turn = FAMILIES[family][3]
    encoder = ConversationEncoder(tokenizer, num_image_tokens=3, max_length=512)
    assert encoder.end_of_turn == end_of_turn
    conversation = CONVERSATIONS[name]
    encoded = encoder.encode(conversation)
    replies = [
        turn.get("value", turn.get("content"))
        for turn in conversation
        if turn.get("from", turn.get("role")) in ("gpt", "assistant")
    ]
    assert [_squash(run) for run in _supervised_runs(tokenizer, encoded.labels)] == [
        _squash(reply + end_of_turn) for reply in replies
    ]

    # The tokens are the template's own rendering of this conversation (the image expanded), so
    # training sees what the template shows: trimmed where it trims, the system where it puts it.
    messages = encoder.renderer._fit(
        [
            {
                "role": "user"
                if t.get("from", t.get("role")) in ("human", "user")
                else "assistant"
                if t.get("from", t.get("role")) in ("gpt", "assistant")
                else "system",
                "content": t.get("value", t.get("content")),
            }
            for t in conversation
        ]
    )
    expected = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    image = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    collapsed = [t for i, t in enumerate(encoded.input_ids) if t != image or encoded.input_ids[i - 1] != image]
    assert collapsed == expected
    if "system" in name:
        assert "terse" in tokenizer.decode(encoded.input_ids)  # kept (moved or folded), never dropped
    prompt = encoder.encode_prompt(conversation)  # what generation is given at inference
    assert encoded.input_ids[: len(prompt)] == prompt


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_control_token_text_inside_a_message_stays_text(raw_tokenizer, family):
    tokenizer = _tokenizer(raw_tokenizer, family)
    encoder = ConversationEncoder(tokenizer, num_image_tokens=3, max_length=512)
    tricky = "the tag <|im_end|> and </s> and <end_of_turn> and <|eot_id|> text"
    conversation = [{"from": "human", "value": f"<image>\n{tricky}?"}, {"from": "gpt", "value": tricky}]
    plain = [{"from": "human", "value": "<image>\nx?"}, {"from": "gpt", "value": "x"}]
    control = set(tokenizer.convert_tokens_to_ids(CONTROL))
    count = lambda ids: sum(token in control for token in ids)  # noqa: E731
    encoded = encoder.encode(conversation)
    assert count(encoded.input_ids) == count(encoder.encode(plain).input_ids)
    assert count(encoder.encode_prompt(conversation)) == count(encoder.encode_prompt(plain))
    runs = _supervised_runs(tokenizer, encoded.labels)
    assert [_squash(run) for run in runs] == [_squash(tricky + FAMILIES[family][3])]
    assert encoded.input_ids.count(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)) == 3


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_mask_equals_transformers_assistant_mask_where_a_template_marks_generation(raw_tokenizer, name):
    tokenizer = _tokenizer(raw_tokenizer, "generation")
    encoder = ConversationEncoder(tokenizer, num_image_tokens=1, max_length=512)
    conversation = CONVERSATIONS[name]
    encoded = encoder.encode(conversation)
    messages = [
        {
            "role": {"human": "user", "gpt": "assistant"}.get(t.get("from"), t.get("role", t.get("from"))),
            "content": t.get("value", t.get("content")),
        }
        for t in conversation
    ]
    reference = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert encoded.input_ids == reference["input_ids"]
    assert [label != IGNORE_INDEX for label in encoded.labels] == [bool(m) for m in reference["assistant_masks"]]
