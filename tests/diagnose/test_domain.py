"""The live calibration-domain table: bad input named, the float model untouched, one row per calibration corpus."""
import pytest
import torch

from qtutor.config import AWQConfig, GPTQConfig, RTNConfig
from qtutor.data import Corpus
from qtutor.diagnose.domain import heldout_perplexity, recalibration_table


@pytest.mark.parametrize("kw, match", [
    ({"config": RTNConfig(4, 64)}, "config must be a GPTQConfig or an AWQConfig"),
    ({"first_blocks": 0}, "first_blocks=0: must be None"),
    ({"first_blocks": 31}, "first_blocks=31"),
    ({"first_blocks": True}, "first_blocks=True"),
    ({"calibrate_on": ("CODE",)}, "calibrate_on must be a non-empty sequence of qtutor.data.Corpus"),
    ({"score_on": ()}, "score_on must be a non-empty sequence"),
])
def test_bad_input_is_named(smollm2, kw, match):
    model, tok = smollm2
    with pytest.raises(ValueError, match=match):
        recalibration_table(model, tok, **kw)


def test_one_row_per_corpus_and_the_model_untouched(smollm2):
    model, tok = smollm2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = recalibration_table(model, tok, GPTQConfig(3, 128), first_blocks=1, calib=(1, 64), heldout=(1, 64))
    assert list(table.index) == ["float", "calibrated on WIKITEXT", "calibrated on CODE"]
    assert list(table.columns) == ["wikitext", "code"]
    assert table.loc["float", "code"] == pytest.approx(heldout_perplexity(model, tok, Corpus.CODE, 1, 64))
    assert (table.drop(index="float") != table.loc["float"]).all().all()  # block 0 quantized changes every score
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    awq = recalibration_table(model, tok, AWQConfig(4, 64), calibrate_on=(Corpus.SHAKESPEARE,), score_on=(Corpus.CODE,),
                              first_blocks=1, calib=(1, 64), heldout=(1, 64))
    assert list(awq.index) == ["float", "calibrated on SHAKESPEARE"] and list(awq.columns) == ["code"]
