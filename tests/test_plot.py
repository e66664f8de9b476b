"""The training log (nanogpt_plus/training_log.py) and plot.py: blank, cut-short and foreign logs, a full disk
while logging, and plot.py's one-line errors."""

import os
import subprocess
import sys

import pytest
from user_errors import (
    REPO,
    assert_one_line,
    assert_one_line_error,
    clean_env,
    main_error,
    small_files_in_child,
)

import plot
from nanogpt_plus import training_log
from nanogpt_plus.errors import UserError

LOG_ROWS = ["0,3.4,3.5,0.001,,", "0,3.45,,0.001,5.00,", "", "1,3.3,,0.002,5.10,", "2,3.2,3.3,0.003,,",
            "2,3.1,,0.003,5.00,", "3,3"]  # fmt: skip


@pytest.mark.parametrize("resumed_at, kept", [(None, [0, 1, 3, 4, 5]), (2, [0, 1, 3, 4])])
def test_a_log_with_blank_and_cut_short_lines_is_read_as_its_rows_with_a_note(tmp_path, resumed_at, kept):
    """A killed run may leave half a line (here at the end, no newline) and an edited log a blank one:
    a run that appends to it or resumes (and drops the rows after its checkpoint) keeps the whole rows,
    with the column this version adds (hellaswag) empty."""
    path = tmp_path / "train_log.csv"
    path.write_text("\n".join(["iter,loss,val_loss,lr,time_ms,mfu", *LOG_ROWS]))
    said = []
    training_log.TrainingLog(str(tmp_path), truncate=False, say=said.append, resumed_at=resumed_at)
    want = ["iter,loss,val_loss,lr,time_ms,mfu,hellaswag"] + [LOG_ROWS[i] + "," for i in kept]
    assert path.read_text().splitlines() == want
    assert said == [f"note: dropped 2 blank or cut-short line(s) of {path}"]
    assert training_log.read_log(str(path))[1] == [(0, 3.4, 3.5)] + [(2, 3.2, 3.3)]


def test_a_log_that_is_not_ours_is_refused_and_kept(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("step,trainloss\n0,3.4\n")
    with pytest.raises(UserError) as e:
        training_log.TrainingLog(str(tmp_path), truncate=False, say=print, resumed_at=0)
    assert str(e.value) == (
        f"{path} is not a train.py log (its first line is 'step,trainloss'): move it away, or choose another --out_dir"
    )
    assert path.read_text() == "step,trainloss\n0,3.4\n"


def test_full_disk_while_logging_is_one_line_and_leaves_whole_rows(tmp_path):
    """train_log.csv on a full disk: the row that does not fit is one `error:` line, and the file is cut
    back to the rows before it, each whole (a resumed run then reads every row)."""
    code = (
        "import sys\nfrom nanogpt_plus import errors, training_log\n"
        "errors.report_user_errors()\n"
        "log = training_log.TrainingLog(sys.argv[1], truncate=False, say=print)\n"
        "for i in range(100):\n"
        "    log.step_row(i, 1.5 + i / 1000, 1e-3, 0.0123, -1)\n"
    )
    limit = 1000
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=clean_env(), preexec_fn=small_files_in_child(limit))  # fmt: skip
    assert_one_line_error(proc, f"cannot write {tmp_path}/train_log.csv (File too large): free some disk space")
    text = (tmp_path / "train_log.csv").read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and len(text) > limit - 60
    assert lines[0] == "iter,loss,val_loss,lr,time_ms,mfu,hellaswag"
    assert lines[1:] == [f"{i},{1.5 + i / 1000},,0.001,12.30,," for i in range(len(lines) - 1)]


LOG_HEADER = "iter,loss,val_loss,lr,time_ms,mfu\n"


def test_read_log_leaves_out_a_cut_short_last_row_and_blank_rows(tmp_path):
    """A run killed while writing a row leaves it without its newline: the rows before it are the log."""
    log = tmp_path / "train_log.csv"
    log.write_text(LOG_HEADER + "0,4.5,4.6,0.001,,\n\n1,4.25,,0.001,12.5,\n,,,,,\n2,4.0,,0.0")
    assert training_log.read_log(str(log)) == ([(1, 4.25)], [(0, 4.5, 4.6)], [])
    log.write_text(LOG_HEADER + "2")  # the first row, cut short
    assert training_log.read_log(str(log)) == ([], [], [])


@pytest.mark.parametrize(
    "log, phrase",
    [
        (LOG_HEADER + "0,4.5,,0.001,12.0,\n1\n", "line 3 of out/train_log.csv ('1') is no row of iter,loss"),
        (LOG_HEADER + "0,4.513,4.6,,0.001,12.0,\n", "line 2 of out/train_log.csv ('0,4.513,"),  # a row on a cut one
        ("x" * 200_000 + "\n", "out/train_log.csv is not a training log"),
        (b"\xff\xfe\x00", "out/train_log.csv is not a training log: it is not text"),
    ],
)
def test_plot_py_says_which_row_of_a_log_is_broken(tmp_path, monkeypatch, capsys, log, phrase):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train_log.csv").write_bytes(log if isinstance(log, bytes) else log.encode())
    assert_one_line(main_error(plot.main, ["out"], capsys), phrase)
    assert os.listdir(tmp_path) == ["out"]


def test_plot_py_out_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.csv").write_text(LOG_HEADER + "0,4.5,,0.001,12.0,\n")
    (tmp_path / "pictures").mkdir()
    message = main_error(plot.main, ["run", "--out", "pictures"], capsys)
    assert_one_line(message, "--out pictures is a folder: give the picture's file name, e.g. --out pictures/loss.png")
    assert sorted(os.listdir(tmp_path)) == ["pictures", "run"] and os.listdir(tmp_path / "pictures") == []


def test_plot_py_out_not_a_png_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.csv").write_text(LOG_HEADER)
    message = main_error(plot.main, ["run", "--out", "loss.pdf"], capsys)
    assert_one_line(message, "--out loss.pdf: plot.py draws PNG pictures; give a file name ending in .png")
    assert sorted(os.listdir(tmp_path)) == ["run"]


# ---------------------------------------------------------------------------- where plot.py draws, and what


def write_run(folder, evals, steps=()):
    """folder/train_log.csv with these eval rows (iter, train, val) and log-line rows (iter, loss)."""
    folder.mkdir()
    rows = [f"{i},{loss},,0.001,12.0," for i, loss in steps] + [f"{i},{t},{v},0.001,," for i, t, v in evals]
    (folder / "train_log.csv").write_text(LOG_HEADER + "".join(row + "\n" for row in rows))


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot.main draws, as training_log.draw returns them."""
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(plot, "draw", lambda *args: figures.append(training_log.draw(*args)) or figures[-1])
    return figures


def test_plot_py_draws_a_run_into_its_own_folder(tmp_path, monkeypatch, capsys, drawn):
    """As train.py does: OUT_DIR/loss.png, the current folder left alone."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "run", [(0, 4.5, 4.6), (10, 3.0, 3.25)], steps=[(1, 4.25), (2, 4.0)])
    assert main_error(plot.main, ["run"], capsys) is None
    assert capsys.readouterr().out == f"wrote {os.path.join('run', 'loss.png')}\n"
    assert os.listdir(tmp_path) == ["run"] and sorted(os.listdir(tmp_path / "run")) == ["loss.png", "train_log.csv"]
    assert (tmp_path / "run" / "loss.png").read_bytes().startswith(b"\x89PNG")
    (ax,) = drawn[0].axes
    curves = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}
    assert curves == {"train (each log line)": [[1, 4.25], [2, 4.0]], "train (eval)": [[0, 4.5], [10, 3.0]],
                      "val (eval)": [[0, 4.6], [10, 3.25]]}  # fmt: skip


def test_plot_py_overlays_several_runs_on_one_set_of_axes(tmp_path, monkeypatch, capsys, drawn):
    """Comparing runs: the train and val curves of each on the same axes, each run in a colour of its own,
    with a legend, into ./loss-compare.png (or --out)."""
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "a", [(0, 4.5, 4.6), (10, 3.0, 3.25)])
    write_run(tmp_path / "b", [(0, 4.0, 4.125), (20, 2.5, 2.75)])
    assert main_error(plot.main, ["a", "b"], capsys) is None
    assert capsys.readouterr().out == "wrote loss-compare.png\n"
    assert (tmp_path / "loss-compare.png").read_bytes().startswith(b"\x89PNG")
    assert os.listdir(tmp_path / "a") == os.listdir(tmp_path / "b") == ["train_log.csv"]
    (ax,) = drawn[0].axes
    curves = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}
    assert curves == {"a: train (eval)": [[0, 4.5], [10, 3.0]], "a: val (eval)": [[0, 4.6], [10, 3.25]],
                      "b: train (eval)": [[0, 4.0], [20, 2.5]], "b: val (eval)": [[0, 4.125], [20, 2.75]]}  # fmt: skip
    colour = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colour["a: train (eval)"] == colour["a: val (eval)"] != colour["b: train (eval)"] == colour["b: val (eval)"]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == list(curves)
    assert main_error(plot.main, ["a", "b", "--out", "ab.png"], capsys) is None
    assert (tmp_path / "ab.png").read_bytes().startswith(b"\x89PNG")
