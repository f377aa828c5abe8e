from pathlib import Path

from systems.sweep import FAILED_JOBS_FILE, failed_jobs, record_job


def test_a_re_run_sweep_keeps_one_line_per_failed_job(tmp_path: Path) -> None:
    record_job(tmp_path, 2, "error: b: bad")
    record_job(tmp_path, 0, "error: a: bad")
    record_job(tmp_path, 2, "error: b: bad again")  # the sweep re-run with resume=auto: job 2 fails again
    assert (tmp_path / FAILED_JOBS_FILE).read_text() == "job 0: error: a: bad\njob 2: error: b: bad again\n"
    assert failed_jobs(tmp_path) == {0: "job 0: error: a: bad", 2: "job 2: error: b: bad again"}
    record_job(tmp_path, 1, None)  # a job that finished and never failed: nothing changes
    record_job(tmp_path, 0, None)  # job 0 finished this time
    assert failed_jobs(tmp_path) == {2: "job 2: error: b: bad again"}
    record_job(tmp_path, 2, None)
    assert not (tmp_path / FAILED_JOBS_FILE).exists() and not list(tmp_path.iterdir())


def test_failed_jobs_of_an_older_file_with_duplicates_count_each_job_once(tmp_path: Path) -> None:
    (tmp_path / FAILED_JOBS_FILE).write_text("job 1: error: x\njob 3: error: y\njob 1: error: x\n")
    assert sorted(failed_jobs(tmp_path)) == [1, 3]
    assert failed_jobs(tmp_path / "missing") == {}
