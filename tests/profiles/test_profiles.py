"""Profiles: the shipped files validate, every number has a source, bad files fail in one line.

Horowitz bounds (the check this module documents): a profile's energy per int8 MAC must lie within
[1/10, 10] x Horowitz's 45 nm 8-bit multiply + add (0.2 + 0.03 pJ) scaled linearly by
process_nm / 45, and its DRAM energy per byte within [1/10, 10] x Horowitz's 1.3 nJ per 64-bit
DRAM access / 8 (not scaled: DRAM interface energy does not follow the logic process).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli.main import main
from profiles import list_profiles, load_profile
from profiles.errors import ProfileError
from profiles.schema import PROFILES_DIR

BASE = ["arm-neon-a76", "hexagon-htp", "apple-ane", "host-cpu"]
HOROWITZ_INT8_MAC_PJ_45NM = 0.2 + 0.03
HOROWITZ_DRAM_PJ_PER_BYTE = 1300 / 8
BOUNDS = (0.1, 10.0)


def _numbers(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        if "value" in node:
            yield path, node
            return
        for k, v in node.items():
            if k != "calibration":
                yield from _numbers(v, f"{path}.{k}" if path else str(k))


def test_shipped_profiles_load_and_list() -> None:
    names = {row["name"] for row in list_profiles()}
    assert set(BASE) <= names
    for name in BASE:
        assert load_profile(name).name == name


@pytest.mark.parametrize("name", BASE)
def test_every_number_has_a_source(name: str) -> None:
    data = yaml.safe_load((PROFILES_DIR / f"{name}.yaml").read_text())
    found = list(_numbers(data))
    assert len(found) > 20
    for path, num in found:
        assert isinstance(num["value"], (int, float)), path
        assert len(num["source"]) >= 10, path


def test_budgets_from_the_product_brief() -> None:
    assert load_profile("arm-neon-a76").budgets == {"latency_ms": 100, "memory_bytes": 200e6}
    assert load_profile("hexagon-htp").budgets == pytest.approx({"energy_j": 0.3e-3, "memory_bytes": 50e6})
    assert load_profile("apple-ane").budgets == {"latency_ms": 30, "memory_bytes": 500e6}


@pytest.mark.parametrize("name", BASE)
def test_energy_within_an_order_of_magnitude_of_horowitz(name: str) -> None:
    p = load_profile(name)
    scaled = HOROWITZ_INT8_MAC_PJ_45NM * p.num("process_nm") / 45
    mac_ratio = p.num("energy", "per_mac_pj", "int8") / scaled
    dram_ratio = p.num("energy", "dram_pj_per_byte") / HOROWITZ_DRAM_PJ_PER_BYTE
    assert BOUNDS[0] <= mac_ratio <= BOUNDS[1], mac_ratio
    assert BOUNDS[0] <= dram_ratio <= BOUNDS[1], dram_ratio


def _broken(tmp_path: Path, edit: Any) -> Path:
    data = yaml.safe_load((PROFILES_DIR / "host-cpu.yaml").read_text())
    edit(data)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["throughput_gmacs"]["int8"].update(value=-3), "throughput_gmacs.int8 must be > 0 (got -3)"),
        (lambda d: d["memory"].pop("dram_bandwidth_gbs"), "missing field memory.dram_bandwidth_gbs"),
        (lambda d: d.pop("energy"), "missing field energy"),
        (lambda d: d["throughput_gmacs"].update(int3={"value": 1, "source": "made up here"}),
         "throughput_gmacs: unknown precision 'int3'"),
        (lambda d: d["native"]["weights"].append("int3"), "unknown precision 'int3'"),
        (lambda d: d["overhead"]["per_layer_us"].pop("source"), "missing field overhead.per_layer_us.source"),
        (lambda d: d["native"].update(weights=["int4"]), "missing field throughput_gmacs.int4"),
        (lambda d: d["memory"]["onchip_bytes"].update(value="big"), "memory.onchip_bytes must be a number"),
    ],
)
def test_malformed_profile_is_one_line_naming_the_field(tmp_path: Path, edit: Any, expected: str) -> None:
    path = _broken(tmp_path, edit)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert expected in msg
    assert msg.startswith(str(path))


def test_cli_bad_profile_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _broken(tmp_path, lambda d: d["throughput_gmacs"]["int8"].update(value=-3))
    assert main(["profiles", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("qae: error:") and "throughput_gmacs.int8" in err


def test_unknown_profile_name_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "show", "no-such-chip"]) == 2
    assert "host-cpu" in capsys.readouterr().err


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["profiles", "list", "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} >= set(BASE)
    assert main(["profiles", "show", "hexagon-htp"]) == 0
    assert "product brief" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("literal", "field"),
    [
        (".nan", "throughput_gmacs.int8"),
        (".inf", "throughput_gmacs.int8"),
        ("-.inf", "memory.onchip_bytes"),
        (".NaN", "calibration.residuals.0"),
    ],
)
def test_non_finite_number_is_refused_naming_the_field(tmp_path: Path, literal: str, field: str) -> None:
    """A ``.nan`` throughput passed the schema and turned into "nan ms" and an IntegrityError in a search."""
    text = (PROFILES_DIR / "host-cpu.yaml").read_text()
    data = yaml.safe_load(text)
    if field == "calibration.residuals.0":
        data["calibration"] = {"id": "x", "residuals": ["PLACEHOLDER"]}
    else:
        a, b = field.split(".")
        data[a][b]["value"] = "PLACEHOLDER"
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data).replace("PLACEHOLDER", literal))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "\n" not in msg and f"{field} must be a finite number" in msg, msg
