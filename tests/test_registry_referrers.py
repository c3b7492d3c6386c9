"""RegistryClient.get_referrers (and has_manifest) against real HTTP servers on 127.0.0.1.

Each test serves its own referrers API (an aiohttp app on the fixtures' loop) with the pages,
Link headers and failures the OCI distribution spec 1.1 allows or a broken registry sends,
and records every request it answered (path, query, Authorization), so the tests can say
what was asked and what credentials went where.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from registry_fixtures import FaultProxy, LoopThread, RegistryServer, Seeder

from ecrstream.errors import ManifestInvalidError, RegistryError
from ecrstream.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient, parse_reference
from ecrstream.retry import RetryPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=1.0)
SUBJECT = "sha256:" + "ab" * 32
USER, PASSWORD = "alice", "s3cret-referrers"
REPOSITORY = "team/app"
API = f"/v2/{REPOSITORY}/referrers/{SUBJECT}"


def digest_of(number: int) -> str:
    return "sha256:" + f"{number:064x}"


def page(numbers: range | list[int]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest_of(n),
                    "size": 500 + n,
                    "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                }
                for n in numbers
            ],
        }
    ).encode()


@dataclass
class Seen:
    path_qs: str
    authorization: str | None


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    link: str | None = None


@dataclass
class ReferrersServer:
    """A registry that answers only its referrers API: ``answers[path_qs]``, Basic auth
    required when ``basic`` (401 with a Basic challenge without it)."""

    loop: LoopThread
    basic: bool = False
    answers: dict[str, Answer] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self.port = self.loop.serve(app)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> RegistryClient:
        return RegistryClient(
            self.host,
            credentials=f"{USER}:{PASSWORD}" if self.basic else None,
            docker_config=False,
            plain_http=True,
            retry=FAST_RETRY,
        )

    async def _handle(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        self.seen.append(Seen(request.path_qs, authorization))
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.basic and authorization != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        answer = self.answers.get(request.path_qs)
        if answer is None:
            return web.Response(status=404, text='{"errors": [{"code": "NAME_UNKNOWN"}]}')
        headers = {"Content-Type": OCI_INDEX}
        if answer.link is not None:
            headers["Link"] = answer.link
        return web.Response(status=answer.status, body=answer.body, headers=headers)


@pytest.fixture
def server(fixture_loop: LoopThread) -> ReferrersServer:
    return ReferrersServer(fixture_loop)


async def test_pages_relative_and_absolute_are_followed_each_digest_once_and_a_loop_ends(
    server: ReferrersServer,
) -> None:
    server.answers[API] = Answer(body=page(range(0, 3)), link=f'<{API}?last=2>; rel="next"')
    server.answers[f"{API}?last=2"] = Answer(
        body=page(range(2, 5)),  # 2 again: listed once
        link=f'<http://{server.host}{API}?last=4>; rel="next", <{API}>; rel="first"',
    )
    # The last page links back to the first: the list ends there, no page read twice.
    server.answers[f"{API}?last=4"] = Answer(body=page([5]), link=f"<{API}>; rel=next")

    async with server.client() as client:
        found = await client.get_referrers(REPOSITORY, SUBJECT)

    assert found is not None
    assert [entry.digest for entry in found] == [digest_of(n) for n in range(6)]
    assert [s.path_qs for s in server.seen] == [API, f"{API}?last=2", f"{API}?last=4"]


async def test_a_200_with_an_empty_index_is_no_referrers_not_no_api(
    server: ReferrersServer,
) -> None:
    server.answers[API] = Answer(body=page([]))
    async with server.client() as client:
        assert await client.get_referrers(REPOSITORY, SUBJECT) == ()


async def test_a_404_means_no_api_on_the_first_page_only(server: ReferrersServer) -> None:
    async with server.client() as client:
        assert await client.get_referrers(REPOSITORY, SUBJECT) is None
        server.answers[API] = Answer(body=page([1]), link=f'<{API}?last=1>; rel="next"')
        # A registry that answered page 1 has the API: a 404 for page 2 is its failure,
        # not a reason to forget page 1 and look at the tag schema.
        with pytest.raises(RegistryError, match=r"answered HTTP 404"):
            await client.get_referrers(REPOSITORY, SUBJECT)


async def test_a_next_page_on_another_host_is_refused_without_sending_it_credentials(
    fixture_loop: LoopThread,
) -> None:
    registry = ReferrersServer(fixture_loop, basic=True)
    elsewhere = ReferrersServer(fixture_loop)
    elsewhere.answers[API] = Answer(body=page([9]))
    registry.answers[API] = Answer(
        body=page([1]), link=f'<http://{elsewhere.host}{API}>; rel="next"'
    )

    async with registry.client() as client:
        with pytest.raises(RegistryError) as caught:
            await client.get_referrers(REPOSITORY, SUBJECT)

    message = str(caught.value)
    assert f"the referrers list of {SUBJECT} in {registry.host}/{REPOSITORY}" in message
    assert f"another host (http://{elsewhere.host})" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(caught.value)
    assert elsewhere.seen == []  # never asked, so never sent the credentials
    assert any(s.authorization for s in registry.seen)  # the registry itself did get them


async def test_more_pages_than_the_limit_is_an_error_not_a_silent_cut(
    server: ReferrersServer,
) -> None:
    for number in range(101):
        query = f"?page={number}" if number else ""
        server.answers[f"{API}{query}"] = Answer(
            body=page([number]), link=f'<{API}?page={number + 1}>; rel="next"'
        )

    async with server.client() as client:
        with pytest.raises(RegistryError, match=r"more than 100 pages"):
            await client.get_referrers(REPOSITORY, SUBJECT)

    assert len(server.seen) == 100


async def test_thousands_of_referrers_in_one_page(server: ReferrersServer) -> None:
    server.answers[API] = Answer(body=page(range(15_000)))
    async with server.client() as client:
        found = await client.get_referrers(REPOSITORY, SUBJECT)
    assert found is not None
    assert len(found) == 15_000
    assert found[-1].digest == digest_of(14_999)


async def test_a_page_over_the_size_limit_names_the_referrers_list(
    server: ReferrersServer,
) -> None:
    server.answers[API] = Answer(body=page(range(50)))
    async with RegistryClient(
        server.host, docker_config=False, plain_http=True, max_manifest_size=4096
    ) as client:
        with pytest.raises(ManifestInvalidError, match=r"the referrers list of .* over the 4096"):
            await client.get_referrers(REPOSITORY, SUBJECT)


async def test_a_later_page_that_is_no_index_is_an_error(server: ReferrersServer) -> None:
    server.answers[API] = Answer(body=page([1]), link=f'<{API}?last=1>; rel="next"')
    server.answers[f"{API}?last=1"] = Answer(body=b'{"schemaVersion": 2, "layers": 1}')
    async with server.client() as client:
        with pytest.raises(ManifestInvalidError, match=r"the page at .* is not an image index"):
            await client.get_referrers(REPOSITORY, SUBJECT)


async def test_a_next_link_that_is_no_url_is_an_error_that_does_not_echo_it(
    server: ReferrersServer,
) -> None:
    server.answers[API] = Answer(
        body=page([1]), link='<http://[::1/v2/x?token=secret-in-link>; rel="next"'
    )
    async with server.client() as client:
        with pytest.raises(RegistryError, match=r"next page is no URL") as caught:
            await client.get_referrers(REPOSITORY, SUBJECT)
    assert "secret-in-link" not in str(caught.value)
    assert len(server.seen) == 1


async def test_has_manifest_is_one_head_true_or_false(
    fault_proxy: FaultProxy, anon_registry: RegistryServer
) -> None:
    seeder = Seeder(anon_registry)
    image = seeder.push_image("heads/app", "v1", (1_000,))
    async with RegistryClient(fault_proxy.host, plain_http=True, docker_config=False) as client:
        for reference, expected in (
            (":v1", True),
            (f"@{image.digest}", True),
            (":sha256-nothing.sig", False),
        ):
            named = parse_reference(f"{fault_proxy.host}/heads/app{reference}")
            assert await client.has_manifest(named) is expected
    assert [(r.method, r.served) for r in fault_proxy.requests] == [("HEAD", 0)] * 3
