"""delete_context, uninstall_application and node_identity against embedded nodes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.workflow import parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"


async def test_identity_delete_context_and_uninstall(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - name: who
            type: node_identity
            node: node-1
            outputs: {{account: accountId, device: deviceId}}
          - {{name: gone, type: delete_context, node: node-1, context_id: "${{results.ctx.context_id}}", outputs: {{deleted_flag: isDeleted}}}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: len, expected_failure: true, expected_error: ContextNotFound}}
          - {{name: removed, type: uninstall_application, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: after, type: get_application, node: node-1, application_id: "${{results.install.application_id}}"}}
          - type: assert
            statements:
              - "equal({{{{account}}}}, {{{{identity_account_id_node-1}}}})"
              - "equal({{{{device}}}}, {{{{identity_device_id_node-1}}}})"
              - "equal({{{{deleted_flag}}}}, true)"
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    who = result.workflow_results["who"]
    assert len(who["account_id"]) == 64 and who["public_key"] and who["device_id"]
    assert who["account_root_public_key"]
    assert result.workflow_results["gone"] == {
        "context_id": result.workflow_results["ctx"]["context_id"],
        "deleted": True,
    }
    assert result.workflow_results["removed"]["application_id"] == result.workflow_results["install"]["application_id"]
    assert result.workflow_results["after"]["installed"] is False
