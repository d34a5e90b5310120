"""Configs are data: frozen, validated at construction, with messages naming field, value and what is allowed."""
import dataclasses

import pytest

from qtutor.config import (
    AWQConfig, FP8Config, GPTQConfig, LLMInt8Config, NF4Config, RTNConfig, W8A8Config,
)


@pytest.mark.parametrize("config", [RTNConfig(), GPTQConfig(), AWQConfig(), NF4Config(), LLMInt8Config(),
                                    W8A8Config(), FP8Config()], ids=lambda c: type(c).__name__)
def test_frozen(config):
    field = next(iter(dataclasses.fields(config)), None)
    if field is None:
        return
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field.name, getattr(config, field.name))


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_bits=1), r"n_bits=1: must be an integer from 2 to 8"),
    (dict(n_bits=9), r"n_bits=9"),
    (dict(n_bits=4.0), r"n_bits=4.0"),
    (dict(n_bits=True), r"n_bits=True"),
    (dict(group_size=0), r"group_size=0: must be a positive integer or None; \"no groups\" is spelled None"),
    (dict(group_size=-1), r"group_size=-1"),
    (dict(symmetric="yes"), r"symmetric='yes': must be True or False"),
], ids=["bits-1", "bits-9", "bits-float", "bits-bool", "group-0", "group-minus-1", "symmetric-str"])
def test_rtn_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RTNConfig(**kwargs)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf"), "6", True],
                         ids=["negative", "nan", "inf", "string", "bool"])
def test_llm_int8_config_rejects(threshold):
    with pytest.raises(ValueError, match=r"threshold=.*must be a finite number ≥ 0"):
        LLMInt8Config(threshold)


def test_llm_int8_config_zero_is_allowed():
    assert LLMInt8Config(0).threshold == 0


@pytest.mark.parametrize("scales, match", [
    ({"a": 0.0}, r"static_scales\['a'\]=0.0: must be a finite number > 0"),
    ({"a": float("nan")}, r"static_scales\['a'\]=nan"),
    ({"a": "x"}, r"static_scales\['a'\]='x'"),
    ([0.1], r"static_scales=list: must be a mapping"),
], ids=["zero", "nan", "string", "list"])
def test_w8a8_config_rejects(scales, match):
    with pytest.raises(ValueError, match=match):
        W8A8Config(scales)


def test_w8a8_config_copies_and_freezes_its_scales():
    import torch

    scales = {"a": torch.tensor(0.5), "b": 2}
    config = W8A8Config(scales)
    scales["a"] = -1.0  # the caller's dict changes later: the config does not
    assert dict(config.static_scales) == {"a": 0.5, "b": 2.0}
    with pytest.raises(TypeError):
        config.static_scales["a"] = 1.0
