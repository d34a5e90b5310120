"""Exercise 15.1's checker accepts qtutor's key quantization and names the answers learners really write."""
import pytest
import torch

from qtutor import exercises
from qtutor.checks import CheckFailed, _keys_per_token_variant, check_fake_quant_keys


def test_right_answer_passes(capsys):
    check_fake_quant_keys(exercises.fake_quant_keys)
    assert "✔" in capsys.readouterr().out


def whole_tokens(k, n_bits, group_size):
    return exercises.fake_quant_keys(k, n_bits, k.shape[2])


def symmetric(k, n_bits, group_size):
    B, H, T, D = k.shape
    g = k.reshape(B, H, T // group_size, group_size, D)
    qmax = 2 ** (n_bits - 1) - 1
    s = g.abs().amax(3, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.round(g / s).clamp(-qmax, qmax) * s).reshape(k.shape)


def two_pow_bits(k, n_bits, group_size):
    B, H, T, D = k.shape
    g = k.reshape(B, H, T // group_size, group_size, D)
    lo, hi = g.amin(3, keepdim=True), g.amax(3, keepdim=True)
    s = (hi - lo) / 2**n_bits
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.clamp(torch.round((g - lo) / s), 0, 2**n_bits - 1) * s + lo).reshape(k.shape)


def nan_on_constant(k, n_bits, group_size):
    B, H, T, D = k.shape
    g = k.reshape(B, H, T // group_size, group_size, D)
    lo, hi = g.amin(3, keepdim=True), g.amax(3, keepdim=True)
    s = (hi - lo) / (2**n_bits - 1)
    return (torch.round((g - lo) / s) * s + lo).reshape(k.shape)


@pytest.mark.parametrize("fn,match", [
    (_keys_per_token_variant, "within each token"), (whole_tokens, "over all 64 tokens"),
    (symmetric, "symmetric"), (two_pow_bits, "divided by 2\\*\\*n_bits"), (nan_on_constant, "scale 1 where it is 0"),
    (lambda k, b, g: k[..., :4], "reshape back"), (lambda k, b, g: None, "forget the .return"),
    (lambda k, b, g: k.round(), "differs from qtutor's")],
    ids=["per-token", "no-groups", "symmetric", "2**bits", "nan", "shape", "none", "other"])
def test_wrong_answers_are_named(fn, match):
    with pytest.raises(CheckFailed, match=match):
        check_fake_quant_keys(fn)
