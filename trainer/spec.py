"""The job spec: one YAML describes a whole job. This module is the contract between the Mac side,
the cloud side and the trainer; every one of them validates against these very models.

Unknown keys are rejected and every error names the file, the field path and (when the YAML was
read from disk) the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.errors import BadInput

BUILTIN_MODEL = "builtin:smollm2-135m"


class SpecError(BadInput):
    """A spec that cannot be used (exit 2). `problems` holds (location, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}" for loc, msg in problems]
        super().__init__("invalid job spec\n  " + "\n  ".join(lines))


# One grammar for every name that becomes a folder or a store key (stage names, run ids): letters,
# digits, `.`, `_`, `-`; never `.`/`..` or anything containing `..`, so a name cannot climb out of its root.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Folders a run already uses beside its stages (runs/<id>/eval, report, run.json, _LEASE).
RESERVED_STAGE_NAMES = frozenset({"eval", "report", "run.json", "_LEASE", "_COMPLETE"})


def check_name(value: str, what: str = "name") -> str:
    """`value` if it is a safe folder name, else ValueError saying why."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value or value == ".":
        raise ValueError(f"{what} {value!r} is not a safe name: use 1-128 letters, digits, '.', '_' or '-', "
                         "and no '..'")
    return value


# S3 bucket names: 3-63 lowercase letters, digits, dots and dashes, starting and ending with a letter or digit.
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def store_uri_problem(uri: str) -> str | None:
    """Why `uri` is not a store (None when it is one): `s3://bucket[/prefix]` or a local path,
    nothing else. `s3:/bucket`, `S3://b`, `s3://` and `gs://b` are typos, not local folders."""
    if not isinstance(uri, str) or not uri.strip():
        return "empty; use s3://bucket/prefix or a local folder"
    if uri != uri.strip():
        return "leading or trailing spaces"
    m = _SCHEME.match(uri)
    if m is None or (len(m.group(1)) == 1 and uri[2:3] in ("\\", "/")):  # no scheme, or a Windows drive
        return None
    scheme = m.group(1)
    if uri.startswith("file://"):
        return None if uri[len("file://"):] else "file:// needs a path"
    if not uri.startswith("s3://"):
        if scheme.lower() == "s3":
            return "expected s3://bucket/prefix (two slashes, lowercase s3)"
        return f"unsupported scheme {scheme}:; use s3://bucket/prefix or a local folder"
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        return "no bucket; expected s3://bucket/prefix"
    if not BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
        return f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')"
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        return "the prefix has an empty, '.' or '..' part"
    return None


def check_store_uri(uri: str) -> str:
    problem = store_uri_problem(uri)
    if problem:
        raise ValueError(f"{uri!r}: {problem}")
    return uri


_ACCELERATORS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[1-9][0-9]{0,2})?")


def check_accelerators(value: str | None) -> str | None:
    """`NAME` or `NAME:COUNT` (whether NAME exists is checked against the catalogs before a launch)."""
    if value is not None and not _ACCELERATORS.fullmatch(value):
        raise ValueError(f"{value!r}: expected NAME or NAME:COUNT, e.g. A100-80GB:1")
    return value


def _stage_name(value: str | None) -> str | None:
    if value is None:
        return None
    check_name(value, "stage name")
    if value in RESERVED_STAGE_NAMES:
        raise ValueError(f"stage name {value!r} is reserved (the run uses that folder)")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


Text = Annotated[str, AfterValidator(_text)]


class Strict(BaseModel):
    # strict: `true` is not a batch size and "4" is not an int; finite: `.inf` / `.nan` never reach a trainer.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------- model
class ModelSpec(Strict):
    base: Text = Field(description=f"Hub id, local folder, or `{BUILTIN_MODEL}`")
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bf16 where the GPU supports it, fp32 on CPU"
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash_attention_2 when installed on CUDA, else sdpa"
    )
    trust_remote_code: bool = False
    params: int | None = Field(
        None, gt=0, description="parameter count (e.g. 7615616512 or `7.6B`, `135M`): overrides the model's "
        "config.json for GPU fit and cost, for a private model or one whose config is out of reach"
    )

    @field_validator("params", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        """`7.6B` / `135M` / `1.2e9` → an integer count."""
        if isinstance(value, str):
            text = value.strip().upper().replace("_", "").replace(",", "")
            scale = {"B": 1e9, "M": 1e6, "K": 1e3}.get(text[-1:], 1)
            try:
                return int(round(float(text[:-1] if scale != 1 else text) * scale))
            except ValueError:
                raise ValueError(f"expected a count such as 7615616512, 7.6B or 135M, not {value!r}") from None
        if isinstance(value, float):
            return int(round(value))
        return value


# ---------------------------------------------------------------------------------------- data
class DataSpec(Strict):
    task: Literal["math", "translation"]
    source: str | None = Field(None, description="where `ft data prepare` took the data from (informational)")
    sft_train: Text | None = None
    sft_valid: Text | None = None
    dpo_train: Text | None = None
    dpo_valid: Text | None = None
    grpo_train: Text | None = None
    test: Text | None = None
    system_prompt: str | None = None

    def files(self) -> dict[str, str]:
        """Role -> path for every data file the spec names."""
        roles = ["sft_train", "sft_valid", "dpo_train", "dpo_valid", "grpo_train", "test"]
        return {r: getattr(self, r) for r in roles if getattr(self, r)}


# ------------------------------------------------------------------------------ adapter / quant
class LoraSpec(Strict):
    r: int = Field(64, gt=0, le=4096)
    alpha: float = Field(128, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # an empty list would make PEFT wrap nothing (or fail) only once a GPU is rented
    target_modules: str | list[str] = Field("all-linear", description="`all-linear` or module names")
    layers_to_transform: Annotated[list[Annotated[int, Field(ge=0, le=4096)]], Field(min_length=1)] | None = None

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n.strip() for n in names):
            raise ValueError("name at least one module (or `all-linear`); empty names wrap nothing")
        return value


class QuantizationSpec(Strict):
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    double_quant: bool = True


class FinetuneSpec(Strict):
    method: Literal["lora", "qlora", "full"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)


# -------------------------------------------------------------------------------------- stages
class StageBase(Strict):
    name: Annotated[str | None, AfterValidator(_stage_name)] = Field(
        None, description="defaults to the method; unique within the job; letters, digits, `._-`")
    learning_rate: float = Field(gt=0, le=1)
    epochs: float = Field(1, gt=0, le=10_000)
    max_steps: int = Field(-1, ge=-1, le=1_000_000_000, description="overrides epochs when > 0")
    per_device_train_batch_size: int = Field(4, gt=0, le=65_536)
    gradient_accumulation_steps: int = Field(4, gt=0, le=65_536)
    max_length: int = Field(2048, gt=0, le=1_048_576)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    # the schedulers transformers runs without extra kwargs or an eval loop
    lr_scheduler_type: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                               "constant_with_warmup", "inverse_sqrt"] = "cosine"
    weight_decay: float = Field(0.0, ge=0, le=10)
    gradient_checkpointing: bool = True
    logging_steps: int = Field(10, gt=0, le=1_000_000_000)
    save_steps: int = Field(100, gt=0, le=1_000_000_000,
                            description="checkpoint to the store every N optimizer steps")
    save_total_limit: int = Field(2, gt=0, le=1000)
    save_every_minutes: float | None = Field(
        None, gt=0, description="also checkpoint when this many minutes passed since the last one (bounds "
        "what a kill -9 can lose)")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="numpy's seed range")

    @property
    def stage_name(self) -> str:
        return self.name or self.method  # type: ignore[attr-defined]


class SFTStage(StageBase):
    method: Literal["sft"] = "sft"
    learning_rate: float = Field(2e-5, gt=0, le=1)
    epochs: float = Field(3, gt=0, le=10_000)
    packing: bool = True
    assistant_only_loss: bool = Field(True, description="loss on the assistant's tokens only")
    init_adapter: Literal["prototype"] | None = Field(
        None, description="`prototype`: start from the Mac prototype's adapter (in the bundle, PEFT form)"
    )


class OnPolicyPairs(Strict):
    prompts: int = Field(64, gt=0, le=10_000_000, description="training prompts to sample")
    samples_per_prompt: int = Field(4, gt=0, le=1024)
    max_new_tokens: int = Field(256, gt=0, le=1_048_576)
    temperature: float = Field(0.8, gt=0, le=100)


class DPOStage(StageBase):
    method: Literal["dpo"] = "dpo"
    learning_rate: float = Field(5e-7, gt=0, le=1)
    epochs: float = Field(1, gt=0, le=10_000)
    beta: float = Field(0.1, gt=0, le=1000)
    loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"
    pairs: Literal["bundle", "on_policy"] = "bundle"
    on_policy: OnPolicyPairs = Field(default_factory=OnPolicyPairs)


RewardName = Literal["math_correctness", "format", "chrf"]


class GRPOStage(StageBase):
    method: Literal["grpo"] = "grpo"
    learning_rate: float = Field(1e-6, gt=0, le=1)
    epochs: float = Field(1, gt=0, le=10_000)
    num_generations: int = Field(4, ge=2, le=1024)
    max_completion_length: int = Field(512, gt=0, le=1_048_576)
    temperature: float = Field(0.7, gt=0, le=100)
    beta: float = Field(0.05, ge=0, le=1000, description="KL coefficient")
    rewards: list[RewardName] = Field(default_factory=lambda: ["math_correctness", "format"])
    reward_weights: list[float] | None = None
    reward_model: Text | None = Field(
        None, description="an earlier `reward` stage's name, an existing model folder, or a Hub id (org/name)")
    use_vllm: Literal["auto", "on", "off"] = "auto"

    @model_validator(mode="after")
    def _batch_divides(self) -> GRPOStage:
        gen_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if gen_batch % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size × gradient_accumulation_steps ({gen_batch}) must be "
                f"divisible by num_generations ({self.num_generations})"
            )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError("reward_weights needs one weight per reward")
        return self


class RewardModelStage(StageBase):
    """The guide's PPO row: TRL 1.16 has no PPOTrainer; train a reward model on preference pairs
    (RewardTrainer) and use it as a GRPO reward."""

    method: Literal["reward"] = "reward"
    learning_rate: float = Field(1e-5, gt=0, le=1)
    epochs: float = Field(1, gt=0, le=10_000)


Stage = Annotated[SFTStage | DPOStage | GRPOStage | RewardModelStage, Field(discriminator="method")]


# ----------------------------------------------------------------------------- infra sections
class DistributedSpec(Strict):
    strategy: Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3_offload"] = "none"
    num_nodes: int = Field(1, gt=0, le=1024)


class ResourcesSpec(Strict):
    accelerators: Annotated[str | None, AfterValidator(check_accelerators)] = Field(
        None, description="e.g. `A100-80GB:1`; empty = cheapest that fits")
    clouds: list[Literal["lambda", "aws", "runpod", "vast"]] = Field(
        default_factory=lambda: ["lambda", "aws", "runpod", "vast"]
    )
    use_spot: bool = True
    disk_size: int = Field(256, gt=0, le=65_536, description="GB")
    max_price_per_hour: float | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(
        None, gt=0, description="budget for the whole job in $: `ft launch` refuses a plan estimated above it "
        "and the trainer stops (checkpoint, exit 3) when its spend reaches it"
    )


class StoreSpec(Strict):
    uri: Annotated[str, AfterValidator(check_store_uri)] = Field(
        "./outputs/store", description="local folder or s3://bucket/prefix")


class EvaluationSpec(Strict):
    task: Literal["gsm8k", "translation"] | None = None
    limit: int = Field(100, gt=0, le=100_000_000)
    max_new_tokens: int = Field(512, gt=0, le=1_048_576)
    lm_eval_tasks: list[str] = Field(default_factory=list)


class PrototypeSpec(Strict):
    """Mac (mlx-lm) LoRA prototype. The LoRA rank/alpha/dropout/targets come from `finetune.lora`."""

    model: str = Field(description="MLX model: an mlx-community id or a local folder")
    iters: int = Field(1000, gt=0)
    batch_size: int = Field(2, gt=0)
    learning_rate: float = Field(2e-5, gt=0, le=1)
    num_layers: int = Field(16, description="LoRA on the last N layers (-1: all)")
    max_seq_length: int = Field(1024, gt=0)
    grad_checkpoint: bool = True
    mask_prompt: bool = True
    steps_per_eval: int = Field(200, gt=0)
    val_batches: int = Field(25)
    eval_samples: int = Field(50, gt=0)


class JobSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="lowercase letters, digits, dashes")
    model: ModelSpec
    data: DataSpec
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    stages: list[Stage] = Field(min_length=1)
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    prototype: PrototypeSpec | None = None

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list) -> list:
        names = [s.stage_name for s in stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)} (set `name:`)")
        return stages

    @model_validator(mode="after")
    def _data_for_stages(self) -> JobSpec:
        need = {"sft": "sft_train", "dpo": "dpo_train", "grpo": "grpo_train", "reward": "dpo_train"}
        for i, stage in enumerate(self.stages):
            role = need[stage.method]
            if stage.method == "dpo" and stage.pairs == "on_policy":
                role = "grpo_train"  # prompts + reference answers are what on-policy pairs need
            if not getattr(self.data, role):
                raise ValueError(f"stages[{i}] ({stage.method}) needs data.{role}")
            names = [s.stage_name for s in self.stages]
            if stage.method == "grpo" and stage.reward_model in names:
                j = names.index(stage.reward_model)
                if j >= i or self.stages[j].method != "reward":
                    raise ValueError(f"stages[{i}].reward_model: {stage.reward_model!r} must name an earlier "
                                     "reward stage")
            elif stage.method == "grpo" and stage.reward_model and not _names_a_model(stage.reward_model):
                # caught here, not after the earlier stages trained for hours
                raise ValueError(f"stages[{i}].reward_model: {stage.reward_model!r} is no stage of this job, no "
                                 "existing folder and no Hub id (org/name)")
            if stage.method == "grpo" and "chrf" in stage.rewards and self.data.task != "translation":
                raise ValueError(f"stages[{i}].rewards: chrf is a translation reward "
                                 f"(data.task is {self.data.task})")
        if self.distributed.strategy == "deepspeed_zero3_offload":
            # Refused before any spend: the job would fail at its first optimizer step on rented GPUs.
            raise ValueError("distributed.strategy: deepspeed_zero3_offload needs DeepSpeed's CPU Adam, a C++ "
                             "extension compiled on first use, and the GPU image has no C++ compiler (g++); "
                             "use fsdp (parameters sharded, any finetune.method) or deepspeed_zero2")
        if self.distributed.num_nodes > 1 and set(self.resources.clouds) & {"runpod", "vast"}:
            raise ValueError("distributed.num_nodes > 1 runs on aws or lambda only "
                             "(RunPod and Vast have no multi-node)")
        return self

    def stage(self, name: str) -> StageBase:
        for s in self.stages:
            if s.stage_name == name:
                return s
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(s.stage_name for s in self.stages)}")

    def resolved(self) -> dict[str, Any]:
        """Every default filled in, stage names made explicit: what a bundle freezes."""
        data = self.model_dump(mode="json")
        for raw, stage in zip(data["stages"], self.stages, strict=True):
            raw["name"] = stage.stage_name
        return data


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _names_a_model(ref: str) -> bool:
    """An existing local model folder, or something shaped like a Hub id (checked offline)."""
    if HUB_ID.fullmatch(ref) and ".." not in ref and not Path(ref).exists():
        return True
    return Path(ref).expanduser().is_dir()


# ------------------------------------------------------------------------------------ loading
# Bounds on what one spec may cost to read: a spec is a page of settings, so anything past these is
# hostile or a mistake, and refusing it early keeps `ft validate` and the trainer fast and flat.
MAX_SPEC_BYTES = 1_000_000
MAX_LINE = 4096
MAX_DEPTH = 32
MAX_INT_DIGITS = 30


class _Refused(yaml.MarkedYAMLError):
    pass


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with what makes a spec safe to read and unambiguous:
    no aliases (an alias bomb expands exponentially), bounded nesting, duplicate keys are errors (not
    last-wins), YAML 1.2 booleans (only true/false: `on`/`yes` stay strings) and floats (`2e-5` is a
    number, not a string), bounded integers, and no lone surrogates (they cannot be written as UTF-8)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def _refuse(self, problem: str, mark: Any) -> None:
        raise _Refused(problem=problem, problem_mark=mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._refuse("YAML aliases (*name) are not allowed in a job spec", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                self._refuse(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                self._refuse("a mapping key must be a plain value", key_node.start_mark)
            if first is not None:
                self._refuse(f"duplicate key {key!r} (first at line {first}); YAML would keep only the last",
                             key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_scalar(self, node: Any) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and any("\ud800" <= ch <= "\udfff" for ch in value):
            self._refuse("a lone surrogate (e.g. \\ud800) is not a character", node.start_mark)
        return value

    def construct_yaml_int(self, node: Any) -> Any:
        if len(str(node.value)) > MAX_INT_DIGITS:
            self._refuse(f"an integer of more than {MAX_INT_DIGITS} digits", node.start_mark)
        return super().construct_yaml_int(node)


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def load_yaml(text: str, source: str) -> Any:
    """Parse a spec's YAML with SpecLoader; SpecError naming the line for anything refused."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(source, [("", f"larger than {MAX_SPEC_BYTES:,} characters; a job spec is a page of settings")])
    for number, line in enumerate(text.split("\n"), 1):
        if len(line) > MAX_LINE:
            raise SpecError(source, [(f"line {number}", f"longer than {MAX_LINE} characters")])
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        prefix = "" if isinstance(e, _Refused) else "not valid YAML: "
        raise SpecError(source, [(where, f"{prefix}{problem}")]) from None
    except (ValueError, RecursionError) as e:  # a constructor's own failure (a bad date, …): still the user's input
        raise SpecError(source, [("", f"not valid YAML: {e}")]) from None


def _yaml_lines(text: str) -> dict[tuple, int]:
    """Map each YAML path (keys and list indices) to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                lines[path + (key.value,)] = key.start_mark.line + 1
                walk(value, path + (key.value,))
                lines[path + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    try:
        root = yaml.compose(text, Loader=SpecLoader)
    except (yaml.YAMLError, ValueError, RecursionError):
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_LEADING_PATH = re.compile(r"((?:stages|data|model|finetune|resources|distributed)(?:\[\d+\]|\.\w+)+)(?: \(\w+\))?: ")


def problems_from(err: ValidationError, lines: dict[tuple, int | str] | None = None) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        # Discriminated unions put the tag ('sft', 'dpo', ...) into the path; it is not a YAML key.
        loc = tuple(p for p in e["loc"] if p not in ("sft", "dpo", "grpo", "reward"))
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and (named := _LEADING_PATH.match(msg)):
            # a whole-spec check names its field in the message: point at that field's line
            loc = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", named.group(1)))
            msg = msg[named.end():]
        where = _format_loc(loc)
        line = None
        if lines:
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        place = line if isinstance(line, str) else f"line {line}"  # a str: the command-line override
        if line and where:
            where = f"{where} ({place})"
        elif line:
            where = place
        problems.append((where, msg))
    return problems


def parse_spec(data: Any, source: str = "<spec>", text: str | None = None,
               lines: dict[tuple, int | str] | None = None) -> JobSpec:
    """`lines`: where each field came from (a line of `text`, or an override), for error messages."""
    if not isinstance(data, dict):
        raise SpecError(source, [("", "the spec must be a YAML mapping at the top level")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        if lines is None and text:
            lines = _yaml_lines(text)
        raise SpecError(source, problems_from(err, lines)) from None


def _with_origins(lines: dict[tuple, int | str], origins: dict[tuple, str]) -> dict[tuple, int | str]:
    """Fields set on the command line point at their override, not at the line they replaced."""
    out = {path: line for path, line in lines.items()
           if not any(path[:len(o)] == o for o in origins)}
    return {**out, **origins}


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
    """Read and check a spec file; `overrides` (`KEY=VALUE`, see trainer.overrides) apply before the check."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [("", "file not found")]) from None
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [("", f"not UTF-8 ({e.reason} at byte {e.start})")]) from None
    except OSError as e:
        raise SpecError(str(path), [("", f"cannot read ({e.strerror or e})")]) from None
    data = load_yaml(text, str(path))
    lines: dict[tuple, int | str] = _yaml_lines(text)
    if overrides:
        from trainer.overrides import apply_overrides  # it builds on this module: imported when used

        data, origins = apply_overrides(data, overrides, str(path))
        lines = _with_origins(lines, origins)
    return parse_spec(data, str(path), lines=lines)


def json_schema() -> str:
    return json.dumps(JobSpec.model_json_schema(), indent=2)
