"""report.html of a finished digits-vit run, opened in Chromium: no console error and no request,
a tooltip with provenance on hover, the genome and the exact `qae export` command on click (which
then runs), a budget slider that greys points out, measured and predicted points drawn apart, and a
screenshot of each target's front under the test's temporary folder."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from harness.run.archive import Archive

pytestmark = pytest.mark.slow

#: (x, y) on screen of the point with this id on a target's front plot (None if not drawn)
POINT_XY = """([slug, id]) => {
  const gd = document.getElementById('plot-' + slug);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  for (const tr of gd._fullData) {
    const j = (tr.customdata || []).indexOf(id);
    if (j >= 0) return {x: r.left + xa._offset + xa.l2p(tr.x[j]), y: r.top + ya._offset + ya.l2p(tr.y[j])};
  }
  return null;
}"""
#: the front plot's traces: name, symbol, colour and count of points
TRACES = """(slug) => document.getElementById('plot-' + slug)._fullData.map(
  t => ({name: t.name, symbol: t.marker.symbol, color: t.marker.color, n: t.x.length, ids: t.customdata || []}))"""


@pytest.fixture
def opened(finished_run: Path, watched: Any) -> Any:
    w = watched("file://")
    w.page.goto((finished_run / "report.html").as_uri())
    w.page.wait_for_selector("#plot-hexagon-htp .main-svg")
    return w


def _front(run: Path, target: str) -> dict[str, Any]:
    return dict(json.loads((run / "front.json").read_text())["targets"][target])


def _lone_front_point(w: Any, slug: str) -> str:
    """A front point no other drawn point sits on (hover and click reach it alone)."""
    traces = w.page.evaluate(TRACES, slug)
    xy = {i: w.page.evaluate(POINT_XY, [slug, i]) for t in traces for i in t["ids"]}
    front = [i for t in traces if t["name"].startswith("front,") for i in t["ids"]]
    for i in front:
        if all(abs(xy[i]["x"] - p["x"]) + abs(xy[i]["y"] - p["y"]) > 12 for j, p in xy.items() if j != i):
            return i
    raise AssertionError(f"every front point of {slug} overlaps another")


def test_opens_offline_without_console_errors_and_shows_each_front(opened: Any, finished_run: Path,
                                                                  tmp_path: Path) -> None:
    page = opened.page
    page.wait_for_selector("#plot-local .main-svg")
    for chart in ("hypervolume", "validation-test", "sensitivity", "calibration-local", "device-host-local"):
        page.wait_for_selector(f"#chart-{chart} .main-svg")  # the reviewer's views
    assert opened.problems() == []
    assert opened.requests == [(finished_run / "report.html").as_uri()]  # the page itself, nothing else
    for target in ("hexagon-htp", "local"):
        shot = tmp_path / f"front-{target}.png"
        page.locator(f"#front-box-{target}").screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        # every front point of front.json is drawn, and its candidates are counted
        drawn = {i for t in page.evaluate(TRACES, target) if t["name"].startswith("front,") for i in t["ids"]}
        assert drawn == {p["id"] for p in _front(finished_run, target)["points"]}
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_measured_and_predicted_points_are_drawn_apart_and_baselines_marked(opened: Any) -> None:
    shapes = {slug: {t["name"]: t["symbol"] for t in opened.page.evaluate(TRACES, slug)}
              for slug in ("hexagon-htp", "local")}
    assert shapes["hexagon-htp"]["front, latency predicted"] == "circle"  # a profile's cost model
    assert shapes["local"]["front, latency measured"] == "star"  # this host, measured by the agent
    for slug in shapes:
        baselines = next(t for t in opened.page.evaluate(TRACES, slug) if t["name"] == "uniform baselines")
        assert baselines["n"] >= 3  # fp32, w8a8, w4a8, w8-dynamic where they have every objective


def test_hover_shows_values_with_provenance_and_click_gives_the_export_command(
        opened: Any, finished_run: Path, tmp_path: Path) -> None:
    page = opened.page
    point = _lone_front_point(opened, "hexagon-htp")
    page.locator("#plot-hexagon-htp").scroll_into_view_if_needed()
    xy = page.evaluate(POINT_XY, ["hexagon-htp", point])
    page.mouse.move(xy["x"], xy["y"])
    tip = page.wait_for_selector("#plot-hexagon-htp .hoverlayer .hovertext").text_content()
    assert point in tip and "on the front" in tip
    assert "predicted, by hexagon-htp, expected error ±50 %" in tip  # latency with its provenance and interval
    assert "computed, validation, n=270" in tip and "on test:" in tip and "95 % interval" in tip
    assert "emulated: no" in tip and "layers: " in tip

    page.mouse.click(xy["x"], xy["y"])
    command = page.wait_for_selector("#export-hexagon-htp").text_content()
    assert command == f"qae export {finished_run} --target hexagon-htp --pick {point}"
    # its genome, a row per layer
    archive = Archive.open_existing(finished_run / "archive.sqlite", readonly=True)
    layers = archive.config()["layers"]
    archive.close()
    assert page.locator("#details-hexagon-htp table tr").count() == 1 + len(layers)
    assert page.locator("#details-hexagon-htp table td.l").all_text_contents() == layers
    # the command as shown is one that works
    from harness.cli.main import main

    argv = [*shlex.split(command)[1:], "-o", str(tmp_path / "export")]
    assert main(argv) == 0
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert json.loads((tmp_path / "export" / "objectives.json").read_text())["accuracy"]["split"] == "validation"


def test_a_budget_slider_greys_out_the_points_over_it(opened: Any) -> None:
    page = opened.page
    feasible = page.locator("#feasible-hexagon-htp .meets")
    before = int(feasible.text_content())
    assert before == len([i for t in page.evaluate(TRACES, "hexagon-htp") if t["name"].startswith("front,")
                          for i in t["ids"]])
    slider = page.locator("#budget-size-hexagon-htp")
    slider.focus()
    page.keyboard.press("Home")  # the smallest size on the page: one point (or a few equal ones) meet it
    page.wait_for_function("(n) => +document.querySelector('#feasible-hexagon-htp .meets').textContent < n",
                           arg=before)
    after = int(feasible.text_content())
    assert 1 <= after < before
    grey = next(t for t in page.evaluate(TRACES, "hexagon-htp") if t["name"] == "front, outside the sliders' budgets")
    assert grey["n"] == before - after and grey["color"] == "#cfcfcf"
    value = float(page.locator("#budget-value-size-hexagon-htp").text_content())
    assert value == pytest.approx(float(slider.get_attribute("min")), rel=1e-2)
    page.keyboard.press("End")  # back to the largest: every front point meets it again
    # ... and at its end a slider sets no limit, so a live page's new larger candidates are not greyed
    state = page.evaluate("JSON.parse(sessionStorage.getItem('qae-report-state'))")
    assert state["hexagon-htp"]["limits"]["size"] is None
    page.wait_for_function("(n) => +document.querySelector('#feasible-hexagon-htp .meets').textContent == n",
                           arg=before)


def test_a_run_without_candidates_yet_opens_cleanly(tmp_path: Path, watched: Any) -> None:
    from harness.report.html import build_report

    archive = Archive(tmp_path / "archive.sqlite")
    archive.start({"model": "m.onnx", "objectives": ["accuracy", "size", "latency"], "seed": 0, "population": 4,
                   "generations": 1, "layers": ["fc"]})
    archive.close()
    w = watched("file://")
    w.page.goto(build_report(tmp_path).as_uri())
    assert "No candidate was evaluated yet." in w.page.text_content("body")
    assert w.problems() == [] and len(w.requests) == 1


def test_each_provenance_has_its_marker_emulated_is_outlined_and_axes_switch(tmp_path: Path, watched: Any) -> None:
    """A hand-made archive with a latency of every source and an emulated candidate."""
    from harness.report.html import build_report
    from harness.run.archive import Value

    archive = Archive(tmp_path / "archive.sqlite")
    archive.start({"model": "m.onnx", "objectives": ["accuracy", "size", "latency"], "seed": 0, "population": 4,
                   "generations": 1, "layers": ["fc"]})
    host = {"on": "host", "n": 100, "metric": "top1", "split": "validation"}
    rows = [("meas", 0.95, 4000.0, 1.0, "measured", False), ("pred", 0.90, 2000.0, 0.8, "predicted", False),
            ("sim", 0.85, 1500.0, 0.6, "simulated", False), ("emu", 0.80, 750.0, 0.5, "predicted", True)]
    for h, acc, size, lat, source, emulated in rows:
        detail = {"device": "dev"} if source != "predicted" else {"profile": "host-cpu", "expected_error": 0.2}
        values = {"accuracy": Value(acc, "computed", host), "size": Value(size, "computed", {"unit": "bytes"}),
                  "latency": Value(lat, source, {**detail, "unit": "ms"})}
        gene = {"weight_bits": 3 if emulated else 8, "activation_bits": 8}
        archive.record("t", h, {"layers": {"fc": gene}}, 1, emulated, True, 0.0, values, [], {}, 1)
    archive.close()
    w = watched("file://")
    w.page.goto(build_report(tmp_path).as_uri())
    w.page.wait_for_selector("#plot-t .main-svg")
    traces = {t["name"]: t for t in w.page.evaluate(TRACES, "t")}
    measured = traces["front, latency measured"]
    assert measured["symbol"] == "star" and measured["ids"] == ["meas"]
    assert traces["front, latency predicted"]["symbol"] == "circle"
    assert traces["front, latency simulated"]["symbol"] == "diamond"
    emu = traces["front, latency predicted, emulated"]
    assert emu["ids"] == ["emu"] and w.page.evaluate(
        "() => document.getElementById('plot-t')._fullData.find(t => t.name.endsWith('emulated')).marker.line.color"
    ) == "#ff7f0e"
    w.page.locator("#plot-t").scroll_into_view_if_needed()
    w.page.select_option("#x-t", "latency")
    assert w.page.text_content("#plot-t .xtitle") == "latency (ms)"
    xy = w.page.evaluate(POINT_XY, ["t", "emu"])
    assert xy["x"] == pytest.approx(min(p["x"] for p in (w.page.evaluate(POINT_XY, ["t", i])
                                                          for i in ("meas", "pred", "sim", "emu"))))
    w.page.mouse.move(xy["x"], xy["y"])
    tip = w.page.wait_for_selector("#plot-t .hoverlayer .hovertext").text_content()
    assert "emulated: yes (accuracy exact, size nominal, no speed-up)" in tip and "layers: w3a8 ×1" in tip
    assert w.problems() == []
