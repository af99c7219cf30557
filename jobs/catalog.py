"""SkyPilot's cached GPU catalogs, read directly: the same files and the same reading as
`sky.catalog.list_accelerators(gpus_only=True, all_regions=True)`, without importing SkyPilot.

`import sky` alone takes 5 s on a warm 2-core machine (25 s cold): more than the whole `ft gpus`
answer may take. The files are SkyPilot's own (`$SKY_RUNTIME_DIR/.sky/catalogs/<schema>/<cloud>/
vms.csv`, home when unset) and the columns those of its fetchers; tests/test_catalog.py checks that
this reader and SkyPilot's return the same rows on the same files, and that the path and schema
version agree with SkyPilot's. SkyPilot itself is still used to download a missing catalog
(`FT_CATALOG_DOWNLOAD=1`).
"""

from __future__ import annotations

import ast
import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

SCHEMA = "v8"  # sky.skylet.constants.CATALOG_SCHEMA_VERSION


@dataclass(frozen=True)
class Row:
    """One (instance type, region) of a catalog, as sky.catalog.InstanceTypeInfo has it."""

    cloud: str
    instance_type: str
    accelerator: str
    count: float
    device_memory_gib: float | None  # GpuInfo's Gpus[0].MemoryInfo.SizeInMiB / 1024, as SkyPilot reads it
    price: float | None
    spot_price: float | None
    region: str


def catalog_root() -> Path:
    return Path(os.path.expanduser(os.environ.get("SKY_RUNTIME_DIR", "~"))) / ".sky" / "catalogs" / SCHEMA


def catalog_path(cloud: str) -> Path:
    return catalog_root() / cloud / "vms.csv"


def _float(value: str | None) -> float | None:
    try:
        x = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and not math.isnan(x) else None


@functools.lru_cache(maxsize=4096)
def _memory_gib(gpu_info: str) -> float | None:
    """Per-GPU memory as SkyPilot reads it (the providers disagree on the unit: see gpu_fit)."""
    try:
        info = ast.literal_eval(gpu_info)
        return float(info["Gpus"][0]["MemoryInfo"]["SizeInMiB"]) / 1024.0
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError):
        return None


def download(cloud: str) -> None:
    """Let SkyPilot fetch a missing catalog (the one network use here; opt-in)."""
    from sky.catalog import common

    common.read_catalog(f"{cloud}/vms.csv")


def read_rows(cloud: str) -> list[Row]:
    """Every GPU row of a cloud's cached catalog (cached per file version in this process)."""
    path = catalog_path(cloud)
    st = path.stat()
    return _read(str(path), cloud, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _read(path: str, cloud: str, _mtime: int, _size: int) -> list[Row]:
    seen: set[tuple] = set()
    rows: list[Row] = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            name, gpu_info = r.get("AcceleratorName") or "", r.get("GpuInfo") or ""
            if not name or not gpu_info:  # gpus_only: CPU instances have no GpuInfo
                continue
            row = Row(cloud, r["InstanceType"], name, _float(r.get("AcceleratorCount")) or 0.0,
                      _memory_gib(gpu_info), _float(r.get("Price")), _float(r.get("SpotPrice")), r.get("Region") or "")
            key = (row.instance_type, row.accelerator, row.count, row.device_memory_gib, row.price, row.spot_price,
                   row.region, r.get("vCPUs"), r.get("MemoryGiB"))
            if key not in seen:  # SkyPilot's drop_duplicates over the same columns
                seen.add(key)
                rows.append(row)
    return rows
