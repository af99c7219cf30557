"""Cheapest-GPU selection over small SkyPilot catalogs under a temporary SKY_RUNTIME_DIR, read with
SkyPilot's own `sky.catalog`, checked against a brute-force minimum over the same CSV rows."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest_cloud import HEADERS, ROWS, point_skypilot_at, write_catalog

from jobs import pricing
from trainer.spec import parse_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    write_catalog(tmp_path)
    point_skypilot_at(monkeypatch, tmp_path)
    return tmp_path


def _brute_force(clouds, spot, accelerator=None, count=None, nodes=1):
    """Every (cloud, instance, region, spot) of the CSVs with a plausible price, minimum price."""
    best = None
    for cloud in clouds:
        if nodes > 1 and cloud in ("runpod", "vast"):
            continue
        for row in ROWS[cloud]:
            r = dict(zip(HEADERS[cloud], row, strict=True))
            if accelerator and r["AcceleratorName"].lower() != accelerator.lower():
                continue
            if count and int(r["AcceleratorCount"]) != count:
                continue
            modes = {"spot": [True], "on-demand": [False], "both": [True, False]}[spot]
            for use_spot in modes:
                if use_spot and cloud == "lambda":
                    continue
                raw = r["SpotPrice"] if use_spot else r["Price"]
                try:
                    price = float(raw)
                except (TypeError, ValueError):
                    continue
                n = int(r["AcceleratorCount"])
                if not math.isfinite(price) or not 0.05 <= price / n <= 100:
                    continue
                if best is None or price < best:
                    best = price
    return best


@pytest.mark.parametrize("spot", ["spot", "on-demand", "both"])
@pytest.mark.parametrize("accelerator,count", [(None, None), ("A100-80GB", None), ("H100", 1), ("A10G", 4),
                                               ("a100-80gb", 8)])
@pytest.mark.parametrize("clouds", [pricing.CLOUDS, ("aws", "lambda"), ("runpod",)])
def test_cheapest_matches_brute_force(catalog, spot, accelerator, count, clouds):
    offers = pricing.list_offers(clouds, accelerator, count, spot)
    expected = _brute_force(clouds, spot, accelerator, count)
    if expected is None:
        assert all(o.price_per_hour is None for o in offers)
        return
    assert offers[0].price_per_hour == pytest.approx(expected)
    priced = [o.price_per_hour for o in offers if o.price_per_hour is not None]
    assert priced == sorted(priced)


def test_catalog_holes_are_unknown_and_last(catalog):
    offers = pricing.list_offers(spot="both")
    unknown = [o for o in offers if o.price_per_hour is None]
    # The 1-cent p5 spot, the $0 GH200, the price-less A6000, the NaN Vast H100.
    assert {(o.cloud, o.instance_type, o.spot) for o in unknown} >= {
        ("aws", "p5.48xlarge", True), ("lambda", "gpu_1x_gh200", False), ("runpod", "1x_A6000_SECURE", False),
        ("vast", "1x-H100-32-256", False)}
    first_unknown = offers.index(unknown[0])
    assert all(o.price_per_hour is None for o in offers[first_unknown:])
    # Asked for H100s only, the 1-cent spot p5 must not come first.
    h100 = pricing.list_offers(accelerator="H100", spot="spot")
    assert h100[0].price_per_hour is not None and h100[0].instance_type != "p5.48xlarge"


def test_provider_limits(catalog):
    spot_only = pricing.list_offers(spot="spot")
    assert spot_only and all(o.cloud != "lambda" for o in spot_only)
    prefer = pricing.list_offers(spot="prefer-spot")
    assert {o.spot for o in prefer if o.cloud == "lambda"} == {False}
    assert {o.spot for o in prefer if o.cloud != "lambda"} == {True}
    notes: list[str] = []
    multi = pricing.list_offers(spot="both", num_nodes=2, notes=notes)
    assert {o.cloud for o in multi} == {"aws", "lambda"}
    assert any("runpod" in n and "vast" in n for n in notes)
    assert pricing.list_offers(spot="both", num_nodes=2)[0].price_per_hour == _brute_force(pricing.CLOUDS, "both",
                                                                                          nodes=2)


def test_provider_limits_agree_with_skypilot():
    from sky.clouds.cloud import CloudImplementationFeatures as F

    from sky import clouds as sky_clouds

    classes = {"aws": sky_clouds.AWS, "lambda": sky_clouds.Lambda, "runpod": sky_clouds.RunPod,
               "vast": sky_clouds.Vast}
    for name, cls in classes.items():
        unsupported = getattr(cls, "_CLOUD_UNSUPPORTED_FEATURES", {})  # AWS declares none
        assert (F.SPOT_INSTANCE in unsupported) == (name in pricing.NO_SPOT), name
        assert (F.MULTI_NODE in unsupported) == (name in pricing.NO_MULTI_NODE), name
        assert (F.STORAGE_MOUNTING in unsupported) == (name in pricing.NO_BUCKET_MOUNT), name


def test_missing_catalog_is_a_note_not_a_download(tmp_path, monkeypatch):
    write_catalog(tmp_path, rows={"aws": ROWS["aws"]})
    (tmp_path / ".sky/catalogs/v8/lambda").mkdir(exist_ok=True)
    point_skypilot_at(monkeypatch, tmp_path)
    notes: list[str] = []
    offers = pricing.list_offers(("aws", "vast"), spot="both", notes=notes)
    assert {o.cloud for o in offers} == {"aws"}
    assert any(n.startswith("vast: no cached SkyPilot catalog") for n in notes)
    ages = pricing.catalog_ages(("aws", "vast"))
    assert ages["aws"] is not None and ages["aws"] < 1 and ages["vast"] is None


def _math_spec(**overrides):
    data = {"name": "m", "model": {"base": "Qwen/Qwen2.5-7B-Instruct-not-cached", "dtype": "bfloat16"},
            "data": {"task": "math", "sft_train": "a.jsonl", "grpo_train": "c.jsonl"},
            "finetune": {"method": "qlora"},
            "stages": [{"method": "sft", "max_steps": 100}, {"method": "grpo", "max_steps": 50}],
            **overrides}
    return parse_spec(data)


def test_candidates_for_spec_fit_and_cost(catalog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _math_spec()
    offers = pricing.candidates_for_spec(spec, spot="both")
    need = pricing.gpu_fit.estimate(spec).per_gpu_gib
    assert offers and all(o.gpu_memory_gib * pricing.gpu_fit.USABLE_FRACTION >= need for o in offers)
    assert all(o.count == 1 for o in offers)  # one process: no multi-GPU machines
    assert not any(o.accelerator in ("A10G", "A10", "RTX4090") for o in offers)  # 24 GB is too small
    priced = [o for o in offers if o.price_per_hour is not None]
    assert all(o.est_cost == pytest.approx(o.est_hours * o.price_per_hour, abs=0.01) for o in priced)
    capped = pricing.candidates_for_spec(spec, spot="both", max_price=1.0)
    assert capped and all(o.price_per_hour <= 1.0 for o in capped)
    multi = _math_spec(distributed={"strategy": "ddp", "num_nodes": 2}, resources={"clouds": ["aws", "lambda"]})
    assert {o.cloud for o in pricing.candidates_for_spec(multi, spot="both")} <= {"aws", "lambda"}


def test_enabled_column_reads_skypilot_cache_only(catalog, monkeypatch):
    from sky.clouds import AWS, Vast

    from sky import global_user_state

    # SkyPilot's cached `sky check` result is what is mocked; nothing asks a provider.
    monkeypatch.setattr(global_user_state, "get_cached_enabled_clouds", lambda *_a, **_k: [AWS(), Vast()])
    assert pricing.enabled_clouds() == {"aws", "vast"}
    offers = pricing.list_offers(spot="both")
    pricing.mark_enabled(offers, pricing.enabled_clouds())
    assert {o.cloud for o in pricing.filter_offers(offers, enabled_only=True)} == {"aws", "vast"}
    assert {o.cloud for o in offers} == set(pricing.CLOUDS)  # all four listed regardless


@pytest.mark.integration
def test_ft_gpus_json_in_a_fresh_process(tmp_path):
    """A fresh process: SKY_RUNTIME_DIR alone decides where SkyPilot's catalog is read from."""
    write_catalog(tmp_path)
    script = ("import typer, sys\nfrom jobs import cloud_cli\napp = typer.Typer()\ncloud_cli.register(app)\n"
              "app.callback()(lambda: None)\napp(sys.argv[1:])\n")
    env = {**os.environ, "SKY_RUNTIME_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script, "gpus", "--json", "--spot", "--clouds", "aws,runpod",
                          "--max-price", "1.0"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows and all(set(r) == {"cloud", "instance_type", "accelerator", "count", "region", "spot",
                                   "price_per_hour", "nodes", "other_regions"} for r in rows)
    assert rows[0]["price_per_hour"] == _brute_force(("aws", "runpod"), "spot")
    assert all(r["spot"] and r["price_per_hour"] <= 1.0 and r["cloud"] in ("aws", "runpod") for r in rows)
    table = subprocess.run([sys.executable, "-c", script, "gpus", "--gpu", "H100:1"], capture_output=True,
                           text=True, env=env, cwd=REPO, timeout=120)
    assert table.returncode == 0, table.stderr
    assert "catalog age" in table.stdout and "unknown" in table.stdout and "vast" in table.stdout


def test_csv_headers_match_skypilot_fetchers():
    """Our test catalogs use the columns SkyPilot's own fetchers write."""
    from sky.catalog.data_fetchers import fetch_aws, fetch_runpod

    assert set(HEADERS["aws"]) <= set(fetch_aws.USEFUL_COLUMNS)
    assert set(HEADERS["runpod"]) == set(fetch_runpod.USEFUL_COLUMNS)
    with open(Path(__file__).parent / "conftest_cloud.py") as f:  # the module documents its columns
        assert "vms.csv" in f.read()
    assert csv  # imported for readers of _brute_force
