"""DynamoDB's export API, answered from a script at the HTTP boundary: DynamoDB Local has none.

An :class:`ExportScript` is the ``dynamodb`` script of a ``scripted_stream_server.ScriptedStreamServer`` (which
relays every other call to DynamoDB Local). It answers, in the service's wire format (JSON 1.0, timestamps as
seconds since the epoch, errors as ``__type`` and ``message`` with status 400):

* ``DescribeContinuousBackups``: point-in-time recovery ENABLED, or DISABLED for the tables in ``pitr_off``
  (``AccessDeniedException`` for those in ``describe_denied``, as for a role without that permission);
* ``ExportTableToPointInTime``: an ``ExportDescription`` IN_PROGRESS, as the service's (ARN
  ``<TableArn>/export/<14 digits of milliseconds>-<8 hex>``, ExportTime now unless given); the same ClientToken
  gives back the same export (the service's idempotency); ``PointInTimeRecoveryUnavailableException`` for a table
  in ``pitr_off``;
* an INCREMENTAL_EXPORT request is kept with its IncrementalExportSpecification; once complete, its files are
  written from ``incremental_lines`` (those whose write time is in its window), the test's changes, since
  DynamoDB Local keeps no point-in-time log to take them from;
* ``DescribeExport``: IN_PROGRESS until the export was polled ``polls`` times and ``released`` is set; then the
  export's files are written into moto's S3 with tests/exports.py from the DynamoDB Local table's items as they
  are then (an export is not transactionally consistent either), and it is COMPLETED with ``ExportManifest``,
  ``ItemCount``, ``BilledSizeBytes``, ``EndTime``; or FAILED with ``failure`` (FailureCode, FailureMessage).

Every call is kept in ``calls``. Test code only.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from exports import write_export, write_incremental_export
from scripted_stream_server import StreamError


class ExportScript:
    def __init__(
        self,
        s3: Any,
        ddb: Any,
        *,
        polls: int = 1,
        hold: bool = False,
        files: int = 3,
        failure: tuple[str, str] | None = None,
        export_time_ahead: timedelta = timedelta(0),
    ) -> None:
        self.s3 = s3
        self.ddb = ddb
        self.polls = polls
        self.files = files
        self.failure = failure
        self.export_time_ahead = export_time_ahead
        self.pitr_off: set[str] = set()
        self.describe_denied: set[str] = set()
        #: Set: exports may complete (after ``polls`` polls). Clear (``hold``): they stay IN_PROGRESS.
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.lock = threading.RLock()
        #: (operation, params) of every call answered.
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: Export ARN → its ExportDescription (wire form); ClientToken → export ARN.
        self.exports: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, str] = {}
        self._polled: dict[str, int] = {}
        self._times: dict[str, datetime] = {}
        #: What incremental exports hold: lines (exports.incremental_line) written when one completes, those of
        #: its window only.
        self.incremental_lines: list[dict[str, Any]] = []
        self._windows: dict[str, tuple[datetime, datetime]] = {}

    def calls_of(self, operation: str) -> list[dict[str, Any]]:
        with self.lock:
            return [params for op, params in self.calls if op == operation]

    def answer(self, operation: str, params: dict[str, Any]) -> dict[str, Any] | None:
        handler = {
            "DescribeContinuousBackups": self._describe_continuous_backups,
            "ExportTableToPointInTime": self._export,
            "DescribeExport": self._describe_export,
        }.get(operation)
        if handler is None:
            return None
        with self.lock:
            self.calls.append((operation, params))
            return handler(params)

    def _describe_continuous_backups(self, params: dict[str, Any]) -> dict[str, Any]:
        table = str(params.get("TableName"))
        if table in self.describe_denied:
            raise StreamError(
                "AccessDeniedException",
                "User: arn:aws:sts::000000000000:assumed-role/podyn/test is not authorized to perform:"
                " dynamodb:DescribeContinuousBackups on resource:"
                f" arn:aws:dynamodb:ddblocal:000000000000:table/{table}",
            )
        now = time.time()
        pitr: dict[str, Any] = {"PointInTimeRecoveryStatus": "DISABLED" if table in self.pitr_off else "ENABLED"}
        if table not in self.pitr_off:
            pitr |= {"EarliestRestorableDateTime": now - 3600, "LatestRestorableDateTime": now - 300}
        backups = {"ContinuousBackupsStatus": "ENABLED", "PointInTimeRecoveryDescription": pitr}
        return {"ContinuousBackupsDescription": backups}

    def _export(self, params: dict[str, Any]) -> dict[str, Any]:
        table_arn = str(params["TableArn"])
        table = table_arn.split(":table/", 1)[1]
        if table in self.pitr_off:
            raise StreamError(
                "PointInTimeRecoveryUnavailableException", f"Point in time recovery is not enabled for table '{table}'"
            )
        token = params.get("ClientToken")
        if token is not None and token in self._tokens:
            return {"ExportDescription": dict(self.exports[self._tokens[token]])}
        now = datetime.now(UTC)
        when = datetime.fromtimestamp(params["ExportTime"], UTC) if "ExportTime" in params else now
        when += self.export_time_ahead
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        export_id = f"{int(now.timestamp() * 1000):014d}-{os.urandom(4).hex()}"
        arn = f"{table_arn}/export/{export_id}"
        description: dict[str, Any] = {
            "ExportArn": arn,
            "ExportStatus": "IN_PROGRESS",
            "StartTime": now.timestamp(),
            "TableArn": table_arn,
            "TableId": self.ddb.describe_table(TableName=table)["Table"].get("TableId"),
            "ExportTime": when.timestamp(),
            "S3Bucket": params["S3Bucket"],
            "S3SseAlgorithm": params.get("S3SseAlgorithm", "AES256"),
            "ExportFormat": params.get("ExportFormat", "DYNAMODB_JSON"),
            "ExportType": params.get("ExportType", "FULL_EXPORT"),
        }
        spec = params.get("IncrementalExportSpecification")
        if description["ExportType"] == "INCREMENTAL_EXPORT" and isinstance(spec, dict):
            window = (
                datetime.fromtimestamp(spec["ExportFromTime"], UTC),
                datetime.fromtimestamp(spec["ExportToTime"], UTC),
            )
            self._windows[arn] = window
            description["IncrementalExportSpecification"] = dict(spec)
            description["ExportTime"] = window[1].timestamp()
        if token is not None:
            description["ClientToken"] = token
            self._tokens[token] = arn
        if params.get("S3Prefix"):
            description["S3Prefix"] = params["S3Prefix"]
        self.exports[arn] = description
        self._polled[arn] = 0
        self._times[arn] = when
        return {"ExportDescription": dict(description)}

    def _describe_export(self, params: dict[str, Any]) -> dict[str, Any]:
        arn = str(params.get("ExportArn"))
        description = self.exports.get(arn)
        if description is None:
            raise StreamError("ExportNotFoundException", f"Export not found: {arn}")
        self._polled[arn] += 1
        if description["ExportStatus"] == "IN_PROGRESS" and self.released.is_set() and self._polled[arn] >= self.polls:
            self._complete(description)
        return {"ExportDescription": dict(description)}

    def _complete(self, description: dict[str, Any]) -> None:
        now = time.time()
        if self.failure is not None:
            code, message = self.failure
            description.update(ExportStatus="FAILED", FailureCode=code, FailureMessage=message, EndTime=now)
            return
        table = description["TableArn"].split(":table/", 1)[1]
        prefix = description.get("S3Prefix") or ""
        export_id = description["ExportArn"].rsplit("/export/", 1)[1]
        manifest = f"{prefix}/" if prefix else ""
        if description["ExportArn"] in self._windows:
            start, end = self._windows[description["ExportArn"]]
            count = write_incremental_export(
                self.s3,
                table_arn=description["TableArn"],
                table_id=description.get("TableId"),
                bucket=description["S3Bucket"],
                prefix=prefix,
                export_id=export_id,
                start=start,
                end=end,
                lines=self.incremental_lines,
            )
            description.update(
                ExportStatus="COMPLETED",
                EndTime=now,
                ExportManifest=f"{manifest}AWSDynamoDB/{export_id}/manifest-summary.json",
                ItemCount=count,
                BilledSizeBytes=100 * count,
            )
            return
        written = write_export(
            self.s3,
            self.ddb,
            table,
            bucket=description["S3Bucket"],
            output_format=description["ExportFormat"],
            files=self.files,
            prefix=prefix,
            export_time=self._times[description["ExportArn"]],
            export_id=export_id,
        )
        description.update(
            ExportStatus="COMPLETED",
            EndTime=now,
            ExportManifest=f"{manifest}AWSDynamoDB/{export_id}/manifest-summary.json",
            ItemCount=written.items,
            BilledSizeBytes=1000 + 100 * written.items,
        )
