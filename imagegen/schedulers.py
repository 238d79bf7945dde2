"""Where schedulers are chosen: one registry of sampler names (A1111, ComfyUI, slugs, diffusers classes) per family."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import UsageError, closest
from .families import FAMILIES, Family, get_family

# A sampler is the update rule (Euler, DPM++ 2M, ...); a schedule type is how its noise levels are spaced
# (Karras, exponential, ...). A1111 writes them together ("DPM++ 2M Karras"), ComfyUI apart ("dpmpp_2m" + "karras").
# Each sampler has at most one implementation per noise-schedule kind: "eps" for SDXL (epsilon / v prediction) and
# "flow" for SD3 and Flux. A diffusers class name pins the implementation, so "EulerDiscreteScheduler" on SD3 is
# refused instead of running silently wrong, while "Euler" on SD3 means its flow-matching Euler.


@dataclass(frozen=True)
class Schedule:
    """A schedule type: how noise levels are spaced."""

    key: str
    a1111: str
    comfy: str
    kwargs: dict = field(default_factory=dict)
    needs: str | None = None  # an optional module it imports (scipy for beta sigmas)


@dataclass(frozen=True)
class Impl:
    """A sampler's diffusers implementation for one noise-schedule kind."""

    cls: str
    kwargs: dict = field(default_factory=dict)
    schedules: tuple[str, ...] = ()
    needs: str | None = None
    stochastic: bool = False  # adds fresh noise each step, so it does not converge as steps grow
    max_steps: int | None = None  # more makes diffusers raise mid-run, after the weights load


@dataclass(frozen=True)
class Sampler:
    """A sampler, its names in every spelling, and its implementation per noise-schedule kind."""

    slug: str
    a1111: str
    comfy: str | None
    eps: Impl | None = None
    flow: Impl | None = None
    aliases: tuple[str, ...] = ()
    comfy_also: tuple[str, ...] = ()  # more ComfyUI sampler names for it, listed beside `comfy`
    steps: int = 20  # recommended step count (2nd-order samplers evaluate the model about twice per step)
    others: tuple[tuple[str, Impl], ...] = ()  # (kind, impl) for a family's own kind (Family.schedule_kind)

    def impl(self, kind: str) -> Impl | None:
        return self.eps if kind == "eps" else self.flow if kind == "flow" else dict(self.others).get(kind)

    def impls(self) -> tuple[Impl, ...]:
        return tuple(i for i in (self.eps, self.flow, *dict(self.others).values()) if i)


_SIGMA_SCHEDULES = ("karras", "exponential", "beta")
_EPS_SCHEDULES = (*_SIGMA_SCHEDULES, "sgm_uniform", "ddim_uniform")
_SPACINGS = ("sgm_uniform", "ddim_uniform")  # timestep spacings: for classes without sigma schedules

SCHEDULES: dict[str, Schedule] = {
    s.key: s
    for s in (
        Schedule("karras", "Karras", "karras", {"use_karras_sigmas": True}),
        Schedule("exponential", "Exponential", "exponential", {"use_exponential_sigmas": True}),
        Schedule("beta", "Beta", "beta", {"use_beta_sigmas": True}, needs="scipy"),
        Schedule("sgm_uniform", "SGM Uniform", "sgm_uniform", {"timestep_spacing": "trailing"}),
        # ComfyUI's ddim_uniform takes every (1000 // steps)-th of the model's sigmas from index 1: timesteps
        # 1, 1 + 1000 // steps, ..., which is diffusers' "leading" spacing with steps_offset=1 on Euler, Euler a,
        # Heun, DPM2, LMS, DDIM, DDPM and PLMS (exact when steps divides 1000; ComfyUI then adds a step or two).
        # DPM++ (2M, SDE), UniPC and DEIS space "leading" by 1000 // (steps + 1): the closest diffusers offers,
        # a slightly lower top timestep. A1111 calls the same schedule type "DDIM".
        Schedule("ddim_uniform", "DDIM", "ddim_uniform", {"timestep_spacing": "leading", "steps_offset": 1}),
    )
}
# Names that mean "the sampler's own default spacing".
_DEFAULT_SCHEDULE_NAMES = ("automatic", "normal", "default", "uniform")
_SCHEDULE_ALIASES = {"simple": "sgm_uniform", "trailing": "sgm_uniform", "DDIM Uniform": "ddim_uniform"}

# Names people type for samplers diffusers has no equivalent of: refused with the reason, not as "unknown".
_CFG_PP = ("CFG++ changes how the guided and unguided predictions enter each step (it is part of the sampler in "
           "ComfyUI and A1111); diffusers has no CFG++ scheduler")
UNAVAILABLE: dict[str, str] = {
    "euler_cfg_pp": _CFG_PP, "euler_ancestral_cfg_pp": _CFG_PP, "dpmpp_2m_cfg_pp": _CFG_PP,
    "dpmpp_2s_ancestral_cfg_pp": _CFG_PP,
}

SAMPLERS: dict[str, Sampler] = {
    s.slug: s
    for s in (
        Sampler("euler", "Euler", "euler", eps=Impl("EulerDiscreteScheduler", schedules=_EPS_SCHEDULES),
                flow=Impl("FlowMatchEulerDiscreteScheduler", schedules=_SIGMA_SCHEDULES)),
        Sampler(
            "euler_a", "Euler a", "euler_ancestral",
            eps=Impl("EulerAncestralDiscreteScheduler", schedules=_SPACINGS, stochastic=True),
            aliases=("euler ancestral",), steps=30,
        ),
        Sampler(
            "heun", "Heun", "heun",
            eps=Impl("HeunDiscreteScheduler", schedules=_EPS_SCHEDULES),
            flow=Impl("FlowMatchHeunDiscreteScheduler"), steps=15,
        ),
        Sampler("dpm2", "DPM2", "dpm_2", eps=Impl("KDPM2DiscreteScheduler", schedules=_EPS_SCHEDULES), steps=15),
        Sampler(
            "dpm2_a", "DPM2 a", "dpm_2_ancestral",
            eps=Impl("KDPM2AncestralDiscreteScheduler", schedules=_EPS_SCHEDULES, stochastic=True), steps=20,
        ),
        Sampler("lms", "LMS", "lms", eps=Impl("LMSDiscreteScheduler", schedules=_EPS_SCHEDULES, needs="scipy"), steps=50),
        Sampler("ddim", "DDIM", "ddim", eps=Impl("DDIMScheduler", schedules=_SPACINGS), steps=30),
        Sampler("ddpm", "DDPM", "ddpm", eps=Impl("DDPMScheduler", schedules=_SPACINGS, stochastic=True), steps=50),
        Sampler("plms", "PLMS", None, eps=Impl("PNDMScheduler", schedules=_SPACINGS), aliases=("pndm",), steps=50),
        Sampler(
            "dpmpp_2m", "DPM++ 2M", "dpmpp_2m",
            eps=Impl("DPMSolverMultistepScheduler", schedules=_EPS_SCHEDULES),
            flow=Impl("DPMSolverMultistepScheduler"),
        ),
        Sampler(
            # ComfyUI's _gpu variant differs only in where its Brownian noise is drawn; imagegen seeds it per image.
            "dpmpp_2m_sde", "DPM++ 2M SDE", "dpmpp_2m_sde",
            eps=Impl(
                "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                schedules=_EPS_SCHEDULES, stochastic=True,
            ),
            comfy_also=("dpmpp_2m_sde_gpu",),
        ),
        Sampler(
            "dpmpp_3m_sde", "DPM++ 3M SDE", "dpmpp_3m_sde",
            eps=Impl(
                "DPMSolverMultistepScheduler", {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
                schedules=_EPS_SCHEDULES, stochastic=True,
            ),
            comfy_also=("dpmpp_3m_sde_gpu",), steps=30,
        ),
        Sampler(
            # k-diffusion's sample_dpmpp_sde, stochastic (Brownian-tree noise, seeded per image by imagegen).
            # diffusers' docs map it to DPMSolverSinglestep, which is a deterministic ODE solver: a different sampler.
            "dpmpp_sde", "DPM++ SDE", "dpmpp_sde",
            eps=Impl("DPMSolverSDEScheduler", schedules=_SIGMA_SCHEDULES, needs="torchsde", stochastic=True),
            steps=15,
        ),
        Sampler(
            "dpmpp_singlestep", "DPM++ Singlestep", None,
            eps=Impl("DPMSolverSinglestepScheduler", schedules=_SIGMA_SCHEDULES),
        ),
        Sampler(
            "unipc", "UniPC", "uni_pc",
            eps=Impl("UniPCMultistepScheduler", schedules=_EPS_SCHEDULES),
            flow=Impl("UniPCMultistepScheduler"), steps=15,
        ),
        Sampler(
            # No flow implementation: DEIS with flow sigmas ends on a non-zero sigma and draws wrong images.
            "deis", "DEIS", "deis",
            eps=Impl("DEISMultistepScheduler", schedules=_EPS_SCHEDULES),
        ),
        # For LCM- and TCD-distilled models or LoRAs (epsilon UNets), at 2-8 steps and CFG about 1-2; both re-noise
        # every step. Their own timestep skipping allows at most 50 steps (original_inference_steps).
        Sampler("lcm", "LCM", "lcm", eps=Impl("LCMScheduler", stochastic=True, max_steps=50), steps=4),
        Sampler("tcd", "TCD", "tcd", eps=Impl("TCDScheduler", stochastic=True, max_steps=50), steps=4),
        # sCM consistency sampling (SANA-Sprint): a trigflow model, which no other sampler here can drive.
        Sampler("scm", "SCM", None, others=(("trigflow", Impl("SCMScheduler", stochastic=True)),), steps=2),
    )
}

# The flags that make a multistep solver integrate a flow-matching model (see flow_kwargs).
_FLOW_SOLVER_CLASSES = {"DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}


def _family(family: Family | str) -> Family:
    return family if isinstance(family, Family) else get_family(family)


def _kind(family: Family) -> str:
    return family.schedule_kind or ("flow" if family.flow else "eps")


def _impl(sampler: "Sampler", family: Family) -> "Impl | None":
    """The sampler's implementation for this family, or None where it has none (or the family refuses it)."""
    if sampler.slug in family.unsupported_samplers:
        return None
    return sampler.impl(_kind(family))


def _norm(text: str) -> str:
    """Fold a spelling to its lookup key: case, spaces, '_', '-', ':' and '+' separators do not matter."""
    text = text.lower().replace("++", "pp")
    return re.sub(r"[^a-z0-9]", "", text)


@dataclass(frozen=True)
class SchedulerChoice:
    """A scheduler resolved for one family: the diffusers class and the kwargs that make it right."""

    sampler: Sampler
    schedule: Schedule | None
    family: Family
    cls: str
    kwargs: dict

    @property
    def name(self) -> str:
        """The canonical A1111-style name, e.g. 'DPM++ 2M Karras'."""
        return self.sampler.a1111 + (f" {self.schedule.a1111}" if self.schedule else "")

    @property
    def slug(self) -> str:
        """The file-name-safe name, e.g. 'dpmpp_2m_karras'."""
        return self.sampler.slug + (f"_{self.schedule.key}" if self.schedule else "")


def _build_index() -> dict[str, tuple[str, str | None, str | None]]:
    """Every spelling -> (sampler slug, schedule key or None, pinned class or None)."""
    index: dict[str, tuple[str, str | None, str | None]] = {}

    def add(spelling: str, value: tuple[str, str | None, str | None]) -> None:
        key = _norm(spelling)
        if index.get(key, value) != value:
            raise AssertionError(f"scheduler spelling {spelling!r} is ambiguous")  # a registry bug, caught by tests
        index[key] = value

    schedule_names = {
        s.key: {s.key, s.a1111, s.comfy} | {a for a, k in _SCHEDULE_ALIASES.items() if k == s.key}
        for s in SCHEDULES.values()
    }
    for sampler in SAMPLERS.values():
        names = {sampler.slug, sampler.a1111, *sampler.aliases, *sampler.comfy_also} | (
            {sampler.comfy} if sampler.comfy else set())
        pinned = {impl.cls for impl in sampler.impls()}
        for name in names:
            add(name, (sampler.slug, None, None))
            for default in _DEFAULT_SCHEDULE_NAMES:
                add(f"{name} {default}", (sampler.slug, None, None))
            for key, spellings in schedule_names.items():
                for spelling in spellings:
                    add(f"{name} {spelling}", (sampler.slug, key, None))
        for cls in pinned:
            # Several samplers share a class (DPM++ 2M and 2M SDE): the class name alone means the plain one.
            if _norm(cls) not in index:
                add(cls, (sampler.slug, None, cls))
                for key, spellings in schedule_names.items():
                    for spelling in spellings:
                        add(f"{cls} {spelling}", (sampler.slug, key, cls))
    # ComfyUI's "ddim_uniform" alone would fold to DDIM + the default "uniform" spacing; it is a schedule type, and
    # typed alone it is refused as one (resolve_scheduler), not read as the DDIM sampler.
    del index[_norm("ddim_uniform")]
    return index


_INDEX = _build_index()
_SCHEDULE_ONLY = {
    _norm(spelling)
    for s in SCHEDULES.values()
    for spelling in (s.key, s.comfy, s.a1111, *(a for a, k in _SCHEDULE_ALIASES.items() if k == s.key))
} - set(_INDEX)  # "DDIM" alone stays the DDIM sampler


def is_known(name: str) -> bool:
    """Whether any family's registry knows this spelling (A1111, ComfyUI, slug or class name)."""
    return _norm(name) in _INDEX


def scheduler_names(family: Family | str) -> list[str]:
    """The canonical names of every sampler + schedule combination that works with `family`."""
    family = _family(family)
    names = []
    for sampler in SAMPLERS.values():
        impl = _impl(sampler, family)
        if impl is None:
            continue
        names.append(sampler.a1111)
        names.extend(f"{sampler.a1111} {SCHEDULES[s].a1111}" for s in impl.schedules)
    return names


def _works(family: Family) -> str:
    """What works with `family`, short enough for a one-line error: samplers, then the schedule types they take."""
    samplers = [s.a1111 for s in SAMPLERS.values() if _impl(s, family)]
    schedules = [
        sch.a1111 for key, sch in SCHEDULES.items()
        if any((impl := _impl(s, family)) and key in impl.schedules for s in SAMPLERS.values())
    ]
    tail = f"; schedule types: {', '.join(schedules)} (`imagegen schedulers` shows which sampler takes which)"
    return ", ".join(samplers) + (tail if schedules else "")


def resolve_scheduler(name: str, family: Family | str, *, where: str = "--scheduler",
                      steps: int | None = None) -> SchedulerChoice:
    """Resolve any spelling of a scheduler for `family`, or raise a UsageError listing what works with it."""
    family = _family(family)
    key = _norm(name)
    entry = _INDEX.get(key)
    works = _works(family)
    _refuse_unavailable(name, key, family, works, where)
    if entry is None:
        raise UsageError(
            f"{where}: unknown scheduler {name!r}{closest(name, scheduler_names(family))}; for {family.name}: {works}"
        )
    slug, schedule_key, pinned = entry
    sampler = SAMPLERS[slug]
    kind = _kind(family)
    impl = _impl(sampler, family)
    if pinned and (impl is None or impl.cls != pinned) and sampler.slug not in family.unsupported_samplers:
        why = family.foreign_scheduler or (
            "an epsilon/v-prediction scheduler: on a flow-matching model it runs but draws wrong images" if kind == "flow"
            else "a flow-matching scheduler: it cannot drive an epsilon/v-prediction model")
        raise UsageError(f"{where}: {pinned} is {why}; for {family.name}: {works}")
    if impl is None:
        raise UsageError(f"{where}: {sampler.a1111} does not work with {family.name} models; for {family.name}: {works}")
    schedule = SCHEDULES[schedule_key] if schedule_key else None
    if schedule and schedule.key not in impl.schedules:
        takes = ", ".join(SCHEDULES[k].a1111 for k in impl.schedules)
        raise UsageError(
            f"{where}: {sampler.a1111} has no {schedule.a1111} schedule type on {family.name}; "
            + (f"it takes: {takes} (or none, for its default spacing)" if takes else "it takes no schedule type there")
        )
    if steps is not None and impl.max_steps is not None and steps > impl.max_steps:
        raise UsageError(f"{where}: {sampler.a1111} takes at most {impl.max_steps} steps (its distilled schedule's "
                         f"original_inference_steps); got --steps {steps}")
    for needs in {impl.needs, schedule.needs if schedule else None} - {None}:
        _require(needs, f"{where}: {sampler.a1111}{' ' + schedule.a1111 if schedule else ''}")
    kwargs = {**impl.kwargs, **(schedule.kwargs if schedule else {})}
    return SchedulerChoice(sampler=sampler, schedule=schedule, family=family, cls=impl.cls, kwargs=kwargs)


def _refuse_unavailable(name: str, key: str, family: Family, works: str, where: str) -> None:
    """A name for something diffusers lacks, or a schedule type given without a sampler: one line saying so."""
    for unavailable, why in UNAVAILABLE.items():
        if key.startswith(_norm(unavailable)):
            raise UsageError(f"{where}: {name!r} has no diffusers equivalent: {why}; for {family.name}: {works}")
    if key in _SCHEDULE_ONLY:
        raise UsageError(
            f"{where}: {name!r} is a schedule type, not a sampler: put a sampler before it, e.g. 'euler {name}'"
            + (" (the DDIM sampler is 'DDIM')" if key == _norm("ddim_uniform") else "") + f"; for {family.name}: {works}"
        )


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs the {module} package: pip install {module}")


def flow_kwargs(cls: str, family: Family | str, native_config: dict) -> dict:
    """The flags that make a multistep solver integrate a flow-matching model exactly like its native scheduler."""
    family = _family(family)
    if cls not in _FLOW_SOLVER_CLASSES or not family.flow:
        return {}
    shift = float(native_config.get("shift", 1.0))
    kwargs = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift}
    return {**kwargs, **family.flow_solver_kwargs(native_config, shift)}


def build_scheduler(choice: SchedulerChoice, native_config: dict):
    """Instantiate the chosen scheduler from the model's own scheduler config (imports diffusers)."""
    import diffusers

    cls = getattr(diffusers, choice.cls)
    # Through the config dict, not kwargs: keys a class does not take (Flux's base_shift, read by the pipeline
    # from scheduler.config) are then kept in its config instead of being dropped.
    config = {**native_config, **flow_kwargs(choice.cls, choice.family, native_config), **choice.kwargs}
    return cls.from_config(config)


def scheduler_table(family: Family | str | None = None) -> list[dict]:
    """Rows for `imagegen schedulers`: every name, its spellings, class, kwargs and the families it works with."""
    families = [_family(family)] if family else list(FAMILIES.values())
    rows = []
    for sampler in SAMPLERS.values():
        for schedule_key in (None, *SCHEDULES):
            row = _table_row(sampler, schedule_key, families)
            if row is not None:
                rows.append(row)
    return rows


def _table_row(sampler: Sampler, schedule_key: str | None, families: list[Family]) -> dict | None:
    works, cls_by_kind, stochastic = [], {}, False
    for fam in families:
        impl = _impl(sampler, fam)
        if impl is None or (schedule_key and schedule_key not in impl.schedules):
            continue
        works.append(fam.name)
        stochastic = stochastic or impl.stochastic
        kwargs = {**impl.kwargs, **(SCHEDULES[schedule_key].kwargs if schedule_key else {})}
        if impl.cls in _FLOW_SOLVER_CLASSES and fam.flow:
            kwargs["flow"] = "use_flow_sigmas, flow_prediction, flow_shift=<model shift>" + fam.flow_note
        cls_by_kind[impl.cls] = kwargs
    if not works:
        return None
    schedule = SCHEDULES[schedule_key] if schedule_key else None
    comfy_names = " / ".join((sampler.comfy, *sampler.comfy_also)) if sampler.comfy else ""
    comfy = comfy_names + (f" + {schedule.comfy}" if schedule else "") if comfy_names else "-"
    return {
        "name": sampler.a1111 + (f" {schedule.a1111}" if schedule else ""),
        "sampler": sampler.slug,
        "comfyui": comfy,
        "slug": sampler.slug + (f"_{schedule.key}" if schedule else ""),
        "diffusers": "; ".join(
            cls + "".join(f" +{v}" if k == "flow" else f" {k}={v!r}" for k, v in kw.items())
            for cls, kw in cls_by_kind.items()
        ),
        "families": works,
        "stochastic": stochastic,
        "steps": sampler.steps,
    }
