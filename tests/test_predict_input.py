"""trainer.predict's --input and its comma rule: --input splits at commas, the arguments after the
flags are not split, so a file whose name holds a comma is reachable there; the error for a path
that names nothing says so."""
import pytest
from absl import flags

from effnet_common import flagutil
from trainer import predict
from trainer.inference import prediction
from trainer.inference.exported import PredictError


@pytest.fixture()
def comma_file(tmp_path):
    path = tmp_path / "a,b.png"
    path.write_bytes(b"not looked at: listing takes a named file as given")
    return str(path)


def test_input_splits_at_commas_and_arguments_do_not(comma_file):
    predict.define_flags()
    try:
        argv = flagutil.parse_flags(["trainer.predict", f"--input={comma_file}", comma_file])
        assert list(flags.FLAGS.input) == comma_file.split(",") and argv[1:] == [comma_file]
    finally:
        flags.FLAGS.unparse_flags()
    assert prediction.list_inputs(argv[1:]) == [comma_file]


def test_a_path_split_at_its_comma_is_refused_with_the_rule_and_the_way_round(comma_file):
    with pytest.raises(PredictError) as refused:
        prediction.list_inputs(comma_file.split(","))
    message = str(refused.value)
    assert "matches no image file" in message and "--input splits at commas" in message
    assert "as an argument after the flags" in message
