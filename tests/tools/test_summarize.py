import json
from pathlib import Path

import pytest

from core.errors import InputError
from tools.summarize import main, summarize


def make_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_summary_has_one_row_per_job_and_a_column_per_varying_override(tmp_path: Path, capsys) -> None:
    for num, (encoder, chamfer) in enumerate([("hashgrid", 1.25), ("nffb", 0.93)]):
        make_job(tmp_path, num, [f"encoder={encoder}", "seed=1"], {"chamfer": chamfer, "psnr": 30.0, "mesh": "m.ply"})
    make_job(tmp_path, 10, ["encoder=frequency", "seed=1"], None)  # a failed job: no metrics.json
    (tmp_path / "failed_jobs.txt").write_text("job 10: error: boom\n")
    markdown = summarize(tmp_path)
    assert markdown.endswith("Failed jobs:\n\n- job 10: error: boom\n")
    assert "Every job: `seed=1`" in markdown
    csv_rows = [r.split(",") for r in (tmp_path / "summary.csv").read_text().splitlines()]
    assert csv_rows == [["job", "encoder", "chamfer", "psnr", "status"],
                        ["0", "hashgrid", "1.25", "30", "done"],
                        ["1", "nffb", "0.93", "30", "done"],
                        ["10", "frequency", "-", "-", "failed"]]
    assert (tmp_path / "summary.md").read_text() == markdown
    assert main([str(tmp_path), "--metrics", "psnr"]) == 0
    assert "| job | encoder | psnr | status |" in capsys.readouterr().out
    # --metrics only prints: the full summary files keep every column.
    assert (tmp_path / "summary.md").read_text() == markdown
    assert (tmp_path / "summary.csv").read_text().splitlines()[0] == "job,encoder,chamfer,psnr,status"


def test_failed_jobs_without_a_folder_have_rows_and_a_swept_key_is_never_shared(tmp_path: Path) -> None:
    """Job 0 refused its input (launch.py removed its folder): only job 1 has overrides, yet encoder was swept."""
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - encoder=frequency,nffb\n    - seed=1\n")
    make_job(tmp_path, 1, ["encoder=nffb", "seed=1"], {"chamfer": 0.93})
    make_job(tmp_path, 2, ["encoder=nffb", "seed=1"], None)  # still running, or killed: not a failure
    (tmp_path / "failed_jobs.txt").write_text("job 0: error: dataset.shape: unknown shape 'cube'\n")
    markdown = summarize(tmp_path)
    assert markdown.startswith("Every job: `seed=1`\n")
    csv_rows = [r.split(",") for r in (tmp_path / "summary.csv").read_text().splitlines()]
    assert csv_rows == [["job", "encoder", "chamfer", "status"],
                        ["0", "", "-", "failed"],
                        ["1", "nffb", "0.93", "done"],
                        ["2", "nffb", "-", "no metrics.json"]]


def test_summary_of_a_folder_without_jobs_is_one_line_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(InputError, match="no job folders"):
        summarize(tmp_path)
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: sweep folder not found"
