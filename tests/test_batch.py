"""`imagegen batch`: prompt files, validation before loading, seeds, resume after crashes, interrupts, failures."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from imagegen.batch.promptfile import read_prompt_file


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def manifest_lines(out: Path) -> list[dict]:
    """Every readable manifest line of every shard (a line torn by a kill is skipped, as the resume does)."""
    lines = []
    for shard in sorted(out.glob("manifest*.jsonl")):
        for raw in shard.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                pass
    return lines


def done_entries(out: Path) -> dict[str, dict]:
    return {e["key"]: e for e in manifest_lines(out) if e["type"] == "done"}


def check_folder(out: Path, expected: int) -> dict[str, dict]:
    """Exactly `expected` images, each once in the manifest with a matching sha256, a sidecar, no temp files."""
    done = done_entries(out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == expected and len(done) == expected
    assert sorted(e["png"] for e in done.values()) == pngs
    for entry in done.values():
        assert hashlib.sha256((out / entry["png"]).read_bytes()).hexdigest() == entry["sha256"]
        assert (out / entry["sidecar"]).is_file()
    assert not list(out.rglob("*.tmp"))
    return done


# ---- prompt files (no model)


def test_txt_skips_comments_and_blank_lines(tmp_path):
    f = write(tmp_path / "p.txt", "# a comment\n\na red fox\n   \n  # indented comment\nan owl # not a comment here\n")
    parsed = read_prompt_file(str(f))
    assert [(j.line, j.request.prompt) for j in parsed.jobs] == [(3, "a red fox"), (6, "an owl # not a comment here")]
    assert parsed.errors == ()


def test_jsonl_and_csv_carry_per_line_fields(tmp_path):
    j = write(tmp_path / "p.jsonl", '{"prompt": "a fox", "steps": 12, "cfg": 4.5, "size": "64x32", "seed": 3}\n'
                                    '{"prompt": "an owl", "negative": "blur", "n": 2, "scheduler": "DDIM"}\n')
    jobs = read_prompt_file(str(j)).jobs
    assert jobs[0].request.given() == {"prompt": "a fox", "steps": 12, "cfg": 4.5, "size": (64, 32), "seed": 3}
    assert jobs[1].request.n == 2 and jobs[1].request.scheduler == "DDIM"
    c = write(tmp_path / "p.csv", 'prompt,steps,negative\n"a fox, at dawn",7,\n"日本の城 🏯",,"low quality, blurry"\n')
    jobs = read_prompt_file(str(c)).jobs
    assert [j.request.given() for j in jobs] == [
        {"prompt": "a fox, at dawn", "steps": 7},
        {"prompt": "日本の城 🏯", "negative": "low quality, blurry"},
    ]
    assert [j.line for j in jobs] == [2, 3]


def test_every_bad_line_is_reported_with_file_and_line(tmp_path):
    f = write(tmp_path / "jobs.jsonl", "\n".join([
        '{"prompt": "ok"}',
        '{"prompt": "a", "steps": "ten"}',
        '{"prompt": "b", "stepz": 3}',
        "not json",
        '["a list"]',
        '{"prompt": "c", "cfg": true}',
        '{"steps": 3}',
        '{"prompt": "d", "size": "huge"}',
        '{"prompt": "   "}',
    ]) + "\n")
    errors = read_prompt_file(f.name).errors  # tests run in tmp_path
    assert [e.split(":")[1] for e in errors] == ["2", "3", "4", "5", "6", "7", "8", "9"]
    assert all(e.startswith("jobs.jsonl:") for e in errors)
    assert "steps must be an integer" in errors[0]
    assert "did you mean 'steps'" in errors[1] and "valid keys" in errors[1]
    assert "size: must be WIDTHxHEIGHT" in errors[6]


def test_csv_header_errors_name_the_column(tmp_path):
    write(tmp_path / "p.csv", "prompt,stpes\na,1\n")
    (error,) = read_prompt_file("p.csv").errors
    assert error.startswith("p.csv:1: unknown column 'stpes' (did you mean 'steps'?)")
    write(tmp_path / "q.csv", "prompt,steps\na,1,2\n")
    assert read_prompt_file("q.csv").errors == ("q.csv:2: 3 cells but the header has 2 columns",)


def test_expand_makes_one_job_per_combination_only_when_asked(tmp_path):
    f = write(tmp_path / "p.txt", "a {red|blue} {fox|owl}\nplain\n")
    assert [j.request.prompt for j in read_prompt_file(str(f)).jobs] == ["a {red|blue} {fox|owl}", "plain"]
    jobs = read_prompt_file(str(f), expand=True).jobs
    assert [(j.index, j.line, j.request.prompt) for j in jobs] == [
        (0, 1, "a red fox"), (1, 1, "a red owl"), (2, 1, "a blue fox"), (3, 1, "a blue owl"), (4, 2, "plain")]


def test_unreadable_files_are_one_line_errors(cli, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = cli("batch", tmp_path / "latin1.txt", "--preset", "demo")
    assert result.code == 2 and "latin1.txt:1: not UTF-8 text" in result.err
    result = cli("batch", tmp_path / "missing.txt", "--preset", "demo")
    assert result.code == 2 and "missing.txt: no such prompt file" in result.err
    write(tmp_path / "p.yaml", "a\n")
    result = cli("batch", tmp_path / "p.yaml", "--preset", "demo")
    assert result.code == 2 and "unknown prompt-file type '.yaml'" in result.err


def test_stdin_is_read_as_txt_or_jsonl():
    parsed = read_prompt_file("-", stdin=io.StringIO('{"prompt": "a fox", "steps": 3}\n'))
    assert parsed.source == "<stdin>" and parsed.format == "jsonl" and parsed.jobs[0].request.steps == 3
    parsed = read_prompt_file("-", stdin=io.StringIO("a fox\nan owl\n"))
    assert parsed.format == "txt" and len(parsed.jobs) == 2


def test_invalid_lines_stop_everything_before_a_model_loads(cli, tiny_models, tmp_path, monkeypatch):
    import imagegen.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(imagegen.loading, "load_model", no_loading)
    f = write(tmp_path / "p.jsonl", "\n".join([
        '{"prompt": "fine"}',
        '{"prompt": "bad scheduler", "scheduler": "Eulr"}',
        '{"prompt": "fine too"}',
        '{"prompt": "bad size", "size": "65x64"}',
        '{"prompt": "flow only", "scheduler": "FlowMatchEulerDiscreteScheduler"}',
    ]) + "\n")
    result = cli("batch", f.name, "--model", tiny_models["sdxl"], "--out", tmp_path / "o")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert [x.split(":")[1] for x in lines[:3]] == ["2", "4", "5"]
    assert "unknown scheduler 'Eulr'" in lines[0] and "multiples of 8" in lines[1]
    assert lines[-1] == "imagegen: error: p.jsonl: 3 invalid lines; nothing was run (fix them, or pass --skip-invalid to run the valid lines)"
    assert not (tmp_path / "o").exists()


def test_a_bad_flag_is_reported_once_and_a_bad_single_line_by_its_line(cli, tmp_path):
    write(tmp_path / "p.txt", "one\ntwo\nthree\n")
    result = cli("batch", "p.txt", "--preset", "demo", "--scheduler", "Eulr")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1
    assert lines[0].startswith("imagegen: error: --scheduler: unknown scheduler 'Eulr'")
    write(tmp_path / "one.jsonl", '{"prompt": "x", "scheduler": "Eulr"}\n')
    result = cli("batch", "one.jsonl", "--preset", "demo")
    lines = result.err.strip().splitlines()  # one bad line is one line on stderr, naming the file and line
    assert result.code == 2 and len(lines) == 1
    assert lines[0].startswith("imagegen: error: one.jsonl:1: scheduler: unknown scheduler 'Eulr'")


def test_fixing_an_invalid_line_does_not_renumber_or_reseed_the_lines_after_it(tmp_path):
    from imagegen.batch import prepare
    from imagegen.request import Request

    flags = Request(preset="demo", out=str(tmp_path / "o"))
    write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "steps": "20"}\n{"prompt": "c", "n": 2}\n')
    broken = prepare("p.jsonl", flags, base_seed=3, skip_invalid=True)
    write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "steps": 20}\n{"prompt": "c", "n": 2}\n')
    fixed = prepare("p.jsonl", flags, base_seed=3)
    after = [(i.key, i.index, i.seed, i.hash, i.name) for i in fixed.images if i.job.line == 3]
    assert after == [(i.key, i.index, i.seed, i.hash, i.name) for i in broken.images if i.job.line == 3]
    assert [i.index for i in fixed.images] == [0, 1, 2, 3]


def test_names_must_be_unique_within_a_batch(cli, tmp_path):
    write(tmp_path / "p.txt", "same\nsame\n")
    result = cli("batch", "p.txt", "--preset", "demo", "--name", "{prompt}")
    assert result.code == 2 and "would both be named 'same'; add {index} or {seed}" in result.err


def test_a_second_batch_on_a_busy_folder_is_refused(cli, tmp_path):
    from imagegen.batch.manifest import ManifestWriter

    busy = ManifestWriter(tmp_path / "o")  # as a running batch holds it
    try:
        write(tmp_path / "p.txt", "one\n")
        result = cli("batch", "p.txt", "--preset", "demo", "--out", tmp_path / "o")
        assert result.code == 2 and "another imagegen batch is writing to this folder" in result.err
    finally:
        busy.close()


# ---- running (tiny pipelines)

def run_batch_json(cli, *args) -> tuple[int, dict, str]:
    result = cli("batch", *args, "--json", "-q")
    return result.code, (json.loads(result.out) if result.out.strip() else {}), result.err


@pytest.mark.slow
def test_batch_end_to_end_with_per_line_fields_and_seeds(cli, tiny_models, tmp_path):
    f = write(tmp_path / "jobs.jsonl", "\n".join([
        '{"prompt": "a red fox", "seed": 42}',
        '{"prompt": "an owl", "n": 2, "steps": 3}',
        '{"prompt": "a ship", "negative": "blurry", "cfg": 2}',
    ]) + "\n")
    out = tmp_path / "run"
    code, summary, err = run_batch_json(cli, f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--seed", "5",
                                        "--out", out, "--batch-size", "2")
    assert code == 0, err
    assert (summary["total"], summary["done"], summary["failed"]) == (4, 4, 0)
    done = check_folder(out, 4)
    from imagegen.batch import derive_seed

    owl = derive_seed(5, 1)
    assert [done[k]["seed"] for k in ("0/0", "1/0", "1/1", "2/0")] == [42, owl, owl + 1, derive_seed(5, 2)]
    for entry in done.values():
        assert str(entry["seed"]) in entry["png"]  # the image's own seed is in its name ...
        with Image.open(out / entry["png"]) as im:
            record = json.loads(im.text["imagegen"])
            assert f"Seed: {entry['seed']}," in im.text["parameters"]  # ... its A1111 chunk ...
        sidecar = json.loads((out / entry["sidecar"]).read_text())
        assert record["seed"] == sidecar["seed"] == entry["seed"]  # ... and its sidecar
        assert sidecar["batch"]["line"] == entry["line"] and sidecar["batch"]["request_hash"] == entry["hash"]
    owl_record = json.loads((out / done["1/0"]["sidecar"]).read_text())
    assert owl_record["steps"] == 3  # the line beats the flag
    assert json.loads((out / done["0/0"]["sidecar"]).read_text())["steps"] == 2  # the flag is the default


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_batched_images_equal_one_at_a_time_txt2img_bit_for_bit(cli, tiny_models, tmp_path, family):
    prompts = ["a red fox", "an owl at night", "a ship", "a castle on a hill", "rain"]
    f = write(tmp_path / "p.txt", "\n".join(prompts) + "\n")
    common = ["--model", tiny_models[family], "--steps", "3", "--cfg", "3", "--size", "64x64"]
    code, _, err = run_batch_json(cli, f, *common, "--seed", "9", "--batch-size", "4", "--out", tmp_path / "b")
    assert code == 0, err
    done = done_entries(tmp_path / "b")
    for key, entry in done.items():
        job = int(key.split("/")[0])
        single = json.loads(cli("txt2img", prompts[job], *common, "--seed", str(entry["seed"]),
                                "--out", tmp_path / f"s{job}", "--json", "-q").out)
        assert single["images"][0]["pixels_sha256"] == entry["pixels_sha256"], f"{family} job {job} differs"


@pytest.mark.slow
def test_a_rerun_resumes_with_nothing_lost_or_duplicated(cli, tiny_models, tmp_path):
    f = write(tmp_path / "p.txt", "".join(f"prompt number {i}\n" for i in range(6)))
    out = tmp_path / "run"
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", out, "--batch-size", "4"]
    code, first, _ = run_batch_json(cli, f, *common, "--seed", "1")
    assert code == 0 and first["done"] == 6
    before = check_folder(out, 6)

    # Lose one image and the manifest's last line (torn, as a kill mid-append leaves it).
    (out / before["2/0"]["png"]).unlink()
    shard = out / "manifest.jsonl"
    text = shard.read_text()
    shard.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + '{"type": "done", "key": "5/')
    assert "5/0" not in done_entries(out)

    code, second, err = run_batch_json(cli, f, *common)  # no --seed: the manifest's base seed is reused
    assert code == 0, err
    assert (second["skipped"], second["adopted"], second["done"]) == (4, 1, 1)  # 5/0's file was still there
    after = check_folder(out, 6)
    assert {k: e["pixels_sha256"] for k, e in after.items()} == {k: e["pixels_sha256"] for k, e in before.items()}

    code, third, _ = run_batch_json(cli, f, *common)
    assert code == 0 and (third["skipped"], third["done"]) == (6, 0)


@pytest.mark.slow
def test_a_changed_line_and_a_changed_file_are_made_again(cli, tiny_models, tmp_path):
    f = write(tmp_path / "p.txt", "one\ntwo\nthree\n")
    out = tmp_path / "run"
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", out]
    assert run_batch_json(cli, f, *common, "--seed", "2")[0] == 0
    before = check_folder(out, 3)
    write(tmp_path / "p.txt", "one\nTWO, changed\nthree\n")
    (out / before["2/0"]["png"]).write_bytes(b"not the image any more")
    code, summary, err = run_batch_json(cli, f, *common)
    assert code == 0 and (summary["skipped"], summary["done"]) == (1, 2), err
    assert (out / (before["2/0"]["png"] + ".mismatch")).read_bytes() == b"not the image any more"
    assert (out / (before["2/0"]["sidecar"] + ".stale")).is_file()
    after = done_entries(out)
    assert after["2/0"]["png"] == before["2/0"]["png"]  # the same name again, nothing overwritten
    assert after["2/0"]["pixels_sha256"] == before["2/0"]["pixels_sha256"]
    assert after["1/0"]["hash"] != before["1/0"]["hash"]
    assert len(list(out.glob("*.png"))) == 4  # three current images + the first version of the changed line


@pytest.mark.slow
def test_a_crash_before_the_manifest_line_with_metadata_none_is_adopted(cli, tiny_models, tmp_path, monkeypatch):
    import imagegen.batch.manifest as manifest

    real, done = manifest.ManifestWriter.append, []

    def crash_on_third_image(self, data):
        if data.get("type") == "done":
            done.append(data)
            if len(done) == 3:
                raise KeyboardInterrupt  # the PNG is in place; its manifest line never comes
        return real(self, data)

    monkeypatch.setattr(manifest.ManifestWriter, "append", crash_on_third_image)
    f = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(4)))
    out = tmp_path / "run"
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", out, "--seed", "3", "--batch-size", "4",
              "--metadata", "none"]
    assert cli("batch", f, *common, "-q").code == 130
    monkeypatch.setattr(manifest.ManifestWriter, "append", real)
    assert len(list(out.glob("*.png"))) == 3 and len(done_entries(out)) == 2
    code, summary, err = run_batch_json(cli, f, *common)
    assert code == 0 and (summary["skipped"], summary["adopted"], summary["done"]) == (2, 1, 1), err
    assert len(list(out.glob("*.png"))) == 4 and not list(out.glob("*.json"))
    assert len(done_entries(out)) == 4


@pytest.mark.slow
def test_another_batch_or_seed_in_the_folder_is_refused_and_restart_uses_a_new_one(cli, tiny_models, tmp_path):
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "1", "--out", tmp_path / "run"]
    assert run_batch_json(cli, write(tmp_path / "a.txt", "one\ntwo\n"), *common, "--seed", "1")[0] == 0
    result = cli("batch", write(tmp_path / "b.txt", "three\nfour\n"), *common, "-q")
    assert result.code == 2 and "holds 2 images of a different batch" in result.err and "--restart" in result.err
    result = cli("batch", tmp_path / "a.txt", *common, "--seed", "2", "-q")
    assert result.code == 2 and "base seed 1" in result.err
    code, summary, _ = run_batch_json(cli, tmp_path / "a.txt", *common, "--restart")
    assert code == 0 and summary["out"] == str(tmp_path / "run-2") and summary["done"] == 2
    check_folder(tmp_path / "run", 2)  # untouched


@pytest.mark.slow
def test_a_crash_between_writing_and_the_manifest_leaves_nothing_partial(cli, tiny_models, tmp_path, monkeypatch):
    """A crash after the PNG is in place but before its sidecar and manifest line: the rerun adopts it."""
    import imagegen.output as output

    f = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(5)))
    out = tmp_path / "run"
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", out, "--seed", "3", "--batch-size", "2"]
    real_write_new, calls = output.write_new, []

    def crash_on_third_sidecar(path, data):
        calls.append(path)
        if len(calls) == 3:
            (path.parent / ".imagegen-half-written.png.tmp").write_bytes(b"\x89PNG partial")
            raise KeyboardInterrupt  # as abrupt as a kill: nothing after this runs
        return real_write_new(path, data)

    monkeypatch.setattr(output, "write_new", crash_on_third_sidecar)
    result = cli("batch", f, *common, "-q")
    assert result.code == 130
    monkeypatch.setattr(output, "write_new", real_write_new)
    assert len(list(out.glob("*.png"))) == 3 and len(done_entries(out)) == 2

    code, summary, err = run_batch_json(cli, f, *common)
    assert code == 0, err
    assert (summary["skipped"], summary["adopted"], summary["done"]) == (2, 1, 2)
    check_folder(out, 5)


@pytest.mark.slow
def test_kill_9_at_any_moment_then_rerun_gives_exactly_the_images(tmp_path):
    """A real `kill -9` of a running batch, at several moments, then reruns until done."""
    f = write(tmp_path / "p.txt", "".join(f"a {c} circle on a {b} background\n"
                                          for c in ("red", "green", "blue", "white") for b in ("black", "yellow", "purple")))
    out = tmp_path / "run"
    base = [sys.executable, "-m", "imagegen", "batch", str(f), "--preset", "demo", "--steps", "4", "--seed", "11",
            "--batch-size", "2", "-q"]
    cmd = [*base, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        start = len(done_entries(out)) if out.exists() else 0
        while time.monotonic() < deadline and proc.poll() is None:  # kill once this run has written something
            if out.exists() and len(done_entries(out)) > start:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not [p for p in out.glob("*.png") if p.stat().st_size == 0]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    done = check_folder(out, 12)
    # and they are the images an uninterrupted run makes
    clean = tmp_path / "clean"
    assert subprocess.run([*base, "--out", str(clean)], env=env, capture_output=True).returncode == 0
    assert {k: e["pixels_sha256"] for k, e in done.items()} == {k: e["pixels_sha256"] for k, e in done_entries(clean).items()}


@pytest.mark.slow
def test_first_ctrl_c_finishes_the_group_and_exits_130(cli, tiny_models, tmp_path, monkeypatch):
    session = importlib.import_module("imagegen.session").Session  # pipeline calls go through Session.call

    real, calls = session.call, []

    def interrupt_during_first_call(pipe, reqs, seeds, progress):
        calls.append(len(seeds))
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first group denoises
        return real(pipe, reqs, seeds, progress)

    monkeypatch.setattr(session, "call", interrupt_during_first_call)
    f = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(6)))
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", tmp_path / "run", "--batch-size", "2", "--seed", "1"]
    result = cli("batch", f, *common)
    assert result.code == 130
    assert "interrupted: 2 new images written, 4 to go; run the same command again" in result.err
    assert calls == [2]
    check_folder(tmp_path / "run", 2)
    code, summary, _ = run_batch_json(cli, f, *common)
    assert code == 0 and (summary["skipped"], summary["done"]) == (2, 4)


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_without_partial_files(cli, tiny_models, tmp_path, monkeypatch):
    session = importlib.import_module("imagegen.session").Session  # pipeline calls go through Session.call

    real, calls = session.call, []

    def double_interrupt(pipe, reqs, seeds, progress):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(pipe, reqs, seeds, progress)

    monkeypatch.setattr(session, "call", double_interrupt)
    f = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(6)))
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", tmp_path / "run", "--batch-size", "2",
              "--seed", "1"]
    result = cli("batch", f, *common, "-q")
    assert result.code == 130 and "stopped at once" in result.err and "to resume" in result.err
    assert len(calls) == 2
    done = check_folder(tmp_path / "run", len(done_entries(tmp_path / "run")))
    assert len(done) <= 2  # the first group at most; the second never finished
    monkeypatch.setattr(session, "call", real)
    code, summary, _ = run_batch_json(cli, f, *common)
    assert code == 0 and summary["skipped"] + summary["done"] == 6
    check_folder(tmp_path / "run", 6)


@pytest.mark.slow
def test_failed_jobs_are_recorded_and_the_batch_goes_on(cli, tiny_models, tmp_path, monkeypatch):
    session = importlib.import_module("imagegen.session").Session  # pipeline calls go through Session.call
    from imagegen.errors import OutOfMemory

    real, sizes = session.call, []

    def flaky(pipe, reqs, seeds, progress):
        sizes.append(len(seeds))
        if len(seeds) > 1:
            raise OutOfMemory("out of memory (simulated)")  # every multi-image call: retried in halves
        if reqs[0].prompt == "poison":
            raise RuntimeError("cannot process this one\nsecond line")
        return real(pipe, reqs, seeds, progress)

    monkeypatch.setattr(session, "call", flaky)
    f = write(tmp_path / "p.txt", "one\ntwo\npoison\nfour\n")
    common = ["--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--out", tmp_path / "run", "--batch-size", "4", "--seed", "1"]
    code, summary, err = run_batch_json(cli, f, *common)
    assert code == 3, err
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert (summary["done"], summary["failed"]) == (3, 1)
    assert summary["failures"] == [{"line": 3, "job": 2, "image": 0, "prompt": "poison",
                                    "error": "RuntimeError: cannot process this one"}]
    failed = [e for e in manifest_lines(tmp_path / "run") if e["type"] == "failed"]
    assert [e["line"] for e in failed] == [3]

    monkeypatch.setattr(session, "call", real)
    code, summary, _ = run_batch_json(cli, f, *common)  # a rerun retries only the failed job
    assert code == 0 and (summary["skipped"], summary["done"]) == (3, 1)


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_failure(cli, tiny_models, tmp_path, monkeypatch):
    session = importlib.import_module("imagegen.session").Session  # pipeline calls go through Session.call

    def always_fail(pipe, reqs, seeds, progress):
        raise RuntimeError("broken")

    monkeypatch.setattr(session, "call", always_fail)
    f = write(tmp_path / "p.txt", "one\ntwo\nthree\n")
    code, summary, _ = run_batch_json(cli, f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "1", "--batch-size", "1",
                                      "--out", tmp_path / "run", "--fail-fast")
    assert code == 3 and summary["failed"] == 1 and summary["remaining"] == 2


@pytest.mark.slow
def test_skip_invalid_runs_the_valid_lines(cli, tiny_models, tmp_path):
    f = write(tmp_path / "p.jsonl", '{"prompt": "good"}\n{"prompt": "bad", "steps": 0}\n{"prompt": "also good"}\n')
    result = cli("batch", f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "1", "--out", tmp_path / "run",
                 "--skip-invalid", "--json", "-q")
    assert result.code == 0
    summary = json.loads(result.out)
    assert (summary["done"], summary["invalid"]) == (2, 1)
    assert sorted(e["line"] for e in done_entries(tmp_path / "run").values()) == [1, 3]


@pytest.mark.slow
def test_groups_swap_the_scheduler_and_load_the_model_once(cli, tiny_models, tmp_path, monkeypatch):
    import imagegen.loading as models

    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(real(*a, **k)) or loads[-1])
    models._LOADED.clear()
    f = write(tmp_path / "p.jsonl", '{"prompt": "a", "scheduler": "DDIM"}\n{"prompt": "b", "scheduler": "Euler a"}\n'
                                    '{"prompt": "c", "scheduler": "DDIM", "size": "64x32"}\n{"prompt": "d"}\n')
    code, summary, err = run_batch_json(cli, f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2",
                                        "--out", tmp_path / "run", "--seed", "1")
    assert code == 0, err
    classes = {}
    for entry in done_entries(tmp_path / "run").values():
        classes[entry["line"]] = json.loads((tmp_path / "run" / entry["sidecar"]).read_text())["scheduler"]["class"]
    assert classes == {1: "DDIMScheduler", 2: "EulerAncestralDiscreteScheduler", 3: "DDIMScheduler",
                       4: "DPMSolverMultistepScheduler"}  # the sdxl preset's default
    assert len(loads) == 4 and len({id(x.pipe) for x in loads}) == 1  # every group asks; one pipeline serves all


@pytest.mark.slow
def test_stdin_and_reproduce_of_a_batch_image(cli, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("a lighthouse\nan ocean\n".encode())))
    code, summary, err = run_batch_json(cli, "-", "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2",
                                        "--out", tmp_path / "run", "--seed", "4", "--batch-size", "2")
    assert code == 0 and summary["done"] == 2, err
    png = tmp_path / "run" / done_entries(tmp_path / "run")["1/0"]["png"]
    result = cli("reproduce", png, "--verify", "-q")
    assert result.code == 0, result.err


@pytest.mark.slow
def test_compile_reports_its_warm_up(cli, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEGEN_COMPILE_BACKEND", "eager")  # the inductor C++ build is too slow for a test
    import imagegen.loading as models

    models._LOADED.clear()
    f = write(tmp_path / "p.txt", "one\ntwo\nthree\n")
    code, summary, err = run_batch_json(cli, f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "2", "--batch-size", "1",
                                        "--out", tmp_path / "run", "--compile")
    models._LOADED.clear()  # the compiled pipeline is not for other tests
    assert code == 0, err
    # Reported whenever a group compiled (the first call traces the UNet; later calls reuse it). Its size is a
    # timing: on a loaded machine a later call can take longer than the first, so only its presence is asserted.
    assert summary["compile_warmup_s"] is not None and summary["compile_warmup_s"] >= 0


@pytest.mark.slow
def test_two_processes_under_accelerate_split_the_jobs_and_share_the_resume(tiny_models, tmp_path):
    f = write(tmp_path / "p.txt", "".join(f"prompt {i}\n" for i in range(5)))
    out = tmp_path / "run"
    args = ["-m", "imagegen", "batch", str(f), "--model", str(tiny_models["sdxl"]), "--size", "64x64", "--steps", "2",
            "--out", str(out), "-q", "--json"]  # no --seed: the processes must agree on a random base seed
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["process"] == {"rank": 0, "world": 2}  # gathered, printed once
    assert summaries[0]["done"] == 5 and [i["index"] for i in summaries[0]["images"]] == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest.1.jsonl", "manifest.jsonl"]
    entries = check_folder(out, 5)

    runs = [e for e in manifest_lines(out) if e["type"] == "run"]
    assert len({r["base_seed"] for r in runs}) == 1
    single = subprocess.run([sys.executable, *args[:-4], "--out", str(tmp_path / "one"),
                             "--seed", str(runs[0]["base_seed"]), "-q", "--json"], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert {k: e["pixels_sha256"] for k, e in entries.items()} == {
        k: e["pixels_sha256"] for k, e in done_entries(tmp_path / "one").items()}

    again = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)  # one process resumes
    assert again.returncode == 0 and json.loads(again.stdout)["skipped"] == 5


def test_the_engine_is_chosen_by_flag_then_environment_then_launcher(monkeypatch):
    from imagegen.batch import engine_name
    from imagegen.errors import UsageError

    monkeypatch.delenv("IMAGEGEN_ENGINE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert engine_name() == "local"
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by accelerate launch or torchrun
    assert engine_name() == "accelerate" and engine_name("auto") == "accelerate"
    monkeypatch.setenv("IMAGEGEN_ENGINE", "local")
    assert engine_name() == "local" and engine_name("accelerate") == "accelerate"
    monkeypatch.setenv("IMAGEGEN_ENGINE", "ray")
    assert engine_name() == "ray"
    monkeypatch.setenv("IMAGEGEN_ENGINE", "dask")
    with pytest.raises(UsageError, match="IMAGEGEN_ENGINE dask: unknown engine; choose auto, local, accelerate, ray"):
        engine_name()


def test_an_unknown_engine_is_one_line_before_loading(cli, tmp_path, monkeypatch):
    import imagegen.loading

    monkeypatch.setattr(imagegen.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    f = write(tmp_path / "p.txt", "a fox\n")
    result = cli("batch", f, "--preset", "demo", "--engine", "acelerate", "--out", tmp_path / "run")
    assert result.code == 2 and result.err.count("\n") == 1
    assert ("--engine acelerate: unknown engine (did you mean 'accelerate'?); choose auto, local, accelerate, ray"
            in result.err)


@pytest.mark.slow
def test_the_local_engine_by_name(cli, tiny_models, tmp_path):
    f = write(tmp_path / "p.txt", "one\ntwo\n")
    code, summary, err = run_batch_json(cli, f, "--model", tiny_models["sdxl"], "--size", "64x64", "--steps", "1", "--engine", "local",
                                        "--out", tmp_path / "run", "--seed", "1")
    assert code == 0, err
    assert summary["done"] == 2 and summary["process"] == {"rank": 0, "world": 1}


@pytest.mark.slow
def test_a_cache_per_line_runs_each_setting_as_one_group(cli, tiny_models, tmp_path, monkeypatch):
    """"cache" and "attention" may differ per prompt-file line: the jobs of each setting load the model once."""
    from imagegen import loading

    loads = []
    real = loading.load_model

    def counted(*args, options, **kw):
        if not loads or loads[-1] != options.cache:
            loads.append(options.cache)
        return real(*args, options=options, **kw)

    monkeypatch.setattr(loading, "load_model", counted)
    f = write(tmp_path / "p.jsonl", "".join(json.dumps(line) + "\n" for line in (
        {"prompt": "a"}, {"prompt": "b", "cache": "fbcache:0.5"}, {"prompt": "c"}, {"prompt": "d", "cache": "fbcache:0.5"})))
    code, summary, err = run_batch_json(cli, f, "--model", tiny_models["flux"], "--size", "64x64", "--steps", "3",
                                        "--seed", "1", "--out", tmp_path / "run")
    assert code == 0 and summary["done"] == 4, err
    assert sorted(loads) == ["fbcache:0.5", "none"]  # one load per setting, in two groups
    done = done_entries(tmp_path / "run")
    caches = {}
    for entry in done.values():
        record = json.loads((tmp_path / "run" / entry["png"]).with_suffix(".json").read_text())
        caches[record["prompt"]] = record["runtime"]["cache"]
    assert caches == {"a": "none", "b": "fbcache:0.5", "c": "none", "d": "fbcache:0.5"}


def test_an_unknown_cache_on_a_line_names_the_line(tmp_path):
    f = write(tmp_path / "p.jsonl", '{"prompt": "a", "cache": "teacache"}\n{"prompt": "b", "quantize": "int8"}\n')
    errors = read_prompt_file(str(f)).errors
    assert "p.jsonl:1" in errors[0] and "unknown cache 'teacache'" in errors[0]
    assert errors[1].endswith("p.jsonl:2: quantize is set for the whole run (--quantize or a preset key), not per line")
