"""``joulebench report`` on known runs logged to a temp sqlite store: numbers checked against scipy."""

import base64
import csv
import html
import math
import re
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from joulebench.cli import main
from joulebench.report import plots
from joulebench.report import (
    Estimate,
    Ratio,
    build_report,
    energy_to_accuracy,
    format_number,
    pareto_front,
    significance_mark,
)
from joulebench.tracking import RunRecord

T_975_2_DOF = 4.302652729749462  # Student's t, 97.5th percentile, 2 degrees of freedom (tables: 4.303)

# model, method, [(final accuracy, energy_train_j, val_accuracy per epoch, epoch_joules per epoch)]
GROUP_A = {
    ("resnet18", "baseline"): [
        (0.90, 1000.0, [0.80, 0.905, 0.90], [300.0, 350.0, 350.0]),
        (0.92, 1100.0, [0.85, 0.89, 0.92], [360.0, 370.0, 370.0]),
        (0.91, 1050.0, [0.91, 0.91, 0.91], [350.0, 350.0, 350.0]),
    ],
    ("resnet18", "stego"): [
        (0.90, 600.0, [0.70, 0.902, 0.90], [200.0, 200.0, 200.0]),
        (0.91, 650.0, [0.91, 0.91, 0.91], [210.0, 220.0, 220.0]),
        (0.95, 620.0, [0.70, 0.80, 0.95], [200.0, 210.0, 210.0]),
    ],
    ("resnet18", "prune"): [(0.95, 1000.0, [0.95, 0.95, 0.95], [333.0, 333.0, 334.0])],
    ("resnet18", "lowrank"): [
        (0.70, 900.0, [0.50, 0.60, 0.70], [300.0, 300.0, 300.0]),
        (0.96, 950.0, [0.95, 0.96, 0.96], [316.0, 317.0, 317.0]),
    ],
    ("vgg16", "stego"): [
        (0.93, 5000.0, [0.90, 0.92, 0.93], [1600.0, 1700.0, 1700.0]),
        (0.94, 5200.0, [0.90, 0.93, 0.94], [1700.0, 1700.0, 1800.0]),
    ],
}
FLOPS = {"baseline": 1.8e9, "stego": 1.8e9, "prune": 1.8e9, "lowrank": 1.5e9}


def log_run(client, experiment_id, *, model, method, repeat, accuracy, energy=None, history=None,
            dataset="digits", device="cpu", host="h1", extra_tags=None, status="FINISHED", start=None,
            extra_params=None):
    """A run shaped as `joulebench train` logs one (the keys the report reads)."""
    config_hash = "-".join([model, method, dataset, device, host, str(repeat), *(extra_params or {}).values()])
    run = client.create_run(experiment_id, run_name=f"{model}-{method}-r{repeat}", start_time=start,
                            tags={"config_hash": config_hash, "repeat": str(repeat), "host": host,
                                  "energy_source": "rapl", **(extra_tags or {})})
    run_id = run.info.run_id
    params = {"model": model, "method": method, "dataset": dataset, "device": device, "weights": "imagenet",
              "epochs": "3", "batch_size": "64", "lr": "0.001", "optimizer": "adam", "image_size": "32",
              "limit_train_batches": "None", "seed": str(repeat), "repeat": str(repeat)}
    if method == "prune":
        params |= {"method.amount": "0.5", "method.structured": "False"}
    params |= extra_params or {}
    metrics = [Metric("accuracy", accuracy, 0, 0), Metric("flops_per_sample", FLOPS[method], 0, 0),
               Metric("parameters", 11.7e6, 0, 0)]
    if energy is not None:
        metrics.append(Metric("energy_train_j", energy, 0, 0))
    val_accuracy, epoch_joules = history or ([], [])
    metrics += [Metric("val_accuracy", value, 0, epoch) for epoch, value in enumerate(val_accuracy, start=1)]
    metrics += [Metric("epoch_joules", value, 0, epoch) for epoch, value in enumerate(epoch_joules, start=1)]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run_id, status)
    return run_id, config_hash


@pytest.fixture
def store_uri(workdir, monkeypatch):
    """The workdir's store by its absolute path: MLflow caches a store per URI within a process,
    so the relative default (sqlite:///mlflow.db) would reach an earlier test's file."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def known_store(tmp_path_factory, empty_store):
    """Group A (digits, cpu@h1) from GROUP_A, plus runs that must not be averaged with it.

    Logged once per module; each test reads a copy (the artefacts stay in this folder).
    """
    folder = tmp_path_factory.mktemp("known")
    shutil.copyfile(empty_store, folder / "mlflow.db")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.create_experiment("joulebench", artifact_location=str(folder / "artifacts"))
    hashes = {}
    for (model, method), runs in GROUP_A.items():
        for repeat, (accuracy, energy, val, joules) in enumerate(runs):
            source = {"extra_tags": {"energy_source": "codecarbon_estimate"}} if (model, repeat) == ("vgg16", 1) else {}
            _, hashes[model, method, repeat] = log_run(
                client, experiment_id, model=model, method=method, repeat=repeat, accuracy=accuracy,
                energy=energy, history=(val, joules), start=10_000 + repeat, **source)
    # An older run of the same config (a forced rerun replaced it), a failed one, another dataset
    # and another device: none of them may enter group A's numbers.
    log_run(client, experiment_id, model="resnet18", method="baseline", repeat=0, accuracy=0.1, energy=99999.0,
            history=([0.1], [99999.0]), start=1)
    log_run(client, experiment_id, model="resnet18", method="stego", repeat=5, accuracy=0.1, energy=1.0,
            status="FAILED")
    log_run(client, experiment_id, model="resnet18", method="baseline", repeat=0, accuracy=0.5, dataset="cifar10",
            history=([0.5], []))
    log_run(client, experiment_id, model="resnet18", method="baseline", repeat=0, accuracy=0.97, energy=50.0,
            device="cuda:0", history=([0.97], [50.0]), extra_tags={"gpu_name": "NVIDIA H100 80GB HBM3"})
    parent = client.create_run(experiment_id, run_name="sweep-x", tags={"run_kind": "sweep", "sweep_hash": "x"})
    grid = [{"config_hash": hashes["resnet18", method, r]} for method in ("baseline", "stego") for r in range(3)]
    client.log_dict(parent.info.run_id, grid, "sweep/grid.json")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return folder / "mlflow.db", parent.info.run_id


@pytest.fixture
def store(known_store, store_uri, workdir):
    """A copy of the known store as the workdir's store: (client, experiment id, sweep parent id)."""
    path, parent = known_store
    shutil.copyfile(path, workdir / "mlflow.db")
    client = MlflowClient(store_uri)
    return client, client.get_experiment_by_name("joulebench").experiment_id, parent


@pytest.fixture(scope="module")
def report_out(known_store, tmp_path_factory):
    """The folder one `joulebench report` wrote over a copy of the known store."""
    folder = tmp_path_factory.mktemp("report")
    shutil.copyfile(known_store[0], folder / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        main(["report", "--out", "out"])
    return folder / "out"


def read_summary(path):
    with path.open() as handle:
        return {(row["dataset"], row["device"], row["model"], row["method"]): row for row in csv.DictReader(handle)}


def ci95(values):
    return stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))


def energies(model, method):
    return [energy for _, energy, _, _ in GROUP_A[model, method]]


def test_summary_means_cis_ratios_and_welch_p_values_match_scipy(report_out):
    rows = read_summary(report_out / "summary.csv")
    assert len(rows) == 7
    group = ("digits", "cpu@h1")
    baseline, stego = rows[(*group, "resnet18", "baseline")], rows[(*group, "resnet18", "stego")]
    assert baseline["n"] == "3"  # the older run of the same config and the FAILED one are not counted
    assert float(baseline["energy_train_j_mean"]) == pytest.approx(1050.0)
    assert float(stego["energy_train_j_mean"]) == pytest.approx(623.3333333)
    assert float(stego["energy_train_j_ci95"]) == pytest.approx(
        T_975_2_DOF * np.std([600, 650, 620], ddof=1) / math.sqrt(3))
    assert float(stego["energy_train_j_ci95"]) == pytest.approx(ci95(energies("resnet18", "stego")))
    assert float(stego["energy_train_j_ratio"]) == pytest.approx(623.3333333 / 1050.0)
    welch = stats.ttest_ind(energies("resnet18", "stego"), energies("resnet18", "baseline"), equal_var=False)
    assert float(stego["energy_train_j_p"]) == pytest.approx(welch.pvalue)
    assert float(stego["energy_train_j_p"]) == pytest.approx(0.0010179, rel=1e-4)
    assert stego["energy_train_j_significance"] == "**"
    accuracy = stats.ttest_ind([0.90, 0.91, 0.95], [0.90, 0.92, 0.91], equal_var=False)
    assert float(stego["accuracy_p"]) == pytest.approx(accuracy.pvalue)
    assert stego["accuracy_significance"] == "ns"
    assert stego["flops_per_sample_significance"] == "n/a (no variance)"

    lowrank = rows[(*group, "resnet18", "lowrank")]
    assert float(lowrank["energy_train_j_ci95"]) == pytest.approx(12.706204736 * np.std([900, 950], ddof=1) / math.sqrt(2))
    assert lowrank["energy_train_j_significance"] == "*"  # p = 0.0494
    assert float(lowrank["flops_per_sample_ratio"]) == pytest.approx(1.5 / 1.8)

    prune = rows[(*group, "resnet18", "prune")]
    assert prune["energy_train_j_ci95"] == "" and prune["energy_train_j_p"] == ""
    assert float(prune["energy_train_j_ratio"]) == pytest.approx(1000 / 1050)
    assert prune["energy_train_j_significance"] == "n/a (1 repeat)"
    assert baseline["energy_train_j_significance"] == "baseline"

    vgg = rows[(*group, "vgg16", "stego")]
    assert vgg["energy_train_j_ratio"] == "" and vgg["energy_train_j_significance"] == "no baseline"
    assert vgg["energy_to_accuracy_note"] == "no baseline"
    assert vgg["energy_source"] == "mixed: codecarbon_estimate | rapl"

    cifar = rows[("cifar10", "cpu@h1", "resnet18", "baseline")]
    assert cifar["n"] == "1" and cifar["energy_train_j_mean"] == "" and cifar["energy_to_accuracy_note"] == "not measured"
    h100 = rows[("digits", "NVIDIA H100 80GB HBM3", "resnet18", "baseline")]
    assert float(h100["energy_train_j_mean"]) == 50.0 and float(h100["accuracy_mean"]) == 0.97


def test_energy_to_accuracy_from_epoch_history(report_out):
    rows = read_summary(report_out / "summary.csv")
    group = ("digits", "cpu@h1", "resnet18")
    target = 0.99 * np.mean([0.90, 0.92, 0.91])  # 0.9009
    for method in ("baseline", "stego", "prune", "lowrank"):
        assert float(rows[(*group, method)]["target_accuracy"]) == pytest.approx(target)
    # baseline reaches 0.9009 at epochs 2, 3 and 1: 300+350, 360+370+370, 350 J
    assert float(rows[(*group, "baseline")]["energy_to_accuracy_j_mean"]) == pytest.approx((650 + 1100 + 350) / 3)
    assert float(rows[(*group, "baseline")]["energy_to_accuracy_j_ci95"]) == pytest.approx(ci95([650, 1100, 350]))
    assert float(rows[(*group, "stego")]["energy_to_accuracy_j_mean"]) == pytest.approx((400 + 210 + 620) / 3)
    assert float(rows[(*group, "prune")]["energy_to_accuracy_j_mean"]) == 333.0
    lowrank = rows[(*group, "lowrank")]
    assert lowrank["energy_to_accuracy_j_mean"] == ""
    assert lowrank["energy_to_accuracy_note"] == "not reached in 1 of 2 repeats"


def test_markdown_html_and_plots(report_out):
    out = report_out
    markdown = (out / "summary.md").read_text()
    assert "## digits · cpu@h1 · data_dir=None, weights=imagenet, epochs=3, batch_size=64, optimizer=adam, lr=0.001" in markdown
    lead, stego_line = [line for line in markdown.splitlines() if line.startswith("| resnet18 | 32 | stego |")]
    # The comparison leads: train energy, train time, accuracy over the baseline's, with the 95 %
    # interval of the ratio (delta method on its log, Welch–Satterthwaite df) and Welch's mark.
    stego, baseline = (600.0, 650.0, 620.0), (1000.0, 1100.0, 1050.0)  # GROUP_A's training joules
    parts = [statistics.variance(v) / (len(v) * statistics.mean(v) ** 2) for v in (stego, baseline)]
    freedom = sum(parts) ** 2 / sum(part**2 / 2 for part in parts)
    half = stats.t.ppf(0.975, freedom) * math.sqrt(sum(parts))
    ratio = statistics.mean(stego) / statistics.mean(baseline)
    low, high = ratio * math.exp(-half), ratio * math.exp(half)
    assert lead.startswith(f"| resnet18 | 32 | stego | 3 | 0.594× ({low:.3f}–{high:.3f}) ** | not measured | ")
    assert lead.endswith(" ns | rapl |")
    assert lead_before(markdown, stego_line)
    assert "| resnet18 | 32 | baseline | 3 | = 1.05 ± 0.124 | " in markdown  # its lead row: the divisor, kJ
    assert "| 0.623 ± 0.0625 |" in stego_line  # kJ: 623.3 ± 4.303 × 25.17 / √3 J
    assert "| rapl | 0.594× ** (p=0.001) | not measured | 1.011× ns (p=0.59) | 1.000× n/a (no variance) |" in stego_line
    assert "| 0.594× ** (p=0.001) |" in stego_line
    assert "| prune | 1 | 0.950 | 1.00 |" in markdown
    assert "not reached in 1 of 2 repeats" in markdown
    # Every group has all three files (pipelines declare them); groups by title: cifar10 (no
    # energy: no plot on the page), digits on the H100 (baseline only: no mechanism plot),
    # digits on cpu@h1 (all three).
    plots = sorted(path.name for path in out.glob("*.png"))
    assert plots == sorted(f"{name}_{group}.png" for group in (1, 2, 3)
                           for name in ("energy_by_model", "accuracy_vs_energy", "energy_vs_flops"))
    for path in out.glob("*.png"):
        height, width, _ = imread(path).shape
        assert height > 300 and width > 300
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 5
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert "<td>0.594× ** (p=0.001)</td>" in page


def test_report_run_holds_the_files_and_is_not_data(store, workdir, capsys):
    client, experiment_id, _ = store
    main(["report", "--out", "out"])
    assert re.search(r"report    13 runs in 3 group\(s\)", capsys.readouterr().out)
    main(["report", "--out", "again"])
    first, second = (path.read_text() for path in (workdir / "out" / "summary.csv", workdir / "again" / "summary.csv"))
    assert first == second  # the first report run did not become a row of the second
    # Filed apart: the training runs' experiment holds training runs only.
    assert client.search_runs([experiment_id], "tags.run_kind = 'report'") == []
    reports = client.search_runs([client.get_experiment_by_name("joulebench-reports").experiment_id])
    assert len(reports) == 2 and {run.data.tags["run_kind"] for run in reports} == {"report"}
    logged = {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")}
    assert {"report/summary.csv", "report/summary.md", "report/report.html",
            "report/energy_by_model_3.png"} <= logged and len(logged) == 12


def test_parent_selects_the_sweeps_grid(store, workdir):
    _, _, parent = store
    main(["report", "--parent", parent, "--out", "out"])
    rows = read_summary(workdir / "out" / "summary.csv")
    assert sorted((key[2], key[3], row["n"]) for key, row in rows.items()) == [
        ("resnet18", "baseline", "3"), ("resnet18", "stego", "3")]


def test_runs_from_keeps_only_the_configurations_recorded_there(store, workdir):
    # What DVC's report stage sees: one run.json per train stage under results/; other runs of
    # the experiment (older params, other sweeps) stay out of the table.
    for stage, config_hash in (("resnet18-stego/repeat-0", "resnet18-stego-digits-cpu-h1-0"),
                               ("resnet18-stego/repeat-1", "resnet18-stego-digits-cpu-h1-1"),
                               ("vgg16-stego/repeat-0", "vgg16-stego-digits-cpu-h1-0")):
        record = workdir / "results" / stage / "run.json"
        record.parent.mkdir(parents=True)
        record.write_text(f'{{"run_id": "x", "experiment_id": "1", "config_hash": "{config_hash}"}}')
    main(["report", "--runs-from", "results", "--out", "out"])
    rows = read_summary(workdir / "out" / "summary.csv")
    assert sorted((key[2], key[3], row["n"]) for key, row in rows.items()) == [
        ("resnet18", "stego", "2"), ("vgg16", "stego", "1")]
    assert {row["energy_train_j_significance"] for row in rows.values()} == {"no baseline"}
    (vgg16,) = [row for key, row in rows.items() if key[2] == "vgg16"]
    assert float(vgg16["energy_train_j_mean"]) == 5000.0  # its repeat 0 alone


def test_runs_from_with_a_damaged_record_is_one_line(store, workdir, capsys):
    (workdir / "results").mkdir()
    (workdir / "results" / "run.json").write_text('{"run_id": "x"}')
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--runs-from", "results"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "results/run.json is not a run record of `joulebench train --run-json`" in err and "\n" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--experiment", "nope"], "no experiment 'nope' in the MLflow store"),
    (["--runs-from", "nowhere"], "--runs-from nowhere: no run.json there"),
    (["--parent", "0123456789abcdef0123456789abcdef"], "is not a run in the store"),
    (["--experiment", "joulebench", "--parent", "0123456789abcdef0123456789abcdef"],
     "is not a run of experiment 'joulebench'"),
    (["--target-fraction", "1.5"], "--target-fraction must be a number in (0, 1]"),
])
def test_bad_input_one_line_exit_2(store, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines


def test_no_finished_runs_is_one_line(store_uri, capsys):
    MlflowClient(store_uri).create_experiment("joulebench")
    with pytest.raises(SystemExit):
        main(["report"])
    assert "no FINISHED joulebench runs in any experiment of the store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--experiment", "joulebench"])
    assert "no FINISHED joulebench runs in experiment 'joulebench'" in capsys.readouterr().err


def test_runs_in_every_experiment_are_reported_and_unfinished_ones_counted(store, workdir, capsys):
    """`mlflow run` files its runs under Default: they are joulebench's too. A run that did not
    finish is left out, and the report says how many, by status."""
    client, experiment_id, _ = store
    main(["report", "--out", "before"])
    (template,) = client.search_runs([experiment_id], "params.model = 'vgg16' and params.method = 'stego'",
                                     max_results=1)
    tags = dict(template.data.tags) | {"config_hash": "made-by-mlflow-run", "repeat": "7"}
    launched = client.create_run("0", tags=tags).info.run_id  # a further repeat, as `mlflow run` files it
    params = dict(template.data.params) | {"repeat": "7", "seed": "7"}
    client.log_batch(launched, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in template.data.metrics.items()])
    client.set_terminated(launched, "FINISHED")
    client.set_terminated(client.create_run("0", tags={"config_hash": "x"}).info.run_id, "FAILED")
    client.create_run(client.create_experiment("other"), tags={"config_hash": "y"})  # RUNNING
    client.create_run("0")  # not joulebench's: no config_hash
    capsys.readouterr()
    main(["report", "--out", "after"])
    out = capsys.readouterr().out
    assert "read      FINISHED runs from Default (1), joulebench (14)" in out
    assert "left out  2 FAILED, 1 RUNNING (not FINISHED: no complete measurement)" in out  # one FAILED in the store
    assert "report    14 runs" in out  # 13 before, and Default's
    before, after = (read_summary(workdir / folder / "summary.csv") for folder in ("before", "after"))
    vgg16_stego = [key for key in after if key[2:4] == ("vgg16", "stego")]
    assert [int(after[key]["n"]) - int(before[key]["n"]) for key in vgg16_stego] == [1]


def test_pareto_front_keeps_points_nothing_beats():
    points = [(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (0.5, 0.4), (2.0, 0.8), (4.0, 0.8)]
    assert pareto_front(points) == [(0.5, 0.4), (1.0, 0.5), (2.0, 0.8)]


def test_statistics_edges():
    assert Estimate((5.0,)).ci95 is None
    assert Estimate((2.0, 4.0)).ci95 == pytest.approx(12.706204736)  # t(0.975, 1) × √2 / √2
    assert Ratio.against(Estimate((2.0, 2.0)), Estimate((4.0, 4.0))) == Ratio(0.5, None, "n/a (no variance)")
    assert Ratio.against(None, Estimate((1.0,))) == Ratio(None, None, "not measured")
    assert [significance_mark(p) for p in (0.0009, 0.009, 0.049, 0.05)] == ["***", "**", "*", "ns"]
    assert energy_to_accuracy([(1, 0.5), (2, 0.9)], [(1, 10.0), (2, 20.0)], 0.9) == 30.0
    assert energy_to_accuracy([(1, 0.5), (2, 0.8)], [(1, 10.0), (2, 20.0)], 0.9) is None
    assert [format_number(v) for v in (1234.4, 0.0623, 12.0, 0.0)] == ["1,234", "0.0623", "12.0", "0"]


# --------------------------------------------------------------------------- caveats: short_run, compute_emulated

SHORT = "training 12.3 s < 60 s (MLPerf Power's minimum)"
SHORT_WARMUP = "training 11.9 s < 60 s (MLPerf Power's minimum); warm-up 14 % of training energy > 10 %"
EMULATED = "cpu: no native bfloat16 (AVX512-BF16/AMX); PyTorch runs reference kernels"
NEW_PARAMS = {"deterministic": "True", "tf32": "False"}
# model, method, deterministic → [(accuracy, energy_train_j, tags)]; baseline vs stego alone is "**"
CAVEAT_RUNS = {
    ("resnet18", "baseline", "True"): [(0.90, 1000.0, {}), (0.92, 1100.0, {}), (0.91, 1050.0, {})],
    ("resnet18", "stego", "True"): [(0.90, 600.0, {"short_run": SHORT}), (0.91, 650.0, {"short_run": SHORT_WARMUP}),
                                    (0.95, 620.0, {})],
    ("resnet18", "lowrank", "True"): [(0.90, 600.0, {"compute_emulated": EMULATED}),
                                      (0.91, 650.0, {"compute_emulated": EMULATED}),
                                      (0.95, 620.0, {"compute_emulated": EMULATED})],
    ("vgg16", "baseline", "True"): [(0.90, 1000.0, {"short_run": SHORT}), (0.92, 1100.0, {"short_run": SHORT}),
                                    (0.91, 1050.0, {"short_run": SHORT})],
    ("vgg16", "stego", "True"): [(0.90, 600.0, {}), (0.91, 650.0, {}), (0.95, 620.0, {})],
    # Only `deterministic` differs from the first group's resnet18 rows.
    ("resnet18", "baseline", "False"): [(0.90, 1000.0, {}), (0.92, 1100.0, {}), (0.91, 1050.0, {})],
    ("resnet18", "stego", "False"): [(0.90, 600.0, {}), (0.91, 650.0, {}), (0.95, 620.0, {})],
}


@pytest.fixture(scope="module")
def caveat_report(tmp_path_factory, empty_store):
    """The folder `joulebench report` wrote for CAVEAT_RUNS, plus runs logged before
    `deterministic` and `tf32` existed (neither param)."""
    folder = tmp_path_factory.mktemp("caveats")
    shutil.copyfile(empty_store, folder / "mlflow.db")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment_id = client.create_experiment("joulebench", artifact_location=str(folder / "artifacts"))
    for (model, method, deterministic), runs in CAVEAT_RUNS.items():
        for repeat, (accuracy, energy, tags) in enumerate(runs):
            log_run(client, experiment_id, model=model, method=method, repeat=repeat, accuracy=accuracy,
                    energy=energy, history=([accuracy], [energy]), extra_tags=tags,
                    extra_params=NEW_PARAMS | {"deterministic": deterministic})
    for method, energies_ in (("baseline", (1000.0, 1100.0, 1050.0)), ("stego", (600.0, 650.0, 620.0))):
        for repeat, energy in enumerate(energies_):
            log_run(client, experiment_id, model="resnet18", method=method, repeat=repeat, accuracy=0.9,
                    energy=energy, history=([0.9], [energy]))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        main(["report", "--out", "out"])
    return folder / "out"


def caveat_rows(out, deterministic="True"):
    """summary.csv's rows of one group (the groups share dataset and device), by (model, method)."""
    with (out / "summary.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if f"deterministic={deterministic};" in row["settings"]]
    return {(row["model"], row["method"]): row for row in rows}


def table_line(markdown, model, method):
    """The row's line in the detail table (the comparison table's comes first)."""
    _, line = [line for line in markdown.splitlines() if line.startswith(f"| {model} | 32 | {method} |")]
    return line


def lead_before(markdown, detail_line):
    """Each group's comparison table comes before its detail table."""
    lines = markdown.splitlines()
    lead_header = next(i for i, line in enumerate(lines) if line.startswith("| model | px | method | n | train kJ ÷"))
    return lead_header < lines.index(detail_line)


def test_short_run_row_is_marked_and_draws_no_significance(caveat_report):
    rows = caveat_rows(caveat_report)
    stego = rows["resnet18", "stego"]
    assert stego["short_run"] == f"{SHORT_WARMUP} | {SHORT}" and stego["compute_emulated"] == ""
    assert float(stego["energy_train_j_ratio"]) == pytest.approx(623.3333333 / 1050.0)  # the ratio stands
    for key in ("energy_train_j", "accuracy", "train_seconds", "flops_per_sample"):
        assert stego[f"{key}_significance"] in ("n/a (short run)", "not measured")
    assert stego["energy_train_j_significance"] == "n/a (short run)" and stego["energy_train_j_p"] == ""
    assert rows["resnet18", "baseline"]["short_run"] == ""

    markdown = (caveat_report / "summary.md").read_text()
    line = table_line(markdown, "resnet18", "stego †")
    assert "| 0.594× n/a (short run) |" in line and "(p=" not in line
    assert (f"- † short run: resnet18 · 32 px · stego, 2 of 3 runs: {SHORT_WARMUP} | {SHORT}"
            in markdown.splitlines())
    page = (caveat_report / "report.html").read_text()
    assert "<td>stego †</td>" in page and "<td>0.594× n/a (short run)</td>" in page
    assert html.escape(SHORT_WARMUP) in page


def test_emulated_row_is_marked_and_draws_no_significance(caveat_report):
    lowrank = caveat_rows(caveat_report)["resnet18", "lowrank"]
    assert lowrank["compute_emulated"] == EMULATED and lowrank["short_run"] == ""
    assert lowrank["energy_train_j_significance"] == "n/a (emulated)" and lowrank["energy_train_j_p"] == ""
    assert float(lowrank["energy_train_j_ratio"]) == pytest.approx(623.3333333 / 1050.0)
    markdown = (caveat_report / "summary.md").read_text()
    assert "| 0.594× n/a (emulated) |" in table_line(markdown, "resnet18", "lowrank ‡")
    assert f"- ‡ emulated: resnet18 · 32 px · lowrank, 3 of 3 runs: {EMULATED}" in markdown.splitlines()
    assert "<td>lowrank ‡</td>" in (caveat_report / "report.html").read_text()


def test_ratio_to_a_short_baseline_draws_no_significance(caveat_report):
    rows = caveat_rows(caveat_report)
    stego, baseline = rows["vgg16", "stego"], rows["vgg16", "baseline"]
    assert stego["short_run"] == "" and baseline["short_run"] == SHORT
    assert stego["energy_train_j_significance"] == "n/a (short run)" and stego["energy_train_j_p"] == ""
    assert float(stego["energy_train_j_ratio"]) == pytest.approx(623.3333333 / 1050.0)
    markdown = (caveat_report / "summary.md").read_text()
    assert "| 0.594× n/a (short run) |" in table_line(markdown, "vgg16", "stego")
    assert "- † short run: vgg16 · 32 px · baseline, 3 of 3 runs:" in markdown


def test_runs_differing_only_in_deterministic_are_two_groups(caveat_report):
    for deterministic in ("True", "False"):
        rows = caveat_rows(caveat_report, deterministic)
        assert rows["resnet18", "baseline"]["n"] == "3" and rows["resnet18", "stego"]["n"] == "3"
        assert f"; deterministic={deterministic}; tf32=False;" in rows["resnet18", "baseline"]["settings"]
    unmarked = caveat_rows(caveat_report, "False")["resnet18", "stego"]
    assert unmarked["energy_train_j_significance"] == "**" and unmarked["short_run"] == ""
    markdown = (caveat_report / "summary.md").read_text()
    assert markdown.count("## digits · cpu@h1 ·") == 3
    assert "deterministic=False, tf32=False, limit_train_batches=None" in markdown


def test_runs_without_the_new_params_still_report_in_their_own_group(caveat_report):
    rows = caveat_rows(caveat_report, "None")  # logged before `deterministic` and `tf32` existed
    assert sorted(rows) == [("resnet18", "baseline"), ("resnet18", "stego")]
    stego = rows["resnet18", "stego"]
    assert "; deterministic=None; tf32=None;" in stego["settings"] and stego["n"] == "3"
    assert stego["energy_train_j_significance"] == "**"
    assert float(stego["energy_train_j_ratio"]) == pytest.approx(623.3333333 / 1050.0)


def test_legend_explains_the_marks_and_marked_plots_render(caveat_report):
    # Group 3 (deterministic=True by title) has marked rows in every plot; each is a real figure.
    for name in ("energy_by_model", "accuracy_vs_energy", "energy_vs_flops"):
        height, width, _ = imread(caveat_report / f"{name}_3.png").shape
        assert height > 300 and width > 300
    page = (caveat_report / "report.html").read_text()
    assert "† short run: too short to measure" in page and "‡ emulated: the hardware emulates" in page


def test_plots_draw_marked_rows_hatched_or_hollow(monkeypatch, tmp_path):
    def record(method, repeat, energy, tags):
        params = {"model": "resnet18", "method": method, "image_size": "32", "device": "cpu"}
        return RunRecord(f"{method}{repeat}", method, repeat, params,
                         {"config_hash": f"{method}{repeat}", "energy_source": "rapl", **tags},
                         {"energy_train_j": energy, "accuracy": 0.9, "flops_per_sample": 1.8e9})
    runs = [record("baseline", r, 1000.0 + r, {}) for r in range(2)]
    runs += [record("stego", r, 600.0 + r, {"short_run": SHORT}) for r in range(2)]
    runs += [record("lowrank", r, 700.0 + r, {}) for r in range(2)]
    ((_, rows),) = build_report(runs, 0.99, lambda run_id, key: [])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure))
    for _, plot in plots.PLOTS:
        assert plot(rows, tmp_path / "plot.png")
    bars, scatter, mechanism = (figure.axes[0] for figure in figures)
    # lowrank, stego: hatched where marked; the hatched legend entry says what it means
    assert [patch.get_hatch() for patch in bars.patches] == [None, None, "//"]
    assert "hatched: † short run (not comparable)" in [text.get_text() for text in bars.get_legend().texts]
    assert "energy source: rapl" in bars.get_title()
    # Hollow: the stego point alone (the mechanism plot has no baseline point; legend entries have none).
    for axes, count in ((scatter, 3), (mechanism, 2)):
        points = [c for c in axes.collections if len(c.get_offsets())]
        assert len(points) == count and [c.get_facecolors().size == 0 for c in points].count(True) == 1
    assert "energy source: rapl" in scatter.get_title() and "energy source: rapl" in mechanism.get_title()
    # Accuracy vs energy: each method's legend entry is drawn as its points are, colour, marker and
    # fill (stego, all of whose rows are marked, hollow in both).
    drawn = {c.get_label(): c for c in scatter.collections if not len(c.get_offsets())}
    for method in ("baseline", "stego", "lowrank"):
        (point,) = [c for c in scatter.collections if len(c.get_offsets())
                    and tuple(c.get_offsets()[0]) == next(p for r in rows if r.key.method == method
                                                          for p in [(r.estimates["energy_train_j"].mean / 1e3,
                                                                     r.estimates["accuracy"].mean)])]
        entry = drawn[method]
        assert entry.get_paths()[0].vertices.tolist() == point.get_paths()[0].vertices.tolist()  # marker
        assert entry.get_edgecolors().tolist() == point.get_edgecolors().tolist()  # colour
        assert entry.get_facecolors().tolist() == point.get_facecolors().tolist()  # filled or hollow
    assert len({tuple(drawn[m].get_edgecolors()[0]) for m in ("baseline", "stego", "lowrank")}) == 3


def test_reading_runs_back_imports_neither_torch_nor_torch_pruning():
    """The report learns the methods' defaults from method_params, and tracking imports torch
    only where a run is written: a report host needs no torch."""
    code = ("import sys, joulebench.report; "
            "print(sorted(m for m in ('torch', 'torch_pruning', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
