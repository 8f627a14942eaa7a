"""The report as files: an Excel workbook with a native chart, and CSV; stored as `files` rows
owned by whoever asked, so downloads go through the one owner-checked files route."""

import csv
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio.to_thread
import xlsxwriter  # type: ignore[import-untyped]  # no stubs or py.typed
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.storage import Storage
from app.exports.service import escape_formula
from app.files.models import StoredFile
from app.reports.service import ActivityReport
from app.reports.user_activity import UserActivity

DATA_SHEET = "Daily activity"
SUMMARY_SHEET = "Summary"
COLUMNS = (
    ("Date", "day"),
    ("Sign-ups", "signups"),
    ("Active users", "active_users"),
    ("Sessions started", "sessions"),
    ("Items created", "items_created"),
    ("Files stored", "files_stored"),
)
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_TYPE = "text/csv"


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    extension: str
    content_type: str


FORMATS = (Format("xlsx", "xlsx", XLSX_TYPE), Format("csv", "csv", CSV_TYPE))


def write_workbook(path: Path, report: ActivityReport, generated_at: datetime) -> None:
    # No string is ever turned into a formula or a link, whatever it holds.
    options = {"strings_to_formulas": False, "strings_to_urls": False, "remove_timezone": True}
    with xlsxwriter.Workbook(str(path), options) as book:
        header = book.add_format(
            {"bold": True, "bg_color": "#1F4E78", "font_color": "#FFFFFF", "border": 1}
        )
        day_format = book.add_format({"num_format": "yyyy-mm-dd"})
        total_format = book.add_format({"bold": True, "top": 1})
        data = book.add_worksheet(DATA_SHEET)
        summary = book.add_worksheet(SUMMARY_SHEET)

        for column, (title, _) in enumerate(COLUMNS):
            data.write_string(0, column, title, header)
        for row, day in enumerate(report.days, start=1):
            data.write_datetime(row, 0, datetime.combine(day.day, datetime.min.time()), day_format)
            for column, (_, field) in enumerate(COLUMNS[1:], start=1):
                data.write_number(row, column, getattr(day, field))
        last = len(report.days)
        data.set_column(0, 0, 12)
        data.set_column(1, len(COLUMNS) - 1, 16)
        data.freeze_panes(1, 1)
        data.autofilter(0, 0, last, len(COLUMNS) - 1)
        _chart(book, data, last)

        totals = report.summary
        summary.set_column(0, 0, 30)
        summary.set_column(1, 1, 22)
        summary.write_string(0, 0, "Activity report", header)
        summary.write_string(0, 1, "", header)
        rows: list[tuple[str, object]] = [
            ("First day (UTC)", totals.start.isoformat()),
            ("Last day (UTC)", totals.end.isoformat()),
            ("Days", totals.days),
            ("Sign-ups", totals.signups),
            ("Active users (distinct)", totals.active_users),
            ("Sessions started", totals.sessions),
            ("Items created", totals.items_created),
            ("Files stored", totals.files_stored),
            ("Accounts at the end", totals.users_at_end),
            ("Generated at (UTC)", generated_at.strftime("%Y-%m-%d %H:%M:%S")),
        ]
        for row, (label, value) in enumerate(rows, start=1):
            summary.write_string(row, 0, label, total_format if row == 4 else None)
            if isinstance(value, int):
                summary.write_number(row, 1, value)
            else:
                summary.write_string(row, 1, str(value))


def _chart(book: xlsxwriter.Workbook, sheet: object, last: int) -> None:
    """Columns for sign-ups and sessions, lines for active users, on the data sheet."""
    columns = book.add_chart({"type": "column"})
    for column in (1, 3):
        columns.add_series(
            {
                "name": [DATA_SHEET, 0, column],
                "categories": [DATA_SHEET, 1, 0, last, 0],
                "values": [DATA_SHEET, 1, column, last, column],
            }
        )
    line = book.add_chart({"type": "line"})
    line.add_series(
        {
            "name": [DATA_SHEET, 0, 2],
            "categories": [DATA_SHEET, 1, 0, last, 0],
            "values": [DATA_SHEET, 1, 2, last, 2],
            "marker": {"type": "circle"},
        }
    )
    columns.combine(line)
    columns.set_title({"name": "Sign-ups and activity per day (UTC)"})
    columns.set_x_axis({"name": "Day", "date_axis": True, "num_format": "yyyy-mm-dd"})
    columns.set_y_axis({"name": "Count", "min": 0})
    columns.set_legend({"position": "bottom"})
    columns.set_size({"width": 760, "height": 380})
    sheet.insert_chart(1, len(COLUMNS) + 1, columns)  # type: ignore[attr-defined]


USER_DATA_SHEET = "Activity per day"


def write_user_workbook(path: Path, report: UserActivity, generated_at: datetime) -> None:
    """One column per counted source, a clustered column chart of them, and a summary."""
    options = {"strings_to_formulas": False, "strings_to_urls": False, "remove_timezone": True}
    with xlsxwriter.Workbook(str(path), options) as book:
        header = book.add_format(
            {"bold": True, "bg_color": "#1F4E78", "font_color": "#FFFFFF", "border": 1}
        )
        day_format = book.add_format({"num_format": "yyyy-mm-dd"})
        data = book.add_worksheet(USER_DATA_SHEET)
        summary = book.add_worksheet(SUMMARY_SHEET)

        titles = ["Date", *(source.title for source in report.sources)]
        for column, title in enumerate(titles):
            data.write_string(0, column, title, header)
        for row, day in enumerate(report.days, start=1):
            data.write_datetime(row, 0, datetime.combine(day, datetime.min.time()), day_format)
            for column, source in enumerate(report.sources, start=1):
                data.write_number(row, column, report.counts[source.key][row - 1])
        last = len(report.days)
        data.set_column(0, 0, 12)
        data.set_column(1, len(titles) - 1, 16)
        data.freeze_panes(1, 1)

        chart = book.add_chart({"type": "column"})
        for column in range(1, len(titles)):
            chart.add_series(
                {
                    "name": [USER_DATA_SHEET, 0, column],
                    "categories": [USER_DATA_SHEET, 1, 0, last, 0],
                    "values": [USER_DATA_SHEET, 1, column, last, column],
                }
            )
        # The username is the user's own text: a string cell, never a formula (options above).
        chart.set_title({"name": f"Activity per day (UTC), user {report.user_id}"})
        chart.set_x_axis({"name": "Day", "date_axis": True, "num_format": "yyyy-mm-dd"})
        chart.set_y_axis({"name": "Count", "min": 0})
        chart.set_legend({"position": "bottom"})
        chart.set_size({"width": 760, "height": 380})
        data.insert_chart(1, len(titles) + 1, chart)

        summary.set_column(0, 0, 30)
        summary.set_column(1, 1, 22)
        summary.write_string(0, 0, "User activity report", header)
        summary.write_string(0, 1, "", header)
        rows: list[tuple[str, object]] = [
            ("User id", report.user_id),
            ("Username", report.username),
            ("First day (UTC)", report.start.isoformat()),
            ("Last day (UTC)", report.end.isoformat()),
            ("Days", len(report.days)),
            *((f"{source.title} (total)", report.total(source.key)) for source in report.sources),
            ("Generated at (UTC)", generated_at.strftime("%Y-%m-%d %H:%M:%S")),
        ]
        for row, (label, value) in enumerate(rows, start=1):
            summary.write_string(row, 0, label)
            if isinstance(value, int):
                summary.write_number(row, 1, value)
            else:
                summary.write_string(row, 1, str(value))


def write_csv(path: Path, report: ActivityReport) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow([field for _, field in COLUMNS])
        for day in report.days:
            writer.writerow(
                [escape_formula(day.day.isoformat())]
                + [getattr(day, field) for _, field in COLUMNS[1:]]
            )


def report_key(task_id: str, extension: str) -> str:
    """A storage key fixed by the task: a task run twice (late ack after a crash) overwrites
    its own object and finds its own row instead of leaving duplicates behind."""
    digest = hashlib.sha256(f"report:{task_id}:{extension}".encode()).hexdigest()
    return f"{digest[:2]}/{digest[:32]}"


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


async def store(
    *,
    session: AsyncSession,
    storage: Storage,
    source: Path,
    key: str,
    filename: str,
    content_type: str,
    owner_id: int,
) -> StoredFile:
    """Object first, then the row (the files domain's order: a row always has its object)."""
    size, sha256 = await anyio.to_thread.run_sync(_size_and_sha256, source)
    await storage.put(key, source, content_type=content_type)
    row = (await session.execute(select(StoredFile).where(StoredFile.key == key))).scalar()
    if row is None:
        row = StoredFile(
            key=key, filename=filename, content_type=content_type, size=size, sha256=sha256,
            owner_id=owner_id,
        )  # fmt: skip
        session.add(row)
    else:
        row.size, row.sha256 = size, sha256
    await session.commit()
    return row
