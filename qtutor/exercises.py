"""qtutor's own answers to the course exercises: what an unfinished exercise falls back to.

A notebook marks each learner function with ``@exercise("N.k", fallback=...)``
(:func:`qtutor.course.exercise`). Where the package already has the function
(``qtutor.primitives.fake_quant``, ``qtutor.methods.awq.search_scales``, …) the
fallback is that function, adapted here to the exercise's signature; the
checkers in :mod:`qtutor.checks` compare the learner's function with the same
package code.
"""
from __future__ import annotations

__all__: list[str] = []

# --- notebooks 00-05 -------------------------------------------------------------------------


# --- notebooks 06-11 -------------------------------------------------------------------------
