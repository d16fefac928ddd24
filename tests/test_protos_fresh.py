"""The committed generated protobuf code must match protos/*.proto and libproc/names/*.proto."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_seed_messages_keep_their_field_numbers() -> None:
    from protos import cluster_pb2 as pb

    task = pb.Task.DESCRIPTOR.fields_by_name
    assert (task["name"].number, task["task_id"].number, task["progress"].number) == (1, 2, 3)
    assert pb.ReportProgressMessage.DESCRIPTOR.fields_by_name["tasks"].number == 3
    assert pb.TaskID.DESCRIPTOR.fields_by_name["value"].number == 1
    assert pb.ReportProgressMessage.DESCRIPTOR.full_name == "cluster.ReportProgressMessage"
    names = [v.name for v in pb.TaskState.DESCRIPTOR.values]
    assert names == ["PENDING", "STAGING", "RUNNING", "FINISHED", "FAILED", "KILLED", "LOST"]


def test_libproc_imports_nothing_else_of_ours() -> None:
    """DESIGN §1: libproc knows nothing of the cluster (it may be used on its own)."""
    import ast

    ours = {"protos", "master", "slave", "cli", "examples", "benchmarks", "tests"}
    paths = sorted((ROOT / "libproc").rglob("*.py"))
    assert ROOT / "libproc" / "names" / "service.py" in paths  # subpackages are checked too
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ours, f"{path.relative_to(ROOT)} imports {name}"


def test_the_name_service_proto_lives_in_its_subpackage_with_its_wire_names() -> None:
    """libproc/names/ holds names.proto and the code generated from it; moving the file did
    not rename a message on the wire (those are the package's full names)."""
    from libproc.names import names_pb2

    assert (ROOT / "libproc" / "names" / "names.proto").is_file()
    assert names_pb2.DESCRIPTOR.name == "libproc/names/names.proto"
    assert names_pb2.RegisterRequest.DESCRIPTOR.full_name == "names.RegisterRequest"
    assert names_pb2.InstanceNotice.DESCRIPTOR.full_name == "names.InstanceNotice"
    assert not list((ROOT / "libproc").glob("names*.py")), "the flat modules moved to names/"
