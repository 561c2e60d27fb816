"""The OpenAI request checks of `app.server.protocol` (no model, no network): sampling
fields against KNOBS, the fields this server refuses, messages, prompts, stop strings."""
from __future__ import annotations

import pytest

from app.server import protocol as P
from app.server.protocol import ApiError
from inference.sampler import KNOBS, SamplingSettings

MSG = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return P.parse_chat({"model": "m", "messages": MSG, **fields})


def refused(fields: dict, param: str | None = None, status: int = 400) -> ApiError:
    with pytest.raises(ApiError) as e:
        chat(**fields)
    assert e.value.status == status
    if param is not None:
        assert e.value.param == param
    return e.value


def test_defaults_are_the_samplers():
    req = chat()
    d = SamplingSettings()
    assert req.settings == d and req.max_tokens is None and req.stop == () and not req.stream


def test_sampling_fields_map_onto_the_settings():
    req = chat(temperature=0, top_p=0.5, top_k=7, min_p=0.1, seed=42, max_tokens=9, stop="\n", stream=True,
               stream_options={"include_usage": True})
    s = req.settings
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.seed) == (0.0, 0.5, 7, 0.1, 42)
    assert req.max_tokens == 9 and req.stop == ("\n",) and req.stream and req.include_usage
    assert chat(max_completion_tokens=5, max_tokens=9).max_tokens == 5
    assert chat(repeat_penalty=1.3).settings.repeat_penalty == 1.3
    assert chat(frequency_penalty=0.2, presence_penalty=0.1).settings.repeat_penalty == pytest.approx(1.3)
    assert chat(frequency_penalty=0.5, repeat_penalty=1.1).settings.repeat_penalty == 1.1   # llama.cpp's own wins


@pytest.mark.parametrize("name", ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"])
def test_out_of_range_sampling_fields_are_400_naming_the_field(name):
    k = KNOBS[name]
    for bad in (k.hi + 1, k.lo - 1, "1", True, float("nan")):
        e = refused({name: bad}, name)
        assert name in e.message


def test_max_tokens_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, "10", 1 << 40):
        refused({"max_tokens": bad}, "max_tokens")


@pytest.mark.parametrize("fields,param", [
    ({"n": 2}, "n"), ({"n": True}, "n"), ({"logprobs": True}, "logprobs"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"stream": "yes"}, "stream"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": 3}, "stop"), ({"stop": ["a", 1]}, "stop"),
    ({"frequency_penalty": 3}, "frequency_penalty"), ({"frequency_penalty": -1.0}, "frequency_penalty"),
    ({"stream_options": "x"}, "stream_options"), ({"best_of": 3}, "best_of"),
])
def test_unsupported_or_malformed_fields_are_400(fields, param):
    refused(fields, param)


def test_fields_at_their_off_value_are_accepted():
    chat(n=1, logprobs=False, tools=[], response_format={"type": "text"}, stop=None, seed=None, user="x",
         frequency_penalty=0, presence_penalty=0)


@pytest.mark.parametrize("messages", [[], None, "hi", [{"role": "wizard", "content": "x"}], [{"content": "x"}],
                                      [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
                                      [{"role": "user", "content": 5}], ["hi"]])
def test_bad_messages_are_400(messages):
    with pytest.raises(ApiError) as e:
        P.parse_chat({"messages": messages})
    assert e.value.status == 400 and e.value.param.startswith("messages")


def test_message_content_parts_and_developer_role():
    req = P.parse_chat({"messages": [{"role": "developer", "content": "be brief"},
                                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                                     {"role": "assistant", "content": None}]})
    assert req.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"},
                            {"role": "assistant", "content": ""})


def test_continue_final_message_needs_an_assistant_message_last():
    """vLLM's continue_final_message: off by default (a final assistant message is history,
    as OpenAI reads it); on, it must name an assistant message and no generation prompt."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, I"}]
    assert not P.parse_chat({"messages": turns}).continue_final
    assert P.parse_chat({"messages": turns, "continue_final_message": True, "add_generation_prompt": False}).continue_final
    for body, param in (({"messages": turns[:1], "continue_final_message": True}, "continue_final_message"),
                        ({"messages": turns, "continue_final_message": "yes"}, "continue_final_message"),
                        ({"messages": turns, "continue_final_message": True, "add_generation_prompt": True},
                         "add_generation_prompt")):
        with pytest.raises(ApiError) as e:
            P.parse_chat(body)
        assert e.value.status == 400 and e.value.param == param


def test_the_model_must_be_the_served_one():
    P.check_model({}, "smol")
    P.check_model({"model": "smol"}, "smol")
    with pytest.raises(ApiError) as e:
        P.check_model({"model": "gpt-4"}, "smol")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    with pytest.raises(ApiError) as e:
        P.check_model({"model": 3}, "smol")
    assert e.value.status == 400


def test_text_prompts():
    assert P.parse_text({"prompt": "abc"}, 100).prompt == "abc"
    assert P.parse_text({"prompt": ["abc"]}, 100).prompt == "abc"
    assert P.parse_text({"prompt": [1, 2, 3]}, 100).prompt == (1, 2, 3)
    assert P.parse_text({"prompt": [[1, 2]]}, 100).prompt == (1, 2)
    for bad in (None, 5, [], [1, 200], ["a", "b"], [True], {"a": 1}):
        with pytest.raises(ApiError) as e:
            P.parse_text({"prompt": bad}, 100)
        assert e.value.status == 400
    for field in ({"echo": True}, {"suffix": "x"}, {"logprobs": 2}):
        with pytest.raises(ApiError):
            P.parse_text({"prompt": "a", **field}, 100)


def test_error_body_is_openais_shape():
    body = ApiError(429, "busy", "rate_limit_error", None, "rate_limit_exceeded").body()
    assert body == {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}}
