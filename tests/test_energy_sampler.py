"""Power integration and the background sampler: trapezoid vs analytic integrals, rates, peaks."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from support import PowercapTree

from joulebench.energy.rapl import RaplMeter
from joulebench.energy.sampler import PowerSampler, RateOfCumulative, TrapezoidIntegrator, peak_watts


def integrate(samples: list[tuple[float, float]]) -> float:
    integrator = TrapezoidIntegrator()
    for seconds, watts in samples:
        integrator.add(seconds, watts)
    return integrator.joules


def test_trapezoid_is_exact_for_a_power_ramp_even_on_an_irregular_grid():
    times = [0.0, 0.05, 0.3, 0.31, 1.0, 1.7, 2.0]
    ramp = [(t, 100.0 + 50.0 * t) for t in times]  # ∫0..2 (100 + 50 t) dt = 200 + 100
    assert integrate(ramp) == pytest.approx(300.0, rel=1e-12)


def test_trapezoid_of_a_10hz_sine_trace_is_within_its_error_bound_of_the_integral():
    period, amplitude, mean, step, end = 4.0, 100.0, 200.0, 0.1, 10.0
    omega = 2 * math.pi / period
    trace = [(k * step, mean + amplitude * math.sin(omega * k * step)) for k in range(101)]
    analytic = mean * end + amplitude / omega * (1 - math.cos(omega * end))  # 2127.32 J
    # Trapezoid error is at most (b - a) h² max|P''| / 12.
    bound = end * step**2 * amplitude * omega**2 / 12
    error = abs(integrate(trace) - analytic)
    assert analytic == pytest.approx(2127.324, abs=1e-3)
    assert 0 < error <= bound  # 0 < : the samples really are a sine, not a stub
    assert integrate(trace[:1]) == 0.0  # one sample spans no time


def test_rate_of_cumulative_readings_is_delta_joules_over_delta_seconds():
    seconds = iter([1.0, 1.5, 3.5])
    rate = RateOfCumulative(clock=lambda: next(seconds))
    assert rate({"cpu": 10.0}) == {}  # no interval yet
    assert rate({"cpu": 60.0, "ram": 5.0}) == {"cpu": 100.0}  # ram: no earlier reading
    assert rate({"cpu": 80.0, "ram": 9.0}) == {"cpu": 10.0, "ram": 2.0}


def test_peak_watts_is_the_highest_row_sum_inside_the_window_inclusive():
    trace = [
        (10.0, {"gpu0": 300.0, "cpu": 50.0}),
        (10.1, {"gpu0": 420.0, "cpu": 55.0}),
        (10.2, {"gpu0": 410.0, "cpu": 80.0}),
        (10.3, {"gpu0": 900.0, "cpu": 90.0}),
    ]
    assert peak_watts(trace, 10.0, 10.2) == 490.0
    assert peak_watts(trace, 10.05, 10.15) == 475.0
    assert peak_watts(trace, 10.31, 11.0) is None


def test_sampler_polls_on_its_period_and_records_a_failing_source(tmp_path: Path):
    good = PowercapTree(tmp_path / "good").zone("intel-rapl:0", "package-0")
    bad = PowercapTree(tmp_path / "bad").zone("intel-rapl:0", "package-0")
    steady = RaplMeter(good.root, poll_period_s=0.02)
    failing = RaplMeter(bad.root, poll_period_s=0.02)
    (bad.root / "intel-rapl:0" / "energy_uj").unlink()
    sampler = PowerSampler([steady, failing])
    sampler.start()
    started = time.time()
    for _ in range(15):
        good.add("intel-rapl:0", 0.5)  # 0.5 J every 20 ms: 25 W
        time.sleep(0.02)
    sampler.stop()
    trace = sampler.trace()
    times = [t for t, _ in trace]
    assert len(trace) >= 5 and times == sorted(times) and times[0] >= started
    assert all(set(watts) == {"cpu"} for _, watts in trace)
    # Each row's watts are the energy since the previous poll over that interval, so the
    # rows telescope back to the 7.5 J written (less what came before the first poll or
    # after the last one: at most three writes of 0.5 J on a busy host). Rows are stamped
    # just before their poll, so a preempted poll stretches an interval by a few percent.
    rows_joules = sum(w["cpu"] * (t - t_prev) for (t_prev, _), (t, w) in zip(trace, trace[1:]))
    assert 7.5 - 1.5 <= rows_joules <= 7.5 * 1.05
    assert sampler.failures == {"rapl": sampler.failures["rapl"]}
    assert sampler.failures["rapl"].startswith("FileNotFoundError")
    assert 0 < sampler.cpu_seconds < time.time() - started
    rows_after_stop = len(sampler.trace())
    time.sleep(0.05)
    assert len(sampler.trace()) == rows_after_stop  # stop() really stopped the thread
