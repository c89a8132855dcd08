"""The body ``model`` check as common clients meet it: LangChain sends a model snapshot name
(``gpt-4o-2024-11-20``) or ``text-embedding-ada-002`` on a deployment path."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import AzureOpenAI

from tests.integration.conftest import GATEWAY_ENV, route_yaml
from tests.integration.harness import GatewayProcess, MockProcess
from tests.integration.test_sdk import OPEN_CLIENTS, QUESTION


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mock: MockProcess
) -> Iterator[GatewayProcess]:
    conf = tmp_path_factory.mktemp("conf.d")
    (conf / "chat.yaml").write_text(
        route_yaml(
            "aliased-chat",
            "/openai/deployments/gpt-4o/chat/completions",
            model="gpt-4o\n            model_alias: gpt-4o-2024-11-20",
            deployment="gpt-4o",
        )
    )
    (conf / "embeddings.yaml").write_text(
        route_yaml(
            "any-model-embeddings",
            "/openai/deployments/text-embedding-3-small/embeddings",
            model="text-embedding-3-small",
            deployment="text-embedding-3-small",
            route_type="llm/v1/embeddings",
            config="\n      ignore_body_model: true",
        )
    )
    process = GatewayProcess(conf, "--azure-base-url", mock.url, env=GATEWAY_ENV)
    yield process
    process.close()


def deployment_client(gateway: GatewayProcess, deployment: str) -> AzureOpenAI:
    """As LangChain's AzureChatOpenAI/AzureOpenAIEmbeddings build it: deployment in the path."""
    client = AzureOpenAI(
        api_key="client-key-never-forwarded",
        azure_endpoint=gateway.url,
        azure_deployment=deployment,
        api_version="2024-10-21",
        max_retries=0,
    )
    OPEN_CLIENTS.append(client)
    return client


def test_an_alias_of_the_model_is_accepted(gateway: GatewayProcess) -> None:
    client = deployment_client(gateway, "gpt-4o")
    response = client.chat.completions.create(model="gpt-4o-2024-11-20", messages=QUESTION)
    assert response.model == "gpt-4o-2024-11-20"


def test_a_name_neither_served_nor_aliased_is_refused_saying_how_to_allow_it(
    gateway: GatewayProcess,
) -> None:
    client = deployment_client(gateway, "gpt-4o")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-2024-08-06", messages=QUESTION)
    assert refused.value.code == "model_mismatch"
    message = refused.value.message
    assert "'gpt-4o-2024-08-06'" in message
    assert "model.model_alias" in message and "ignore_body_model: true" in message


def test_a_route_ignoring_the_body_model_takes_any(gateway: GatewayProcess) -> None:
    client = deployment_client(gateway, "text-embedding-3-small")
    result = client.embeddings.create(model="text-embedding-ada-002", input="hello")
    assert len(result.data[0].embedding) > 0
