"""The bundled demo feed, served only in demo mode: sample data, labelled as such."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime
from xml.sax.saxutils import escape

from fastapi import APIRouter, Response

from app.deps import ClockDep

router = APIRouter(tags=["demo"], include_in_schema=False)

# Invented items, dated relative to now so that they are always recent.
_ITEMS = (
    (
        "[SAMPLE DATA] US and Chinese officials hold first talks on artificial intelligence risks",
        "Sample item for the Pledgewatch demo: delegations met to discuss the risks of "
        "advanced AI systems, as agreed at Woodside. Not a real report.",
        timedelta(hours=2),
    ),
    (
        "[SAMPLE DATA] Climate envoys announce joint working group on methane",
        "Sample item for the Pledgewatch demo: the two countries' climate envoys set up a "
        "working group on methane emissions. Not a real report.",
        timedelta(hours=1),
    ),
)


@router.get("/demo/feed.xml")
def demo_feed(clock: ClockDep) -> Response:
    """RSS 2.0 with the demo's sample items."""
    now = clock.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    entries = "".join(
        "<item>"
        f"<title>{escape(title)}</title>"
        f"<link>https://demo.pledgewatch.invalid/sample/{index}</link>"
        f"<guid>https://demo.pledgewatch.invalid/sample/{index}</guid>"
        f"<description>{escape(summary)}</description>"
        f"<pubDate>{format_datetime(hour - age)}</pubDate>"
        "</item>"
        for index, (title, summary, age) in enumerate(_ITEMS, start=1)
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0"><channel>'
        "<title>Pledgewatch demo feed (SAMPLE DATA)</title>"
        "<link>https://demo.pledgewatch.invalid/</link>"
        "<description>Invented items for trying Pledgewatch offline.</description>"
        f"{entries}</channel></rss>"
    )
    return Response(body, media_type="application/rss+xml")
