"""Every item of an inventory through the worker: journaled results reused, the rest decoded in a
process pool and streamed back (at most ``4 * workers`` in flight); rows, skips, preview tiles,
original ids and seen ids collected as they arrive, each new result journaled."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2

from echoclr_cli.data.bounds import take_header_warnings
from echoclr_cli.data.layouts.base import Inventory, Item
from echoclr_cli.errors import UserError
from echoclr_cli.preprocess import outputs, worker
from echoclr_cli.preprocess.journal import Journal, fingerprint

PREVIEW_VIDEOS = 8


def resolve_workers(workers: int | str) -> int:
    """``auto``: all cores this process may use but one (at least 1); else the number given."""
    if workers == "auto":
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        return max(1, n - 1)
    try:
        n = int(workers)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise UserError(f"preprocess.workers must be a number >= 1 or auto, got {workers!r}",
                        fix="use --workers auto or --workers N")  # fmt: skip
    return n


def partition_items(inv: Inventory, journal: Journal | None, out: Path, overwrite: bool) -> tuple:
    """Split the items into journaled results still valid (index -> result, shown as reused)
    and ``(index, item)`` tasks for the workers; also each item's fingerprint by index."""
    done: dict[int, dict] = {}
    tasks: list[tuple[int, Item]] = []
    fps_: dict[int, list[int] | None] = {}
    for index, it in enumerate(inv.items):
        fps_[index] = fp = fingerprint(it.file)
        res = None if journal is None or overwrite else journal.lookup(it, fp, out)
        if res is not None and res["status"] != "skipped" and "_match" not in res["row"]:
            res = None  # journaled before the Modality check and label keys: header read again
        if res is None:
            tasks.append((index, it))
        elif res["status"] == "skipped":
            done[index] = res
        else:
            done[index] = dict(res, status="reused", preview=None)
    return done, tasks, fps_


def journaled_results(
    done: dict[int, dict], ctx: worker.WorkerContext, items: list[Item]
) -> Iterator:
    """Journaled (index, result), with the label file's view filter applied again."""
    for index, res in sorted(done.items()):
        if res["status"] == "reused":
            row = res["row"]
            if row["_match"] in ctx.view_excluded:  # the label key (partition_items: always set)
                res = worker.skip_result(items[index].rel, "view_filter",
                            "excluded by the view filter of the label file",
                            (row["study_id"], row["patient_id"], row["_match"]))  # fmt: skip
            else:
                res = dict(res, row=dict(row))
        yield index, res


def process_items(inv: Inventory, ctx: worker.WorkerContext, workers: int, out: Path,
                  notes: list[str], progress, done: dict, tasks: list, fps_: dict,
                  journal: Journal) -> tuple:  # fmt: skip
    """Run every item; collect manifest rows, skips, preview tiles, original ids, seen ids.
    Results already journaled come first; every new one is journaled as it arrives."""
    rows, skipped, tiles = [], list(inv.skipped), []
    worker_skips: list[tuple[int, dict]] = []
    ids = outputs.previous_ids(out)
    seen_ids = set(inv.known_ids)
    sector_sources: Counter = Counter()
    header = Counter(take_header_warnings())  # the parent's own reads (transfer syntaxes)
    n_reused = 0
    total = len(inv.items)

    def stream() -> Iterator[tuple[int, dict]]:
        yield from journaled_results(done, ctx, inv.items)
        for index, res in stream_results(tasks, ctx, workers):
            header.update(res.pop("header_warnings", None) or {})  # this run's reads only
            journal.add(inv.items[index], fps_[index], res)
            yield index, res

    for n_done, (index, res) in enumerate(stream(), start=1):
        if res["status"] == "skipped":
            worker_skips.append((index, {k: res[k] for k in ("file", "reason", "detail")}))
            seen_ids.update(res["ids"])
        else:
            row = res["row"]
            row["_index"] = index
            rows.append(row)
            n_reused += res["status"] == "reused"
            if res["ids"]:
                for kind, (orig, hashed) in res["ids"].items():
                    ids[(kind, hashed)] = orig
                sector_sources[res["sector"]] += 1
            notes.extend(res["warnings"])
            if res["preview"] is not None and len(tiles) < PREVIEW_VIDEOS:
                tiles.append(res["preview"])
        if progress is not None:
            progress(n_done, total)
    skipped += [rec for _, rec in sorted(worker_skips, key=lambda t: t[0])]  # archive order
    outputs.write_header_warnings(out, header, notes)
    return rows, skipped, tiles, ids, seen_ids, sector_sources, n_reused


def run_counted(task: tuple[int, Item]) -> tuple[int, dict]:
    """A worker's result with the DICOM header warnings its read caught (counts by reason,
    no value: bounds.header_warnings)."""
    index, res = worker.run_indexed(task)
    return index, dict(res, header_warnings=take_header_warnings())


def stream_results(
    tasks: list[tuple[int, Item]], ctx: worker.WorkerContext, workers: int
) -> Iterator[tuple[int, dict]]:
    """Stream (index, result) of ``(index, item)`` tasks with at most ``4 * workers`` in flight."""
    if workers <= 1 or len(tasks) <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # same per-file work as a worker; OpenCV's pool only adds overhead
        try:
            for i, it in tasks:
                res = worker.process_item(it, ctx)
                yield i, dict(res, header_warnings=take_header_warnings())
        finally:
            cv2.setNumThreads(threads)
        return
    # fork starts workers instantly (they inherit the imports); after torch is imported (threads,
    # CUDA) a fresh forkserver is the safe choice.
    methods = mp.get_all_start_methods()
    method = "fork" if "fork" in methods and "torch" not in sys.modules else "forkserver"
    method = method if method in methods else "spawn"
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context(method),
        initializer=worker.init_worker, initargs=(ctx,),
    ) as ex:  # fmt: skip
        todo = iter(tasks)
        pending: set[cf.Future] = set()
        for task in todo:
            pending.add(ex.submit(run_counted, task))
            if len(pending) >= 4 * workers:
                break
        while pending:
            done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.add(ex.submit(run_counted, nxt))
