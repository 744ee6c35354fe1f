"""The publish job's registry login, read from the env the Job builder fills from spec.publish.oci.credentialsSecret:
username/password keys, else the docker config's entry for the registry host."""

from __future__ import annotations

import base64
import json

import pytest

from kubetune.jobs.errors import ConfigError
from kubetune.jobs.publish_oci import Credentials, credentials_from_env, split_repository


def docker_config(auths: dict[str, dict[str, str]]) -> dict[str, str]:
    return {"KUBETUNE_REGISTRY_DOCKERCONFIG": json.dumps({"auths": auths})}


def test_username_and_password_keys_win_over_a_docker_config() -> None:
    env = {"KUBETUNE_REGISTRY_USERNAME": "robot", "KUBETUNE_REGISTRY_PASSWORD": "pw",
           **docker_config({"reg.example.com": {"username": "other", "password": "x"}})}
    assert credentials_from_env("reg.example.com", env) == Credentials("robot", "pw")


@pytest.mark.parametrize("host_key", ["reg.example.com:5000", "https://reg.example.com:5000"])
def test_a_docker_config_entry_is_found_by_host_with_or_without_scheme(host_key: str) -> None:
    encoded = base64.b64encode(b"robot:p:w").decode()  # the password may hold ':'
    env = docker_config({host_key: {"auth": encoded}})
    assert credentials_from_env("reg.example.com:5000", env) == Credentials("robot", "p:w")


def test_no_login_configured_pushes_anonymously() -> None:
    assert credentials_from_env("reg.example.com", {}) is None


@pytest.mark.parametrize(("env", "message"), [
    ({"KUBETUNE_REGISTRY_DOCKERCONFIG": "not json"}, "is not a docker config JSON"),
    (docker_config({"other.example.com": {"auth": "eDp5"}}), "has no entry for reg.example.com .*other.example.com"),
    (docker_config({"reg.example.com": {"auth": "!!!"}}), "has no username and password"),
])
def test_an_unusable_docker_config_is_a_configuration_error_naming_the_host(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        credentials_from_env("reg.example.com", env)


def test_a_repository_splits_into_registry_name_and_tag() -> None:
    ref = split_repository("127.0.0.1:5000/team/sub/model", "v1")
    assert (ref.registry, ref.repository, ref.tag, str(ref)) == (
        "127.0.0.1:5000", "team/sub/model", "v1", "127.0.0.1:5000/team/sub/model:v1")
