"""User input files: every bad file (not UTF-8, a directory, deep JSON, wrong field type) is one line naming
file and line, on every reader and every CLI that reads files, and ``--skip-invalid`` keeps the good rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carelab.care.data import synth
from carelab.care.data.loaders import load_examples, load_examples_with_report
from carelab.cli import app
from carelab.runs import MAX_JSON_DEPTH, InputError, read_json, read_jsonl, read_text_file

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One good CofCA JSONL and hand-broken variants of it."""
    d = tmp_path_factory.mktemp("inputs")
    good = synth.write("cofca", 3, 0, d / "good.jsonl", split="test")
    lines = good.read_bytes().splitlines()
    out = {"good": good, "dir": d / "adir"}
    out["dir"].mkdir()
    out["badbyte"] = d / "badbyte.jsonl"
    out["badbyte"].write_bytes(lines[0] + b"\n" + lines[1][:20] + b"\xff\xfe" + lines[1][20:] + b"\n" + lines[2] + b"\n")
    out["deep_jsonl"] = d / "deep.jsonl"
    out["deep_jsonl"].write_text(lines[0].decode() + "\n" + '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    out["deep_json"] = d / "deep.json"
    out["deep_json"].write_text("[\n{\n\"a\":\n" + "[" * 100_000 + "]" * 100_000 + "}]")
    row = json.loads(lines[0])
    row["question"] = 5
    out["int_question"] = d / "intq.jsonl"
    out["int_question"].write_text(json.dumps(row) + "\n")
    row["question"] = "Who is \ud800?"
    out["surrogate"] = d / "surrogate.jsonl"
    out["surrogate"].write_text(json.dumps(row) + "\n")  # json.dumps writes the escape \\ud800
    out["bad_py"] = d / "bad.py"
    out["bad_py"].write_bytes(b"x = 1\ny = '\xff'\n")
    return out


# ------------------------------------------------------------------------------------------------ readers
def test_read_text_file_names_line_of_bad_byte(files):
    with pytest.raises(InputError, match=r"bad\.py, line 2: not UTF-8 text \(byte 0xff"):
        read_text_file(files["bad_py"])


def test_directory_is_input_error_and_missing_file_is_not_found(files):
    with pytest.raises(InputError, match="is a directory"):
        read_text_file(files["dir"])
    with pytest.raises(InputError, match="is a directory"):
        list(read_jsonl(files["dir"]))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_json(files["dir"] / "nope.json")


def test_deep_json_is_refused_with_line(files):
    with pytest.raises(InputError, match=r"deep\.json, line 4: JSON nested more than"):
        read_json(files["deep_json"])
    with pytest.raises(InputError, match=r"deep\.jsonl, line 2: JSON nested"):
        list(read_jsonl(files["deep_jsonl"]))


def test_nesting_just_over_the_limit_is_refused_and_at_the_limit_kept(tmp_path):
    """Depth below Python's recursion limit still counts: later recursive steps must never see it."""
    ok, deep = tmp_path / "ok.json", tmp_path / "deep.json"
    ok.write_text("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    deep.write_text("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert read_json(ok) == json.loads(ok.read_text())
    with pytest.raises(InputError, match="line 1: JSON nested"):
        read_json(deep)


def test_read_jsonl_skips_only_the_undecodable_line(files):
    with pytest.raises(InputError, match=r"line 2: not UTF-8"):
        list(read_jsonl(files["badbyte"]))
    assert [n for n, _ in read_jsonl(files["badbyte"], skip_invalid=True)] == [1, 3]


def test_lone_surrogate_escape_is_refused_but_pairs_are_text(tmp_path):
    """JSON may spell half a surrogate pair ("\\ud800"); no UTF-8 output can carry it, so it is refused early."""
    p = tmp_path / "s.json"
    p.write_text('[1,\n{"a": ["\\ud83d\\ude00", "\\udc00"]}]')
    with pytest.raises(InputError, match=r"s\.json, line 2: the escape \\udc00 is half a UTF-16 surrogate pair"):
        read_json(p)
    p.write_text('{"a": "\\ud83d\\ude00 and \\\\ud800 (an escaped backslash)"}')
    assert read_json(p) == {"a": "\U0001f600 and \\ud800 (an escaped backslash)"}


def test_invalid_json_names_line_and_column(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{\n  "a": 1,\n  "b": }\n')
    with pytest.raises(InputError, match=r"x\.json, line 3: invalid JSON \(Expecting value, column 8\)"):
        read_json(p)


# ------------------------------------------------------------------------------------------------ loaders
def test_loader_skip_invalid_keeps_good_rows_around_a_bad_byte(files):
    with pytest.raises(InputError, match=r"badbyte\.jsonl, line 2: not UTF-8"):
        load_examples(files["badbyte"])
    exs, report = load_examples_with_report(files["badbyte"], skip_invalid=True)
    assert len(exs) == 2 and report.skipped == 1 and "line 2" in report.reasons[0]


def test_loader_detects_format_past_a_bad_first_line(files, tmp_path):
    lines = files["good"].read_bytes().splitlines()
    p = tmp_path / "first_bad.jsonl"
    p.write_bytes(b"\xff\n" + b"\n".join(lines) + b"\n")
    assert len(load_examples(p, skip_invalid=True)) == 3
    with pytest.raises(InputError, match="line 1: not UTF-8"):
        load_examples(p)


def test_int_where_string_expected_is_field_error(files):
    with pytest.raises(InputError, match=r"intq\.jsonl, line 1, field 'question': expected str, got int"):
        load_examples(files["int_question"])


def test_integer_ids_stay_accepted(files, tmp_path):
    """Ids are the exception: MS MARCO and DROP number their queries."""
    row = json.loads(files["good"].read_text().splitlines()[0])
    row["id"] = 17
    p = tmp_path / "intid.jsonl"
    p.write_text(json.dumps(row) + "\n")
    assert load_examples(p)[0].id == "17"


def test_bool_is_not_a_sentence_index(files, tmp_path):
    row = json.loads(files["good"].read_text().splitlines()[0])
    title = row["passages"][0]["title"] if "passages" in row else ""
    row["supporting_facts"] = [[title, True]]
    p = tmp_path / "boolidx.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match=r"line 1, field 'supporting_facts\[0\]'"):
        load_examples(p, "cofca")


# ------------------------------------------------------------------------------------------------ CLIs
def _one_line_error(result, *needles: str) -> None:
    """Exit code 2, no traceback, and one ``error:`` line that itself names the file (and line)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    err = [ln for ln in result.output.splitlines() if "error:" in ln]
    assert len(err) == 1, result.output
    for n in needles:
        assert n in err[0], result.output


CASES = [("badbyte", ("badbyte.jsonl", "line 2", "not UTF-8")),
         ("deep_jsonl", ("deep.jsonl", "line 2", "nested")),
         ("dir", ("adir", "is a directory")),
         ("int_question", ("intq.jsonl", "line 1", "field 'question'")),
         ("surrogate", ("surrogate.jsonl", "line 1", "surrogate"))]


@pytest.mark.parametrize("name,needles", CASES)
def test_data_convert_errors(files, tmp_path, name, needles):
    result = runner.invoke(app, ["data", "convert", "--input", str(files[name]), "--out", str(tmp_path / "o.jsonl")])
    _one_line_error(result, *needles)


def test_data_convert_skip_invalid_keeps_good_rows(files, tmp_path):
    out = tmp_path / "o.jsonl"
    result = runner.invoke(app, ["data", "convert", "--input", str(files["badbyte"]), "--out", str(out),
                                 "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert "2 examples loaded" in result.output and "1 malformed rows skipped" in result.output
    assert len(out.read_text().splitlines()) == 2


@pytest.mark.parametrize("name,needles", CASES)
def test_sft_data_errors(files, tmp_path, name, needles):
    result = runner.invoke(app, ["care", "sft-data", "--input", str(files[name]), "--out", str(tmp_path / "s.jsonl")])
    _one_line_error(result, *needles)


@pytest.mark.parametrize("name,needles", [*CASES, ("deep_json", ("deep.json", "line 4", "nested"))])
def test_care_eval_errors(files, tmp_path, name, needles):
    result = runner.invoke(app, ["care", "eval", "--data", str(files[name]), "--out", str(tmp_path / "ev"),
                                 "--model", "tiny-random-qwen2"])
    _one_line_error(result, *needles)


@pytest.mark.parametrize("flag", ["--system-prompt-file"])
@pytest.mark.parametrize("name,needles", [("bad_py", ("bad.py", "line 2", "not UTF-8")), ("dir", ("is a directory",))])
def test_care_eval_system_prompt_file_errors(files, tmp_path, flag, name, needles):
    result = runner.invoke(app, ["care", "eval", "--data", str(files["good"]), "--out", str(tmp_path / "ev"),
                                 "--model", "tiny-random-qwen2", flag, str(files[name])])
    _one_line_error(result, *needles)


@pytest.mark.parametrize("option", ["--context", "--system-prompt"])
@pytest.mark.parametrize("name,needles", [("bad_py", ("bad.py", "line 2", "not UTF-8")), ("dir", ("is a directory",))])
def test_care_ask_file_errors(files, tmp_path, option, name, needles):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text("Paris is in France.")
    args = {"--context": str(ctx), "--system-prompt": None}
    args[option] = str(files[name])
    argv = ["care", "ask", "-q", "x", "-m", "tiny-random-qwen2", "--adapter", "none"]
    for k, v in args.items():
        if v is not None:
            argv += [k, v]
    _one_line_error(runner.invoke(app, argv), *needles)


@pytest.mark.parametrize("command", ["sandbox", "transform", "detect"])
@pytest.mark.parametrize("name,needles", [("bad_py", ("bad.py", "line 2", "not UTF-8")), ("dir", ("is a directory",))])
def test_watermark_file_errors(files, command, name, needles):
    result = runner.invoke(app, ["watermark", command, str(files[name])])
    _one_line_error(result, *needles)


def test_saved_config_has_provenance_beside_it(tmp_path):
    """Every saved config names the commit and library versions that made the outputs (outside the config, so a
    resume with the same settings is not refused when the code has moved on)."""
    import json
    import subprocess

    from carelab.runs import PROVENANCE_FILE, save_config

    save_config({"lr": 1e-3}, tmp_path)
    prov = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-3}
    assert prov["torch"] and prov["trl"] and isinstance(prov["argv"], list)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:  # a checkout (CI clones one); the installed-wheel case records None
        assert prov["git_commit"] == head and isinstance(prov["git_dirty"], bool)
