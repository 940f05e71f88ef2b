"""Planning a counterfactual run: the request and its checks, the record and plan the run
will write, resuming an interrupted run, and writing the record last.

Everything a run's volumes depend on is fixed here before the first volume: the
subjects, the parsed edits and baseline, the permuted-label controls, the seeds.  The run
record (``counterfactual.json``) is known then too, but written only when every volume
exists; the plan (``counterfactual.plan.json``) is written first, so a re-run with the
same parameters resumes (see :mod:`unveil.infer.counterfactual`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from unveil.data.cohort import Cohort
from unveil.errors import UnveilError
from unveil.infer.cf_checks import check_sampling_options, refuse_cohort_folders, subject_ids
from unveil.infer.cf_model import Generator
from unveil.infer.cf_noise import NOISE_RULE, PERMUTED_CONTROLS, permuted_controls
from unveil.records import (
    FileIdentity,
    RunLayout,
    RunPlan,
    RunRecord,
    edit_slug,
    read_run_plan,
    write_run_plan,
    write_run_record,
)
from unveil.runtime.distributed import DistInfo, barrier
from unveil.text.edits import Edit, apply_edits, parse_edit
from unveil.text.template import Template

# The run's messages keep the logger name of the public module, where users look for them.
log = logging.getLogger("unveil.infer.counterfactual")


@dataclass(frozen=True)
class CounterfactualRequest:
    """What a counterfactual run is asked for (the arguments of ``run_counterfactual``)."""

    checkpoint: str | Path
    cohort_root: str | Path
    out: Path
    edits: Sequence[str]
    null_edits: Sequence[str] = ()
    baseline: Sequence[str] = ()
    seeds: int = 3
    ids: list[str] | None = None
    split: str | None = None
    from_scan: bool = False
    guidance_scale: float | None = None
    steps: int | None = None
    overwrite: bool = False
    amp: str = "none"
    n_permuted: int = PERMUTED_CONTROLS


@dataclass
class CounterfactualRun:
    """A planned run: the loaded model, its subjects and contrasts, its record and plan."""

    request: CounterfactualRequest
    gen: Generator
    layout: RunLayout
    cohort: Cohort
    rows: dict[str, dict[str, Any]]
    #: The run's subjects, in order (every rank's).
    subjects: list[str]
    #: The parsed baseline, applied to every prompt of a subject.
    base: list[Edit]
    #: Each edit and null edit by its name, in the order given.
    edits: dict[str, Edit]
    #: The permuted-label controls, ``{name: {subject: value}}``.
    perms: dict[str, dict[str, Any]]
    record: RunRecord
    plan: RunPlan
    #: Whether an interrupted run with the same plan is resumed (its volumes kept).
    resume: bool
    #: Every volume of the run, in the record's order.
    volumes: list[Path]

    @property
    def out(self) -> Path:
        return self.request.out

    @property
    def contrasts(self) -> list[str]:
        """The names of the edited volumes of a seed: edits, null edits, permuted controls."""
        return [*self.edits, *self.perms]


class VolumeJob(NamedTuple):
    """One volume to generate: its seed index, kind (factual, floor or contrast) and file."""

    seed: int
    what: str
    path: Path


@dataclass(frozen=True)
class PendingVolumes:
    """The volumes of this rank's subjects still to generate, and how many there are in all."""

    jobs: dict[str, list[VolumeJob]]
    total: int

    @property
    def skipped(self) -> int:
        return self.total - sum(len(j) for j in self.jobs.values())


def check_request(request: CounterfactualRequest) -> None:
    """Refuse a request that cannot give a run, before the model is loaded or anything written."""
    if not request.edits and not request.null_edits:
        raise UnveilError("give at least one --edit (for example --edit smoking=current).")
    seeds = request.seeds
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise UnveilError(f"--seeds {seeds} is not a whole number of at least 1; give e.g. 3.")
    if request.n_permuted < 0:
        raise UnveilError("--permuted-controls must be 0 or more.")
    check_sampling_options(request.guidance_scale, request.steps)
    refuse_cohort_folders(request.out, request.cohort_root)
    if RunLayout(request.out).json_path.exists() and not request.overwrite:
        raise UnveilError(
            f"{request.out} already holds a counterfactual run; choose another --out or pass "
            "--overwrite."
        )


def plan_run(request: CounterfactualRequest, gen: Generator) -> CounterfactualRun:
    """Parse the edits, choose the subjects and controls, and fix the record and plan."""
    if request.from_scan:  # before the plan is written
        gen.family.check_inversion()
    template = gen.template
    given = [*request.edits, *request.null_edits]
    parsed = {e: parse_edit(e, template) for e in given}
    base = [parse_edit(b, template) for b in request.baseline]
    names = [str(parsed[e]) for e in given]
    slugs = [edit_slug(n) for n in names]
    if len(set(slugs)) != len(slugs):
        raise UnveilError(f"two edits share a file name ({', '.join(names)}); give each edit once.")
    cohort = Cohort.open(request.cohort_root, gen.cfg.data)
    subjects = subject_ids(cohort, request.ids, request.split, gen.lm.path)
    rows = cohort.rows()
    null_columns = list(dict.fromkeys(parsed[e].field for e in request.null_edits))
    column_of = {f.name: f.column for f in template.fields}
    perms = permuted_controls(
        subjects, rows, [column_of.get(c, c) for c in null_columns], request.n_permuted
    )
    named = dict(zip([str(parsed[e]) for e in given], (parsed[e] for e in given), strict=True))
    unchanged = unchanged_subjects(template, rows, subjects, base, named, perms)
    record = _run_record(request, gen, parsed, base, perms, subjects, unchanged)
    plan = _run_plan(record, gen, cohort, subjects)
    layout = RunLayout(request.out)
    return CounterfactualRun(
        request=request,
        gen=gen,
        layout=layout,
        cohort=cohort,
        rows=rows,
        subjects=subjects,
        base=base,
        edits=named,
        perms=perms,
        record=record,
        plan=plan,
        resume=_resumes(layout, plan, request.overwrite),
        volumes=layout.volumes(record),
    )


def contrast_prompts(
    template: Template,
    row: dict[str, Any],
    base: Sequence[Edit],
    edits: dict[str, Edit],
    perms: dict[str, dict[str, Any]],
    sid: str,
) -> tuple[str, dict[str, str]]:
    """A subject's factual prompt (with the baseline) and its prompt under each contrast."""
    row = apply_edits(row, list(base), template) if base else dict(row)
    factual = template.render(row)
    prompts = {name: template.render(apply_edits(row, [e], template)) for name, e in edits.items()}
    for name, values in perms.items():
        col = name.split(":", 1)[1]
        prompts[name] = template.render({**row, col: values[sid]})
    return factual, prompts


def unchanged_subjects(
    template: Template,
    rows: dict[str, dict[str, Any]],
    subjects: Sequence[str],
    base: Sequence[Edit],
    edits: dict[str, Edit],
    perms: dict[str, dict[str, Any]],
) -> dict[str, list[str]]:
    """Per contrast, the subjects whose prompt it leaves as it is (only contrasts with any).

    Same prompt and same noise give the same volume, so such a subject's effect is zero by
    construction and says nothing about the model: ``age+=10`` on a row without an age,
    ``diagnosis=IPF`` on a subject who has IPF.
    """
    out: dict[str, list[str]] = {}
    for sid in subjects:
        factual, prompts = contrast_prompts(template, rows[sid], base, edits, perms, sid)
        for name, prompt in prompts.items():
            if prompt == factual:
                out.setdefault(name, []).append(sid)
    return out


def _run_record(
    request: CounterfactualRequest,
    gen: Generator,
    parsed: dict[str, Edit],
    base: list[Edit],
    perms: dict[str, dict[str, Any]],
    subjects: list[str],
    unchanged: dict[str, list[str]],
) -> RunRecord:
    """The final record, known before the first volume; written last."""
    guidance_scale = request.guidance_scale
    return RunRecord(
        checkpoint=str(Path(gen.lm.path).resolve()),
        cohort=str(Path(request.cohort_root).resolve()),
        family=gen.cfg.model.family,
        edits=[str(parsed[e]) for e in request.edits],
        null_edits=[str(parsed[e]) for e in request.null_edits],
        baseline=[str(b) for b in base],
        permuted_controls=list(perms),
        seeds=[0] if request.from_scan else list(range(int(request.seeds))),
        noise=NOISE_RULE,
        subjects=subjects,
        from_scan=bool(request.from_scan),
        guidance_scale=guidance_scale
        if guidance_scale is not None
        else gen.cfg.diffusion.guidance_scale,
        steps=gen.effective_steps,
        hu_window=tuple(gen.cfg.preprocess.hu_window),
        amp=request.amp,
        config=gen.cfg.to_dict(),
        unchanged=unchanged,
    )


def _run_plan(record: RunRecord, gen: Generator, cohort: Cohort, subjects: list[str]) -> RunPlan:
    """What the volumes depend on: a rerun with the same plan may keep them."""
    return RunPlan(
        checkpoint=FileIdentity(**_file_identity(gen.lm.path), step=gen.lm.step),
        cohort=record.cohort,
        cohort_files=_cohort_fingerprint(cohort, subjects),
        family=record.family,
        edits=record.edits,
        null_edits=record.null_edits,
        baseline=record.baseline,
        permuted_controls=record.permuted_controls,
        seeds=record.seeds,
        noise=NOISE_RULE,
        subjects=subjects,
        from_scan=record.from_scan,
        guidance_scale=gen.effective_guidance_scale,
        steps=gen.effective_steps,
        amp=record.amp,
    )


def _file_identity(path: str | Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cohort_fingerprint(cohort, subjects: list[str]) -> str:
    """A digest of the clinical table's bytes and of each subject's image and mask files
    (name, size, modification time): it changes when the inputs of the run change."""
    h = hashlib.sha256()
    if cohort.table_path is not None:
        h.update(Path(cohort.table_path).read_bytes())
    for sid in subjects:
        subject = cohort[sid]
        for f in (subject.image, subject.mask):
            st = Path(f).stat()
            h.update(f"{sid}\0{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resumes(layout: RunLayout, plan: RunPlan, overwrite: bool) -> bool:
    """Whether the folder holds an interrupted run of the same plan (refused if another)."""
    if not layout.plan_path.exists() or overwrite:
        return False
    out = layout.root
    old = read_run_plan(layout.plan_path)
    if old is None:
        raise UnveilError(
            f"{layout.plan_path} is unreadable, so the interrupted run in {out} cannot be "
            "resumed; choose another --out or pass --overwrite to start it again."
        )
    differ = plan.differences(old)
    if differ:
        raise UnveilError(
            f"{out} holds an interrupted counterfactual run made with other parameters "
            f"({', '.join(differ)} differ); choose another --out, or pass --overwrite "
            "to discard it and start again."
        )
    return True


def start_run(run: CounterfactualRun, info: DistInfo) -> None:
    """On a fresh start, clear the folder of this run's files and write the plan."""
    barrier(info)  # every rank has read the old plan before the main one replaces it
    if info.is_main and not run.resume:
        # A fresh start: nothing in the folder belongs to this run yet.  The old record
        # goes first (the folder must not look complete while it is rewritten), then
        # any volume at one of this run's paths (it would be kept by a resume).
        run.layout.json_path.unlink(missing_ok=True)
        for path in run.volumes:
            path.unlink(missing_ok=True)
        write_run_plan(run.layout.plan_path, run.plan)
    barrier(info)


def pending_volumes(run: CounterfactualRun, info: DistInfo) -> PendingVolumes:
    """The volumes of this rank's subjects (sharded over ranks) that are still to generate."""
    layout = run.layout
    jobs: dict[str, list[VolumeJob]] = {}
    total = 0
    for sid in run.subjects[info.rank :: info.world_size]:  # subjects sharded over ranks
        every = []
        for k in run.record.seeds:
            every.append(VolumeJob(k, "factual", layout.factual(sid, k)))
            every.append(VolumeJob(k, "floor", layout.floor(sid, k)))
            every.extend(VolumeJob(k, n, layout.edited(sid, n, k)) for n in run.contrasts)
        total += len(every)
        jobs[sid] = [j for j in every if not (run.resume and j.path.is_file())]
    pending = PendingVolumes(jobs, total)
    if run.resume:
        log.info(
            "resuming the counterfactual run in %s%s: %d of %d volume(s) already written are "
            "kept (skipped), %d to generate",
            run.out,
            f" (rank {info.rank})" if info.world_size > 1 else "",
            pending.skipped,
            total,
            total - pending.skipped,
        )
    return pending


def finish_run(run: CounterfactualRun) -> None:
    """Write the run record once every volume exists: its presence marks a complete run."""
    missing = [p for p in run.volumes if not p.is_file()]
    if missing:
        raise UnveilError(
            f"{missing[0]} and {len(missing) - 1} other volume(s) of the run in {run.out} are "
            "missing after generation; re-run the same command to generate them."
        )
    write_run_record(run.layout.json_path, run.record)
