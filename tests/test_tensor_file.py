"""One tensor-file reader (wanid.tensor_file.read_tensor_file) for Stand-In files, the BiSeNet parser and the
training state: a file with pickled code is refused with the same words everywhere and its code never runs."""
import io
import os
import types

import pytest
import torch


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


class _Blocked:  # torch words a blocked module differently from an unknown global
    def __reduce__(self):
        return (os.getcwd, ())


def _evil(path, payload=_Payload):
    buf = io.BytesIO()
    torch.save({"x": payload()}, buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def _readers():
    from wanid.face.parsing import load_face_parser
    from wanid.standin.checkpoint import read_tensors
    from wanid.train.trainer import Trainer
    return {"Stand-In file": read_tensors, "face parser file": load_face_parser,
            "training state": lambda p: Trainer.resume(types.SimpleNamespace(), p)}


@pytest.mark.parametrize("what", ["Stand-In file", "face parser file", "training state"])
@pytest.mark.parametrize("payload", [_Payload, _Blocked])
def test_pickled_code_is_refused_in_the_same_words(what, payload, tmp_path, capsys):
    path = _evil(tmp_path / "evil.pt", payload)
    with pytest.raises(ValueError) as e:
        _readers()[what](path)
    assert str(e.value).startswith(f"{what} evil.pt is refused: it holds pickled code, not only tensors (")
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("what", ["Stand-In file", "face parser file", "training state"])
def test_empty_and_damaged_files_are_worded(what, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"^{what} empty.pt is empty \\(0 bytes\\)"):
        _readers()[what](str(empty))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=f"^{what} junk.pt is unreadable \\("):
        _readers()[what](str(junk))
