"""Shared aiobotocore clients: one per (service, region, profile, role, endpoint).

Credentials follow the AWS conventions users rely on (AWS_PROFILE, AWS_REGION, the shared
config/credentials files, AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>, instance roles) because
botocore resolves them; fspd only adds a per-endpoint profile, endpoint URL and role to assume.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, ProfileNotFound
from botocore.exceptions import ConnectionError as BotoConnectionError

from fspd.config import Settings
from fspd.errors import BadInput, PermissionProblem
from fspd.memory import share_models
from fspd.retry import ApiError, Unreachable, endpoint_answered


@dataclass(frozen=True, slots=True)
class AwsTarget:
    """Where and as whom to talk to AWS for one end of a job."""

    region: str
    profile: str | None = None
    endpoint_url: str | None = None
    role_arn: str | None = None
    external_id: str | None = None

    def describe(self) -> str:
        parts = [self.region]
        if self.profile:
            parts.append(f"profile {self.profile}")
        if self.role_arn:
            parts.append(f"role {self.role_arn}")
        if self.endpoint_url:
            parts.append(f"endpoint {self.endpoint_url}")
        return ", ".join(parts)


class AwsClients:
    """Creates clients lazily and closes them all together (``async with``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack = AsyncExitStack()
        self._sessions: dict[tuple[str | None, str | None, str | None], AioSession] = {}
        self._clients: dict[tuple[str, AwsTarget], Any] = {}

    async def __aenter__(self) -> AwsClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        self._clients.clear()

    def _config(self, service: str) -> Config:
        t, r = self._settings.transfer, self._settings.retry
        pool = max(t.fetch_concurrency, t.put_concurrency) + 16
        return Config(
            max_pool_connections=pool,
            connect_timeout=r.connect_timeout_s,
            read_timeout=r.read_timeout_s,
            # One retry layer: fspd's Retrier (retry.py) retries every call and logs each
            # retry; botocore makes exactly one attempt, so nothing is retried silently.
            retries={"mode": "standard", "total_max_attempts": 1},
            user_agent_extra="fspd",
        )

    async def session(self, target: AwsTarget) -> AioSession:
        key = (target.profile, target.role_arn, target.external_id)
        if key not in self._sessions:
            session = profile_session(target.profile)
            _check_ca_bundle(session)
            try:
                if target.role_arn:
                    await self._assume_role(session, target)
            except BotoCoreError as exc:
                raise BadInput(str(exc), field="profile") from None
            self._sessions[key] = session
        return self._sessions[key]

    async def _assume_role(self, session: AioSession, target: AwsTarget) -> None:
        source = await session.get_credentials()
        if source is None:
            raise PermissionProblem("no credentials found to assume role " + str(target.role_arn))
        extra: dict[str, Any] = {"RoleSessionName": "fspd"}
        if target.external_id:
            extra["ExternalId"] = target.external_id

        def sts_creator(service: str, **kwargs: Any) -> Any:
            return session.create_client(service, region_name=target.region,
                                         endpoint_url=target.endpoint_url, **kwargs)

        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=sts_creator, source_credentials=source,
            role_arn=target.role_arn, extra_args=extra,
        )
        # botocore has no public setter for refreshable credentials; the session reads
        # _credentials before its provider chain, which is what we need here.
        session._credentials = AioDeferredRefreshableCredentials(  # type: ignore[attr-defined]
            refresh_using=fetcher.fetch_credentials, method="assume-role"
        )

    async def client(self, service: str, target: AwsTarget) -> Any:
        key = (service, target)
        if key not in self._clients:
            session = await self.session(target)
            ctx = session.create_client(
                service, region_name=target.region, endpoint_url=target.endpoint_url,
                config=self._config(service),
            )
            self._clients[key] = await self._stack.enter_async_context(ctx)
        return self._clients[key]

    async def ca_bundle(self, target: AwsTarget) -> str | None:
        """The CA bundle botocore's clients for ``target`` trust (``AWS_CA_BUNDLE`` or the
        profile's ``ca_bundle``), for fspd's own HTTPS connections; None: botocore's default."""
        session = await self.session(target)
        value = session.get_config_variable("ca_bundle")
        return str(value) if value else None

    async def credentials(self, target: AwsTarget) -> Any:
        """The credentials for ``target``; none found is a PermissionProblem at once (no
        request is retried for want of them), naming every source botocore looked in."""
        session = await self.session(target)
        try:
            creds = await session.get_credentials()
        except BotoCoreError as exc:  # a broken profile, credential_process, SSO cache…
            raise PermissionProblem(f"cannot load AWS credentials for {target.describe()}: "
                                    f"{exc}") from None
        if creds is None:
            raise PermissionProblem(
                f"no AWS credentials found for {target.describe()}; tried: "
                f"{'; '.join(credential_sources(session))}")
        return creds


def profile_session(profile: str | None) -> AioSession:
    """A botocore session for ``profile``; an unknown profile is bad input, named."""
    session = AioSession(profile=profile)
    try:
        session.get_scoped_config()
    except ProfileNotFound:
        name = repr(profile) if profile else f"{session.profile!r} (from AWS_PROFILE)"
        raise BadInput(
            f"profile {name} is not defined in "
            f"{session.get_config_variable('config_file')} or "
            f"{session.get_config_variable('credentials_file')}", field="profile") from None
    except BotoCoreError as exc:  # an unreadable or malformed config file
        raise BadInput(str(exc), field="profile") from None
    # Once the profile is known to exist: reading data_path through an unknown one raises.
    share_models(session)  # parse each service model once per process
    return session


def _check_ca_bundle(session: AioSession) -> None:
    """A CA bundle that is not a file is bad input, named (botocore would fail every request
    with "No such file or directory", and each would be retried as a network error)."""
    bundle = session.get_config_variable("ca_bundle")
    if bundle and not os.path.isfile(bundle):
        field = "AWS_CA_BUNDLE" if os.environ.get("AWS_CA_BUNDLE") else "ca_bundle"
        raise BadInput(f"{bundle} is not a readable file of trusted certificates (PEM)",
                       field=field)


_SOURCE_NAMES = {
    "env": "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
    "assume-role": "role_arn in the profile",
    "assume-role-with-web-identity": "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)",
    "sso": "SSO in the profile",
    "custom-process": "credential_process in the profile",
    "container-role": "container credentials (AWS_CONTAINER_CREDENTIALS_*_URI)",
}


def credential_sources(session: AioSession) -> list[str]:
    """The sources botocore's credential chain looks in, in order, in words."""
    profile = session.profile or "default"
    files = {"shared-credentials-file": ("shared credentials file", "credentials_file"),
             "config-file": ("config file", "config_file")}
    imds_off = os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
    out = []
    for provider in session.get_component("credential_provider").providers:
        method = getattr(provider, "METHOD", "")
        if method in files:
            label, variable = files[method]
            out.append(f"{label} {session.get_config_variable(variable)} [{profile}]")
        elif method == "iam-role":
            out.append("instance metadata (IMDS)"
                       + (", disabled by AWS_EC2_METADATA_DISABLED" if imds_off else ""))
        elif method in _SOURCE_NAMES:
            out.append(_SOURCE_NAMES[method])
    return out


async def call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    """Call ``client.<operation>`` and turn botocore's errors into :class:`ApiError`."""
    method = getattr(client, _snake(operation))
    try:
        result = await method(**params)
    except ClientError as exc:
        endpoint_answered(client.meta.endpoint_url)
        raise ApiError.from_client_error(exc, operation) from None
    except (HTTPClientError, BotoConnectionError) as exc:  # no answer: refused, timed out
        raise Unreachable(operation, client.meta.endpoint_url, exc) from None
    endpoint_answered(client.meta.endpoint_url)
    return result  # type: ignore[no-any-return]


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
