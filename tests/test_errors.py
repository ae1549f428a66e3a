"""Library errors say how to fix them in library terms; ``ltpa`` prints the same fix as its flags."""
import pickle

import pytest

from ltpa.cli import _describe, main
from ltpa.errors import MissingFileError, Option, Setting, UserError, render_error


def test_a_user_error_reads_in_library_terms_and_renders_as_flags():
    err = UserError("lr 10 diverged; ", Setting("lr", 0.01), ", or ", Option("overwrite"), " to start again, or ",
                    Option("batch_size", 64), " or ", Option("download", False), " or ", Setting("tensorboard", False))
    assert isinstance(err, ValueError)
    assert str(err) == ("lr 10 diverged; set lr=0.01 in the config, or pass overwrite=True to start again, or "
                        "pass batch_size=64 or pass download=False or set tensorboard=False in the config")
    assert err.render(cli=True) == ("lr 10 diverged; pass --set lr=0.01, or pass --overwrite to start again, or "
                                    "pass --batch-size 64 or drop --download or pass --set tensorboard=false")
    assert "--" not in str(err) and _describe(err) == err.render(cli=True)
    assert err.remedies == (Setting("lr", 0.01), Option("overwrite"), Option("batch_size", 64),
                            Option("download", False), Setting("tensorboard", False))
    assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert Setting("lr").cli() == "pass --set lr=..." and Option("data", "SPEC").cli() == "pass --data SPEC"
    assert Option("gap_model", "PATH", flag="--gap-checkpoint").cli() == "pass --gap-checkpoint PATH"


def test_a_missing_file_error_is_a_file_not_found_error_with_remedies():
    err = MissingFileError("cifar10: data_batch_1 missing; ", Option("download"), " and ltpa fetches it")
    assert isinstance(err, FileNotFoundError)
    assert render_error(err) == "cifar10: data_batch_1 missing; pass download=True and ltpa fetches it"
    assert render_error(err, cli=True) == "cifar10: data_batch_1 missing; pass --download and ltpa fetches it"
    assert _describe(err) == render_error(err, cli=True)
    assert render_error(ValueError("plain")) == "plain"
    with pytest.raises(TypeError, match="str or Remedy"):
        UserError("x", 3)


def test_the_cli_prints_the_flag_and_the_library_the_argument(tmp_path, capsys):
    from ltpa.data.sources import load_data

    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError) as info:
        load_data(f"folder:{tmp_path}", download=True)
    assert str(info.value).endswith("pass download=False")
    assert main(["data", f"folder:{tmp_path}", "--download"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa data: error:") and err.rstrip().endswith("drop --download")
    assert main(["data", f"cifar10:{tmp_path}"]) == 2
    assert "pass --download and ltpa fetches" in capsys.readouterr().err


def test_a_taken_run_folder_is_refused_in_library_terms_and_in_flags(tmp_path, capsys):
    from ltpa.train.run_dir import check_out_dir

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as caught:
        check_out_dir(tmp_path, resume=False, overwrite=False)
    assert "pass resume=True" in str(caught.value) and "pass overwrite=True" in str(caught.value)
    assert "--" not in str(caught.value)
    assert main(["train", "--out", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "pass --resume" in err and "pass --overwrite" in err and (tmp_path / "notes.txt").read_text() == "mine"


def test_config_errors_name_the_key_in_library_terms_and_as_a_set_flag(capsys):
    from ltpa.runs.config import TrainConfig, apply_overrides

    with pytest.raises(UserError) as caught:
        TrainConfig(lr=-1.0).validate()
    assert str(caught.value).endswith("set lr=... in the config") and "--" not in str(caught.value)
    with pytest.raises(UserError) as caught:
        apply_overrides(TrainConfig(), ["epochs=three"])
    assert "set epochs=3 in the config" in str(caught.value) and "--" not in str(caught.value)
    assert main(["train", "--out", "never", "--set", "epochs=three"]) == 2
    assert "pass --set epochs=3" in capsys.readouterr().err
