import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from qtutor.data import Corpus, calibration_samples, load_text, tokenize_corpus, verify_checksums


def test_checksums_match():
    result = verify_checksums()
    assert set(result) == {"tinyshakespeare.txt", "wikitext-2-raw-test.txt", "wikitext-2-valid-tokens.txt",
                           "python-stdlib-3.11.7.txt", "python-stdlib-LICENSE.txt"}
    assert all(result.values()), result


def test_unk_markers_dropped():
    text = load_text(Corpus.WIKITEXT)
    assert "<unk>" not in text and len(text) > 1_000_000


def test_code_corpus_is_python_source():
    text = load_text(Corpus.CODE)
    assert "def " in text and "import " in text and len(text) > 200_000


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the code corpus was cut from Python 3.11.7")
def test_code_corpus_is_its_recipe():
    from qtutor.data import _code_text_from_stdlib

    assert load_text(Corpus.CODE) == _code_text_from_stdlib(Path(sysconfig.get_paths()["stdlib"]))


@pytest.mark.parametrize("corpus", list(Corpus), ids=lambda c: c.name)
def test_sampler_seeded_and_shaped(smollm2, corpus):
    _, tok = smollm2
    a = calibration_samples(tok, corpus, n_samples=4, seq_len=64, seed=3)
    b = calibration_samples(tok, corpus, n_samples=4, seq_len=64, seed=3)
    c = calibration_samples(tok, corpus, n_samples=4, seq_len=64, seed=4)
    assert a.shape == (4, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_heldout_is_disjoint_slice(smollm2):
    _, tok = smollm2
    ids = tokenize_corpus(tok, Corpus.SHAKESPEARE)
    cut = int(len(ids) * 0.9)
    held = calibration_samples(tok, Corpus.SHAKESPEARE, n_samples=8, seq_len=32, seed=0, heldout=True)
    tail = ids[cut:]
    for row in held:
        starts = (tail == row[0]).nonzero().flatten()
        assert any(torch.equal(tail[s : s + 32], row) for s in starts.tolist())


def test_sampler_bad_input(smollm2):
    _, tok = smollm2
    with pytest.raises(ValueError, match="n_samples=0"):
        calibration_samples(tok, n_samples=0)
    with pytest.raises(ValueError, match="longer than"):
        calibration_samples(tok, Corpus.SHAKESPEARE, n_samples=1, seq_len=10**7)
    with pytest.raises(ValueError, match="corpus="):
        load_text("wikitext")
