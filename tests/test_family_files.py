"""What each family cost: the files of imagegen and its presets that name it (its pipeline classes, or its name as a
string). A family is one module, its presets and its tiny builder; anything more is a branch the design should
have made unnecessary."""

from __future__ import annotations

import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

from imagegen.families import FAMILIES
from imagegen.testing import TINY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("imagegen/**/*.py"), *ROOT.glob("presets/*.toml")])  # shipped configs are data
BUILDERS = ROOT / "imagegen" / "testing" / "builders"
# The families built since the architecture change (their builders are modules of imagegen/testing/builders), and
# FLUX.1 Kontext, added to the flux family as its edit pipeline.
LATER = sorted(f for f, builder in TINY.items() if builder.__module__.startswith("imagegen.testing.builders."))


def code(path: Path) -> str:
    """A file's text without its comments (a comment may mention another family; code that names one branches)."""
    if path.suffix != ".py":
        return re.sub(r"#.*", "", path.read_text(encoding="utf-8"))
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return " ".join(t.string for t in tokens if t.type != tokenize.COMMENT)


def touched(names: set[str], family_name: str | None) -> list[str]:
    """The source files that name one of these pipeline classes (or presets), or the family's name in quotes."""
    words = sorted(names, key=len, reverse=True)
    pattern = r"(?<![\w-])(" + "|".join(map(re.escape, words)) + r")(?![\w-])"
    if family_name:
        pattern += r"|[\"']" + re.escape(family_name) + r"[\"']"
    found = re.compile(pattern)
    return sorted(str(p.relative_to(ROOT)) for p in SOURCES if found.search(code(p)))


def _relative(paths) -> set[str]:
    return {str(Path(p).resolve().relative_to(ROOT)) for p in paths}


def _presets(family_name: str) -> set[Path]:
    return {p for p in ROOT.glob("presets/*.toml")
            if re.search(r'^family = "' + re.escape(family_name) + '"', p.read_text(), re.M)}


CASES = {name: (set(FAMILIES[name].pipelines.values()), name,
                _relative({sys.modules[type(FAMILIES[name]).__module__].__file__, *BUILDERS.glob("*.py"),
                           *_presets(name)}))
         for name in LATER}
CASES["flux (Kontext)"] = ({"FluxKontextPipeline", "flux-kontext"}, None,
                           {"imagegen/families/flux.py", "presets/flux-kontext.toml",
                            "imagegen/testing/pipelines.py"})  # the flux builder's kontext=True


@pytest.mark.parametrize("case", list(CASES))
def test_a_family_touches_only_its_module_presets_and_builder(case):
    names, family_name, allowed = CASES[case]
    files = touched(names, family_name)
    print(f"{case}: {len(files)} files: {', '.join(files)}")
    assert files, f"{case} is named nowhere: the search is broken"
    outside = sorted(set(files) - allowed)
    assert not outside, f"{case} is named outside its module, presets and builder: {outside}"
