"""The committed generated protobuf code must match protos/*.proto."""

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
    for path in sorted((ROOT / "libproc").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ours, f"{path.name} imports {name}"
