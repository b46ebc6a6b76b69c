"""Who signed a local API request: the SigV4 access key id resolved to its IAM principal by
moto server's STS, as API Gateway's IAM authorization fills `requestContext.identity`."""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime

log = logging.getLogger(__name__)

#: The access key id in a SigV4 Authorization header (AWS4-HMAC-SHA256 Credential=<key id>/<scope>, ...).
_SIGV4_KEY_ID = re.compile(r"^AWS4-HMAC-SHA256\s+Credential=([A-Za-z0-9]{1,128})/")
_STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}


def access_key_id(headers: Iterable[tuple[str, str]]) -> str | None:
    """The access key id a SigV4-signed request names (the last Authorization header), if any."""
    values = [v for k, v in headers if k.lower() == "authorization"]
    match = _SIGV4_KEY_ID.match(values[-1]) if values else None
    return match.group(1) if match else None


class StsIdentities:
    """`requestContext.identity` as API Gateway's IAM authorization fills it, locally: the
    request's access key id resolved by moto server's STS GetCallerIdentity, sent over HTTP
    with that key id (moto answers for the key it is given: an IAM user's key gives the user's
    ARN, AssumeRole credentials the `assumed-role/ROLE/SESSION` ARN, a key it does not know its
    default principal). Unsigned requests get no identity. A key id always names the same
    principal, so each is asked once; the secret is never seen (only its signature arrives)."""

    def __init__(self, endpoint_url: str, region: str, timeout_s: float = 5) -> None:
        self.endpoint_url, self.region, self.timeout_s = endpoint_url.rstrip("/") + "/", region, timeout_s
        self._known: dict[str, dict[str, str]] = {}

    def __call__(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        key_id = access_key_id(headers)
        if key_id is None:
            return {}
        if key_id not in self._known:
            resolved = self._caller_identity(key_id)
            if resolved is None:
                return {"accessKey": key_id}  # no userArn: like a caller without an identity
            self._known[key_id] = resolved
        return self._known[key_id]

    def _caller_identity(self, key_id: str) -> dict[str, str] | None:
        now = datetime.now(UTC)
        scope = f"{now:%Y%m%d}/{self.region}/sts/aws4_request"
        request = urllib.request.Request(
            self.endpoint_url, data=b"Action=GetCallerIdentity&Version=2011-06-15", method="POST",
            headers={
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "X-Amz-Date": f"{now:%Y%m%dT%H%M%SZ}",
                # moto reads the key id from here and checks no signature: none can be made without the secret
                "Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders=host;x-amz-date, "
                                 f"Signature={'0' * 64}",
            },
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - moto on 127.0.0.1
                result = ET.fromstring(response.read()).find("sts:GetCallerIdentityResult", _STS_NS)
        except (urllib.error.URLError, TimeoutError, ConnectionError, ET.ParseError) as err:
            log.warning("cannot resolve access key %s with STS at %s: %s", key_id, self.endpoint_url, err)
            return None
        if result is None or not result.findtext("sts:Arn", "", _STS_NS):
            log.warning("STS at %s named no principal for access key %s", self.endpoint_url, key_id)
            return None
        arn, account, user_id = (result.findtext(f"sts:{name}", "", _STS_NS) for name in ("Arn", "Account", "UserId"))
        return {"accessKey": key_id, "accountId": account, "caller": user_id, "user": user_id, "userArn": arn}
