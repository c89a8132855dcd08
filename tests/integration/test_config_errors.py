"""Broken route files are reported precisely and never take the gateway down."""

from __future__ import annotations

from pathlib import Path

import openai

from tests.integration.conftest import GATEWAY_ENV
from tests.integration.harness import REPO, GatewayProcess, run_check
from tests.integration.test_sdk import QUESTION, sync_client


def test_broken_files_are_rejected_and_the_rest_serve(gateway: GatewayProcess) -> None:
    rejected = {e["file"]: e for e in gateway.events() if e.get("event") == "config_rejected"}
    typo = next(v for k, v in rejected.items() if k.endswith("typo.yaml"))
    noenv = next(v for k, v in rejected.items() if k.endswith("noenv.yaml"))
    assert any("header_vaule" in issue and "header_value" in issue for issue in typo["issues"])
    assert any("AIGW_TEST_UNSET_VARIABLE" in issue for issue in noenv["issues"])
    # The good routes serve; the broken ones are simply absent.
    assert sync_client(gateway).chat.completions.create(model="gpt-4o", messages=QUESTION).model
    try:
        sync_client(gateway, max_retries=0).chat.completions.create(model="typo", messages=QUESTION)
    except openai.NotFoundError as exc:
        assert exc.code == "route_not_found"
    else:
        raise AssertionError("a rejected file must not serve")


def test_check_prints_the_route_table_and_exits_0(tmp_path: Path) -> None:
    import os

    result = run_check(REPO / "conf.d", {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 0, result.stderr
    shipped = len(list((REPO / "conf.d").glob("*.yaml")))
    assert f"{shipped} route(s) accepted, 0 file(s) rejected" in result.stdout
    assert "models: gpt-4o\n" in result.stdout and "/openai/deployments/gpt-4o/*" in result.stdout
    assert "models: gpt-4.1-mini\n" in result.stdout
    assert "-> https://testresource.openai.azure.com" in result.stdout
    assert GATEWAY_ENV["AZURE_OPENAI_KEY"] not in result.stdout


def test_check_lists_every_error_and_exits_1(conf_dir: Path) -> None:
    import os

    result = run_check(conf_dir, {**os.environ, **GATEWAY_ENV})
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert any("typo.yaml" in e and "header_vaule" in e for e in errors)
    assert any("noenv.yaml" in e and "AIGW_TEST_UNSET_VARIABLE" in e for e in errors)


def test_missing_env_var_is_reported_not_fatal(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in GATEWAY_ENV}
    result = run_check(REPO / "conf.d", env)
    assert result.returncode == 1
    assert "AZURE_OPENAI_KEY" in result.stderr and "AZURE_INSTANCE" in result.stderr


def test_gateway_starts_with_every_file_broken(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("route: [unclosed\n")
    process = GatewayProcess(tmp_path)
    try:
        rejected = [e for e in process.events() if e.get("event") == "config_rejected"]
        assert rejected and "bad.yaml:" in rejected[0]["issues"][0]
        try:
            sync_client(process, max_retries=0).chat.completions.create(
                model="gpt-4o", messages=QUESTION
            )
        except openai.NotFoundError:
            pass
        else:
            raise AssertionError("expected 404")
    finally:
        process.close()
