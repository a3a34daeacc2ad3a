"""The cyclic collector is off inside paused blocks and comes back as it was."""

from __future__ import annotations

import gc
import threading

from billing_core.steps import collector


def test_paused_blocks_nest_and_restore_the_collector():
    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer block still runs
    assert gc.isenabled()


def test_a_collector_off_before_stays_off():
    gc.disable()
    try:
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_concurrent_blocks_restore_it_when_the_last_ends():
    inside, release = threading.Event(), threading.Event()

    def shard():
        with collector.paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=shard)
    thread.start()
    inside.wait(5)
    with collector.paused():
        pass
    assert not gc.isenabled()  # the other shard is still in its step
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_the_collector_comes_back_after_a_failing_block():
    try:
        with collector.paused():
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_pdfs_rendered_while_the_collector_is_paused_leave_no_boxes_behind(tmp_path):
    # The close's steps pause the cyclic collector; a laid-out document's boxes are
    # cycles, so without a collection per PDF every document of a shard stayed in memory.
    from weasyprint.formatting_structure.boxes import Box

    from billing_core.invoices.documents import render_pdfs, templates_dir

    def boxes() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, Box))

    gc.collect()
    before = boxes()
    page = "<html><body>" + "<table><tr><td>line</td><td>$1.00</td></tr></table>" * 20
    with collector.paused():
        render_pdfs([(page, tmp_path / f"{i}.pdf") for i in range(3)], str(templates_dir()))
        assert boxes() == before
