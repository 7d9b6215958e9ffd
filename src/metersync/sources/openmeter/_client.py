"""OpenMeter's v1 API, the reads a pull needs, over httpx with retries.

Why httpx and not the official `openmeter` client from PyPI: the official client is a
generated beta (1.0.0b236 when this was written) whose models trail the spec and which would
pin a second HTTP stack; a pull needs seven GETs, and their shapes are checked in the tests
against OpenMeter's openapi.yaml. tenacity retries what is worth retrying (connection errors,
timeouts, 429 and 5xx) with exponential backoff and jitter; anything else is an answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from metersync.errors import ExitCode, MetersyncError


class SourceUnavailable(MetersyncError):
    """The source could not be read (down, unreachable, or answering errors): the run
    reports it and writes nothing from it; the next run tries again."""

    exit_code = ExitCode.SOME_FAILED


class _Retryable(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def _retryable(error: BaseException) -> bool:
    return isinstance(error, (httpx.TransportError, _Retryable))


class OpenMeterClient:
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.requests = 0

    async def close(self) -> None:
        await self.http.aclose()

    # -- the reads -------------------------------------------------------------------------------

    async def subjects(self) -> list[dict[str, Any]]:
        answer = await self._get("/api/v1/subjects")
        return list(answer) if isinstance(answer, list) else []

    async def customers(self, *, page_size: int) -> list[dict[str, Any]]:
        """Every customer, deleted ones included (their deletedAt is how deletes reach us).

        Paged by id: with deleted customers listed, nothing leaves the list while we page,
        and a customer created meanwhile (a newer id) lands on a later page. (OpenMeter's
        default order is by name, which a rename or a tie can shuffle between pages.) Each
        id is kept once."""
        by_id: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            answer = await self._get(
                "/api/v1/customers",
                {
                    "page": str(page),
                    "pageSize": str(page_size),
                    "includeDeleted": "true",
                    "orderBy": "id",
                    "order": "ASC",
                },
            )
            items = answer.get("items", []) if isinstance(answer, dict) else []
            for item in items:
                by_id[str(item.get("id"))] = item
            total = int(answer.get("totalCount", 0)) if isinstance(answer, dict) else 0
            if not items or page * page_size >= total:
                return list(by_id.values())
            page += 1

    async def customer(self, customer_id: str) -> dict[str, Any] | None:
        """One customer by id (deleted ones too), or None when OpenMeter does not know it."""
        answer = await self._get_known(f"/api/v1/customers/{customer_id}")
        return answer if isinstance(answer, dict) else None

    async def meters(self) -> list[dict[str, Any]]:
        answer = await self._get("/api/v1/meters")
        return list(answer) if isinstance(answer, list) else []

    async def query(
        self,
        meter: str,
        *,
        start: str,
        end: str,
        window_size: str | None,
        per_subject: bool = False,
        subjects: Sequence[str] = (),
        customer_ids: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """The meter's rows over [start, end), per window of `window_size` (HOUR, DAY) or one
        per group for the whole range (None): per subject when `per_subject` (every subject
        upstream) or `subjects` are given (those only, at most 100), per customer when
        `customer_ids` are (at most 100: OpenMeter attributes usage to the customers it is
        given and to no other), and over all subjects when none is."""
        params: list[tuple[str, str]] = [("from", start), ("to", end)]
        if window_size is not None:
            params += [("windowSize", window_size), ("windowTimeZone", "UTC")]
        if subjects:
            params += [("subject", s) for s in subjects]
        if subjects or per_subject:
            params.append(("groupBy", "subject"))
        if customer_ids:
            params += [("filterCustomerId", i) for i in customer_ids]
            params.append(("groupBy", "customer_id"))
        answer = await self._get(f"/api/v1/meters/{meter}/query", params)
        return list(answer.get("data", [])) if isinstance(answer, dict) else []

    async def customer_access(self, customer_id: str) -> dict[str, dict[str, Any]] | None:
        """The customer's entitlement values by feature key (CustomerAccess), numbers as
        Decimal (the figure OpenMeter wrote, not a float's rounding of it); None when
        OpenMeter does not know the customer."""
        answer = await self._get_known(
            f"/api/v1/customers/{customer_id}/access", parse_float=Decimal
        )
        if not isinstance(answer, dict):
            return None
        found = answer.get("entitlements") or {}
        return {str(k): dict(v) for k, v in found.items() if isinstance(v, dict)}

    async def customer_entitlements(
        self, customer_id: str, *, page_size: int = 1000
    ) -> list[dict[str, Any]] | None:
        """The customer's live entitlements (v2: type, featureKey, currentUsagePeriod, …),
        every page; None when OpenMeter does not know the customer."""
        items: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = await self._get_known(
                f"/api/v2/customers/{customer_id}/entitlements",
                {"page": str(page), "pageSize": str(page_size)},
            )
            if not isinstance(answer, dict):
                return None
            found = [i for i in answer.get("items") or [] if isinstance(i, dict)]
            items += found
            if not found or page * page_size >= int(answer.get("totalCount", 0)):
                return items
            page += 1

    # -- HTTP ------------------------------------------------------------------------------------

    async def _get_known(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        parse_float: Any = None,
    ) -> Any:
        """As _get, but None when OpenMeter answers 404."""
        try:
            return await self._get(path, params, parse_float=parse_float)
        except SourceUnavailable as exc:
            if "HTTP 404" in exc.message:
                return None
            raise

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        *,
        parse_float: Any = None,
    ) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential_jitter(multiplier=self.backoff_s, max=30.0),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_once(path, params, parse_float)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise SourceUnavailable(
                f"OpenMeter at {self.url} did not answer {path} after {self.retries + 1} "
                f"attempts: {_describe(last)}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying returns or raises

    async def _get_once(
        self,
        path: str,
        params: Mapping[str, str] | Iterable[tuple[str, str]] | None,
        parse_float: Any = None,
    ) -> Any:
        self.requests += 1
        response = await self.http.get(path, params=params)  # type: ignore[arg-type]
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(response.status_code, _detail(response))
        if response.status_code >= 400:
            raise SourceUnavailable(
                f"OpenMeter at {self.url} refused {path}: HTTP {response.status_code}: "
                f"{_detail(response)}"
            )
        try:
            return response.json(parse_float=parse_float) if parse_float else response.json()
        except ValueError:
            # A proxy's login page, a gateway's HTML error: not OpenMeter talking.
            raise SourceUnavailable(
                f"OpenMeter at {self.url} answered {path} with something that is not JSON "
                f"({response.headers.get('content-type', 'no content type')}): "
                f"{response.text[:120]!r}"
            ) from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    if isinstance(error, httpx.TransportError):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return str(error)
