"""``unveil prompts``: render the clinical table of a cohort into one prompt per subject.

    unveil prompts COHORT --template phantom [--out prompts.csv] [--id-column id]
                          [--set smoking=current] [--unset age]
                          [--encoder features --probe smoking]

COHORT is a cohort folder (its ``clinical.csv`` or ``clinical.xlsx`` is read) or a table
file.  The prompts are written as an ``id,prompt`` CSV (atomically) with ``--out``, else
printed to stdout as that CSV; a per-field table (present / missing counts, after the
edits) goes to stdout with ``--out`` and to stderr without it, so the CSV can be piped.
Prompts never contain the id: templates that would render an identifier are refused.
A cell that a spreadsheet would run as a formula (an id ``=cmd``, ``@x``, ``-x``) is
written with a quote in front (``'=cmd``, see :mod:`unveil.csvsafe`).  A workbook whose
formula cells have no stored value is refused, naming the cells.
``--probe FIELD`` encodes the prompts and reports how well the encoder separates the
values of FIELD (see ``unveil.text.probe``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unveil.csvsafe import prompts_csv_text

HELP = "render the clinical table into one prompt per subject (with optional edits)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prompts",
        help=HELP,
        description=(
            "Render each row of a cohort's clinical table into one sentence with a template; "
            "optionally apply structured edits (--set/--unset) and probe a text encoder."
        ),
    )
    p.add_argument(
        "cohort", help="cohort folder (with clinical.csv or clinical.xlsx) or a table file"
    )
    p.add_argument(
        "--template",
        "-t",
        required=True,
        help="template YAML path or shipped template name (phantom, aiib23)",
    )
    p.add_argument(
        "--out", "-o", default=None, help="write id,prompt CSV here (default: print to stdout)"
    )
    p.add_argument("--id-column", default="id", help="id column of the table (default: id)")
    p.add_argument(
        "--set",
        dest="set_edits",
        action="append",
        default=[],
        metavar="EDIT",
        help="edit every row before rendering: field=value, field+=N, field-=N (repeatable)",
    )
    p.add_argument(
        "--unset",
        action="append",
        default=[],
        metavar="FIELD",
        help="leave FIELD out of every prompt, as if missing (repeatable)",
    )
    p.add_argument("--encoder", default=None, help="text encoder for --probe (default: features)")
    p.add_argument(
        "--max-length", type=int, default=128, help="encoder token limit for --probe (default: 128)"
    )
    p.add_argument(
        "--probe", default=None, metavar="FIELD", help="probe how well the encoder separates FIELD"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unveil import fs
    from unveil.data.table import (
        find_table,
        read_clinical_table,
        require_computed,
        require_ids,
        table_rows,
    )
    from unveil.errors import UnveilError
    from unveil.text.edits import apply_edits, parse_edits
    from unveil.text.template import load_template

    # Everything the user typed is checked before the table is read.
    template = load_template(args.template, id_column=args.id_column)
    edits = parse_edits(args.set_edits, template, args.unset)
    if args.probe is not None:
        template.field(args.probe)
        build_encoder, probe_field = _probe_api()
    elif args.encoder is not None:
        raise UnveilError(
            "--encoder is only used with --probe FIELD; add --probe or drop --encoder."
        )

    path = find_table(args.cohort)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise UnveilError(
                f"--out {out} is a folder; give a file name such as {out / 'prompts.csv'}."
            )
        if out.exists() and out.resolve() == path.resolve():
            raise UnveilError(
                f"--out {out} is the clinical table itself; choose another file name."
            )
    df = read_clinical_table(path, id_column=args.id_column)
    require_computed(df, path)
    require_ids(df, path, args.id_column)
    template.check_columns(df.columns, source=f"clinical table {path}")

    ids: list[str] = []
    rows: list[dict] = []
    prompts: list[str] = []
    for sid, row in table_rows(df, args.id_column):
        try:
            edited = apply_edits(row, edits, template)
            prompts.append(template.render(edited))
        except UnveilError as err:
            raise type(err)(f"subject '{sid}': {err}") from None
        ids.append(sid)
        rows.append(edited)

    table = _counts_table(template, rows, edits, path)
    if out is not None:
        fs.write_text(out, prompts_csv_text(ids, prompts))
        print(table)
        print(f"wrote {len(prompts)} prompts to {out}")
    else:
        sys.stdout.write(prompts_csv_text(ids, prompts))
        sys.stdout.flush()
        print(table, file=sys.stderr)

    if args.probe is not None:
        encoder = build_encoder(args.encoder or "features", max_length=args.max_length)
        result = probe_field(template, rows, args.probe, encoder)
        print(result.table())
    return 0


def _probe_api():
    """``build_encoder`` and ``probe_field``, imported only when probing (they load torch)."""
    from unveil.text.encoders import build_encoder
    from unveil.text.probe import probe_field

    return build_encoder, probe_field


def _counts_table(template, rows: list[dict], edits, path: Path) -> str:
    """Per field: column, how many rows render it (present) and how many leave it out."""
    header = ("field", "column", "kind", "present", "missing")
    body = []
    for f in template.fields:
        present = sum(template.value(r, f.name) is not None for r in rows)
        body.append((f.name, f.column, f.kind, str(present), str(len(rows) - present)))
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    right = {3, 4}

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    title = f"template {template.name} ({template.identity()}), {len(rows)} subjects from {path}"
    if edits:
        title += ", edits: " + ", ".join(str(e) for e in edits)
    return "\n".join([title, line(header), *(line(r) for r in body)])
