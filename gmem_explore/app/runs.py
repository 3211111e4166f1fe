"""A model run as the tabs show it: live() streams a pipeline's events into a gallery with previews and Stop,
run_to_end() fills a progress bar for the calls without previews, and the Stop button and seed box wiring."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from ..events import Finished, Progress
from .common import AppContext, Session


# ---- live generation --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stopped:
    """What live() yields last when Stop was pressed: the step the run stopped after (None: before the first)."""

    at: Progress | None

    def where(self) -> str:
        return "before the first step" if self.at is None else f"at step {self.at.step}/{self.at.total}"


def live(ctx: AppContext, session: Session, tab: str, events: Iterator, progress=None):
    """A pipeline's event stream (generate_iter, interpolate_iter) for a live gallery, in a Gradio generator
    handler: yields the Progress events due for a preview (at most one per limits.preview_seconds), then the
    Finished; or, when Stop was pressed (session.stop_requested), a Stopped holding the step it stopped after, and
    the sampler stops there. Every step moves gradio's progress bar. Holds one of ctx.model_slots while it samples;
    a consumer that stops iterating (gradio closes the handler when the browser leaves) closes the stream, which
    stops the sampler after the step under way: nothing runs on in the background."""
    last = 0.0
    with ctx.model_slots:
        session.running.add(tab)
        try:
            if tab in session.stop_requested:  # pressed while the run waited in the queue
                yield Stopped(None)
                return
            for event in events:
                if isinstance(event, Finished):
                    yield event
                    return
                if progress is not None:
                    progress(event.fraction, desc=f"sampling: step {event.step}/{event.total}")
                if tab in session.stop_requested:
                    yield Stopped(event)
                    return
                now = time.monotonic()
                if now - last >= ctx.limits.preview_seconds and event.step < event.total:
                    last = now
                    yield event
        finally:
            events.close()
            session.running.discard(tab)
            session.stop_requested.discard(tab)


def run_to_end(events: Iterator, progress=None, what: str = "sampling", share: tuple[float, float] = (0.0, 1.0)):
    """The Generation at the end of a pipeline's event stream, moving gradio's progress bar ("what: step k/N") on
    every step: for the model calls without live previews (Swap's Generate and compare, the Bank's "Generate 4"),
    which would otherwise show only a timer (on gmem-v1-xl a compare is 8 images of 250 SDE steps). `share`
    (from, to): the part of the bar this call fills, so that calls made one after the other (Swap's compare: two)
    fill it once, not twice."""
    low, high = share
    try:
        for event in events:
            if isinstance(event, Finished):
                return event.generation
            if progress is not None:
                progress(low + (high - low) * event.fraction, desc=f"{what}: step {event.step}/{event.total}")
    finally:
        events.close()
    raise RuntimeError("the generation ended without its images")



# ---- Stop and the seed box --------------------------------------------------------------------------------------
# A model event never writes the seed box itself: an output of an event that fails shows gradio's red "Error"
# badge until the next success, and a seed box that looks broken after a typo elsewhere misleads. The event writes
# the seed it used into a hidden number (the API's "seed" output), and a .success step copies it into the box.
def hidden_seed() -> gr.Number:
    return gr.Number(None, precision=0, visible=False, label="Seed used")


def wire_stop(go: gr.Button, stop: gr.Button, state: gr.State, status: gr.Markdown, tab: str) -> None:
    """Stop asks the tab's run to stop (live() sees it after the step under way, and the run itself ends with
    the images of that step and says which step: message and captions come from the same event). Not gradio's
    cancel: a cancelled handler can yield nothing more, so a separate handler had to guess the step from the last
    preview the page had shown. A click on the run button first clears an old request and an old status line."""
    def clear(session: Session):
        session.stop_requested.discard(tab)
        return ""

    def request(session: Session):
        session.stop_requested.add(tab)
        return "Stopping after the step under way…" if tab in session.running else gr.update()

    go.click(clear, state, status, queue=False, api_visibility="private")
    stop.click(request, state, status, queue=False, api_visibility="private")


def stopped_status(details, seed_used=None) -> str:
    """The status line of a run that Stop ended ("" for any other): its details say where."""
    status = details.get("status") if isinstance(details, dict) else None
    if not isinstance(status, str) or not status.startswith("stopped "):
        return ""
    seed_note = f" (seed {int(seed_used)})" if seed_used is not None else ""
    return f"**{status[0].upper()}{status[1:]}**{seed_note}: the images are that step's preview."
