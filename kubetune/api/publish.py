"""`spec.publish`: where the gated GGUFs go after evaluate — an OCI artifact in a registry, an Ollama Modelfile and a
Hugging Face layout folder. Each block turns its output on by being there; an empty `publish` publishes nothing and
the publish stage does not run."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from kubetune.api.base import ApiModel, KeyRule, cel_string

# `host[:port]/path` as `docker push` reads it: a registry host (a DNS name with a dot, `localhost`, or an IPv4
# address) and a lowercase repository path of `/`-separated components (the distribution spec's name grammar).
_REGISTRY_HOST = r"(localhost|[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)+)(:[0-9]{1,5})?"
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
OCI_REPOSITORY = rf"^{_REGISTRY_HOST}/{_PATH_COMPONENT}(/{_PATH_COMPONENT})*$"
OCI_TAG = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
HF_REPO_ID = r"^[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*$"
# Modelfile PARAMETER names are lowercase words (temperature, top_p, num_ctx, ...).
OLLAMA_PARAMETER = r"^[a-z][a-z0-9_]*$"
OLLAMA_PARAMETER_KEYS = KeyRule(f"k.matches({cel_string(OLLAMA_PARAMETER)}) && k != 'stop'",
                                "keys must be Ollama parameter names (lowercase, digits, '_'); stop sequences come "
                                "from spec.training.stopSequences")
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class OciPublishSpec(ApiModel):
    """Push the GGUFs, the Modelfile and the lineage as one OCI artifact (ORAS-compatible; `oras pull` reads it)."""

    repository: Annotated[str, Field(min_length=3, max_length=255, pattern=OCI_REPOSITORY)]
    """Registry and repository, e.g. `registry.example.com/team/model`."""
    tag: Annotated[str, Field(max_length=128, pattern=OCI_TAG)] = "latest"
    """Tag the artifact is pushed under; a new tag publishes again."""
    credentials_secret: Annotated[str | None, Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)]
    """Secret with the registry login: a `kubernetes.io/dockerconfigjson` Secret (key `.dockerconfigjson`) or keys
    `username` and `password`. Omitted: push anonymously."""
    plain_http: bool = False
    """Talk HTTP instead of HTTPS (a registry on loopback or an insecure in-cluster registry)."""


class OllamaPublishSpec(ApiModel):
    """Write an Ollama `Modelfile` for the first GGUF type: the run's chat template as TEMPLATE and its stop
    sequences as `PARAMETER stop`."""

    system: Annotated[str | None, Field(default=None, min_length=1, max_length=8192)]
    """Default system prompt (SYSTEM). Omitted: the chat template's own default, if it has one."""
    parameters: Annotated[dict[str, Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f\"]+$")]],
                          Field(max_length=32), OLLAMA_PARAMETER_KEYS] = Field(default_factory=dict)
    """Further PARAMETER lines, e.g. `temperature: "0.7"`, `num_ctx: "4096"`."""


class HuggingFacePublishSpec(ApiModel):
    """Write a Hugging Face layout folder (`huggingface/`): the GGUFs and a README.md model card from the lineage,
    ready for `huggingface-cli upload`."""

    repo_id: Annotated[str | None, Field(default=None, max_length=96, pattern=HF_REPO_ID)]
    """The repository it is meant for (`org/name`): the card's title and the commands in it."""
    license: Annotated[str | None, Field(default=None, max_length=64, pattern=r"^[a-z0-9][-a-z0-9.]*$")]
    """License identifier for the card's front matter (e.g. `apache-2.0`). Omitted: none is claimed."""
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[-A-Za-z0-9_.:]+$")]],
                    Field(max_length=32)] = Field(default_factory=list)
    """Extra card tags (gguf, kubetune and the GGUF types are always there)."""


class PublishSpec(ApiModel):
    """Publishing after the evaluate gate. Each block present asks for that output; none: the stage does not run."""

    oci: OciPublishSpec | None = None
    """Push an OCI artifact to a registry."""
    ollama: OllamaPublishSpec | None = None
    """Write an Ollama Modelfile (also pushed in the OCI artifact)."""
    hugging_face: HuggingFacePublishSpec | None = None
    """Write a Hugging Face layout folder."""

    @property
    def requested(self) -> bool:
        return self.oci is not None or self.ollama is not None or self.hugging_face is not None
