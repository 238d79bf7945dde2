"""The command line as a user meets it: instant help, no heavy imports for listing, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "PIL", "numpy", "huggingface_hub", "ray")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["presets", "list"], ["presets", "show", "sd3"], ["schedulers", "--preset", "sd3"], ["txt2img", "--help"], ["batch", "--help"]])
def test_listing_commands_import_nothing_heavy(args):
    code = (
        "import sys\n"
        "from imagegen.cli import main\n"
        f"rc = main({args!r})\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy, rc, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert "HEAVY [] 0" in proc.stderr, proc.stderr


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "imagegen", "schedulers", "--family", "flux", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {r["name"] for r in json.loads(proc.stdout)} >= {"Euler", "DPM++ 2M", "UniPC"}


def words(text: str) -> str:
    """Help text as one line of words: Rich's panel borders and line breaks gone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def panels(text: str) -> dict[str, str]:
    """Each Rich help panel's title -> its text."""
    found = re.split(r"╭─ ([\w -]+?) ─*╮", text)
    return {title: body.split("╰")[0] for title, body in zip(found[1::2], found[2::2])}


def test_help_documents_cfg_per_family(cli):
    result = cli("txt2img", "--help")
    assert result.code == 0
    text = words(result.out)
    assert "sdxl and sd3: classifier-free guidance" in text and "flux: Flux is guidance-distilled" in text and "true CFG" in text


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["txt2img"], 2, "Missing argument"),
        (["txt2img", "x", "--bogus"], 2, "No such option: --bogus"),
        (["txt2img", "x", "--steps", "many"], 2, "--steps: must be an integer from 1 to 1000, got 'many'"),
        (["txt2img", "x", "--size", "1023x1024"], 2, "--size 1023x1024: width and height must be multiples of 8"),
        (["txt2img", "x", "--scheduler", "Eular a"], 2, "unknown scheduler 'Eular a' (did you mean 'Euler a'?)"),
        (["txt2img", "x", "--preset", "sd3", "--scheduler", "EulerDiscreteScheduler"], 2, "runs but draws wrong images"),
        (["txt2img", "x", "--preset", "sdxxl"], 2, "unknown preset 'sdxxl' (did you mean 'sdxl'?)"),
        (["txt2img", "x", "--name", "../{seed}"], 2, "must stay inside --out"),
        (["txt2img", "x", "--name", "{seeds}"], 2, "unknown placeholder {seeds}"),
        (["txt2img", "x", "--model", "./not-here"], 2, "--model ./not-here: no such folder"),
        (["txt2img", "x", "--device", "cuda"], 1, None),
        (["txt2img", "x", "--cfg", "-1"], 2, "--cfg: must be from 0 to 100"),
        (["reproduce", "missing.png"], 2, "missing.png: no such file"),
        (["presets", "show", "nope"], 2, "unknown preset 'nope'"),
        (["nope"], 2, "No such command 'nope'"),
    ],
)
def test_bad_input_is_one_line_with_the_right_exit_code(cli, args, code, message):
    result = cli(*args, "--seed", "1") if args[0] == "txt2img" and len(args) > 1 else cli(*args)
    if message is None:  # --device cuda on a machine without CUDA: a usage error; with CUDA the model is missing offline
        assert result.code in (1, 2)
    else:
        assert result.code == code, result.err
        assert message in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("imagegen: error:")]
    assert len(errors) == 1 and "Traceback" not in result.err


def test_checks_come_before_the_random_seed_note(cli):
    """No note is printed for a run that is refused: the error is the only line."""
    for args in (["--name", "../x"], ["--name", "{bogus}"], ["--size", "1023x1024"]):
        result = cli("txt2img", "x", *args)
        assert result.code == 2 and result.err.count("\n") == 1 and result.err.startswith("imagegen: error:"), result.err


def test_scheduler_suggestions_use_full_names(cli):
    result = cli("txt2img", "x", "--scheduler", "DPM++ 3M Karras", "--seed", "1")
    assert "did you mean 'DPM++ 2M Karras'?" in result.err
    result = cli("txt2img", "x", "--preset", "sd3", "--scheduler", "DPM++ 2M Karras", "--seed", "1")
    assert "DPM++ 2M has no Karras schedule type on sd3; it takes no schedule type there" in result.err


def test_version_is_printed_at_once(cli):
    import imagegen

    result = cli("--version")
    assert result.code == 0 and result.out == f"imagegen {imagegen.__version__}\n" and result.err == ""


def test_show_completion_prints_the_bash_script(cli, monkeypatch):
    import typer.completion

    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    result = cli("--show-completion")
    assert result.code == 0 and "_IMAGEGEN_COMPLETE=complete_bash" in result.out
    assert "--install-completion" in cli("--help").out


def test_shell_completion_completes_commands_and_options():
    def complete(words: str) -> list[str]:
        env = {**os.environ, "_IMAGEGEN_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        proc = subprocess.run([sys.executable, "-m", "imagegen"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("imagegen pres") == ["presets"]
    assert "--scheduler" in complete("imagegen txt2img x --sched")


def test_txt2img_help_groups_options_in_panels_with_an_example(cli):
    result = cli("txt2img", "--help")
    assert result.code == 0
    found = panels(result.out)
    assert list(found) == ["Arguments", "Options", "Generation", "Model", "Memory and speed", "ControlNet", "IP-Adapter",
                           "LoRA and embeddings", "Hires fix",
                           "Output"]
    where = {"--steps": "Generation", "--scheduler": "Generation", "--batch-size": "Generation", "--preset": "Model",
             "--device": "Model", "--control-scale": "ControlNet", "--ip-scale": "IP-Adapter", "--out": "Output",
             "--json": "Output", "--quiet": "Output"}
    for flag, title in where.items():
        assert re.search(rf"│ {flag}\b", found[title]), (flag, title)
        assert all(not re.search(rf"│ {flag}\b", body) for other, body in found.items() if other != title), flag
    text = words(result.out)
    assert "Denoising steps. Default: the preset's (imagegen presets show NAME)." in text
    assert "Number of images." in text and "Number of images. Default: the preset's" not in text
    assert 'Examples: imagegen txt2img "a lighthouse at dusk" --preset sdxl -s "DPM++ 2M Karras"' in text


@pytest.mark.parametrize("command", [["txt2img"], ["img2img"], ["inpaint"], ["batch"], ["compare"], ["reproduce"],
                                     ["schedulers"],
                                     ["presets", "list"], ["presets", "show"]])
def test_every_command_shows_an_example(cli, command):
    text = words(cli(*command, "--help").out)
    assert "Examples: imagegen " + " ".join(command) in text


def test_batch_help_has_its_own_panel_first(cli):
    found = panels(cli("batch", "--help").out)
    assert list(found)[2:4] == ["Batch", "Generation"] and "--engine" in found["Batch"]
    assert "INT|auto" in found["Generation"]


@pytest.mark.slow
def test_txt2img_batch_size_auto_picks_as_batch_does(cli):
    """auto on a CPU with the demo model's small latents is batch's 8, capped at n; the images do not depend on it."""
    auto = cli("txt2img", "a red circle", "--preset", "demo", "--steps", "2", "-n", "3", "--seed", "5",
               "--batch-size", "AUTO", "--out", "auto", "--json", "-q", "--device", "cpu")
    assert auto.code == 0, auto.err
    images = json.loads(auto.out)["images"]
    sidecars = [json.loads(open(i["sidecar"]).read()) for i in images]
    assert [s["batch"]["batch_size"] for s in sidecars] == [3, 3, 3]
    one = cli("txt2img", "a red circle", "--preset", "demo", "--steps", "2", "-n", "3", "--seed", "5",
              "--out", "one", "--json", "-q", "--device", "cpu")
    assert [i["pixels_sha256"] for i in json.loads(one.out)["images"]] == [i["pixels_sha256"] for i in images]


def test_txt2img_batch_size_refuses_other_words(cli):
    result = cli("txt2img", "x", "--batch-size", "many", "--seed", "1")
    assert result.code == 2 and result.err == ("imagegen: error: --batch-size: must be an integer from 1 to 1024, "
                                               "got 'many', or auto\n")


@pytest.mark.slow
def test_batch_json_lists_every_image_with_its_path_seed_line_and_status(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n# a comment\nan owl\n")
    out = tmp_path / "run"

    def run() -> list[dict]:
        result = cli("batch", prompts, "--preset", "demo", "--steps", "2", "--seed", "3", "-n", "2", "--out", out,
                     "--json", "-q")
        assert result.code == 0, result.err
        return json.loads(result.out)["images"]

    first = run()
    assert [(i["line"], i["image"], i["index"], i["status"]) for i in first] == [
        (1, 0, 0, "written"), (1, 1, 1, "written"), (3, 0, 2, "written"), (3, 1, 3, "written")]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    done = {e["index"]: e for e in manifest if e["type"] == "done"}
    for image in first:
        assert image["path"] == str(out / done[image["index"]]["png"]) and image["seed"] == done[image["index"]]["seed"]
    # One image lost, and the manifest line of the last one written lost to a crash (its file is in place).
    os.remove(first[0]["path"])
    text = (out / "manifest.jsonl").read_text()
    (out / "manifest.jsonl").write_text(text[: text.rstrip("\n").rfind("\n") + 1])
    orphan = manifest[-1]["index"]
    second = run()
    status = {i["index"]: i["status"] for i in second}
    assert status == {0: "written", 1: "skipped", 2: "skipped", 3: "skipped", orphan: "adopted"}
    assert [i["path"] for i in second] == [i["path"] for i in first]


# ---- batch across processes: one summary, printed by process 0


def _result(rank: int, done: int, indices: list[int], **more):
    from imagegen.batch import BatchResult

    result = BatchResult(out_dir="run", total=done, done=done, rank=rank, world=2, wall_s=2.0 + rank, denoise_s=1.0,
                         batch_size="auto (4)", **more)
    result.images = [{"path": f"run/{i}.png", "seed": i, "line": i + 1, "job": i, "image": 0, "index": i,
                      "status": "written"} for i in indices]
    return result


def test_results_of_the_processes_merge_into_one():
    from imagegen.batch import BatchResult

    failure = {"line": 9, "job": 8, "image": 0, "prompt": "p", "error": "boom"}
    first = _result(0, 2, [0, 2], skipped=3, adopted=1, invalid=1)
    first.total += 4
    second = _result(1, 1, [1], failed=1, failures=[failure], invalid=1)
    second.total += 1
    merged = BatchResult.merge([first, second]).to_json()
    assert (merged["total"], merged["done"], merged["skipped"], merged["adopted"], merged["failed"]) == (8, 3, 3, 1, 1)
    assert merged["remaining"] == 0 and merged["invalid"] == 1 and merged["failures"] == [failure]
    assert (merged["wall_s"], merged["denoise_s"], merged["batch_size"]) == (3.0, 2.0, "auto (4)")
    assert [i["index"] for i in merged["images"]] == [0, 1, 2] and merged["process"] == {"rank": 0, "world": 2}
    assert BatchResult.merge([first]) is first


def test_an_engine_of_one_process_gathers_its_own_value():
    from imagegen.batch import ENGINES

    for name, engine in ENGINES.items():
        assert engine().gather({"done": 1}) == [{"done": 1}], name


class _Twin:
    """An engine whose gather adds a second process's result, as accelerate's would."""

    def __init__(self, rank: int):
        from imagegen.batch import Engine

        self.engine = type("Twin", (Engine,), {"rank": rank, "gather": lambda s, value: self.both(value)})()
        self.rank = rank

    def both(self, mine):
        other = _result(1 - self.rank, 1, [99])
        return [mine, other] if self.rank == 0 else [other, mine]


@pytest.mark.slow
@pytest.mark.parametrize("rank", [0, 1])
def test_only_process_0_prints_the_merged_summary(cli, tmp_path, monkeypatch, rank):
    import imagegen.batch

    monkeypatch.setattr(imagegen.batch, "get_engine", lambda name=None, **options: _Twin(rank).engine)
    (tmp_path / "p.txt").write_text("a fox\n")
    for extra in (["--json"], []):
        result = cli("batch", tmp_path / "p.txt", "--preset", "demo", "--steps", "1", "--seed", "1", "--out",
                     tmp_path / f"run{len(extra)}", *extra)
        assert result.code == 0, result.err
        if rank == 1:
            assert result.out == "" and "verified by sha256" not in result.err  # no summary table
        elif extra:
            summary = json.loads(result.out)
            assert summary["done"] == 2 and summary["process"] == {"rank": 0, "world": 2}
            assert [i["index"] for i in summary["images"]] == [0, 99]
        else:
            assert words(result.err).count("(2 processes)") == 1


# ---- progress bars at 80 columns


def _last_frame(output: str) -> list[str]:
    """The lines of the last frame a live Rich display drew (its cursor codes removed)."""
    frame = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.split("\r")[-1])
    return [line.rstrip() for line in frame.splitlines() if line.strip()]


def test_the_batch_bar_keeps_every_column_whole_at_80_columns():
    import io
    import time
    from types import SimpleNamespace

    from rich.console import Console

    from imagegen.progress import RichBatchProgress

    out = io.StringIO()
    progress = RichBatchProgress(console=Console(width=80, file=out, force_terminal=True, color_system=None))
    progress.start(total=1000)
    item = SimpleNamespace(req=SimpleNamespace(prompt="a lighthouse at dusk, oil painting, dramatic light " * 3))
    progress.group([item, item])
    progress.step(12, 30)
    for _ in range(3):
        time.sleep(0.02)  # the ETA needs a measured speed
        progress.image_done(item, "x")
    progress.finish()
    [line] = _last_frame(out.getvalue())
    assert len(line) <= 80 and "0:0…" not in line
    assert re.fullmatch(r"images +\S* *3/1000 \d+\.\d\d img/s \d:\d\d:\d\d step 12/30 a lighthouse at dusk.*…", line), line


def test_the_txt2img_bar_keeps_every_column_whole_at_80_columns():
    import io

    from rich.console import Console

    from imagegen.progress import RichProgress

    out = io.StringIO()
    progress = RichProgress(console=Console(width=80, file=out, force_terminal=True, color_system=None))
    progress.start(total=1000, steps=30)
    progress.batch(0, 4, [2**63 - 1, 1, 2, 3])
    progress.step(5, 30)
    progress.finish()
    images, steps = _last_frame(out.getvalue())
    assert len(images) <= 80 and len(steps) <= 80 and "…" not in images + steps
    assert re.search(r" 0/1000 +-:--:--$", images) and "images 1-4/1000 (seed 9223372036854775807)" in steps
    assert re.search(r"5/30 +\d+\.\d\d it/s -:--:--$", steps), steps


def test_no_help_text_holds_what_rich_would_take_for_markup():
    """Help is rendered as Rich markup: an unescaped [word] would vanish from the screen."""
    import typer

    from imagegen.cli import app

    def texts(command, path):
        yield path, command.help or ""
        yield path, command.epilog or ""
        for param in command.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    root = typer.main.get_command(app)
    found = list(texts(root, "imagegen"))
    assert len(found) > 100 and ("imagegen presets show", "Show one preset: its model, defaults, allowed schedulers, "
                                 "and its ControlNet and IP-Adapter tables.") in found
    assert [(where, text) for where, text in found if re.search(r"(?<!\\)\[[\w/ .=-]*\]", text)] == []
