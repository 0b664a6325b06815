"""``ens search``: zoo (built if missing) -> study -> trials on Ray -> Pareto front."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from blocks.registry import block_kinds
from ens.errors import EnsError
from ens.search.objectives import latency_naming, metric_names, parse_objectives
from ens.search.trial import TrialContext, TrialEvaluator, load_sample
from ens.tasks import get_task
from search_spaces.arch import Arch
from search_spaces.errors import ArchError
from search_spaces.sampling import GRANULARITIES, arch_to_params, sample_arch
from studies.errors import StudyError
from studies.heartbeat import HeartbeatConfig
from studies.lock import StudyLock
from studies.runner import RunConfig, RunSummary, create_or_load, run_study, stale_requeuer
from studies.samplers import make_sampler
from studies.storage import open_storage, redact, sqlite_path, storage_url

WHOLE_CHECK_IMAGES = 8  # the first N whole held-out images, as the zoo's quality report


@dataclass
class SearchOptions:
    task: str = "deblur"
    objective: str = "psnr,latency"
    profiler: str = "ort-cpu"
    trials: int = 30
    workers: int = 1
    ray_address: str | None = None
    storage: str = "study.db"
    study_name: str | None = None
    sampler: str = "tpe"
    latency_budget: float | None = None
    preset: str = "tiny"
    data: str | None = None
    seed: int = 0
    shape: str = "1x3x256x256"
    finetune_steps: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    zoo_root: str | None = None  # None: a local zoo/ if there is one, else the prebuilt zoo, else built in zoo/
    from_scratch: bool = False  # build a zoo even where a prebuilt one ships
    granularity: str = "stage"
    precision: str | None = None  # latency in this precision (None: the profiler's default, fp32 on ort-cpu)
    kinds: str | None = None  # the block kinds searched, e.g. "T,M,E" (None: every kind the zoo holds)
    score_alpha: float = 0.5
    device: str = "auto"  # where trials evaluate (and fine-tune); resolved in each trial's process
    amp: str = "auto"
    max_retries: int = 1
    artifacts: str | None = None
    enqueue: tuple[str, ...] = ()  # architectures evaluated before the sampler's (Optuna's enqueue_trial)
    zoo_front: bool = True  # enqueue the front the zoo's single swaps and the latency table predict (zoo_front.py)
    zoo_front_rounds: int = 4  # rounds of single swaps: around the teacher, then around the best within the target
    zoo_front_target: float = 0.3  # loss against all-T (dB) the rounds refine around
    time_finalists: int = 0  # then time this many fastest trials within zoo_front_target beside all-T (finalists.py)
    whole_check: int = 0  # then score this many fastest trials within zoo_front_target on whole images (whole_check.py)
    val: str = "patches"  # what trials (and the zoo front) are scored on: the zoo's held-out patches, or whole images
    val_images: int = WHOLE_CHECK_IMAGES  # with val="whole": the first N whole held-out images
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)  # server storages: parallel drivers


VAL_SETS = ("patches", "whole")


def artifact_dir(storage: str, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    db = sqlite_path(storage)
    return db.with_name(db.stem + ".artifacts") if db is not None else Path("ens-artifacts")


def _validate(opts: SearchOptions) -> None:
    if opts.trials < 1:
        raise EnsError(f"--trials must be at least 1 (got {opts.trials})")
    if opts.workers < 0:
        raise EnsError(f"--workers must be >= 0 (got {opts.workers})")
    if opts.granularity not in GRANULARITIES:
        raise EnsError(f"unknown granularity {opts.granularity!r} (choose from {', '.join(GRANULARITIES)})")
    if opts.latency_budget is not None and opts.latency_budget <= 0:
        raise EnsError("--latency-budget must be positive (milliseconds)")
    if opts.data is not None and not Path(opts.data).exists():
        raise EnsError(f"data directory {opts.data} does not exist")
    if opts.data is not None and not Path(opts.data).is_dir():
        raise EnsError(f"--data {opts.data} is not a folder")
    if opts.finetune_steps < 0:
        raise EnsError("--finetune-steps must be >= 0")
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise EnsError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if opts.score_alpha < 0:
        raise EnsError("--score-alpha must be >= 0 (dB per halving of latency)")
    if opts.zoo_front_rounds < 1:
        raise EnsError(f"--zoo-front-rounds must be at least 1 (got {opts.zoo_front_rounds})")
    if opts.zoo_front_target <= 0:
        raise EnsError(f"--zoo-front-target must be a positive loss in dB (got {opts.zoo_front_target:g})")
    if opts.time_finalists < 0:
        raise EnsError(f"--time-finalists must be >= 0 (got {opts.time_finalists})")
    if opts.whole_check < 0:
        raise EnsError(f"--whole-check must be >= 0 (got {opts.whole_check})")
    if opts.val not in VAL_SETS:
        raise EnsError(f"unknown --val {opts.val!r} (choose from {', '.join(VAL_SETS)})")
    if opts.val_images < 1:
        raise EnsError(f"--val-images must be at least 1 (got {opts.val_images})")
    if opts.val == "whole" and opts.whole_check:
        raise EnsError("--whole-check with --val whole: the trials are already scored on the whole held-out images")
    _validate_device(opts)
    from studies.executors import check_local_capacity, check_ray_address

    if opts.ray_address:
        check_ray_address(opts.ray_address)
    elif opts.workers:  # a local Ray cluster is this machine
        check_local_capacity(opts.workers, opts.cpus_per_trial)


def _validate_device(opts: SearchOptions) -> None:
    """``--device``/``--amp`` against where the trials run. A Ray trial sees a GPU only when it asks for one
    (Ray empties ``CUDA_VISIBLE_DEVICES`` for the others), so ``--device cuda`` on Ray needs
    ``--gpus-per-trial``; a trial that holds a GPU it does not use is refused too. The device itself is checked
    here when the trials run on this machine, and in each trial's process on a cluster."""
    from ens.compute import resolve_amp, resolve_device

    text = opts.device.strip().lower()
    on_ray = bool(opts.workers or opts.ray_address)
    if text == "cpu" and opts.gpus_per_trial > 0:
        raise EnsError(f"--gpus-per-trial {opts.gpus_per_trial:g} with --device cpu: the trials would hold GPUs "
                       "they do not use")
    if text.startswith("cuda") and on_ray and not opts.gpus_per_trial:
        raise EnsError(f"--device {opts.device} on Ray workers needs --gpus-per-trial (1, or a fraction such as "
                       "0.5): Ray shows a trial only the GPUs it asked for; or use --workers 0")
    if text.startswith("cuda:") and on_ray:
        raise EnsError(f"--device {opts.device}: on Ray, each trial uses the GPU Ray assigns it; use --device cuda")
    if not opts.ray_address:
        dev = resolve_device(opts.device) if not (on_ray and opts.gpus_per_trial) else resolve_device("cuda")
        resolve_amp(opts.amp, dev)


def _open_zoo(choice, task, opts: SearchOptions, log: Callable[[str], None]):
    """The zoo ``resolve_zoo`` chose, built first where there is none; says so when it is the prebuilt one."""
    from ens.zoo.build import build_zoo
    from ens.zoo.prebuilt import announce
    from ens.zoo.store import Zoo

    if choice.origin == "build":
        log(f"no zoo for ({task.name}, {opts.preset}) in {choice.root}/: building it first")
        from ens.compute import make_compute

        compute = make_compute("auto" if opts.ray_address else opts.device, opts.amp)
        build_zoo(task, opts.preset, opts.data, choice.root, opts.seed, log=log, compute=compute)
    zoo = Zoo.load(choice.path)
    announce(choice, zoo.zoo_id, log)
    return zoo


def _trial_data(task, zoo, opts: SearchOptions) -> tuple[list, Any]:
    """The held-out pairs every trial is scored on (the zoo's patches, or the first ``val_images`` whole
    images), and the training patches when trials fine-tune."""
    from ens.data import load_pairs
    from ens.zoo.build import held_out_images

    if opts.val == "whole":
        val = held_out_images(task, opts.data, opts.val_images)
    else:
        val_set = load_pairs(task, opts.data, "val", patch_size=zoo.manifest.patch_size, seed=opts.seed,
                             num_patches=zoo.manifest.val_patches)
        val = [val_set[i] for i in range(len(val_set))]
    train = None
    if opts.finetune_steps:
        train = load_pairs(task, opts.data, "train", patch_size=zoo.manifest.patch_size, seed=opts.seed)
    return val, train


def val_label(val: str, pairs: int, held_out: bool = True) -> str:
    """What a trial's PSNR was measured on, in words (``held_out=False``: shorter, for an objective's name)."""
    kind = "whole " + ("held-out " if held_out else "") + ("image" if pairs == 1 else "images")
    return f"{pairs} {kind}" if val == "whole" else f"{pairs} held-out patches"


def _study(name: str, storage, objectives, sampler, opts: SearchOptions, task, zoo, choice,
           shape: tuple[int, ...], kinds: list[str]) -> optuna.Study:
    """The study, created with its record (task, zoo, profiler, ...) or loaded and checked against it."""
    study = create_or_load(name, storage, objectives, sampler, attrs={
        "task": task.name, "preset": opts.preset, "zoo_id": zoo.zoo_id, "zoo_dir": str(choice.path.resolve()),
        "zoo_origin": choice.origin if choice.origin == "prebuilt" else "local",
        "profiler": opts.profiler, "shape": list(shape), "granularity": opts.granularity,
        "data": opts.data or "embedded:scikit-image", "latency_budget": opts.latency_budget,
        "precision": opts.precision, "kinds": kinds,
    })
    if "val" not in study.user_attrs:  # a study from before --val was scored on patches
        study.set_user_attr("val", opts.val if not study.trials else "patches")
    if study.user_attrs.get("zoo_id") != zoo.zoo_id:
        raise StudyError(f"study {name!r} was searched with zoo {study.user_attrs.get('zoo_id')}, but the zoo "
                         f"is now {zoo.zoo_id}: use another --study-name or storage")
    for key, value in (("profiler", opts.profiler), ("granularity", opts.granularity),
                       ("precision", opts.precision), ("kinds", kinds), ("val", opts.val)):
        if study.user_attrs.get(key, value) != value:
            shown = ",".join(study.user_attrs[key]) if key == "kinds" else study.user_attrs[key]
            raise StudyError(f"study {name!r} was made with --{key} {shown}; use that, or another --study-name")
    return study


def _name_metrics(study: optuna.Study, names: list[str]) -> None:
    """The objectives' names with units, for the dashboard (optuna calls ``set_metric_names`` experimental)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def _search_kinds(requested: str | None, zoo_kinds: list[str]) -> list[str]:
    """The kinds a slot may take: ``requested`` (T always among them), else every kind of the zoo."""
    if requested is None:
        return [k for k in zoo_kinds if k in block_kinds()]
    want = ["T", *[k.strip().upper() for k in requested.split(",") if k.strip() and k.strip().upper() != "T"]]
    missing = [k for k in want if k not in zoo_kinds]
    if missing:
        raise EnsError(f"--kinds {requested}: the zoo has no {', '.join(missing)} (it holds {','.join(zoo_kinds)})")
    return want


def _enqueued_params(archs: tuple[str, ...], cfg, kinds: list[str], granularity: str) -> list[dict[str, str]]:
    """Trial parameters for each ``--enqueue`` architecture; a clear error for one outside the search space."""
    out = []
    for text in archs:
        try:
            arch = Arch.parse(text)
            params = arch_to_params(arch, cfg, granularity)
        except (ArchError, ValueError, KeyError) as exc:
            raise EnsError(f"--enqueue {text!r}: {exc}") from None
        outside = sorted({k for k in params.values() if k not in kinds})
        if outside:
            raise EnsError(f"--enqueue {text!r}: kind {', '.join(outside)} is not searched here (--kinds "
                           f"{','.join(kinds)})")
        out.append(params)
    return out


def _enqueue_zoo_front(study: optuna.Study, zoo, val, task, prof, shape, opts: SearchOptions,
                       kinds: list[str], log: Callable[[str], None]) -> None:
    """Score the single swaps and refine the front they predict (zoo_front.py), then enqueue the fastest
    architectures measured within each budget; the teacher's swaps and the rounds are kept in the study
    (``single_swaps``, ``zoo_front_rounds``)."""
    from dataclasses import asdict

    from ens.search.zoo_front import HeldOutScorer, latency_table, refine_front

    table, why = latency_table(prof, zoo.config, shape, opts.precision)
    if table is None:
        log(why)
        return
    net = zoo.supernet()
    log(f"zoo front: scoring the {len(list(net.slot_blocks())) * (len(kinds) - 1)} single swaps of the teacher "
        f"on the {val_label(opts.val, len(val))}, then up to {opts.zoo_front_rounds - 1} more round(s) around the "
        f"fastest network within {opts.zoo_front_target:g} dB")
    found = refine_front(HeldOutScorer(net, val, task), table, zoo.config, kinds, opts.granularity,
                         opts.zoo_front_rounds, opts.zoo_front_target, log=log)
    study.set_user_attr("single_swaps", {"teacher_psnr": found.teacher_psnr, "delta_psnr": found.swaps})
    study.set_user_attr("zoo_front_rounds", [asdict(r) for r in found.rounds])
    all_t = table.predict(Arch.uniform("T").block_kinds(zoo.config))
    near = min((s for s in found.seeds if s.loss_db <= opts.zoo_front_target), key=lambda s: s.latency_ms,
               default=None)
    log(f"zoo front: {len(found.seeds)} architectures, the fastest measured within each budget, evaluated first"
        + (f" (within {opts.zoo_front_target:g} dB: {near.arch}, {near.latency_ms:.1f} ms predicted vs "
           f"{all_t:.1f} ms for all-T)" if near else ""))
    for s in found.seeds:
        study.enqueue_trial(arch_to_params(s.arch, zoo.config, opts.granularity), skip_if_exists=True,
                            user_attrs={"zoo_front": {"round": s.round, "loss_db": s.loss_db,
                                                      "predicted_loss_db": s.predicted_loss_db,
                                                      "predicted_latency_ms": s.latency_ms}})


def _patch_size(zoo_dir: Path, preset: str) -> int:
    from ens.zoo.build import RECIPES
    from ens.zoo.manifest import ZooManifest

    try:
        return ZooManifest.read(zoo_dir).patch_size
    except Exception:  # no zoo yet (or a broken one, reported when it is loaded): the recipe's patch
        return RECIPES[preset].patch_size


def run_search(opts: SearchOptions, log: Callable[[str], None] = print,
               on_done: Callable[[Any, RunSummary], None] | None = None) -> tuple[optuna.Study, RunSummary]:
    from blocks.unet import get_preset
    from ens.data.check import check_dataset_once
    from ens.profiling import image_shape, measurer_of, profile_arch
    from ens.zoo.prebuilt import resolve_zoo
    from profilers.registry import get_profiler

    _validate(opts)
    objectives = parse_objectives(opts.objective)
    task = get_task(opts.task)
    sampler = make_sampler(opts.sampler, opts.seed)
    try:
        get_preset(opts.preset)
    except KeyError as exc:
        raise EnsError(str(exc.args[0])) from None
    shape = image_shape(opts.shape)
    prof = get_profiler(opts.profiler)
    opts.precision = prof.resolve_precision(opts.precision)  # an unsupported precision: refused here
    prof.check()  # unreachable device or missing token: a clear error before anything starts
    measurer = measurer_of(prof, "--time-finalists") if opts.time_finalists else None  # proxy: refused now
    choice = resolve_zoo(task.name, opts.preset, opts.data, opts.zoo_root, opts.from_scratch)
    zoo_dir = choice.path
    if opts.data is not None:  # a bad file in either split: say so before a database or a zoo is made
        check_dataset_once(task, opts.data, _patch_size(zoo_dir, opts.preset), log)
    db = sqlite_path(storage_url(opts.storage))  # SQLite: one driver, under a lock; a server: heartbeats
    storage = open_storage(opts.storage, heartbeat=None if db is not None else opts.heartbeat,
                           on_stale=stale_requeuer(opts.max_retries))  # refuses corrupt or foreign databases

    zoo = _open_zoo(choice, task, opts, log)
    cfg = zoo.config
    kinds = _search_kinds(opts.kinds, zoo.manifest.kinds)
    wanted = _enqueued_params(opts.enqueue, cfg, kinds, opts.granularity)
    val, train = _trial_data(task, zoo, opts)

    name = opts.study_name or f"{task.name}-{opts.preset}"
    budgets = {"latency": opts.latency_budget} if opts.latency_budget else {}
    lock = StudyLock(db) if db is not None else None
    if lock is not None:
        lock.__enter__()
    try:
        study = _study(name, storage, objectives, sampler, opts, task, zoo, choice, shape, kinds)
        prof.prepare(cfg.to_dict(), shape, kinds, log, preset=opts.preset,  # a table calibrated if missing
                     precision=opts.precision)
        latency_name, latency_error = latency_naming(prof, cfg, shape, opts.precision)
        quality_on = val_label(opts.val, len(val))
        study.set_user_attr("val_label", quality_on)
        named_on = val_label(opts.val, len(val), held_out=False) if opts.val == "whole" else None
        _name_metrics(study, metric_names(objectives, latency_name, named_on))
        if not study.trials:
            for k in ("T", *[k for k in kinds if k != "T"]):  # the uniform networks are the reference points
                study.enqueue_trial(arch_to_params(Arch.uniform(k), cfg, opts.granularity))
            if opts.zoo_front:
                _enqueue_zoo_front(study, zoo, val, task, prof, shape, opts, kinds, log)
        for params in wanted:
            study.enqueue_trial(params, skip_if_exists=True)
        ref_ms = None
        if any(o.metric == "score" for o in objectives):
            ref_ms = profile_arch(Arch.uniform("T"), prof, cfg, shape, precision=opts.precision).median_ms
        ctx = TrialContext(
            manifest=zoo.manifest.__dict__.copy(), zoo_state=zoo.state, task=task.name, val=val,
            profiler=opts.profiler, shape=tuple(shape), objectives=[o.metric for o in objectives],
            ref_latency_ms=ref_ms, score_alpha=opts.score_alpha, finetune_steps=opts.finetune_steps,
            train=train, seed=opts.seed, sample=load_sample(task, opts.data), latency_error_pct=latency_error,
            precision=opts.precision, device=opts.device, amp=opts.amp, val_label=quality_on,
            threads=max(1, int(opts.cpus_per_trial)) if opts.workers else max(1, os.cpu_count() or 1),
        )
        evaluator = TrialEvaluator(ctx)

        def space(trial: optuna.Trial) -> tuple[str, str]:
            arch = sample_arch(trial, cfg, kinds, opts.granularity)
            return arch.hash, str(arch)

        art_dir = artifact_dir(opts.storage, opts.artifacts)
        art_dir.mkdir(parents=True, exist_ok=True)
        store = optuna.artifacts.FileSystemArtifactStore(str(art_dir))
        study.set_user_attr("artifact_dir", str(art_dir.resolve()))
        log(f"study {name!r} in {redact(storage_url(opts.storage))}: {len(study.trials)} trials so far; "
            f"target {opts.trials} evaluated architectures, {opts.workers} worker(s), profiler {opts.profiler}")
        summary = run_study(study, objectives, space, evaluator, RunConfig(
            n_trials=opts.trials, workers=opts.workers, ray_address=opts.ray_address,
            cpus_per_trial=opts.cpus_per_trial, gpus_per_trial=opts.gpus_per_trial,
            max_retries=opts.max_retries, budgets=budgets, exclusive=db is not None), artifact_store=store,
            on_done=on_done, storage=storage)
        if measurer is not None and not summary.interrupted:
            from ens.search.finalists import time_finalists

            time_finalists(study, opts.time_finalists, opts.zoo_front_target, measurer, cfg, shape, opts.precision,
                           log=log)
        if opts.whole_check and not summary.interrupted:
            from ens.search.whole_check import check_on_whole_images
            from ens.zoo.build import held_out_images

            check_on_whole_images(study, opts.whole_check, opts.zoo_front_target, zoo, task,
                                  held_out_images(task, opts.data, WHOLE_CHECK_IMAGES), log=log)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return study, summary
