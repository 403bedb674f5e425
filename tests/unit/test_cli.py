import re
import subprocess
import sys

from unmask.server.cli import build_parser, main


def test_generate_prints_completion(dense_ckpt, capsys):
    rc = main(["generate", str(dense_ckpt), "--prompt", "HELLO", "--max-tokens", "8", "--block-length", "4",
               "--dtype", "float32", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0 and "finish_reason=" in captured.err and "nfe=" in captured.err


def test_generate_chat_and_bad_params(dense_ckpt, capsys):
    assert main(["generate", str(dense_ckpt), "--prompt", "HI", "--chat", "--max-tokens", "4", "--device", "cpu"]) == 0
    rc = main(["generate", str(dense_ckpt), "--prompt", "HI", "--max-tokens", "10", "--block-length", "0"])
    assert rc == 2 and "block_length=0 is not valid" in capsys.readouterr().err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", str(tmp_path / "nope"), "--prompt", "HI"])
    assert rc == 2 and "not a built-in model" in capsys.readouterr().err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "unmask.server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("serve", "generate", "chat"))
    assert build_parser().parse_args(["chat", "--url", "http://127.0.0.1:9"]).url == "http://127.0.0.1:9"
    assert build_parser().parse_args(["serve"]).command == "serve"


def test_generate_suffix_and_ignore_eos(dense_ckpt, capsys):
    rc = main(["generate", str(dense_ckpt), "--prompt", "AB", "--suffix", "YZ", "--max-tokens", "5", "--block-length",
               "5", "--ignore-eos", "--temperature", "0.5", "--top-k", "3", "--seed", "1", "--device", "cpu"])
    assert rc == 0 and "tokens=5 " in capsys.readouterr().err


def test_generate_with_a_structured_output_constraint(dense_ckpt, capsys):
    base = ["generate", str(dense_ckpt), "--prompt", "HI", "--max-tokens", "8", "--device", "cpu"]
    assert main(base + ["--regex", "[A-Z]{3}"]) == 0
    assert re.fullmatch("[A-Z]{3}", capsys.readouterr().out.strip())
    assert main(base + ["--choice", "YES", "NO", "--preset", "fast"]) == 0
    assert capsys.readouterr().out.strip() in ("YES", "NO")
    assert main(base + ["--regex", "(AB"]) == 2
    assert "unclosed group" in capsys.readouterr().err
