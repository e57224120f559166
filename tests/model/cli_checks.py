"""What every failing `neva` command must look like, shared by the CLI tests of each command."""
from neva_model.cli import main


def fails(argv, capsys, status: int, message: str) -> str:
    """main(argv) returns `status`, prints nothing to stdout and one line `neva: error: ...` holding `message`."""
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("neva: error: "), err
    assert message in err, err
    return err
