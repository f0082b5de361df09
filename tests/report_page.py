"""Read ``report.html`` back: its metric tables and the images it shows."""

from html.parser import HTMLParser
from pathlib import Path


class ReportPage(HTMLParser):
    """Parse a report page.

    Attributes:
        tables: ``{metric: {"settings": [...], "rows": {style: [cell text per setting]}}}``.
        images: the ``src`` of every ``<img>``.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.tables: dict[str, dict] = {}
        self.images: list[str] = []
        self._table: dict | None = None
        self._row: list[str] | None = None
        self._text: str | None = None
        self.feed(path.read_text())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = {"settings": [], "rows": {}}
            self.tables[attrs["data-metric"]] = self._table
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._text = ""

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            self._row.append(self._text.strip())
            self._text = None
        elif tag == "tr" and self._row is not None:
            if self._row[0] == "style":
                self._table["settings"] = self._row[1:]
            else:
                self._table["rows"][self._row[0]] = self._row[1:]
            self._row = None
        elif tag == "table":
            self._table = None
