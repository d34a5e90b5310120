"""Review questions (qtutor.review): every question's own answer passes, the mistakes learners make are named, an
open question waits, bad answers get a one-line message; the notebooks' review cells hold the right answers and
their learner copies hold None."""
import json
from pathlib import Path

import pytest

from qtutor.learner import MarkerError, strip_solutions, student_notebook
from qtutor.review import QUESTIONS, _judge, review

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("number", list(QUESTIONS))
def test_right_answer_and_every_known_mistake(number, capsys):
    q = QUESTIONS[number]
    assert _judge(number, q.answer) is True and "✔" in capsys.readouterr().out
    for value, why in q.mistakes:
        assert _judge(number, value) is False
        assert why in capsys.readouterr().out
    for letter, why in q.wrong.items():
        assert _judge(number, letter.upper()) is False
        assert why in capsys.readouterr().out
    assert _judge(number, None) is None and "is open" in capsys.readouterr().out
    assert not any(abs(v - q.answer) <= q.tolerance * abs(q.answer) for v, _ in q.mistakes)  # a mistake never passes
    assert set(q.wrong) | {q.answer} == set(q.choices) or not q.choices  # every wrong option is explained


def test_bad_answers(capsys):
    assert _judge("0.1", "three") is False and "answer with a number" in capsys.readouterr().out
    assert _judge("0.1", float("nan")) is False
    assert _judge("0.2", "e") is False and "one letter of a, b, c, d" in capsys.readouterr().out
    assert review("0.1", 99.0) is None and _judge("0.1", 99.0) is False and "bits per weight = code bits" in capsys.readouterr().out
    with pytest.raises(ValueError, match="number='9.9'"):
        review("9.9", 1)


def test_answer_lines_are_blanked_and_others_refused():
    assert strip_solutions("answer_0_1 = 3.64  # ANSWER\nreview('0.1', answer_0_1)\n") == \
        "answer_0_1 = None  # your answer\nreview('0.1', answer_0_1)\n"
    with pytest.raises(MarkerError, match="only a line `name = value  # ANSWER`"):
        strip_solutions("print(3.64)  # ANSWER\n")


def test_notebook_review_cells():
    seen = set()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if c["cell_type"] == "code" and "# ANSWER" in "".join(c["source"])]
        for cell in cells:
            out = "".join("".join(o.get("text", "")) for o in cell["outputs"])
            assert out.startswith("✔ review "), f"{path.name}: a review cell's committed answer is not right"
            seen.add(out.split()[2].rstrip(":"))
        learner = student_notebook(nb)
        code = "".join("".join(c["source"]) for c in learner["cells"] if c["cell_type"] == "code")
        assert code.count("= None  # your answer") == len(cells)
    assert seen == set(QUESTIONS)  # every question is asked somewhere
