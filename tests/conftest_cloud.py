"""Small SkyPilot catalogs for the cloud tests, and pointing an already imported SkyPilot at them.

The rows use SkyPilot's own vms.csv columns (sky/catalog/data_fetchers/fetch_*.py) with prices of
the right order, and holes on purpose: a missing price, a zero price, a 1-cent H100.

    python tests/conftest_cloud.py DIR     # writes DIR/.sky/catalogs/v8/...; then SKY_RUNTIME_DIR=DIR ft gpus
"""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path


def _gpu(name: str, count: int, mib: int) -> str:
    return str({"Gpus": [{"Name": name, "Manufacturer": "NVIDIA", "Count": float(count),
                          "MemoryInfo": {"SizeInMiB": mib}}], "TotalGpuMemoryInMiB": mib * count})


AWS = [  # InstanceType, Acc, Count, vCPUs, MemGiB, GpuInfo, Price, SpotPrice, Region, AZ, Arch
    ("g5.xlarge", "A10G", 1, 4, 16, _gpu("A10G", 1, 24576), 1.006, 0.4527, "us-east-1", "use1-az1", "x86_64"),
    ("g5.xlarge", "A10G", 1, 4, 16, _gpu("A10G", 1, 24576), 1.006, 0.3891, "us-west-2", "usw2-az1", "x86_64"),
    ("g5.12xlarge", "A10G", 4, 48, 192, _gpu("A10G", 4, 24576), 5.672, 2.1144, "us-east-1", "use1-az1", "x86_64"),
    ("g6e.xlarge", "L40S", 1, 4, 32, _gpu("L40S", 1, 46068), 1.861, 0.7612, "us-east-1", "use1-az2", "x86_64"),
    ("p4d.24xlarge", "A100", 8, 96, 1152, _gpu("A100", 8, 40960), 32.7726, 12.9853, "us-east-1", "use1-az1",
     "x86_64"),
    ("p4de.24xlarge", "A100-80GB", 8, 96, 1152, _gpu("A100-80GB", 8, 81920), 40.9657, 15.4112, "us-east-1",
     "use1-az2", "x86_64"),
    ("p5.48xlarge", "H100", 8, 192, 2048, _gpu("H100", 8, 81920), 98.32, 0.08, "us-east-2", "use2-az1",
     "x86_64"),  # a spot price of 1 cent per H100: a hole
]
LAMBDA = [  # InstanceType, Acc, Count, vCPUs, MemGiB, Price, Region, GpuInfo, SpotPrice
    ("gpu_1x_a10", "A10", 1, 30, 200, 0.75, "us-east-1", _gpu("A10", 1, 24576), ""),
    ("gpu_1x_a100_sxm4", "A100", 1, 30, 200, 1.29, "us-east-1", _gpu("A100", 1, 40960), ""),
    ("gpu_1x_h100_pcie", "H100", 1, 26, 200, 2.49, "us-west-1", _gpu("H100", 1, 81920), ""),
    ("gpu_1x_h100_pcie", "H100", 1, 26, 200, 2.49, "us-east-1", _gpu("H100", 1, 81920), ""),
    ("gpu_8x_a100_80gb_sxm4", "A100-80GB", 8, 240, 1800, 14.32, "us-east-1", _gpu("A100-80GB", 8, 81920), ""),
    ("gpu_1x_gh200", "GH200", 1, 64, 432, 0.0, "us-east-3", _gpu("GH200", 1, 98304), ""),  # zero: a hole
]
RUNPOD = [  # InstanceType, Acc, Count, vCPUs, MemGiB, Region, SpotPrice, Price, AZ, GpuInfo
    ("1x_A100-80GB_SECURE", "A100-80GB", 1, 8, 117, "CA", 0.82, 1.64, "CA-MTL-1", _gpu("A100-80GB", 1, 81920)),
    ("1x_A100-80GB_SECURE", "A100-80GB", 1, 8, 117, "US", 0.89, 1.64, "US-GA-1", _gpu("A100-80GB", 1, 81920)),
    ("1x_L40S_SECURE", "L40S", 1, 12, 62, "US", 0.43, 0.86, "US-TX-3", _gpu("L40S", 1, 46068)),
    ("1x_H100_SECURE", "H100", 1, 16, 188, "US", 1.75, 2.69, "US-TX-3", _gpu("H100", 1, 81920)),
    ("1x_RTX4090_SECURE", "RTX4090", 1, 6, 41, "EU", 0.35, 0.69, "EU-RO-1", _gpu("RTX4090", 1, 24564)),
    ("1x_A6000_SECURE", "A6000", 1, 8, 50, "US", "", "", "US-GA-1", _gpu("A6000", 1, 49140)),  # no price
    ("2x_A100-80GB_SECURE", "A100-80GB", 2, 16, 234, "CA", 1.64, 3.28, "CA-MTL-1", _gpu("A100-80GB", 2, 81920)),
]
VAST = [  # InstanceType, Acc, Count, vCPUs, MemGiB, GpuInfo, Price, SpotPrice, Region, HostingType
    ("1x-RTX4090-16-64", "RTX4090", 1, 16, 64, _gpu("RTX4090", 1, 24564), 0.40, 0.26, "Quebec, CA", 1),
    ("1x-A100-80GB-32-128", "A100-80GB", 1, 32, 128, _gpu("A100-80GB", 1, 81920), 1.20, 0.71, "Texas, US", 1),
    ("1x-H100-32-256", "H100", 1, 32, 256, _gpu("H100", 1, 81920), 2.10, 1.42, "Oregon, US", 1),
    ("1x-H100-32-256", "H100", 1, 32, 256, _gpu("H100", 1, 81920), "nan", "", "Nevada, US", 1),  # a hole
    ("4x-A100-80GB-64-512", "A100-80GB", 4, 64, 512, _gpu("A100-80GB", 4, 81920), 4.90, 2.90, "Texas, US", 1),
]

HEADERS = {
    "aws": ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
            "SpotPrice", "Region", "AvailabilityZone", "Arch"],
    "lambda": ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Price", "Region",
               "GpuInfo", "SpotPrice"],
    "runpod": ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "Region", "SpotPrice",
               "Price", "AvailabilityZone", "GpuInfo"],
    "vast": ["InstanceType", "AcceleratorName", "AcceleratorCount", "vCPUs", "MemoryGiB", "GpuInfo", "Price",
             "SpotPrice", "Region", "HostingType"],
}
ROWS = {"aws": AWS, "lambda": LAMBDA, "runpod": RUNPOD, "vast": VAST}
SCHEMA = "v8"


def catalog_dir(runtime_dir: Path) -> Path:
    return Path(runtime_dir) / ".sky" / "catalogs" / SCHEMA


def write_catalog(runtime_dir: Path, rows: dict[str, list] | None = None) -> Path:
    """Write vms.csv per cloud (no `.meta` md5, so SkyPilot treats them as hand-placed and never
    refreshes them) plus the common accelerator files, under SKY_RUNTIME_DIR=runtime_dir."""
    root = catalog_dir(runtime_dir)
    for cloud, body in (rows or ROWS).items():
        (root / cloud).mkdir(parents=True, exist_ok=True)
        with open(root / cloud / "vms.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(HEADERS[cloud])
            w.writerows(body)
    (root / "aws").mkdir(parents=True, exist_ok=True)
    for name, header in (("images.csv", "Tag,Region,OS,OSVersion,ImageId,CreationDate"),
                         ("instance_quota_mapping.csv", "InstanceType,QuotaCode,SpotQuotaCode")):
        (root / "aws" / name).write_text(header + "\n")
    (root / "common").mkdir(parents=True, exist_ok=True)
    # SkyPilot's accelerator registry: canonical names → the clouds offering them (a Python list literal).
    names = {"aws": "AWS", "lambda": "Lambda", "runpod": "RunPod", "vast": "Vast"}
    offered: dict[str, set[str]] = {}
    for c, body in ROWS.items():
        for r in body:
            offered.setdefault(r[1], set()).add(names[c])
    with open(root / "common" / "accelerators.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["AcceleratorName", "Clouds"])
        w.writerows((name, str(sorted(clouds))) for name, clouds in sorted(offered.items()))
    (root / "common" / "metadata.csv").write_text("AcceleratorName,MemoryGB,Manufacturer\n")
    return root


CATALOG_MODULES = ["sky.catalog.aws_catalog", "sky.catalog.lambda_catalog", "sky.catalog.runpod_catalog",
                   "sky.catalog.vast_catalog"]


def point_skypilot_at(monkeypatch, runtime_dir: Path) -> None:
    """Make an already imported SkyPilot read the catalogs under `runtime_dir`.

    SkyPilot resolves the catalog folder from SKY_RUNTIME_DIR once, at import, and each cloud's
    catalog module binds its CSV when imported; so set the variable, repoint the folder and drop the
    cloud modules so the next use re-imports them. A fresh `ft` process needs none of this.
    """
    import sky.catalog.common as common
    from sky.utils import accelerator_registry

    monkeypatch.setenv("SKY_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")  # no usage pings to skypilot.co
    monkeypatch.setattr(common, "_ABSOLUTE_VERSIONED_CATALOG_DIR", str(catalog_dir(runtime_dir)))
    for name in CATALOG_MODULES:
        sys.modules.pop(name, None)
        monkeypatch.delattr(sys.modules["sky.catalog"], name.rsplit(".", 1)[1], raising=False)
    monkeypatch.setattr(accelerator_registry, "_accelerator_df", common.read_catalog("common/accelerators.csv"))
    monkeypatch.setattr(accelerator_registry, "_memory_df", common.read_catalog("common/metadata.csv"))
    aws_catalog = importlib.import_module("sky.catalog.aws_catalog")
    # The AWS account API (availability-zone names for this account) is what is mocked: without it
    # SkyPilot would call STS; the catalog's zone ids are used as they are.
    monkeypatch.setattr(aws_catalog, "_fetch_and_apply_az_mapping", lambda df: df.copy())


if __name__ == "__main__":
    print(write_catalog(Path(sys.argv[1])))
