"""Snapshot validation: Great Expectations suites (fatal) and reference checks (warnings).

Fatal findings stop the run before anything is staged: duplicate or missing keys, missing
required fields, values outside a vocabulary, an empty frame from a feed that says it is
complete. Reference findings drop the row or the link and become warnings. Reports name the
expectation and the failing ``sis_key``s only: never names, emails or other field values.
Reference checks are anti-joins in pandas, not million-value sets inside an expectation.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.sis_sync import model

MAX_KEYS_REPORTED = 20
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


@dataclass
class Finding:
    """One failed check: which frame, which check, how many rows and their keys (fatal
    findings keep a few keys for the message; warnings keep every key, one warning row each)."""

    entity: str
    check: str
    severity: str  # fatal | warning
    count: int
    sis_keys: list[str] = field(default_factory=list)
    detail: str = ""
    # The feed carried these rows, but validation left them out: they are not absent, so
    # the diff keeps their LMS rows as they are instead of archiving them.
    left_out: bool = False

    def message(self) -> str:
        if not self.count and not self.sis_keys:
            return f"{self.entity}: {self.check}: {self.detail}"
        shown = [k for k in self.sis_keys if k][:MAX_KEYS_REPORTED]
        keys = ", ".join(shown) or "(no key)"
        more = "" if self.count <= len(shown) else f" and {self.count - len(shown)} more"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.entity}: {self.check}{detail}: {self.count} row(s): {keys}{more}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SnapshotInvalid(ValueError):
    """The snapshot failed a fatal check; nothing was staged."""

    def __init__(self, findings: list[Finding]):
        self.findings = findings
        super().__init__(
            "the snapshot failed validation, nothing was staged:\n"
            + "\n".join(f"- {f.message()}" for f in findings)
        )


# --------------------------------------------------------------------------------------------
# Great Expectations suites
# --------------------------------------------------------------------------------------------

VOCABULARIES: dict[str, dict[str, tuple[str, ...]]] = {
    "organizations": {"kind": model.ORGANIZATION_KINDS},
    "terms": {"kind": model.TERM_KINDS},
    "users": {"role": model.USER_ROLES},
    "enrollments": {"role": model.ENROLLMENT_ROLES, "primary": ("true", "false")},
}
DATE_FIELDS: dict[str, tuple[str, ...]] = {
    "terms": ("start_date", "end_date"),
    "enrollments": ("begin_date", "end_date"),
}


def _expectations(entity: model.Entity, complete: bool, whole: bool = True) -> list[Any]:
    """The named expectations for one canonical frame; for a part of one (``whole`` False),
    only those each row meets on its own: uniqueness and the row count are checked over the
    whole frame by :class:`PartChecks`."""
    import great_expectations.expectations as gxe

    suite: list[Any] = [gxe.ExpectColumnValuesToNotBeNull(column="sis_key")]
    if whole:
        suite.append(gxe.ExpectColumnValuesToBeUnique(column="sis_key"))
    suite += [
        gxe.ExpectColumnValuesToBeInSet(
            column="sis_status", value_set=[model.ACTIVE, model.TO_BE_DELETED]
        ),
    ]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in entity.required]
    for column, values in VOCABULARIES.get(entity.name, {}).items():
        suite.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values)))
    for column in DATE_FIELDS.get(entity.name, ()):
        suite.append(gxe.ExpectColumnValuesToMatchRegex(column=column, regex=DATE_PATTERN))
    if complete and whole:
        suite.append(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    return suite


def _context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs its own set-up at INFO (temporary folders, an empty datasource list): noise in
    # a task log that should read as counts and timings.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _checked_columns(entity: model.Entity) -> list[str]:
    """The columns a frame's suite looks at: GX gets only these (it hashes what it gets)."""
    columns = ["sis_key", "sis_status", *entity.required]
    columns += list(VOCABULARIES.get(entity.name, {}))
    columns += list(DATE_FIELDS.get(entity.name, ()))
    return list(dict.fromkeys(columns))


class Suites:
    """One GX context for a stage's suites: each frame, or each part of a large one, is
    checked as a batch of its own."""

    def __init__(self) -> None:
        self.context = _context()
        self.source = self.context.data_sources.add_pandas("snapshot")
        self.batches = 0

    def check(
        self, entity: model.Entity, frame: pd.DataFrame, complete: bool, whole: bool = True
    ) -> list[Finding]:
        """The entity's suite over ``frame``: every failed expectation, a fatal finding."""
        import great_expectations as gx

        self.batches += 1
        name = f"{entity.name}_{self.batches}"
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        expectations = _expectations(entity, complete, whole)
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_snapshot", data=batch, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": frame[_checked_columns(entity)]},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["sis_key"],
                "partial_unexpected_count": 0,
            },
        )
        findings = [_finding(entity.name, e) for e in result.describe_dict()["expectations"]]
        return [f for f in findings if f is not None]

    def close(self) -> None:
        from great_expectations.data_context.data_context.context_factory import (
            project_manager,
        )

        project_manager.set_project(None)  # GX keeps the context, and the frames, otherwise


def run_suites(frames: Mapping[str, pd.DataFrame], modes: Mapping[str, str]) -> list[Finding]:
    """Run each frame's suite; every failed expectation becomes a fatal finding."""
    suites = Suites()
    try:
        return [
            finding
            for entity in model.ENTITIES
            if entity.name in frames
            for finding in suites.check(entity, frames[entity.name], modes[entity.name] == "bulk")
        ]
    finally:
        suites.close()


def _finding(entity: str, outcome: dict[str, Any]) -> Finding | None:
    if outcome["success"]:
        return None
    kwargs = outcome.get("kwargs") or {}
    result = outcome.get("result") or {}
    column = kwargs.get("column")
    check = outcome["expectation_type"] + (f"({column})" if column else "")
    if not result:
        detail = "the expectation could not be evaluated"
        return Finding(entity, check, "fatal", 0, [], detail)
    keys = [
        str(row.get("sis_key")) if row.get("sis_key") is not None else ""
        for row in (result.get("unexpected_index_list") or [])
    ]
    unique_keys = list(dict.fromkeys(keys))[:MAX_KEYS_REPORTED]
    count = int(result.get("unexpected_count") or 0)
    detail = ""
    if "observed_value" in result and column is None:
        detail = f"observed {result['observed_value']} rows"
    return Finding(entity, check, "fatal", count, unique_keys, detail)


# --------------------------------------------------------------------------------------------
# Text that no store holds alike
# --------------------------------------------------------------------------------------------

MAX_KEY_CHARS = 255  # the LMS's sis_key column
MAX_TEXT_CHARS = 10_000  # any other text: a whole class list fits; a 1 MB "name" does not


def check_text(frames: Mapping[str, pd.DataFrame]) -> list[Finding]:
    """Fatal findings for text the LMS cannot hold the same way on every store: a NUL byte
    (PostgreSQL refuses it, SQLite would keep it) and values past the length limits. Both
    stores then refuse the same feed, before anything is staged; only keys are reported."""
    findings: list[Finding] = []
    for name, frame in frames.items():
        for column in frame.columns:
            if pd.api.types.is_string_dtype(frame[column]) and len(frame):
                findings += _text_findings(name, frame, column)
    return findings


def _text_findings(name: str, frame: pd.DataFrame, column: str) -> list[Finding]:
    values = frame[column]
    limit = MAX_KEY_CHARS if column == "sis_key" else MAX_TEXT_CHARS
    checks = (
        ("text_contains_nul", values.str.contains("\x00", regex=False), "a NUL byte"),
        ("text_too_long", values.str.len() > limit, f"longer than {limit} characters"),
    )
    findings = []
    for check, hit, detail in checks:
        hit = hit.fillna(False).astype(bool)
        if hit.any():
            keys = list(frame.loc[hit, "sis_key"].head(MAX_KEYS_REPORTED).map(_shown_key))
            check_name = f"{check}({column})"
            findings.append(Finding(name, check_name, "fatal", int(hit.sum()), keys, detail))
    return findings


def _shown_key(key: object) -> str:
    """A key as a message may show it: NUL bytes visible, a runaway key cut short."""
    text = "" if key is None or key is pd.NA else str(key).replace("\x00", "\\0")
    return text if len(text) <= 64 else f"{text[:64]}..."


# --------------------------------------------------------------------------------------------
# Reference checks: warnings, with the row or the link dropped
# --------------------------------------------------------------------------------------------


def _keys(
    frames: Mapping[str, pd.DataFrame], lms_keys: Mapping[str, pd.Index], name: str
) -> pd.Index:
    """Keys a reference may point at: active snapshot rows, plus active LMS rows."""
    frame = frames.get(name)
    keys = pd.Index([], dtype="string")
    if frame is not None:
        keys = pd.Index(frame.loc[frame["sis_status"] == model.ACTIVE, "sis_key"])
    extra = lms_keys.get(name)
    if extra is not None and len(extra):
        keys = keys.union(extra)
    return keys


def warn(entity: str, check: str, keys: pd.Series, detail: str, left_out: bool = False) -> Finding:
    """A warning about the records ``keys`` (every one of them: one warning row each)."""
    shown = keys.dropna().astype(str).tolist()
    return Finding(entity, check, "warning", len(keys), shown, detail, left_out)


def left_out_keys(findings: list[Finding]) -> dict[str, pd.Series]:
    """Per entity, the keys of rows the feed carried but validation left out."""
    keys: dict[str, list[str]] = {}
    for finding in findings:
        if finding.left_out:
            keys.setdefault(finding.entity, []).extend(finding.sis_keys)
    return {entity: pd.Series(k, dtype="string") for entity, k in keys.items()}


def check_references(
    frames: dict[str, pd.DataFrame], lms_keys: Mapping[str, pd.Index]
) -> tuple[dict[str, pd.DataFrame], list[Finding]]:
    """Drop rows or links that point at records neither the feed nor the LMS carries.

    ``lms_keys`` holds the active LMS keys of each entity the feed does not carry completely
    (a delta or an absent file), so a delta enrollment into an existing section is fine.
    """
    out = dict(frames)
    findings: list[Finding] = []

    def known(name: str) -> pd.Index:
        return _keys(out, lms_keys, name)

    if "enrollments" in out:
        targets = enrollment_targets(out, lms_keys)
        out["enrollments"], findings = check_enrollment_references(out["enrollments"], targets)
    links = (
        ("sections", "course_key", "courses"),
        ("courses", "organization_key", "organizations"),
        ("organizations", "parent_key", "organizations"),
        ("terms", "parent_key", "terms"),
    )
    for name, column, target in links:
        if name not in out or (target not in out and target not in lms_keys):
            continue
        frame = out[name]
        bad = frame[column].notna() & ~model.key_in(frame[column], known(target))
        if bad.any():
            findings.append(
                warn(name, f"unknown_{column}", frame.loc[bad, "sis_key"], "link dropped")
            )
            frame = frame.copy()
            frame.loc[bad, column] = pd.NA
            out[name] = frame
    for name, column, target in (
        ("users", "organizations", "organizations"),
        ("sections", "term_keys", "terms"),
    ):
        if name in out and (target in out or target in lms_keys):
            out[name], finding = _drop_unknown_items(out[name], column, known(target), name)
            if finding:
                findings.append(finding)
    return out, findings


def enrollment_targets(
    frames: Mapping[str, pd.DataFrame], lms_keys: Mapping[str, pd.Index]
) -> dict[str, pd.Index]:
    """The keys an enrollment's section and user may name: active in the feed or the LMS
    (a kind neither carries is not checked)."""
    return {
        target: _keys(frames, lms_keys, target)
        for target in ("sections", "users")
        if target in frames or target in lms_keys
    }


def check_enrollment_references(
    enrollments: pd.DataFrame, targets: Mapping[str, pd.Index]
) -> tuple[pd.DataFrame, list[Finding]]:
    """Leave out the enrollments (or a part of them) naming a section or user that is not
    among ``targets``: a warning each, their LMS rows kept as they are."""
    findings = []
    live = enrollments["sis_status"] == model.ACTIVE
    for column, target in (("section_key", "sections"), ("user_key", "users")):
        if target not in targets:
            continue
        bad = live & ~model.key_in(enrollments[column], targets[target])
        if bad.any():
            findings.append(
                warn(
                    "enrollments",
                    f"unknown_{target[:-1]}",
                    enrollments.loc[bad, "sis_key"],
                    f"{column} names a {target[:-1]} the feed does not carry; row left out "
                    "and its LMS row, if any, kept as it is",
                    left_out=True,
                )
            )
            enrollments = enrollments[~bad]
            live = live[~bad]
    return enrollments.reset_index(drop=True), findings


def _drop_unknown_items(
    frame: pd.DataFrame, column: str, keys: pd.Index, name: str
) -> tuple[pd.DataFrame, Finding | None]:
    """Remove unknown keys from a comma-list column, vectorised over the exploded list."""
    items = frame[column].str.split(",").explode()
    bad_item = items.notna() & ~model.key_in(items, keys)
    if not bad_item.any():
        return frame, None
    affected = bad_item.groupby(level=0).any()
    kept = items[~bad_item].dropna().groupby(level=0).agg(",".join)
    frame = frame.copy()
    frame[column] = kept.reindex(frame.index).astype("string")
    rows = frame.loc[affected[affected].index, "sis_key"]
    return frame, warn(name, f"unknown_{column}", rows, "unknown keys removed from the list")


# --------------------------------------------------------------------------------------------
# Data oddities: warnings only, nothing dropped
# --------------------------------------------------------------------------------------------

TEACHING_ROLES = ("teacher", "aide", "administrator", "staff")


def check_oddities(
    frames: Mapping[str, pd.DataFrame], lms_users: pd.DataFrame | None = None
) -> list[Finding]:
    """Oddities an admin should see but that must not stop a sync: an email used by two
    accounts of the portal, and a role that conflicts between a user and an enrollment."""
    findings: list[Finding] = []
    users = frames.get("users")
    if users is not None and len(users):
        live = users[users["sis_status"] == model.ACTIVE]
        email = live["email"].str.lower()
        duplicated = email.notna() & email.duplicated(keep=False)
        if lms_users is not None and len(lms_users):
            others = lms_users[
                lms_users["active"] & ~model.key_in(lms_users["sis_key"], live["sis_key"])
            ]
            duplicated |= model.key_in(email, others["email"].dropna().str.lower())
        if duplicated.any():
            findings.append(
                warn(
                    "users",
                    "email_already_used",
                    live.loc[duplicated, "sis_key"],
                    "another account of the portal has the same email",
                )
            )
    enrollments = frames.get("enrollments")
    if users is not None and enrollments is not None:
        findings += role_conflicts(enrollments, user_roles(users))
    return findings


def user_roles(users: pd.DataFrame) -> pd.Series:
    """Each user's role by key. Duplicate keys are validation's fatal finding; here the
    first row stands for its key."""
    return users.drop_duplicates("sis_key").set_index("sis_key")["role"]


def role_conflicts(enrollments: pd.DataFrame, roles: pd.Series) -> list[Finding]:
    """Enrollments (or a part of them) whose role conflicts with their user's."""
    if not len(enrollments):
        return []
    user_role = enrollments["user_key"].map(roles)
    conflict = ((enrollments["role"] == "student") & user_role.isin(TEACHING_ROLES)) | (
        enrollments["role"].isin(("teacher", "aide")) & (user_role == "student")
    )
    if not conflict.any():
        return []
    return [
        warn(
            "enrollments",
            "role_conflict",
            enrollments.loc[conflict, "sis_key"],
            "the enrollment's role conflicts with the user's role",
        )
    ]


# --------------------------------------------------------------------------------------------
# A large frame checked part by part
# --------------------------------------------------------------------------------------------


@dataclass
class PartChecks:
    """The checks of one large frame (enrollments) run part by part: references, role
    conflicts, text and the row-wise expectations on each part, and what only the whole can
    say (unique keys, a complete feed not empty) at the end. Findings of the parts merge
    into one per check, as the whole frame would have given.

    Uniqueness keeps a 64-bit hash per key, not the keys (six million keys, hashed by Arrow,
    took 700 MB more): equal keys hash alike, so unique hashes prove unique keys; when some
    hashes repeat, the keys written are read again (``keys_again``) and only those are
    counted exactly."""

    entity: model.Entity
    complete: bool
    targets: Mapping[str, pd.Index]
    roles: pd.Series | None
    warnings: list[Finding] = field(default_factory=list)
    fatal: list[Finding] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    rows: int = 0

    def check(self, part: pd.DataFrame) -> pd.DataFrame:
        """Check one part; returns it without the rows the reference checks leave out."""
        part, found = check_enrollment_references(part, self.targets)
        self.warnings += found
        if self.roles is not None:
            self.warnings += role_conflicts(part, self.roles)
        self.fatal += check_text({self.entity.name: part})
        # A GX context keeps every batch it validated, and its objects refer to each other:
        # one context per part, collected after it, or the parts pile up.
        suites = Suites()
        try:
            self.fatal += suites.check(self.entity, part, self.complete, whole=False)
        finally:
            suites.close()
            gc.collect()
        self.hashes.append(_key_hashes(part["sis_key"]))
        self.rows += len(part)
        return part

    def findings(
        self, keys_again: Callable[[], Iterable[pd.Series]]
    ) -> tuple[list[Finding], list[Finding]]:
        """(warnings, fatal findings) of the whole frame; ``keys_again`` reads the checked
        parts' keys again, when some hashes repeat."""
        fatal = [*self.fatal, *self._whole_checks(keys_again)]
        return merge_findings(self.warnings), merge_findings(fatal)

    def _whole_checks(self, keys_again: Callable[[], Iterable[pd.Series]]) -> list[Finding]:
        name = self.entity.name
        found = []
        repeated = _repeated_keys(self.hashes, keys_again)
        if len(repeated):
            shown = repeated.field("values").to_pylist()[:MAX_KEYS_REPORTED]
            rows = int(pc.sum(repeated.field("counts")).as_py())
            check = "expect_column_values_to_be_unique(sis_key)"
            found.append(Finding(name, check, "fatal", rows, shown))
        if self.complete and self.rows == 0:
            check = "expect_table_row_count_to_be_between"
            found.append(Finding(name, check, "fatal", 0, [], "observed 0 rows"))
        return found


def _key_hashes(keys: pd.Series) -> np.ndarray:
    return pd.util.hash_pandas_object(keys.astype("string"), index=False).to_numpy()


def _repeated_keys(
    hashes: list[np.ndarray], keys_again: Callable[[], Iterable[pd.Series]]
) -> pa.StructArray:
    """Each key found more than once, with its count (Arrow ``value_counts``): only keys
    whose hash repeats are read again and counted."""
    every = np.sort(np.concatenate(hashes)) if hashes else np.array([], dtype=np.uint64)
    suspects = np.unique(every[1:][every[1:] == every[:-1]])
    candidates = [  # unique hashes: the keys are not read again
        model.arrow_keys(keys[np.isin(_key_hashes(keys), suspects)])
        for keys in (keys_again() if len(suspects) else ())
    ]
    counts = pc.value_counts(pa.chunked_array(candidates, type=pa.large_string()))
    return counts.filter(
        pc.and_(pc.is_valid(counts.field("values")), pc.greater(counts.field("counts"), 1))
    )


def merge_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per check from the findings of several parts: counts added, keys joined
    (a fatal finding keeps the first few, a warning every one)."""
    merged: dict[tuple[str, str, str, str, bool], Finding] = {}
    for f in findings:
        key = (f.entity, f.check, f.severity, f.detail, f.left_out)
        if key not in merged:
            merged[key] = Finding(f.entity, f.check, f.severity, 0, [], f.detail, f.left_out)
        into = merged[key]
        into.count += f.count
        into.sis_keys += f.sis_keys
        if f.severity == "fatal":
            into.sis_keys = list(dict.fromkeys(into.sis_keys))[:MAX_KEYS_REPORTED]
    return list(merged.values())
