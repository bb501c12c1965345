"""fastnn bench --sweep: K models at once against one by one (fastnn.bench.sweep); no timing is asserted."""

import json

from .conftest import fastnn


def test_bench_sweep_reports_model_epochs_per_second_for_each_k_and_implementation(tmp_path):
    out = tmp_path / "sweep.json"
    run = fastnn("bench", "--sweep", "1,2", "--impl", "fastnn,fastnn-one-by-one", "--examples", "200",
                 "--device", "cpu", "--json", out)
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    cells = {(r["models"], r["impl"]) for r in report["results"]}
    assert cells == {(k, impl) for k in (1, 2) for impl in ("fastnn", "fastnn-one-by-one")}
    for r in report["results"]:
        assert r["model_epochs_per_second"] == r["models"] * r["epochs"] / r["seconds"] and r["x_one_by_one"] > 0
    assert report["settings"]["examples"] == 200 and "loadavg_start" in report
    assert "fastnn-one-by-one" in run.stdout and "load average" in run.stdout


def test_bench_sweep_refuses_unknown_implementations_and_counts_in_one_line(tmp_path):
    for options, says in ((["--sweep", "0"], "integers >= 1"), (["--sweep", "2", "--impl", "numpy"], "'numpy'"),
                          (["--sweep", "two"], "'two' is not an integer")):
        run = fastnn("bench", *options, "--json", tmp_path / "x.json")
        assert run.returncode == 2 and says in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
