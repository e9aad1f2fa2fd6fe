"""Batch manifests: CSV / YAML / JSONL rows → validated, rendered publish options, with every problem row-numbered.

Columns named like publish's options are options; every other column is a template variable. `script` (and the
text of `script_file`), `video_name`, `output` and `background` are Jinja2 templates rendered in the sandboxed
environment with StrictUndefined, so a manifest from a third party cannot reach Python internals and a misspelt
variable is an error, not an empty string. Everything is checked before anything runs; problems are reported together.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import hashlib
import io
import json
import re
import stat
import unicodedata
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.meta
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._files import file_sha256, not_text, read_text_file
from ._templates import MAX_OUTPUT, MEMORY_BYTES, SECONDS, RenderFailed, environment, render, slug
from ._urls import looks_like_website, website_or_path
from .errors import ManifestError
from .tavus import ID_PATTERN, SCRIPT_MAX_CHARS

# Options a column may set; the rest of the columns are template variables.
OPTION_COLUMNS = (
    "replica_id", "script", "script_file", "audio", "background", "background_seconds", "background_preset",
    "scroll", "scroll_depth", "scroll_return", "fast", "composite_locally", "layout", "video_name", "output",
    "callback_url", "watermark",
)  # fmt: skip
TEMPLATED = ("script", "video_name", "output", "background")
_TRIMMED = ("background", "output", "audio", "script_file", "watermark", "callback_url", "replica_id")
_PAGE_SUFFIXES = (".html", ".htm")
_CLIP_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".png", ".jpg", ".jpeg")
_SPREADSHEETS = (".xlsx", ".xls", ".xlsm", ".ods", ".numbers")


_ENV = environment()  # parsing only (which variables a template reads); rendering happens in _templates' child


class RowOptions(BaseModel):
    """The typed options of one row after defaults are applied (strings from CSV are coerced)."""

    model_config = ConfigDict(extra="forbid")

    replica_id: str = Field(min_length=1, pattern=ID_PATTERN)  # checked here, so the problem names its row
    background_seconds: float = Field(default=10.0, gt=0, le=120)
    background_preset: str | None = None
    scroll: Literal["none", "smooth", "human"] = "human"
    scroll_depth: Literal["middle", "bottom"] | int = "middle"
    scroll_return: Literal["return", "halt"] = "return"
    fast: bool = False
    composite_locally: bool = False
    layout: Literal["bubble-bottom-right", "left-third", "full"] = "bubble-bottom-right"
    callback_url: str | None = None


class Row(BaseModel):
    """One manifest row, rendered and checked: what batch needs to make its video."""

    model_config = ConfigDict(extra="forbid")

    number: int  # spreadsheet row (CSV: header = 1), JSONL line, or YAML rows[] index + 1
    where: str  # how messages name it: "row 3", "line 3", "rows[2]"
    row_id: str  # hash of the rendered content: the row's identity across reruns
    values: dict[str, str]  # every input column as given (for results.csv)
    options: RowOptions
    script: str | None = None
    audio: Path | None = None
    background: str | None = None  # an http(s) URL or an absolute local path
    watermark: str | None = None
    video_name: str | None = None
    output: Path
    same_as: str | None = None  # a duplicate: the row (as messages name it) whose video it shares


class Sheet(BaseModel):
    """How the manifest's CSV was written, so results.csv opens the same way (Excel in a ';' locale: a BOM, ';')."""

    model_config = ConfigDict(extra="forbid")

    delimiter: str = ","
    bom: bool = False
    crlf: bool = False


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    sheet: Sheet = Sheet()
    columns: list[str]  # input columns in their order (variables and options)
    rows: list[Row]  # one per distinct video
    duplicates: list[Row] = []  # rows with the content of an earlier row: its video, reported on them too


def is_http_url(text: str) -> bool:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    return bool(m) and m.group(1).lower() in ("http", "https")


def _url_problem(text: str) -> str | None:
    """Why `text` is not a usable http(s) URL (None when it is)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        return f"malformed URL {text!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or " " in text:
        return f"not an http(s) URL: {text!r}"
    return None


# --- reading ---------------------------------------------------------------------------------------------------------


def _delimiter(text: str, suffix: str) -> str:
    """Spreadsheets in many locales export "CSV" with semicolons (or tabs): a header without a comma but with
    one of those is split by it, instead of becoming one column and every row a problem."""
    if suffix == ".tsv":
        return "\t"
    header = text.split("\n", 1)[0]
    if "," not in header:
        for other in (";", "\t"):
            if other in header:
                return other
    return ","


def _read_raw(path: Path) -> tuple[list[tuple[int, str, dict[str, Any]]], dict[str, Any], list[str], Sheet]:
    """(rows as (number, where, values), YAML defaults, problems, how a CSV is written) of a manifest file."""
    suffix = path.suffix.lower()
    if suffix in _SPREADSHEETS and path.is_file():  # a CRM or a sales team hands these over as they are
        raise ManifestError(f"{path} is a spreadsheet file ({suffix}), not a manifest",
                            hint="save it as CSV (Excel: Save As, CSV UTF-8; LibreOffice and Google Sheets: "
                                 "Download or Save As .csv) and give the .csv")  # fmt: skip
    try:
        text = read_text_file(path, None)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(not_text(path, exc), hint="save it as UTF-8 (Excel: Save As, CSV UTF-8)") from None
    except OSError as exc:
        raise ManifestError(
            f"cannot read manifest {path}: {exc.strerror}", hint="pass a CSV, YAML or JSONL file"
        ) from None
    problems: list[str] = []
    rows: list[tuple[int, str, dict[str, Any]]] = []
    defaults: dict[str, Any] = {}
    sheet = Sheet()
    if suffix in (".csv", ".tsv"):
        with open(path, "rb") as f:
            bom = f.read(3).startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        sheet = Sheet(delimiter=_delimiter(text, suffix), bom=bom, crlf="\r\n" in text.split("\n", 1)[0] + "\n")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sheet.delimiter)
        try:
            records = list(reader)
        except csv.Error as exc:
            raise ManifestError(f"{path}: not valid CSV: {exc}") from None
        if not records or not any(h.strip() for h in records[0]):
            raise ManifestError(f"{path} has no header row", hint="the first row names the columns")
        header = [h.strip() for h in records[0]]
        for name in {h for h in header if header.count(h) > 1}:
            problems.append(f"row 1: column {name!r} appears twice")
        for i, record in enumerate(records[1:], start=2):
            if not any(cell.strip() for cell in record):
                continue  # blank lines at the end of a spreadsheet export
            if len(record) > len(header):
                problems.append(f"row {i}: {len(record)} cells but only {len(header)} columns")
            values = {h: c for h, c in zip(header, record, strict=False) if h and c.strip() != ""}
            rows.append((i, f"row {i}", values))
    elif suffix in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                problems.append(f"line {i}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(value, dict):
                problems.append(f"line {i}: must be a JSON object")
                continue
            rows.append((i, f"line {i}", {k: v for k, v in value.items() if v is not None and v != ""}))
    elif suffix in (".yaml", ".yml"):
        doc = _load_yaml(text, path)
        if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
            raise ManifestError(f"{path}: expected a mapping with a 'rows:' list (and optional 'defaults:')")
        unknown = sorted(set(doc) - {"defaults", "rows"})
        if unknown:
            problems.append(f"top level: unknown key(s) {', '.join(map(str, unknown))} (expected defaults, rows)")
        defaults = doc.get("defaults") or {}
        if not isinstance(defaults, dict):
            problems.append("defaults: must be a mapping")
            defaults = {}
        for i, value in enumerate(doc["rows"]):
            if not isinstance(value, dict):
                problems.append(f"rows[{i}]: must be a mapping")
                continue
            rows.append((i + 1, f"rows[{i}]", {str(k): v for k, v in value.items() if v is not None and v != ""}))
    else:
        raise ManifestError(f"{path}: unknown manifest type {suffix or '(none)'}",
                            hint="use .csv (or .tsv), .yaml or .jsonl")  # fmt: skip
    if not rows and not problems:
        raise ManifestError(f"{path} has no rows")
    return rows, defaults, problems, sheet


_YAML_MAX_CHARACTERS = 50_000_000  # what a YAML manifest may expand to through its aliases


def _load_yaml(text: str, path: Path) -> Any:
    """YAML, refused when its aliases expand past _YAML_MAX_CHARACTERS: nine levels of ten aliases each (a "billion
    laughs") is a short file that took 5.5 GB even in a key nobody reads, once its values were turned into text."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        sizes: dict[int, int] = {}

        def size(n: Any) -> int:  # characters once expanded; each distinct node is counted once (memo)
            if id(n) not in sizes:
                if isinstance(n, yaml.ScalarNode):
                    sizes[id(n)] = len(n.value) + 1
                else:
                    items = n.value if isinstance(n, yaml.SequenceNode) else [x for kv in n.value for x in kv]
                    sizes[id(n)] = 1 + sum(size(x) for x in items)
            return sizes[id(n)]

        if node is not None and (total := size(node)) > _YAML_MAX_CHARACTERS:
            raise ManifestError(f"{path}: its YAML aliases (*name) expand to {total:,} characters (at most "
                                f"{_YAML_MAX_CHARACTERS:,})", hint="use fewer nested aliases")  # fmt: skip
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{path}: YAML nested too deeply") from None
    finally:
        loader.dispose()


# --- rendering and checking ------------------------------------------------------------------------------------------


# --- rendering and checking ------------------------------------------------------------------------------------------


_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@functools.lru_cache(maxsize=256)
def _fields_only(template: str) -> tuple[str, ...] | None:
    """A template made of text and `{{ name }}` fields, split as [text, name, text, …, text] the way Jinja reads it
    (newlines normalized, one trailing newline dropped); None for anything else. Per-row scripts (each lead's own
    text, written by hand or by a model) are all distinct templates: compiling each took ~1 ms, so a 20,000-row
    manifest spent 15 s before its first check."""
    text = re.sub(r"\r\n|\r", "\n", template)
    text = text[:-1] if text.endswith("\n") else text
    parts = tuple(_FIELD.split(text))
    return None if any("{" in t or "}" in t for t in parts[::2]) else parts


def _render(template: str, variables: dict[str, Any], where: str, column: str, problems: list[str],
            names: dict[str, str]) -> str | None:  # fmt: skip
    """`template` rendered with `variables`; None with the reason in `problems`. `names`: how templates name each
    column of the manifest (see _template_names), so a variable the row leaves empty is told apart from one that
    no row has."""
    try:
        if (parts := _fields_only(template)) is not None:
            for name in parts[1::2]:
                if name not in variables:
                    raise RenderFailed("undefined", f"'{name}' is undefined")
            return "".join(t if i % 2 == 0 else str(variables[t]) for i, t in enumerate(parts))
        if _stuck.get(template, 0) >= _STUCK_AFTER:  # 10,000 rows of one hanging template: 3 waits, not 10,000
            raise RenderFailed("time", f"ran for over {SECONDS:g} s in {_STUCK_AFTER} other rows")
        return render(template, variables)
    except RenderFailed as exc:
        if exc.kind == "time":
            _stuck[template] = _stuck.get(template, 0) + 1
        name = m[1] if (m := re.fullmatch(r"'([^']+)' is undefined", exc.message)) else None
        if exc.kind == "undefined" and name is not None and name in names:
            # A CRM's empty cell: "Hi , I looked at ." must not reach a lead.
            of = f" (column {names[name]!r})" if names[name] != name else ""
            # An empty background is none: a lead without a website can still get its video.
            value, why = ("''", "to make this row's video without one") if column == "background" else (
                "'...'", "in the template")  # fmt: skip
            problems.append(f"{where}, column {column}: {{{{ {name} }}}}{of} is empty in this row (fill it in, or "
                            f"write {{{{ {name} | default({value}) }}}} {why})")  # fmt: skip
        elif exc.kind == "undefined":
            close = difflib.get_close_matches(name, list(names), n=1) if name else []
            known = ", ".join(sorted(variables)) or "none"
            problems.append(f"{where}, column {column}: template variable missing: {exc.message}"
                            + (f"; did you mean {close[0]!r}?" if close else f" (columns: {known})"))  # fmt: skip
        elif exc.kind == "security":
            problems.append(f"{where}, column {column}: template not allowed: {exc.message}")
        elif exc.kind == "syntax":
            spelt = [(name, c) for name, c in names.items() if name != c and not c.isidentifier()
                     and re.search(rf"\{{\{{-?\s*{re.escape(c)}\s*(?:\||-?\}}\}})", template)]  # fmt: skip
            said = "; ".join(f"write {{{{ {name} }}}} for the column {c!r}" for name, c in spelt)
            problems.append(f"{where}, column {column}: template syntax error: {said or exc.message}")
        elif exc.kind in ("time", "memory", "size"):
            problems.append(f"{where}, column {column}: template {exc.message} (a template may run {SECONDS:g} s, "
                            f"use {MEMORY_BYTES >> 20} MB and render {MAX_OUTPUT:,} characters; is a loop or a "
                            "repeat too large?)")  # fmt: skip
        else:
            problems.append(f"{where}, column {column}: template failed: {exc.message}")
    return None


# Templates that ran out of time, and how often: after _STUCK_AFTER rows (with their own values each) the template
# is taken to be what hangs, and its other rows are not waited for.
_stuck: dict[str, int] = {}
_STUCK_AFTER = 3


def output_problem(output: Path) -> str | None:
    """Why `output` cannot be written (found now, not after its video was paid for)."""
    if output.is_dir():
        return f"{output} is a folder"
    for folder in output.parents:
        if folder.exists():
            return None if folder.is_dir() else f"cannot make a folder under {folder}: it is a file"
    return None


def _climbs(template: str, rendered: str) -> bool:
    """Whether a variable's value moved a path where the template's own text does not: a '..' or a root ('/', '~')
    that only the value brings. Leads' cells come from third parties: a company '../../x' must not choose where a
    video is written, nor a website '/home/me/private.mp4' which local file becomes a background sent to Tavus."""
    if rendered == template:
        return False
    rooted = rendered.lstrip().startswith(("/", "~")) and not template.lstrip().startswith(("/", "~"))
    return rooted or Path(rendered).parts.count("..") > template.count("..")


def _local(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def load_manifest(
    path: str | Path,
    *,
    defaults: dict[str, Any] | None = None,
    out_dir: Path | None = None,
    no_background: bool = False,
) -> Manifest:
    """Parse, render and check a manifest; raise ManifestError listing every problem (row and column) at once.

    `defaults` (options of the command line and settings) apply under the YAML `defaults:` and the row's own cells.
    Relative paths resolve against the manifest's folder; default outputs go to `out_dir`. A column of websites
    that nothing uses while no row has a background is a problem (a CRM export's `website` column: every video
    would be made, and paid for, without the lead's site) unless `no_background` says that is meant.
    """
    path = Path(path).resolve()
    base = path.parent
    out_dir = (out_dir or base / f"{path.stem}-videos").resolve()
    raw_rows, file_defaults, problems, sheet = _read_raw(path)
    columns: list[str] = []
    for _, _, values in raw_rows:
        columns += [c for c in values if c not in columns]
    unreadable = set()  # rows (and "defaults") with a refused character: checked no further, said once
    for where, values in [("defaults", file_defaults), *((w, v) for _, w, v in raw_rows)]:
        if said := _text_problems(where, values):
            problems += said
            unreadable.add(where)
    if "defaults" in unreadable:
        file_defaults = {}
    # CRM exports head their columns "Script", "Video Name", "Replica ID": options by any case and spacing.
    spelt = {c: o for c in [*columns, *file_defaults] if (o := option_name(c)) is not None and o != c}
    for option in sorted(set(spelt.values())):
        for layer in (columns, list(file_defaults)):
            if len(same := [c for c in layer if option_name(c) == option]) > 1:
                problems.append(f"columns {', '.join(map(repr, same))} all set the option {option}: keep one")
    file_defaults = {spelt.get(k, k): v for k, v in file_defaults.items()}
    for column in columns + list(file_defaults):
        if option_name(column) is not None or not column:
            continue
        close = difflib.get_close_matches(column, OPTION_COLUMNS, n=1, cutoff=0.8)
        if close:
            problems.append(f"column {column!r}: unknown option; did you mean {close[0]!r}?")

    rows: list[Row] = []
    duplicates: list[Row] = []  # rows whose content an earlier row has: they share its video
    seen_ids: dict[str, str] = {}
    firsts: dict[str, Path] = {}  # row_id → the output of its first row
    outputs: dict[Path, str] = {}
    names: dict[str, str] = {}
    script_files: dict[Path, str | None] = {}
    shas: dict[tuple[Path, int, int, int], str] = {}
    inputs: dict[Path, str] = {}  # every local input file → where it is named first
    templates: set[str] = set()  # every distinct template text, to find the columns nothing uses
    called = _template_names([c for c in columns if option_name(c) is None])
    aliases = [(name, column) for name, column in called.items() if name != column]
    backgrounds = False
    for number, where, given in raw_rows:
        if where in unreadable:
            continue
        merged = {**(defaults or {}), **file_defaults, **{spelt.get(k, k): v for k, v in given.items()}}
        backgrounds = backgrounds or merged.get("background") is not None
        templates.update(str(merged[c]) for c in TEMPLATED if merged.get(c) is not None)
        for column in _TRIMMED:  # CRM exports pad cells (" acme.com", "speech.wav "): never part of a path or URL
            if isinstance(merged.get(column), str):
                merged[column] = merged[column].strip()
        variables = {k: v for k, v in merged.items() if k not in OPTION_COLUMNS}
        variables.update({name: variables[column] for name, column in aliases if column in variables})
        before = len(problems)
        # YAML and JSON can give a list or a mapping; as an option it would reach Tavus as its Python text
        # ("[1, 2]" as the script). Template variables may be structured ({% for %} over a list).
        structured = [c for c in OPTION_COLUMNS if isinstance(merged.get(c), (list, dict))]
        for column in structured:
            kind = "a list" if isinstance(merged[column], list) else "a mapping"
            problems.append(f"{where}, column {column}: {kind}, where one value goes (text, a number, true/false)")
        if structured:
            continue
        rendered: dict[str, str | None] = {}
        for column in TEMPLATED:
            value = merged.get(column)
            rendered[column] = (
                None if value is None else _render(str(value), variables, where, column, problems, called)
            )
        script = rendered["script"]
        if merged.get("script_file") is not None:
            sf = _local(base, str(merged["script_file"]))
            if sf not in script_files:
                try:
                    script_files[sf] = read_text_file(sf, None)
                except FileNotFoundError:
                    script_files[sf] = None
                    problems.append(f"{where}, column script_file: file not found: {sf}")
                except UnicodeDecodeError as exc:
                    script_files[sf] = None
                    problems.append(f"{where}, column script_file: {not_text(sf, exc)}")
                except OSError as exc:
                    script_files[sf] = None
                    problems.append(f"{where}, column script_file: cannot read {sf}: {exc.strerror}")
            text = script_files[sf]
            templates.add(text or "")
            if script is not None:
                problems.append(f"{where}: give script or script_file, not both")
            elif text is not None:
                script = _render(text, variables, where, "script_file", problems, called)
        audio = _local(base, str(merged["audio"])) if merged.get("audio") is not None else None
        if (script is not None or merged.get("script") is not None or merged.get("script_file") is not None) == (
            audio is not None
        ):
            problems.append(f"{where}: give exactly one of script (or script_file) and audio")
        if script is not None and not script.strip() and audio is None:
            problems.append(f"{where}, column script: the rendered script is empty")
        if script is not None and len(script) > SCRIPT_MAX_CHARS:  # the API's limit: a dry run refuses it too
            problems.append(f"{where}, column script: {len(script):,} characters; the API takes at most "
                            f"{SCRIPT_MAX_CHARS:,} (about ten minutes of speech): split it")  # fmt: skip
        if audio is not None and not audio.is_file():
            problems.append(f"{where}, column audio: file not found: {audio}")

        # Stripped: a padded variable ("https://{{ site }}" with site "acme.com "). Empty is none: "{{ website |
        # default('') }}" for a lead without one (it was this folder).
        background = (rendered["background"] or "").strip() or None
        if background is not None:
            background = website_or_path(background, _local(base, background))
            if is_http_url(background) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", background):
                if problem := _url_problem(background):
                    problems.append(f"{where}, column background: {problem}")
            elif _climbs(str(merged["background"]), background):
                problems.append(f"{where}, column background: a template variable makes it the local path "
                                f"{background!r}; a lead's value may name a website, not a file here")  # fmt: skip
            else:
                local = _local(base, background)
                is_page = local.suffix.lower() in _PAGE_SUFFIXES or local.is_dir()
                if not local.exists() and re.fullmatch(r"[^@\s/]+@[^@\s/]+\.[^@\s/]+", background):
                    problems.append(f"{where}, column background: {background!r} is an e-mail address, not a website")
                elif not local.exists():
                    problems.append(f"{where}, column background: file not found: {local}")
                elif not is_page and local.suffix.lower() not in _CLIP_SUFFIXES:
                    problems.append(f"{where}, column background: {local} is not a page, folder or video file")
                background = str(local)
        watermark = merged.get("watermark")
        if watermark is not None:
            watermark = str(watermark)
            if is_http_url(watermark):
                if problem := _url_problem(watermark):
                    problems.append(f"{where}, column watermark: {problem}")
            else:
                mark = _local(base, watermark)
                if mark.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                    problems.append(f"{where}, column watermark: must be a .png or .jpeg file or URL: {mark}")
                elif not mark.is_file():
                    problems.append(f"{where}, column watermark: file not found: {mark}")
                watermark = str(mark)
        if merged.get("callback_url") is not None and (problem := _url_problem(str(merged["callback_url"]))):
            problems.append(f"{where}, column callback_url: {problem}")

        typed = {k: merged[k] for k in RowOptions.model_fields if k in merged}
        try:
            options = RowOptions.model_validate(typed)
        except ValidationError as exc:
            for err in exc.errors():
                column = ".".join(str(p) for p in err["loc"][:1]) or "?"
                given_value = typed.get(column)
                if err["type"] == "missing":
                    problems.append(f"{where}: no {column} (give a column, --replica or the replica_id setting)")
                    continue
                if err["type"] == "string_pattern_mismatch":  # the replica_id
                    problems.append(f"{where}, column {column}: not an id (letters, digits, - and _): {given_value!r}")
                    continue
                problems.append(f"{where}, column {column}: {err['msg']}"
                                + (f" (got {given_value!r})" if given_value is not None else ""))  # fmt: skip
            continue
        if options.composite_locally and background is None:
            problems.append(f"{where}: composite_locally needs a background")
        if len(problems) > before:
            continue

        video_name = rendered["video_name"]
        identity: dict[str, Any] = {
            "options": options.model_dump(mode="json"), "script": script, "video_name": video_name,
            "background": background, "watermark": watermark,
        }  # fmt: skip
        for key, local_path in (("audio", audio), ("background", background), ("watermark", watermark)):
            if local_path is None or is_http_url(str(local_path)):
                continue
            if sha := _file_sha(Path(local_path), shas):
                identity[f"{key}_sha256"] = sha
        row_id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
        # A lead twice in a CRM export (or two leads that get the same words over the same site): one video,
        # made once, reported on both rows.
        same_as = seen_ids.get(row_id)
        seen_ids.setdefault(row_id, where)
        if video_name is not None and same_as is None:
            if not video_name.strip():
                problems.append(f"{where}, column video_name: renders empty")
            elif video_name in names:
                problems.append(f"{where}, column video_name: {video_name!r} is used by {names[video_name]} too")
            names[video_name] = where
        if rendered["output"] is not None and _climbs(str(merged["output"]), rendered["output"]):
            problems.append(f"{where}, column output: a template variable takes it out of its folder: "
                            f"{rendered['output']!r} (pass names from the data through `| slug`)")  # fmt: skip
            continue
        if rendered["output"] is not None:
            output = (
                (out_dir / rendered["output"])
                if not Path(rendered["output"]).is_absolute()
                else Path(rendered["output"])
            )
        else:
            stem = slug(video_name) if video_name else f"{number:04d}-{row_id[:8]}"
            output = out_dir / f"{stem}.mp4"
        output = output.resolve()
        if output.suffix.lower() != ".mp4":
            problems.append(f"{where}, column output: must end in .mp4: {output}")
        if output in outputs and (same_as is None or firsts.get(row_id) != output):  # a copy may share its file
            problems.append(f"{where}, column output: {output} is written by {outputs[output]} too")
        outputs.setdefault(output, where)
        firsts.setdefault(row_id, output)
        if problem := output_problem(output):
            problems.append(f"{where}, column output: {problem}")
        for column, value in (("audio", audio), ("background", background), ("watermark", watermark),
                              ("script_file", merged.get("script_file"))):  # fmt: skip
            if value is not None and not is_http_url(str(value)):
                inputs.setdefault(_local(base, str(value)).resolve(), f"{where}, column {column}")
        (rows if same_as is None else duplicates).append(Row(
            number=number, where=where, row_id=row_id, values={k: str(v) for k, v in given.items()},
            options=options, script=script, audio=audio, background=background, watermark=watermark,
            video_name=video_name, output=output, same_as=same_as,
        ))  # fmt: skip
    if not backgrounds and not no_background:
        problems += _unused_websites(raw_rows, called, templates)
    for row in rows + duplicates:  # a download must not replace an input another row (or this one) still reads
        if row.output in inputs:
            problems.append(f"{row.where}, column output: {row.output} is an input ({inputs[row.output]})")
    if problems:
        raise ManifestError(
            f"{path}: {len(problems)} problem(s); nothing was started",
            problems=problems,
            hint=None,
        )
    return Manifest(path=path, sheet=sheet, columns=columns, rows=rows, duplicates=duplicates)


def identifier_form(column: str) -> str:
    """ "First Name" → first_name, "Replica-ID" → replica_id: how CRM headers read as names."""
    return re.sub(r"\W+", "_", column.strip().lower()).strip("_")


def option_name(column: str) -> str | None:
    """The option a column sets ("Script", "Video Name", "replica-id"), or None for a template variable."""
    name = identifier_form(column)
    return name if name in OPTION_COLUMNS else None


def _file_sha(path: Path, shas: dict[tuple[Path, int, int, int], str]) -> str | None:
    """A local input's SHA-256, hashed once per distinct file (path and stat): 500 rows over one 138 MB clip hashed
    it 500 times (135 s)."""
    try:
        st = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in shas:
        shas[key] = file_sha256(path)
    return shas[key]


# Characters refused in every cell: controls other than tab and newlines (a NUL reached the API inside a script),
# lone surrogates (JSON's "\ud800": no UTF-8 for it, so results.csv and the report could not be written, after the
# videos were paid for), and the bidi embeddings, overrides and isolates that make printed text and file names read
# other than they are (U+202E). Marks (U+200E, U+200F) stay: right-to-left scripts use them.
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def _text_problems(where: str, values: dict[str, Any]) -> list[str]:
    """One problem per cell that holds a refused character (nested YAML/JSON values and keys included)."""
    problems = []
    for column, value in values.items():
        pending: list[Any] = [column, value]
        while pending:
            item = pending.pop()
            if isinstance(item, dict):
                pending += [*item.keys(), *item.values()]
            elif isinstance(item, list):
                pending += item
            elif isinstance(item, str) and (m := _REFUSED.search(item)):
                char = m.group()
                name = unicodedata.name(char, "a control character" if char < "\ud800" else "a lone surrogate")
                shown = column.encode("utf-8", "backslashreplace").decode() if _REFUSED.search(column) else column
                problems.append(f"{where}, column {shown}: holds U+{ord(char):04X} ({name}) at character "
                                f"{m.start() + 1}; remove it (it is not text a lead should see)")  # fmt: skip
                break
    return problems


def _template_names(columns: list[str]) -> dict[str, str]:
    """How templates name each variable column: as it is when it is an identifier, and in identifier form, since
    CRM exports head their columns "First Name", "Company Name", "Website URL" (first_name, company_name,
    website_url; "Website" is website too). A form that two columns share names neither."""
    names = {c: c for c in columns if c.isidentifier()}
    forms: dict[str, list[str]] = {}
    for column in columns:
        form = identifier_form(column)
        if form.isidentifier() and form not in names and form not in OPTION_COLUMNS:
            forms.setdefault(form, []).append(column)
    names.update({form: same[0] for form, same in forms.items() if len(same) == 1})
    return names


def _variables_used(template: str) -> frozenset[str]:
    """The variables a template reads: `{{ website }}`, `{% set site = website %}`; not the word in its text ("I saw
    your website") nor in a comment. Only templates that contain a column's name are parsed (~0.2 ms each)."""
    if (parts := _fields_only(template)) is not None:
        return frozenset(parts[1::2])
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_ENV.parse(template)))
    except jinja2.exceptions.TemplateSyntaxError:
        return frozenset()  # its rows say so already


def _unused_websites(raw_rows: list[tuple[int, str, dict[str, Any]]], names: dict[str, str],
                     templates: set[str]) -> list[str]:  # fmt: skip
    """A problem for each variable column whose every value is a website and that no template names."""
    problems = []
    for column in dict.fromkeys(names.values()):
        values = [str(v) for _, _, given in raw_rows if (v := given.get(column)) is not None]
        if not values or not all(looks_like_website(v) for v in values):
            continue
        called = [name for name, c in names.items() if c == column]
        if any(not _variables_used(t).isdisjoint(called) for t in templates if any(name in t for name in called)):
            continue
        use = f"{{{{ {min(called, key=lambda n: (n != n.lower(), len(n)))} }}}}"
        problems.append(
            f"column {column}: holds websites ({values[0].strip()}), but no row has a background and no template "
            f"uses it: to record each lead's website behind its video, set background to '{use}' (a background "
            f"column, the YAML defaults, or batch --background '{use}'); to make the videos without it, say so "
            "(batch --no-background)"
        )
    return problems


def parse_rows(text: str, *, last: int) -> set[int]:
    """`3-10,17` → {3..10, 17} (row numbers as messages show them), none past `last` (the manifest's last row
    number): `--rows 2-1000000000` means "from row 2 on", not a set of a billion numbers."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ManifestError(f"--rows must look like 3-10,17, got {text!r}")
        out.update(range(int(m.group(1)), min(int(m.group(2) or m.group(1)), last) + 1))
    return out
