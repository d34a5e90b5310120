"""Exercise 12.1's checker accepts the exact size and names the wrong counts a learner writes, in one line."""
import pytest

from qtutor import exercises
from qtutor.checks import CheckFailed, check_scheme_bits
from qtutor.course import exercise


def test_right_answer_passes(capsys):
    check_scheme_bits(exercises.scheme_bits)
    assert "✔" in capsys.readouterr().out


def floor_groups(o, i, b, g):
    return o * (b * i + (i // g if g else 1) * (16 + b))


def no_zero_point(o, i, b, g):
    return o * (b * i + (-(-i // g) if g else 1) * 16)


def fp32_scale(o, i, b, g):
    return o * (b * i + (-(-i // g) if g else 1) * (32 + b))


def zero_point_16(o, i, b, g):
    return o * (b * i + (-(-i // g) if g else 1) * 32)


def per_weight(o, i, b, g):
    return exercises.scheme_bits(o, i, b, g) / (o * i)


def in_bytes(o, i, b, g):
    return exercises.scheme_bits(o, i, b, g) / 8


def codes_only(o, i, b, g):
    return o * i * b


def no_per_channel(o, i, b, g):
    return o * (b * i + -(-i // g) * (16 + b))   # TypeError for group_size=None


@pytest.mark.parametrize("fn,match", [
    (floor_groups, "short last group"), (no_zero_point, "zero-points"), (fp32_scale, "fp16"),
    (zero_point_16, "n_bits wide"), (per_weight, "bits per weight"), (in_bytes, "bytes"), (codes_only, "only the codes"),
    (no_per_channel, "TypeError"), (lambda o, i, b, g: None, "return"), (lambda o, i, b, g: "4", "str"),
    (lambda o, i, b, g: exercises.scheme_bits(o, i, b, g) + 1, "expected"),
], ids=["floor", "no-zero-point", "fp32-scale", "zero-point-16", "per-weight", "bytes", "codes-only", "no-per-channel",
        "none", "string", "off-by-one"])
def test_wrong_answers_are_named(fn, match):
    with pytest.raises(CheckFailed, match=match):
        check_scheme_bits(fn)


def test_stub_is_still_open(capsys):
    @exercise("12.1", fallback=exercises.scheme_bits)
    def stub(o, i, b, g):
        raise NotImplementedError

    check_scheme_bits(stub)
    assert "still open" in capsys.readouterr().out
