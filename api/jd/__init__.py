"""JD Open Platform (JOS, 京东开放平台) integration: signed router calls and the inbound signing helpers."""

from .client import API_VERSION, DEFAULT_BASE_URL, JosClient, mask_secret
from .errors import (
    JosApiError,
    JosAuthError,
    JosError,
    JosParamError,
    JosProtocolError,
    JosRateLimitError,
    JosServerError,
    JosTransportError,
    error_class_for,
    error_from_payload,
)
from .signing import (
    BEIJING,
    StaleTimestamp,
    beijing_timestamp,
    check_timestamp,
    parse_beijing_timestamp,
    sign,
    verify,
)

__all__ = [
    "API_VERSION",
    "BEIJING",
    "DEFAULT_BASE_URL",
    "JosApiError",
    "JosAuthError",
    "JosClient",
    "JosError",
    "JosParamError",
    "JosProtocolError",
    "JosRateLimitError",
    "JosServerError",
    "JosTransportError",
    "StaleTimestamp",
    "beijing_timestamp",
    "check_timestamp",
    "error_class_for",
    "error_from_payload",
    "mask_secret",
    "parse_beijing_timestamp",
    "sign",
    "verify",
]
