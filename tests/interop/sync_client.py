"""Calls rollcall's MIS sync API with grpcio, as an MIS vendor would, from the proto files alone.

Usage: python3 sync_client.py HOST:PORT PROTO_DIR

Compiles the proto files with grpcio-tools into a temporary folder, pushes pupils and marks for
one school, and checks each row's result. Exits with status 1 and a message naming the check
that failed.
"""

import importlib
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

SCHOOL = "9192101"
PROTO_FILES = [
    "rollcall/type/v1/attendance.proto",
    "rollcall/registers/v1/registers.proto",
    "rollcall/mis_adapter/v1/sync.proto",
]


def compile_protos(proto_dir: Path, out_dir: Path) -> None:
    """Generates the Python messages and stubs for the sync API into out_dir."""
    well_known = Path(protoc.__file__).parent / "_proto"
    arguments = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit(f"protoc could not compile the proto files in {proto_dir}")


def upn(serial: int) -> str:
    """Returns a valid UPN for LA 919, establishment 2001, year 25, with this serial."""
    digits = [9, 1, 9, 2, 0, 0, 1, 2, 5, 0, serial // 10, serial % 10]
    total = sum(digit * (index + 2) for index, digit in enumerate(digits))
    return "ABCDEFGHJKLMNPQRTUVWXYZ"[total % 23] + "".join(str(d) for d in digits)


def check(condition: bool, description: str) -> None:
    if not condition:
        raise SystemExit(f"interop check failed: {description}")


def main() -> None:
    address, proto_dir = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as generated:
        compile_protos(proto_dir, Path(generated))
        sys.path.insert(0, generated)
        sync = importlib.import_module("rollcall.mis_adapter.v1.sync_pb2")
        stubs = importlib.import_module("rollcall.mis_adapter.v1.sync_pb2_grpc")
        types = importlib.import_module("rollcall.type.v1.attendance_pb2")

        with grpc.insecure_channel(address) as channel:
            client = stubs.MisSyncServiceStub(channel)

            pupils = sync.SyncPupilsRequest(
                laestab=SCHOOL,
                school_name="Python Interop Academy",
                phase=types.PHASE_SECONDARY,
                idempotency_key="python-pupils-1",
                source_name="Python vendor test",
                pupils=[
                    sync.SyncPupil(
                        mis_id="py-1",
                        upn=upn(1),
                        forename="Test",
                        surname="One",
                        date_of_birth="2013-05-01",
                        sex="F",
                        admission_date="2025-09-01",
                        year_group="8",
                    ),
                    sync.SyncPupil(mis_id="py-2", upn="B000000000000"),
                ],
            )
            response = client.SyncPupils(pupils, timeout=30)
            outcomes = [result.outcome for result in response.results]
            check(
                outcomes == [sync.ROW_OUTCOME_APPLIED, sync.ROW_OUTCOME_REJECTED],
                f"pupil outcomes {outcomes}",
            )
            check(
                response.results[1].reason_code == "invalid_upn",
                f"reason code {response.results[1].reason_code!r}",
            )
            check(response.counts.applied == 1, "one pupil applied")

            replay = client.SyncPupils(pupils, timeout=30)
            check(replay.replayed, "the same batch again is a replay")
            check(list(replay.results) == list(response.results), "a replay returns the same results")

            pupils.pupils.pop()
            try:
                client.SyncPupils(pupils, timeout=30)
                check(False, "a reused key with other rows must fail")
            except grpc.RpcError as error:
                check(
                    error.code() == grpc.StatusCode.ALREADY_EXISTS,
                    f"reused key status {error.code()}",
                )

            marks = sync.SyncMarksRequest(
                laestab=SCHOOL,
                idempotency_key="python-marks-1",
                source_name="Python vendor test",
                marks=[
                    sync.SyncMark(
                        mis_id="py-1",
                        date="2025-09-02",
                        session=types.SESSION_AM,
                        code="L",
                        minutes_late=12,
                        comment="Bus late",
                    ),
                    sync.SyncMark(
                        mis_id="py-404", date="2025-09-02", session=types.SESSION_AM, code="/"
                    ),
                ],
            )

            def batches():
                yield sync.StreamSyncRequest(marks=marks)

            results = list(client.StreamSync(batches(), timeout=30))
            check(len(results) == 1, f"one result per batch, got {len(results)}")
            mark_results = results[0].marks.results
            check(
                [result.outcome for result in mark_results]
                == [sync.ROW_OUTCOME_APPLIED, sync.ROW_OUTCOME_REJECTED],
                "mark outcomes",
            )
            check(
                mark_results[1].reason_code == "unknown_mis_id",
                f"reason code {mark_results[1].reason_code!r}",
            )

            ids = client.ListPupilIds(sync.ListPupilIdsRequest(laestab=SCHOOL), timeout=30)
            check(
                [(row.mis_id, row.upn) for row in ids.ids] == [("py-1", upn(1))],
                "the MIS id is mapped to its UPN",
            )
    print("python interop: ok")


if __name__ == "__main__":
    main()
