"""`batch --engine ray`: Ray actors make the images, the driver writes them. On a local Ray with two CPUs (as Ray's
testing tips advise), started once for the module and shut down and checked for leftover processes at the end; the
tests that kill or interrupt a driver start their own in a child process and clean up after it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from test_batch import check_folder, done_entries, manifest_lines, write

pytestmark = pytest.mark.slow
PROMPTS = "".join(f"a {c} {s}\n" for c in ("red", "green", "blue", "white", "black", "yellow")
                  for s in ("circle", "square", "star", "moon"))  # 24 lines
DEMO = ["--preset", "demo", "--steps", "6", "--seed", "11"]


def _ray_processes(session: int | None = None) -> dict[int, str]:
    """Ray's processes on this machine (or only those of one process session): pid -> command line."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, sid, args = line.split(None, 2) if len(line.split(None, 2)) == 3 else (0, 0, "")
        if any(k in args for k in ("raylet", "gcs_server", "ray::", "default_worker.py", "dashboard/agent.py",
                                   "runtime_env/agent")) and (session is None or int(sid) == session):
            found[int(pid)] = args[:120]
    return found


def _gone(pids, seconds: float = 20.0) -> dict[int, str]:
    """Which of `pids` are still running after waiting up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = {pid: args for pid, args in _ray_processes().items() if pid in pids}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    before = set(_ray_processes())
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)  # "local": our own, even where a `ray start` cluster runs
    ours = set(_ray_processes()) - before
    assert ours, "ray.init started no processes?"
    yield ray
    ray.shutdown()
    assert _gone(ours) == {}, "Ray left processes behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 24 demo images as the local engine makes them: file name -> pixels."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("local")
    prompts = write(root / "p.txt", PROMPTS)
    result = run_cli("batch", prompts, *DEMO, "--out", root / "out", "-q")
    assert result.code == 0, result.err
    return prompts, _pixels(root / "out"), root / "out"


def _pixels(out: Path) -> dict[str, bytes]:
    return {p.name: Image.open(p).tobytes() for p in sorted(out.glob("*.png"))}


def _no_duplicates(out: Path) -> None:
    keys = [e["key"] for e in manifest_lines(out) if e["type"] == "done"]
    assert len(keys) == len(set(keys))


def _batch_json(cli, *args):
    result = cli("batch", *args, "--json", "-q")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_two_workers_make_the_local_engines_images_pixel_for_pixel(cli, local_ray, reference, tmp_path):
    prompts, expected, local = reference
    summary = _batch_json(cli, prompts, *DEMO, "--engine", "ray", "--workers", "2", "--batch-size", "2",
                          "--out", tmp_path / "ray")
    assert summary["done"] == 24 and summary["engine"] == "ray" and summary["retries"] == 0
    workers = summary["workers"]
    assert len(workers) == 2 and sum(w["images"] for w in workers) == 24
    assert all(w["device"] == "cpu" and w["images"] > 0 and w["worker"].startswith(socket.gethostname())
               for w in workers)  # both pulled work from the one queue
    check_folder(tmp_path / "ray", 24)
    _no_duplicates(tmp_path / "ray")
    assert _pixels(tmp_path / "ray") == expected
    for sidecar in sorted(local.glob("*.json")):  # a worker's record is the local engine's, timings aside
        ours, theirs = (json.loads(path.read_text()) for path in (sidecar, tmp_path / "ray" / sidecar.name))
        for record in (ours, theirs):
            del record["timings"], record["output"]["sha256"]  # the PNG embeds the timings
            del record["batch"]["batch_size"], record["batch"]["position"]  # micro-batches of 2 here, auto there
            del record["batch"]["source"]  # the prompt file, relative to each output folder
        assert theirs == ours
    again = _batch_json(cli, prompts, *DEMO, "--engine", "ray", "--out", tmp_path / "ray")
    assert (again["done"], again["skipped"]) == (0, 24)


def test_a_tiny_model_on_ray_matches_the_local_engine(cli, local_ray, tiny_models, tmp_path):
    prompts = write(tmp_path / "p.txt", PROMPTS[:6 * 12])
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "3", "--seed", "5"]
    assert cli("batch", prompts, *common, "--out", tmp_path / "local", "-q").code == 0
    summary = _batch_json(cli, prompts, *common, "--engine", "ray", "--workers", "2", "--out", tmp_path / "ray")
    assert summary["done"] == 6
    assert _pixels(tmp_path / "ray") == _pixels(tmp_path / "local") and len(_pixels(tmp_path / "local")) == 6


def test_a_batch_resumes_across_engines(cli, local_ray, tmp_path):
    first, full = write(tmp_path / "a.txt", PROMPTS[:36]), write(tmp_path / "b.txt", PROMPTS[:72])  # 3, then 6
    out = ["--out", tmp_path / "out", *DEMO]
    assert _batch_json(cli, first, *out, "--engine", "ray")["done"] == 3
    local = _batch_json(cli, full, *out, "--engine", "local")
    assert (local["done"], local["skipped"]) == (3, 3)
    again = _batch_json(cli, full, *out, "--engine", "ray")
    assert (again["done"], again["skipped"]) == (0, 6)
    check_folder(tmp_path / "out", 6)
    _no_duplicates(tmp_path / "out")


def test_a_worker_killed_mid_run_has_its_work_retried_and_nothing_doubles(cli, local_ray, reference, tmp_path,
                                                                          monkeypatch):
    from imagegen.batch.engines.ray_pool import Pool

    prompts, expected, _ = reference
    real, killed = Pool._receive, []

    def kill_after_first_result(self, ref, task):
        made = real(self, ref, task)
        if made is not None and not killed and task.actor.busy:  # it holds its next micro-batch: lose that one
            killed.append(task.actor.label)
            local_ray.kill(task.actor.handle)
        return made

    monkeypatch.setattr(Pool, "_receive", kill_after_first_result)
    summary = _batch_json(cli, prompts, *DEMO, "--engine", "ray", "--workers", "2", "--batch-size", "2",
                          "--out", tmp_path / "out")
    assert len(killed) == 1
    assert summary["done"] == 24 and summary["failed"] == 0 and summary["retries"] >= 1
    lost = [w for w in summary["workers"] if w["worker"] == killed[0]]
    assert lost and lost[0]["lost"] == summary["retries"]
    assert len(summary["workers"]) == 3  # a replacement took the lost worker's place
    check_folder(tmp_path / "out", 24)
    _no_duplicates(tmp_path / "out")
    assert _pixels(tmp_path / "out") == expected


def _driver(prompts: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`imagegen batch --engine ray` in a child process and its own session, starting its own local Ray."""
    cmd = [sys.executable, "-m", "imagegen", "batch", str(prompts), *DEMO, "--engine", "ray", "--workers", "2",
           "--batch-size", "1", "--out", str(out), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_images(proc: subprocess.Popen, out: Path, count: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(done_entries(out)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the driver wrote fewer than {count} images: {proc.poll()}")


def _clean_session(proc: subprocess.Popen) -> dict[int, str]:
    """Stop what is left of a killed driver's own Ray; what did not stop."""
    left = _ray_processes(session=proc.pid)  # start_new_session: its session id is its pid
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return _gone(set(left), seconds=10)


def test_a_driver_killed_with_sigkill_resumes_to_exactly_the_batch(cli, local_ray, reference, tmp_path):
    prompts, expected, _ = reference
    out = tmp_path / "out"
    proc = _driver(prompts, out)
    try:
        _wait_for_images(proc, out, 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert _clean_session(proc) == {}
    assert 3 <= len(done_entries(out)) < 24
    rerun = _batch_json(cli, prompts, *DEMO, "--engine", "ray", "--out", out)
    assert rerun["done"] + rerun["skipped"] + rerun["adopted"] == 24
    check_folder(out, 24)
    _no_duplicates(out)
    assert _pixels(out) == expected


def test_ctrl_c_finishes_what_is_in_flight_writes_it_and_exits_130(cli, local_ray, reference, tmp_path):
    prompts, expected, _ = reference
    out = tmp_path / "out"
    proc = _driver(prompts, out, "--json")
    try:
        _wait_for_images(proc, out, 2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground process group
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        assert _clean_session(proc) == {}
    assert proc.returncode == 130, stderr[-2000:]
    summary = json.loads(stdout)
    assert summary["interrupted"] and summary["done"] >= 2 and summary["done"] + summary["remaining"] == 24
    assert f"interrupted: {summary['done']} new images written, {summary['remaining']} to go" in stderr
    check_folder(out, summary["done"])
    assert "Traceback" not in stderr
    rerun = _batch_json(cli, prompts, *DEMO, "--engine", "ray", "--out", out)
    assert (rerun["done"], rerun["skipped"]) == (summary["remaining"], summary["done"])
    assert _pixels(out) == expected


def test_a_worker_that_cannot_load_the_model_says_so_with_its_host(cli, local_ray, tiny_models, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["sdxl"], broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # the configs read fine: only loading the weights fails
    prompts = write(tmp_path / "p.txt", "a cat\n")
    result = cli("batch", prompts, "--model", broken, "--size", "64x64", "--steps", "2", "--engine", "ray",
                 "--out", tmp_path / "out")
    assert result.code == 1
    line = result.err.strip().splitlines()[-1]
    assert line.startswith(f"imagegen: error: Ray worker on {socket.gethostname()}: ") and "unet" in line, result.err
    assert "Traceback" not in result.err
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("flags, says", [
    (["--device", "cuda"], "--device cuda needs one"),
    (["--offload", "sequential"], "--offload sequential: needs a GPU"),
])
def test_a_cluster_without_a_gpu_refuses_what_needs_one_before_any_worker_loads(cli, local_ray, tmp_path, flags,
                                                                                 says, monkeypatch):
    from imagegen.batch.engines.ray_pool import Pool

    monkeypatch.setattr(Pool, "_spawn", lambda self: pytest.fail("a worker was started"))
    prompts = write(tmp_path / "p.txt", "a cat\n")
    result = cli("batch", prompts, "--preset", "demo", *flags, "--engine", "ray", "--out", tmp_path / "out")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert lines[0].startswith(f"imagegen: error: --engine ray: the Ray cluster has no GPU (2 CPUs), and {says}")


@pytest.mark.parametrize("address, says", [
    ("127.0.0.1:1", "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there (Connection refused)"),
    ("no-such-head.invalid:6379", "--ray-address no-such-head.invalid:6379: unknown host 'no-such-head.invalid'"),
    ("head:port", "--ray-address head:port: not HOST:PORT, ray://HOST:PORT, auto or local"),
])
def test_an_unreachable_address_is_one_line_before_anything_runs(cli, tmp_path, address, says, monkeypatch):
    import imagegen.batch.plan as plan

    monkeypatch.setattr(plan, "read_prompt_file", lambda *a, **k: pytest.fail("the batch was planned"))
    result = cli("batch", write(tmp_path / "p.txt", "a cat\n"), "--preset", "demo", "--engine", "ray",
                 "--ray-address", address)
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert lines[0].startswith(f"imagegen: error: {says}")


def test_without_ray_the_engine_says_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as when it is not installed
    result = cli("batch", write(tmp_path / "p.txt", "a cat\n"), "--preset", "demo", "--engine", "ray")
    assert result.code == 2
    assert result.err.strip() == ('imagegen: error: --engine ray: Ray is not installed; install it with: '
                                  'pip install "imagegen[ray]"')


def test_ray_options_belong_to_the_ray_engine(cli, tmp_path):
    result = cli("batch", write(tmp_path / "p.txt", "a cat\n"), "--preset", "demo", "--workers", "2")
    assert result.code == 2
    assert result.err.strip() == "imagegen: error: --workers: only with --engine ray (this batch's engine is local)"


def test_a_worker_on_another_host_gets_the_input_images_from_the_driver(cli, local_ray, tmp_path, monkeypatch):
    """Inputs need no shared filesystem either: a worker whose host is not the driver's gets each micro-batch's
    init images (masks, control maps, references) with it, and makes what the local engine makes."""
    import imagegen.batch.engines.ray_pool as ray_pool

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "init.png")
    lines = "".join(json.dumps({"prompt": f"a blue {s}", "image": "init.png", "strength": 0.6}) + "\n"
                    for s in ("circle", "square", "star"))
    prompts = write(tmp_path / "p.jsonl", lines)
    common = ["--preset", "demo", "--steps", "6", "--seed", "3"]
    assert cli("batch", prompts, *common, "--out", tmp_path / "local", "-q").code == 0

    real, sent = ray_pool.bytes_of, []

    def read_then_hide(image):  # the driver reads the file, then it is gone: the worker cannot read it itself
        data = real(image)
        if data is not None:
            sent.append(image.sha256)
            (tmp_path / "init.png").rename(tmp_path / "hidden.png")
        return data if data is not None else real(type(image)(**{**image.__dict__, "path": str(tmp_path / "hidden.png")}))

    monkeypatch.setattr(ray_pool.Pool, "here", "the-driver-host")
    monkeypatch.setattr(ray_pool, "bytes_of", read_then_hide)
    summary = _batch_json(cli, prompts, *common, "--engine", "ray", "--out", tmp_path / "ray")
    assert summary["done"] == 3 and sent and not (tmp_path / "init.png").exists()
    assert _pixels(tmp_path / "ray") == _pixels(tmp_path / "local") and len(_pixels(tmp_path / "local")) == 3


class _FakeCluster:
    """What RayEngine._placement asks of Ray: the cluster's resources and nodes."""

    def __init__(self, nodes: list[dict]):
        self._nodes = nodes

    def cluster_resources(self) -> dict:
        total: dict = {}
        for node in self._nodes:
            for key, value in node.items():
                total[key] = total.get(key, 0) + value
        return total

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": node} for node in self._nodes]


@pytest.mark.parametrize("nodes, workers, device, expected", [
    ([{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}], None, "auto", (8, {"num_gpus": 1}, None)),  # one per GPU
    ([{"CPU": 16, "GPU": 4}], 2, "auto", (2, {"num_gpus": 1}, None)),  # --workers: at most that many
    ([{"CPU": 16, "GPU": 4}], None, "cpu", (1, {"num_cpus": 16}, 16)),  # --device cpu: CPU workers
    ([{"CPU": 8}, {"CPU": 8}], None, "auto", (1, {"num_cpus": 8}, 8)),  # a worker's CPUs fit on one node
    ([{"CPU": 8}, {"CPU": 8}], 4, "auto", (4, {"num_cpus": 4}, 4)),
])
def test_workers_are_placed_one_per_gpu_or_sharing_the_cpus(nodes, workers, device, expected):
    from imagegen.batch.engines.ray_engine import RayEngine
    from imagegen.request import Request
    from imagegen.resolve import resolve

    engine = RayEngine(workers=workers)
    req = resolve(Request(prompt="a cat", preset="demo", device=device))
    assert engine._placement(_FakeCluster(nodes), [req]) == expected


def test_workers_that_cannot_start_are_one_line_after_the_wait(cli, local_ray, tmp_path, monkeypatch):
    from imagegen.batch.engines.ray_engine import RayEngine

    monkeypatch.setattr(RayEngine, "_placement", lambda self, ray, reqs: (1, {"num_cpus": 64}, 1))
    monkeypatch.setenv("IMAGEGEN_RAY_START_TIMEOUT", "2")
    result = cli("batch", write(tmp_path / "p.txt", "a cat\n"), "--preset", "demo", "--engine", "ray",
                 "--out", tmp_path / "out")
    assert result.code == 1
    assert result.err.strip().splitlines()[-1] == (
        "imagegen: error: no Ray worker started within 2 s: each asks for 64 CPU and the cluster has 2 CPU (lower "
        "--workers, or add nodes; IMAGEGEN_RAY_START_TIMEOUT sets the wait)")


def test_adapters_travel_to_the_workers_and_their_extras_come_back(cli, local_ray, tiny_models, tmp_path):
    """ControlNet, IP-Adapter and LoRA lines on Ray make the local engine's images and control maps."""
    from imagegen.testing import build_tiny_controlnet, build_tiny_ip_adapter, build_tiny_lora

    net = build_tiny_controlnet(tmp_path / "cn", "sdxl")
    ip = build_tiny_ip_adapter(tmp_path / "ip", "sdxl")
    lora = build_tiny_lora(tmp_path / "style.safetensors", "sdxl")
    edges = (Image.effect_noise((64, 64), 60).convert("RGB"))
    edges.save(tmp_path / "map.png")
    lines = [{"prompt": "plain", "lora": str(lora)},
             {"prompt": "edges", "control": "canny:map.png", "n": 2},
             {"prompt": "styled", "ip_adapter": "map.png", "ip_scale": 0.5}]
    prompts = write(tmp_path / "p.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--seed", "9", "--controlnet-model",
              net, "--ip-adapter-model", ip, "--ip-adapter-weight", "ip-adapter.safetensors", "--image-encoder",
              ip / "image_encoder"]
    assert cli("batch", prompts, *common, "--out", tmp_path / "local", "-q").code == 0
    summary = _batch_json(cli, prompts, *common, "--engine", "ray", "--workers", "2", "--out", tmp_path / "ray")
    assert summary["done"] == 4
    local, ray = _pixels(tmp_path / "local"), _pixels(tmp_path / "ray")
    assert ray == local and len([name for name in local if name.endswith(".control.png")]) == 2
