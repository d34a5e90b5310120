"""Review questions: one or two short, auto-checked questions at the end of a notebook, on what it taught.

A notebook asks in a markdown cell and checks in the code cell below it::

    answer = 3.64  # ANSWER
    review("0.1", answer)

In a learner copy the ``# ANSWER`` line becomes ``answer = None  # your answer``
(:func:`qtutor.learner.strip_solutions`), and ``review`` says the question is open instead of judging: Run All
still reaches the end. A numeric answer is right within the question's relative tolerance; a wrong one that
matches a mistake learners really make (the codes without their scales, GiB for GB, one of K and V) is told what
it missed; any other gets the question's hint. A choice answer (a letter) that is wrong gets the explanation of
why that option is wrong. ``review`` prints one line and never raises on a wrong answer (a review is not a gate);
it raises ``ValueError`` only for an unknown question number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Question", "QUESTIONS", "review"]


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: float | str  # a number, or the letter of the right choice
    explanation: str  # shown with the ✔
    tolerance: float = 0.005  # relative, for numbers
    mistakes: tuple[tuple[float, str], ...] = ()  # (a wrong number learners write, what it missed)
    hint: str = ""  # for any other wrong number
    choices: dict[str, str] = field(default_factory=dict)  # letter -> option text
    wrong: dict[str, str] = field(default_factory=dict)  # letter -> why that option is wrong


QUESTIONS: dict[str, Question] = {
    "0.1": Question(
        "A 7-billion-parameter model stored as 4-bit codes in groups of 128, each group with an fp16 scale and a "
        "4-bit zero-point: how many GB (10⁹ bytes) of weights?",
        7 * (4 + 20 / 128) / 8,
        "4 + (16 + 4)/128 = 4.156 bits per weight, × 7·10⁹ / 8 = 3.64 GB: the scales add 4 % to the codes.",
        mistakes=((3.5, "that counts the 4-bit codes only: every group of 128 also stores a 16-bit scale and a 4-bit "
                        "zero-point (0.156 bits per weight)"),
                  (7e9 * (4 + 20 / 128) / 8 / 2**30, "that is GiB (2³⁰ bytes); the question asks for GB (10⁹ bytes)"),
                  (14.0, "that is the fp16 model (2 bytes per weight)")),
        hint="bits per weight = code bits + (scale bits + zero bits) / group size; bytes = weights × bits / 8"),
    "0.2": Question(
        "Decoding one token at a time on a GPU: why does a 4-bit weight format make it faster even when the "
        "multiply itself runs in fp16?",
        "b",
        "At batch 1 every weight is read once per token for one multiply-add: the time is the bytes moved, and "
        "4-bit codes move about a quarter of fp16's.",
        choices={"a": "the 4-bit model needs fewer floating-point operations",
                 "b": "each token has to read every weight from memory, and 4-bit weights are fewer bytes",
                 "c": "integer arithmetic units are faster than floating-point ones",
                 "d": "the KV cache becomes 4-bit too"},
        wrong={"a": "the number of multiply-adds is the same: one per weight per token, whatever the format",
               "c": "the multiply runs in fp16 here (weights are dequantized in registers); arithmetic is not the "
                    "bottleneck at batch 1",
               "d": "weight quantization leaves the KV cache as it is (notebook 15 quantizes the cache separately)"}),
    "1.1": Question(
        "Symmetric INT8 with levels −127…127 for a tensor whose largest magnitude is 2.54: what is the scale?",
        0.02,
        "scale = absmax / 127 = 0.02: the largest value maps to code 127 exactly.",
        tolerance=0.001,
        mistakes=((2.54 / 255, "that spreads the range over 255 steps, as an asymmetric grid does; symmetric uses "
                               "absmax / 127"),
                  (2.54 / 128, "the symmetric grid's largest code is 127, not 128"),
                  (2.54 / 256, "that is the full 256-code range; symmetric INT8 uses ±127")),
        hint="a symmetric grid maps the tensor's absmax to the largest code"),
    "2.1": Question(
        "SmolLM2's activations have a few channels that are large in every token. You quantize activations with "
        "one INT8 scale per token. What happens to the ordinary channels?",
        "c",
        "Each token's scale is set by its outlier channel, so the ordinary channels of every token get a step far "
        "larger than they need and round to a few codes: the reason for LLM.int8()'s fp16 columns and "
        "SmoothQuant's migration.",
        choices={"a": "nothing: a per-token scale adapts to each token, so outliers are handled",
                 "b": "they clip at ±127",
                 "c": "they lose most of their precision, because every token's scale is set by the outlier channel",
                 "d": "they overflow int32 accumulation"},
        wrong={"a": "the outlier channel is in every token, so adapting per token does not remove it from any scale",
               "b": "the scale is set by the largest value, so nothing clips; the small values round coarsely instead",
               "d": "int8 × int8 products summed over a few thousand channels fit int32 easily"}),
    "7.1": Question(
        "GPTQ minimises ‖W X − Ŵ X‖² for one linear layer, X its calibration inputs (in_features × tokens). "
        "Which matrix does it invert (with dampening) to spread each column's rounding error over the columns "
        "not yet quantized?",
        "b",
        "H = 2 X Xᵀ (in × in), the Hessian of the layer's squared output error with respect to a row of W; the "
        "same for every row, so one Cholesky serves the whole layer.",
        choices={"a": "Wᵀ W, from the weights alone", "b": "2 X Xᵀ, from the calibration inputs",
                 "c": "the Fisher information of the model's loss", "d": "diag(X Xᵀ) only"},
        wrong={"a": "the error depends on the inputs the layer sees: a weights-only matrix cannot weigh columns by how "
                    "much they are used",
               "c": "GPTQ is layer-wise: it needs no gradient of the loss, only the layer's inputs",
               "d": "the diagonal alone ranks columns (as AWQ and the importance matrix do), but compensation needs the "
                    "off-diagonal correlations"}),
    "8.1": Question(
        "AWQ protects about 1 % of salient input channels. How does it find them, and how does it protect them?",
        "a",
        "By the mean magnitude of their activations on calibration data; it scales those weight columns up by s "
        "(and the inputs down by s, folded into the previous layer), so their relative rounding error shrinks — "
        "no mixed-precision storage.",
        choices={"a": "by activation magnitude; it scales their weights up and the inputs down",
                 "b": "by weight magnitude; it keeps them in fp16",
                 "c": "by the Hessian's diagonal; it quantizes them last",
                 "d": "by activation magnitude; it keeps them in fp16"},
        wrong={"b": "AWQ's Table 1: picking by weight magnitude helps little; the activations say which channels "
                    "matter",
               "c": "that is closer to GPTQ's act-order; AWQ needs no Hessian",
               "d": "keeping them in fp16 works (AWQ's Table 1) but needs a mixed-precision kernel; AWQ scales "
                    "instead, so every weight stays 4-bit"}),
    "9.1": Question(
        "bitsandbytes' NF4 with double quantization: 4-bit codes in blocks of 64, each block's absmax as an 8-bit "
        "code, with one fp32 scale per 256 absmaxes. How many bits per weight (ignore the one offset)?",
        4 + 8 / 64 + 32 / (64 * 256),
        "4 + 8/64 + 32/(64·256) = 4.127 bits per weight; without double quantization the fp32 absmax alone costs "
        "0.5 bits per weight.",
        tolerance=1e-4,
        mistakes=((4.5, "that stores each block's absmax as fp32 (32/64 = 0.5 bits): double quantization stores it "
                        "as an 8-bit code"),
                  (4.125, "add the second-level fp32 scale: 32 bits per 256 blocks of 64 weights"),
                  (4.0, "that counts the codes only")),
        hint="codes + absmax code bits / 64 + fp32 bits / (64 · 256)"),
    "15.1": Question(
        "Llama-3-8B: 32 layers, 8 KV heads of dimension 128, fp16 cache. How many KiB does one token add to the "
        "KV cache?",
        128.0,
        "2 (K and V) × 32 layers × 8 heads × 128 × 2 bytes = 131,072 bytes = 128 KiB per token: 16 GiB at 128k "
        "tokens.",
        tolerance=0.001,
        mistakes=((64.0, "count both the keys and the values"),
                  (512.0, "grouped-query attention caches the 8 KV heads, not the 32 query heads"),
                  (256.0, "the cache is fp16: 2 bytes per element"),
                  (131072 / 1000, "that is kB (10³ bytes); the question asks for KiB (2¹⁰)")),
        hint="2 × layers × KV heads × head dim × bytes per element"),
    "16.1": Question(
        "What is the largest finite value of FP8 E4M3 as the OCP standard (and torch.float8_e4m3fn) defines it?",
        448.0,
        "E4M3 gives up infinities and keeps one NaN pattern, so the top binade reaches 1.75 × 2⁸ = 448.",
        tolerance=1e-9,
        mistakes=((240.0, "that is E4M3FNUZ (AMD's variant, bias 8, no negative zero)"),
                  (57344.0, "that is E5M2"),
                  (480.0, "the all-ones mantissa in the top exponent is NaN in E4M3, so the largest is 1.75 × 2⁸")),
        hint="exponent bias 7, 3 mantissa bits, only S.1111.111 is NaN"),
    "17.1": Question(
        "In quantization-aware training, what gradient does the straight-through estimator give "
        "round(x) (inside the clipping range)?",
        "c",
        "It treats round as the identity on the backward pass: gradient 1 inside the range (and 0 where clipped, "
        "in the clipped variant), although round's true derivative is 0 almost everywhere.",
        choices={"a": "0, its true derivative almost everywhere", "b": "a Dirac delta at each rounding boundary",
                 "c": "1, as if round were the identity", "d": "x − round(x)"},
        wrong={"a": "with a true gradient of 0 nothing upstream of the rounding would ever learn: that is the problem "
                    "the STE solves",
               "b": "that is the true derivative in the sense of distributions, and useless for training",
               "d": "that is the rounding error, which the detach trick adds as a constant"}),
}


def review(number: str, answer) -> None:
    """Judge ``answer`` to review question ``number``: prints one line, ✔, ✘ or still open (returns nothing, so a
    notebook cell ending with it shows only that line)."""
    _judge(number, answer)


def _judge(number: str, answer) -> bool | None:
    if number not in QUESTIONS:
        raise ValueError(f"number={number!r}: no such review question; the course has {', '.join(QUESTIONS)}")
    q = QUESTIONS[number]
    if answer is None or answer is Ellipsis:
        print(f"… review {number} is open: put your answer in the cell above (replace None) and run it again")
        return None
    if isinstance(q.answer, str):
        letter = str(answer).strip().lower().rstrip(")").lstrip("(")
        if letter not in q.choices:
            print(f"✘ review {number}: answer with one letter of {', '.join(q.choices)} (got {answer!r})")
            return False
        if letter == q.answer:
            print(f"✔ review {number}: {q.explanation}")
            return True
        print(f"✘ review {number}: not ({letter}) — {q.wrong.get(letter, 'look again at the section above')}")
        return False
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) or not math.isfinite(answer):
        print(f"✘ review {number}: answer with a number (got {answer!r})")
        return False
    if math.isclose(answer, q.answer, rel_tol=q.tolerance):
        print(f"✔ review {number}: {q.explanation}")
        return True
    for value, why in q.mistakes:
        if math.isclose(answer, value, rel_tol=q.tolerance):
            print(f"✘ review {number}: {answer:g} — {why}")
            return False
    print(f"✘ review {number}: {answer:g} is not it; {q.hint or 'look again at the section above'}")
    return False
