"""qtutor.course: exercises fall back, claims fail loudly, saved results stay in their folder."""
import pytest

from qtutor.course import ClaimFailed, claim, exercise, load_notebook_results, save_notebook_results


def test_exercise_falls_back_once_and_keeps_learner_fn(capsys):
    @exercise("98.1", fallback=lambda x: x + 1)
    def f(x):
        raise NotImplementedError("Exercise: write your solution here")

    assert f(1) == 2 and f(2) == 3
    assert capsys.readouterr().out.count("exercise 98.1 not done yet: using qtutor's version") == 1
    assert f.exercise_number == "98.1" and f.fallback(1) == 2
    with pytest.raises(NotImplementedError):
        f.learner_fn(1)


def test_exercise_done_uses_learner_code(capsys):
    @exercise("98.2", fallback=lambda x: 0)
    def f(x):
        return x * 10

    assert f(3) == 30 and capsys.readouterr().out == ""


def test_exercise_learner_errors_are_not_swallowed():
    @exercise("98.3", fallback=lambda x: 0)
    def f(x):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        f(1)


def test_claim(capsys):
    claim(2 > 1, "two is more than one")
    assert "✔ two is more than one" in capsys.readouterr().out
    with pytest.raises(ClaimFailed, match="no longer support"):
        claim(1 > 2, "one is more than two")
    assert ClaimFailed("x")._render_traceback_()[0].count("\n") == 0


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".hidden", "", "x\\y"])
def test_result_names_cannot_leave_their_folder(name, tmp_path, monkeypatch):
    monkeypatch.setenv("QTUTOR_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="name="):
        save_notebook_results(name, [])
    with pytest.raises(ValueError, match="name="):
        load_notebook_results(name)


def test_result_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("QTUTOR_CACHE", str(tmp_path))
    path = save_notebook_results("07_gptq", [{"a": 1}])
    assert path.parent == tmp_path / "notebook-results"
    assert load_notebook_results("07_gptq")["rows"] == [{"a": 1}]
