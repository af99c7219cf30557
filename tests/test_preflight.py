"""The laptop side of a cloud run (issue 16): a launch that tells the truth, the pre-flight before any
spend, store URIs and FT_STORE, accelerator names, and one line with exit 0/2/75 instead of a traceback.

Real: the spec, `ft validate`, the catalogs (small CSVs under SKY_RUNTIME_DIR), the store (moto_server
over HTTP, and a closed port for "unreachable"), SkyPilot's task validation, an image registry (an HTTP
server on 127.0.0.1 speaking the registry API v2: manifests, bearer tokens, basic login). Mocked, because it cannot
exist here: the cloud API behind SkyPilot's SDK (`sky.jobs.launch`, `sky.get`, `sky.jobs.queue`) and the
cached `sky check` result (`pricing.enabled_clouds`), which needs provider credentials.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
import yaml
from conftest_cloud import write_catalog
from typer.testing import CliRunner

from jobs import console, images_ref, preflight, pricing
from trainer.errors import describe
from trainer.spec import SpecError, parse_spec, store_uri_problem

REPO = Path(__file__).resolve().parent.parent


def _app() -> typer.Typer:
    """`ft` itself: its error boundary decides the exit codes these tests check."""
    from jobs.cli import app

    return app


@pytest.fixture
def catalog(tmp_path, monkeypatch):
    write_catalog(tmp_path / "skyrt")
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "skyrt"))
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "skyrt"


@pytest.fixture
def enabled(monkeypatch):
    """`sky check`'s cached answer needs cloud credentials: mocked (lambda and runpod enabled)."""
    clouds = {"lambda", "runpod"}
    monkeypatch.setattr(pricing, "enabled_clouds", lambda: clouds)
    return clouds


def _spec_file(tmp_path: Path, **over) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    demo_files = ("sft_train", "sft_valid", "dpo_train", "grpo_train", "test")
    raw["data"] = {k: str((REPO / "configs" / v).resolve()) if k in demo_files else v for k, v in raw["data"].items()}
    raw["model"] = {"base": "Qwen/Qwen2.5-7B-Instruct-not-cached"}
    raw["store"] = {"uri": "s3://my-ft-bucket/llm-finetuning"}
    raw.pop("prototype", None)
    for key, value in over.items():
        raw[key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------- an image registry
class _RegistryHandler(BaseHTTPRequestHandler):
    """The registry HTTP API v2 as far as the pre-flight uses it: HEAD /v2/<repo>/manifests/<tag>, with
    a bearer token from /token when `auth` is set (anonymous, or only for the docker login in `login`)."""

    server: Registry

    def log_message(self, *_args) -> None:
        pass

    def _reply(self, code: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        reg = self.server
        if self.path.startswith("/token"):
            reg.token_requests.append(self.path)
            given = self.headers.get("Authorization")
            if reg.login and given != "Basic " + base64.b64encode(":".join(reg.login).encode()).decode():
                return self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            return self._reply(200, {"token": "t0ken"})
        self.do_HEAD()

    def do_HEAD(self) -> None:  # noqa: N802
        reg = self.server
        if not self.path.startswith("/v2/") or "/manifests/" not in self.path:
            return self._reply(404)
        repo, _, tag = self.path[len("/v2/"):].partition("/manifests/")
        if reg.fail_with:
            return self._reply(reg.fail_with, {"errors": [{"code": "UNAVAILABLE"}]})
        if reg.auth and self.headers.get("Authorization") != "Bearer t0ken":
            realm = f"http://127.0.0.1:{reg.server_address[1]}/token"
            return self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {
                "WWW-Authenticate": f'Bearer realm="{realm}",service="test",scope="repository:{repo}:pull"'})
        if (repo, tag) not in reg.images:
            return self._reply(404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})
        if "manifest" not in self.headers.get("Accept", ""):
            return self._reply(406)
        self._reply(200, {}, {"Docker-Content-Digest": "sha256:" + "ab" * 32,
                              "Content-Type": "application/vnd.oci.image.index.v1+json"})


class Registry(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.images: set[tuple[str, str]] = set()
        self.auth, self.login, self.fail_with = False, None, 0
        self.token_requests: list[str] = []

    @property
    def prefix(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}/llm-finetuning"

    def push(self, ref: str) -> str:
        host, repo, tag = preflight.split_image_ref(ref)
        self.images.add((repo, tag))
        return ref


@pytest.fixture(scope="module")
def registry_server():
    server = Registry()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def registry(registry_server, monkeypatch):
    """Every pre-flight here checks its image against the local registry, which holds this checkout's
    GPU image unless a test removes it."""
    from images.tags import image_ref

    registry_server.images.clear()
    registry_server.auth, registry_server.login, registry_server.fail_with = False, None, 0
    registry_server.token_requests.clear()
    ref = image_ref("gpu", registry=registry_server.prefix)
    monkeypatch.setattr(images_ref, "gpu_image", lambda *_a, **_k: ref)  # where the job's image lives
    for name in ("SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER"):
        monkeypatch.delenv(name, raising=False)
    registry_server.push(ref)
    registry_server.ref = ref
    return registry_server


@pytest.mark.parametrize(("ref", "parts"), [
    ("ghcr.io/me/ft-gpu:abc", ("ghcr.io", "me/ft-gpu", "abc")),
    ("localhost:5000/ft-gpu", ("localhost:5000", "ft-gpu", "latest")),
    ("127.0.0.1:5000/a/b/ft-gpu:t1", ("127.0.0.1:5000", "a/b/ft-gpu", "t1")),
    ("me/ft-gpu:t", ("registry-1.docker.io", "me/ft-gpu", "t")),
    ("ft-gpu", ("registry-1.docker.io", "library/ft-gpu", "latest")),
])
def test_image_references_split_as_docker_splits_them(ref, parts):
    assert preflight.split_image_ref(ref) == parts


def test_the_image_check_finds_a_pushed_tag_anonymously_and_with_a_token(registry):
    assert preflight.check_image(registry.ref)[0] == "ok"
    registry.auth = True  # ghcr.io's way: 401 with a bearer challenge, an anonymous token, then 200
    status, detail, _ = preflight.check_image(registry.ref)
    assert status == "ok" and "is in its registry (sha256:abab" in detail and registry.token_requests


def test_a_missing_tag_fails_with_how_to_push_it(registry):
    registry.images.clear()
    status, detail, code = preflight.check_image(registry.ref)
    assert (status, code) == ("fail", 2)
    assert f"build and push it first: ft image build gpu --registry {registry.prefix} --push" in detail


def test_a_private_image_uses_the_docker_login_and_never_shows_it(registry, monkeypatch):
    registry.auth, registry.login = True, ("robot", "s3cret-pass")
    status, detail, _ = preflight.check_image(registry.ref)
    assert status == "warn" and "SKYPILOT_DOCKER_USERNAME" in detail  # refused anonymously: cannot tell
    monkeypatch.setenv("SKYPILOT_DOCKER_USERNAME", "robot")
    monkeypatch.setenv("SKYPILOT_DOCKER_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("SKYPILOT_DOCKER_SERVER", registry.prefix.split("/")[0])
    status, detail, _ = preflight.check_image(registry.ref)
    assert status == "ok" and "s3cret" not in detail
    monkeypatch.setenv("SKYPILOT_DOCKER_SERVER", "other.example.com")  # a login for another registry: not sent
    assert preflight.check_image(registry.ref)[0] == "warn"


@pytest.mark.parametrize("problem", ["closed port", "500"])
def test_a_registry_that_cannot_answer_is_a_warning_with_the_reason(registry, problem):
    if problem == "500":
        registry.fail_with = 500
        ref = registry.ref
    else:
        ref = f"127.0.0.1:{_closed_port()}/llm-finetuning/ft-gpu:abc"
    status, detail, code = preflight.check_image(ref, timeout=2)
    assert (status, code) == ("warn", 0)
    assert ("HTTP 500" if problem == "500" else "unreachable") in detail


# ------------------------------------------------------------------------------------ store URIs
@pytest.mark.parametrize("uri", ["s3:/bucket", "S3://bucket/p", "s3:bucket", "s3://", "gs://bucket", "s3://b"])
def test_store_uri_typos_are_refused_naming_the_field(uri):
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "x", "model": {"base": "m"}, "data": {"sft_train": "a.jsonl"},
                    "stages": [{"method": "sft"}], "store": {"uri": uri}})
    assert "store.uri" in str(e.value)


@pytest.mark.parametrize("uri", ["s3://my-bucket", "s3://my-bucket/a/b", "./outputs/store", "/abs/dir", "rel",
                                 "file:///tmp/x", "C:/store"])
def test_store_uris_that_are_fine(uri):
    assert store_uri_problem(uri) is None


def test_validate_refuses_one_slash_s3(tmp_path, catalog):
    from jobs.cli import app

    path = _spec_file(tmp_path, store={"uri": "s3:/my-ft-bucket"})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "store.uri" in result.output and "two slashes" in result.output


@pytest.mark.parametrize("argv", [["eval", "run", "r1"], ["report", "r1"], ["merge", "r1", "--out", "x"],
                                  ["serve", "up", "r1", "--dry-run"], ["push", "r1", "--hub", "a/b"], ["chat", "r1"],
                                  ["fetch", "r1"]])
def test_every_store_command_reads_ft_store_through_one_helper(argv, monkeypatch):
    monkeypatch.setenv("FT_STORE", "s3:/typo")  # proves the command read FT_STORE and checked it
    result = CliRunner().invoke(_app(), argv)
    assert result.exit_code == 2, result.output
    assert "FT_STORE" in result.output and "two slashes" in result.output and "Traceback" not in result.output


def test_fetch_uses_ft_store_for_a_bare_run_id(tmp_path, monkeypatch):
    run = tmp_path / "store" / "runs" / "r1"
    (run / "sft" / "final").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "sft" / "final" / "_COMPLETE").write_text("")
    monkeypatch.setenv("FT_STORE", str(tmp_path / "store"))
    result = CliRunner().invoke(_app(), ["fetch", "r1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "r1" / "run.json").is_file()
    assert console.resolve_store("s3://given-bucket") == "s3://given-bucket"  # --store wins over FT_STORE
    monkeypatch.delenv("FT_STORE")
    assert console.resolve_store(None) == console.DEFAULT_STORE


# ---------------------------------------------------------------------------------- accelerators
def test_validate_refuses_an_accelerator_typo_with_close_names(tmp_path, catalog):
    from jobs.cli import app

    path = _spec_file(tmp_path, resources={"accelerators": "A100-80G:1"})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1, result.output
    assert "resources.accelerators" in result.output and "A100-80GB" in result.output
    ok = CliRunner().invoke(app, ["validate", str(_spec_file(tmp_path, resources={"accelerators": "A100-80GB:1"}))])
    assert "resources.accelerators" not in ok.output, ok.output
    bad_form = _spec_file(tmp_path, resources={"accelerators": "A100 80GB x1"})
    assert CliRunner().invoke(app, ["validate", str(bad_form)]).exit_code == 1


def test_accelerator_check_without_catalogs_only_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("SKY_RUNTIME_DIR", str(tmp_path / "empty"))
    assert preflight.accelerator_problem("A100-80GB:1") is None  # gpu_fit's table knows it
    status, text = preflight.accelerator_problem("A100-80G:1")
    assert status == "warn" and "A100-80GB" in text


# ------------------------------------------------------------------------------------- preflight
def test_preflight_all_green_on_a_writable_store(tmp_path, catalog, enabled, s3_env):
    path = _spec_file(tmp_path, store={"uri": f"{s3_env}/ft"})
    result = CliRunner().invoke(_app(), ["preflight", str(path)])
    assert result.exit_code == 0, result.output
    for name in ("store", "clouds", "image", "plan"):
        assert f"ok   {name}: " in result.output, result.output
    assert "spec and data: 5 files" in result.output  # warns: the not-cached tokenizer cannot count tokens
    assert "reachable and writable" in result.output and "enabled: lambda, runpod" in result.output
    assert " on lambda " in result.output or " on runpod " in result.output  # the plan uses enabled clouds only
    import boto3

    left = boto3.client("s3").list_objects_v2(Bucket=s3_env.removeprefix("s3://")).get("KeyCount")
    assert not left  # the probe object was removed


def _without_aws_credentials(monkeypatch, tmp_path) -> None:
    """No AWS credentials anywhere boto3 looks (environment, files, instance metadata)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # s3_env's client cached the credentials


def test_preflight_missing_bucket_and_no_credentials_are_bad_input(tmp_path, catalog, enabled, s3_env, monkeypatch):
    missing = _spec_file(tmp_path, store={"uri": "s3://no-such-bucket-here/ft"})
    result = CliRunner().invoke(_app(), ["preflight", str(missing)])
    assert result.exit_code == 2 and "no-such-bucket-here" in result.output and "Traceback" not in result.output
    _without_aws_credentials(monkeypatch, tmp_path)
    nocreds = CliRunner().invoke(_app(), ["preflight", str(_spec_file(tmp_path, store={"uri": f"{s3_env}/ft"}))])
    assert nocreds.exit_code == 2 and "credentials" in nocreds.output, nocreds.output


def test_preflight_unreachable_store_is_retryable(tmp_path, catalog, enabled, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("FT_STORE_TIMEOUT_S", "2")
    result = CliRunner().invoke(_app(), ["preflight", str(_spec_file(tmp_path)), "--json"])
    assert result.exit_code == 75, result.output
    import json

    checks = {c["check"]: c for c in json.loads(result.output)["checks"]}
    assert checks["store"]["status"] == "fail" and checks["store"]["exit_code"] == 75


def test_preflight_and_launch_refuse_an_image_not_in_its_registry(tmp_path, catalog, enabled, s3_env, registry,
                                                                 monkeypatch):
    registry.images.clear()
    path = _spec_file(tmp_path, store={"uri": f"{s3_env}/ft"})
    result = CliRunner().invoke(_app(), ["preflight", str(path), "--json"])
    assert result.exit_code == 2, result.output
    image = {c["check"]: c for c in json.loads(result.output)["checks"]}["image"]
    assert image["status"] == "fail" and "build and push it first: ft image build gpu" in image["detail"]
    fake = FakeSky(monkeypatch, result=([1], None))
    launched = _launch(tmp_path, "--yes", "--detach", store={"uri": f"{s3_env}/ft"})
    assert launched.exit_code == 2 and "refusing to launch: image" in launched.output and fake.launched == []
    offline = CliRunner().invoke(_app(), ["preflight", str(path), "--offline", "--json"])
    assert "image" not in {c["check"] for c in json.loads(offline.output)["checks"]}  # --offline asks no one
    registry.fail_with = 503  # a registry that cannot say: a warning, the launch goes on
    assert CliRunner().invoke(_app(), ["preflight", str(path)]).exit_code == 0


def test_preflight_no_enabled_cloud_and_over_budget_refuse(tmp_path, catalog, monkeypatch):
    monkeypatch.setattr(pricing, "enabled_clouds", lambda: {"gcp"})  # mocked `sky check` cache
    path = _spec_file(tmp_path, resources={"max_cost_usd": 0.01})
    report = preflight.run_preflight(path, cloud=True)
    names = {c.name: c for c in report.failed}
    assert "clouds" in names and "run `sky check`" in names["clouds"].detail
    assert "plan" in names and "max_cost_usd" in names["plan"].detail and report.exit_code == 2


# ---------------------------------------------------------------------------------------- launch
class FakeSky:
    """The cloud API behind SkyPilot's SDK (mocked: no cloud here). Records what was submitted."""

    def __init__(self, monkeypatch, result=None, error: Exception | None = None):
        import sky

        self.launched = []
        self.result, self.error = result, error
        monkeypatch.setattr(sky.jobs, "launch", self._launch)
        monkeypatch.setattr(sky, "get", self._get)
        monkeypatch.setattr(sky, "stream_and_get", self._get)

    def _launch(self, task, name=None):
        self.launched.append(name)
        return "request-1"

    def _get(self, request_id):
        if self.error:
            raise self.error
        return self.result


def _launch(tmp_path, *extra, **over):
    path = _spec_file(tmp_path, **over)
    return CliRunner().invoke(_app(), ["launch", str(path), "--run-id", "r1", "--out",
                                       str(tmp_path / "bundles"), *extra])


def test_a_refused_launch_request_is_a_non_zero_exit_with_skypilots_reason(tmp_path, catalog, enabled, s3_env,
                                                                          monkeypatch):
    from sky import exceptions

    fake = FakeSky(monkeypatch, error=exceptions.NoCloudAccessError(
        "Failed to launch: no cloud access.\nRun `sky check` to see why."))
    result = _launch(tmp_path, "--detach", "--yes", store={"uri": f"{s3_env}/ft"})
    assert fake.launched == ["ft-r1"]
    assert result.exit_code == 2, result.output
    assert "NoCloudAccessError: Failed to launch: no cloud access." in result.output
    assert "run id:" not in result.output and "Traceback" not in result.output


def test_a_successful_launch_prints_job_run_store_and_what_next(tmp_path, catalog, enabled, s3_env, monkeypatch):
    fake = FakeSky(monkeypatch, result=([42], None))
    result = _launch(tmp_path, "--detach", "--yes", store={"uri": f"{s3_env}/ft"})
    assert result.exit_code == 0, result.output
    assert fake.launched == ["ft-r1"]
    out = result.output
    assert "managed job id: 42" in out and "run id:         r1" in out
    assert f"{s3_env}/ft/runs/r1" in out and "ft logs r1" in out and "ft fetch r1" in out


def test_launch_asks_first_and_refuses_without_a_terminal(tmp_path, catalog, enabled, s3_env, monkeypatch):
    fake = FakeSky(monkeypatch, result=([1], None))
    result = _launch(tmp_path, "--detach", store={"uri": f"{s3_env}/ft"})
    assert result.exit_code == 2 and "--yes" in result.output
    assert fake.launched == []  # nothing submitted, nothing pushed
    import boto3

    assert not boto3.client("s3").list_objects_v2(Bucket=s3_env.removeprefix("s3://")).get("KeyCount")


def test_launch_refuses_a_local_store_before_any_cloud_call(tmp_path, catalog, enabled, monkeypatch):
    fake = FakeSky(monkeypatch, result=([1], None))
    result = _launch(tmp_path, "--yes", store={"uri": str(tmp_path / "store")})
    assert result.exit_code == 2 and "local folder" in result.output and fake.launched == []
    dry = _launch(tmp_path, "--dry-run", store={"uri": str(tmp_path / "store")})
    assert dry.exit_code == 0 and "warn store" in dry.output and "name: ft-r1" in dry.output


def test_launch_retryable_skypilot_failure_exits_75(tmp_path, catalog, enabled, s3_env, monkeypatch):
    from sky import exceptions

    FakeSky(monkeypatch, error=exceptions.ApiServerConnectionError("http://127.0.0.1:46580"))
    result = _launch(tmp_path, "--yes", "--detach", store={"uri": f"{s3_env}/ft"})
    assert result.exit_code == 75 and "ApiServerConnectionError" in result.output


# ------------------------------------------------------------------------------- status and logs
def test_status_with_no_jobs_and_logs_of_an_unknown_run(monkeypatch):
    import sky
    from sky import exceptions

    monkeypatch.setattr(sky.jobs, "queue", lambda **_k: "request-q")

    def not_up(_request):
        raise exceptions.ClusterNotUpError("Managed jobs controller does not exist.")

    monkeypatch.setattr(sky, "get", not_up)
    result = CliRunner().invoke(_app(), ["status"])
    assert result.exit_code == 0 and "no managed jobs" in result.output, result.output
    logs = CliRunner().invoke(_app(), ["logs", "UNKNOWN"])
    assert logs.exit_code == 2 and "no managed job ft-UNKNOWN" in logs.output
    monkeypatch.setattr(sky, "get", lambda _r: ([{"job_id": 3, "job_name": "ft-other", "status": "RUNNING"}], 1, {}, 1))
    assert "ft-other" in CliRunner().invoke(_app(), ["status"]).output
    assert CliRunner().invoke(_app(), ["logs", "UNKNOWN"]).exit_code == 2

    def down(_request):
        raise exceptions.ApiServerConnectionError("http://127.0.0.1:46580")

    monkeypatch.setattr(sky, "get", down)
    result = CliRunner().invoke(_app(), ["status"])
    assert result.exit_code == 75 and "ApiServerConnectionError" in result.output


# ------------------------------------------------------------------------------- no tracebacks
def test_the_ft_entry_point_turns_store_errors_into_one_line(tmp_path, s3_env, monkeypatch, capsys):
    from jobs.cli import app

    _without_aws_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _spec_file(tmp_path)
    with pytest.raises(SystemExit) as e:
        app(["bundle", "create", str(path), "--out", str(tmp_path / "b"), "--push", f"{s3_env}/ft"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no AWS credentials" in err and "Traceback" not in err


def test_describe_hub_and_network_errors(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        try:
            raise ConnectionError("connection refused")
        except ConnectionError as cause:
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from cause
    except LocalEntryNotFoundError as e:
        assert describe(OSError("We couldn't connect to 'https://huggingface.co'"))[0] == 2
        assert describe(e)[0] == 75  # the Hub unreachable: retryable
        wrapped = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        wrapped.__cause__ = e
        assert describe(wrapped)[0] == 75
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, line = describe(LocalEntryNotFoundError("not in the cache"))
    assert code == 2 and "HF_HUB_OFFLINE" in line
    import httpx

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/nobody/x"))
    assert describe(RepositoryNotFoundError("nobody/nothing", response=response))[0] == 2
    from jobs.gpu_fit import ModelSizeError

    assert describe(ModelSizeError("cannot size model 'x'"))[0] == 2
    assert describe(KeyError("a bug")) is None  # a bug keeps its traceback
