"""Property tests of the CSV reader of `publish --csv` (hypothesis): whatever the file holds, it either reads
valid cancel requests, one per line, or refuses with `InvalidCsv`; it never raises anything else."""

import csv
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from callcancel.models import parse_cancel_request
from callcancel_tools.producer import CSV_COLUMNS, MAX_LINE_BYTES, InvalidCsv, Row, check_csv, encode, read_csv

PROPERTIES = settings(derandomize=True, database=None, max_examples=100, deadline=None)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252", "shift_jis"]

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
accounts = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
# Cell text that breaks things: separators, quotes, line breaks, a BOM, NUL, surrogate-free unicode.
hostile = st.lists(
    st.one_of(st.sampled_from([",", '"', "\n", "\r", "\r\n", "\ufeff", "\x00", "\t", " "]), st.characters()),
    max_size=40,
).map("".join)


def read(data: bytes) -> list[Row] | InvalidCsv:
    """What the reader makes of a file: its rows, or the refusal. Anything else raised fails the test."""
    try:
        return read_csv(io.BytesIO(data))
    except InvalidCsv as refusal:
        assert refusal.errors and all(line.startswith("row ") for line in refusal.errors), refusal.errors
        return refusal


def assert_valid(rows: list[Row], data: bytes) -> None:
    lines = data.count(b"\n") + 1
    assert [row.number for row in rows] == sorted({row.number for row in rows}), "one row per line, in order"
    for row in rows:
        assert 2 <= row.number <= lines
        request = parse_cancel_request(row.body)  # raises if the body is not a valid cancel request
        assert encode(json.loads(row.body)) == row.body
        assert request.provider in ("ryng", "plum")


@PROPERTIES
@given(st.binary(max_size=2048))
def test_any_bytes_are_rows_or_a_refusal(data: bytes) -> None:
    result = read(data)

    if not isinstance(result, InvalidCsv):
        assert_valid(result, data)


@PROPERTIES
@given(st.binary(max_size=1024), st.sampled_from([b"", b"\xef\xbb\xbf"]))
def test_any_bytes_under_a_good_header_are_rows_or_a_refusal(tail: bytes, bom: bytes) -> None:
    data = bom + ",".join(CSV_COLUMNS).encode() + b"\n" + tail

    result = read(data)

    if not isinstance(result, InvalidCsv):
        assert_valid(result, data)


@st.composite
def spreadsheets(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    """A header of some of the columns, in any order, and ragged rows of valid or hostile cells."""
    columns = draw(st.permutations(CSV_COLUMNS))[: draw(st.integers(1, len(CSV_COLUMNS)))]
    good = {
        "provider": st.sampled_from(["ryng", "plum", "RYNG", "twilio", ""]),
        "account": accounts,
        "call_id": ids,
        "application_id": ids,
        "deployment_id": ids,
        "when": st.sampled_from(["now", "nightly", "", "later"]),
        "reason": st.text(max_size=600),
        "request_id": st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
    }
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        cells = []
        for i in range(draw(st.integers(0, len(columns) + 2))):  # ragged: short, full, or too long
            kind = draw(st.sampled_from(["empty", "good", "hostile"]))
            if kind == "good" and i < len(columns):
                cells.append(draw(good[columns[i]]))
            else:
                cells.append(draw(hostile) if kind == "hostile" else "")
        rows.append(cells)
    return list(columns), rows


@PROPERTIES
@given(spreadsheets(), st.sampled_from(ENCODINGS), st.sampled_from(["\n", "\r\n"]))
def test_spreadsheets_in_any_encoding_are_valid_rows_or_a_refusal(
    sheet: tuple[list[str], list[list[str]]], encoding: str, newline: str
) -> None:
    columns, rows = sheet
    text = io.StringIO()
    csv.writer(text, lineterminator=newline).writerows([columns, *rows])
    data = text.getvalue().encode(encoding, errors="replace")

    result = read(data)

    if not isinstance(result, InvalidCsv):
        assert_valid(result, data)


@PROPERTIES
@given(
    st.lists(
        st.tuples(accounts, ids, st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=500)),
        min_size=1,
        max_size=20,
    ),
    st.booleans(),
)
def test_valid_rows_written_by_a_csv_writer_read_back_exactly(requests: list[tuple[str, str, str]], bom: bool) -> None:
    # Quotes, commas and any unicode in the reason survive; only line breaks are refused in a cell.
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerows(
        [["provider", "account", "call_id", "reason"], *(["ryng", *request] for request in requests)]
    )
    data = ("\ufeff" if bom else "") + text.getvalue()

    rows = read_csv(io.BytesIO(data.encode()))

    assert rows == [
        Row(n, encode({"provider": "ryng", "account": account, "call_id": call_id, "reason": reason}))
        for n, (account, call_id, reason) in enumerate(requests, start=2)
    ]


@PROPERTIES
@given(
    st.integers(0, 5),
    st.text(st.characters(codec="utf-8"), max_size=20).map(lambda s: s + "\n"),
    st.sampled_from(["\n", "\r", "\r\n"]),
)
def test_a_line_break_in_a_cell_is_refused_on_its_row_and_sends_nothing(
    before: int, reason: str, line_break: str
) -> None:
    lines = ["provider,account,call_id,reason", *(f"ryng,acme,r-{i}," for i in range(before))]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(["ryng", "acme", "r-x", reason.replace("\n", line_break)])

    result = read("\n".join(lines).encode() + b"\n" + text.getvalue().encode() + b"ryng,acme,r-z,\n")

    assert isinstance(result, InvalidCsv)
    assert result.errors[0].startswith(f"row {before + 2}: ")


@PROPERTIES
@given(st.integers(MAX_LINE_BYTES - 40, MAX_LINE_BYTES * 3), st.sampled_from([b"x", b'"', b"\xc3\xa9"]))
def test_a_huge_field_is_refused_by_row_without_reading_it_whole(size: int, filler: bytes) -> None:
    data = b"provider,account,call_id,reason\nryng,acme,r-1," + filler * (size // len(filler)) + b"\nryng,acme,r-2,\n"

    result = read(data)

    if isinstance(result, InvalidCsv):
        assert result.errors[0].startswith("row 2: "), result.errors
    else:
        assert_valid(result, data)
    assert check_csv(io.BytesIO(b"provider,account,call_id\nryng,acme,r-2\n")) == 1
