"""The one error type clients see: a Matrix error with its errcode and HTTP status.

Domain code raises these where the failure is detected; `identity.api.errors`
renders them. Each subclass fixes its own errcode, so a view cannot attach the
wrong one.
"""

from typing import Any


class MatrixError(Exception):
    errcode = "M_UNKNOWN"
    status = 400
    default_message = "An unknown error occurred"

    def __init__(
        self,
        error: str | None = None,
        *,
        errcode: str | None = None,
        status: int | None = None,
        **extra: Any,
    ) -> None:
        self.error = error or self.default_message
        if errcode is not None:
            self.errcode = errcode
        if status is not None:
            self.status = status
        self.extra = extra
        super().__init__(self.error)

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.error, **self.extra}


def _error(name: str, errcode: str, status: int, message: str) -> type[MatrixError]:
    return type(
        name, (MatrixError,), {"errcode": errcode, "status": status, "default_message": message}
    )


# fmt: off
Unrecognized = _error("Unrecognized", "M_UNRECOGNIZED", 404, "Unrecognized request")
NotFound = _error("NotFound", "M_NOT_FOUND", 404, "Not found")
NotJson = _error("NotJson", "M_NOT_JSON", 400, "Content not JSON")
BadJson = _error("BadJson", "M_BAD_JSON", 400, "The body must be a JSON object")
TooLarge = _error("TooLarge", "M_TOO_LARGE", 413, "Request too large")
MissingParams = _error("MissingParams", "M_MISSING_PARAMS", 400, "Missing parameters")
InvalidParam = _error("InvalidParam", "M_INVALID_PARAM", 400, "Invalid parameter")
InvalidEmail = _error("InvalidEmail", "M_INVALID_EMAIL", 400, "Invalid email address")
EmailSendError = _error("EmailSendError", "M_EMAIL_SEND_ERROR", 500, "Failed to send email")
NoValidSession = _error("NoValidSession", "M_NO_VALID_SESSION", 400, "No valid session was found")
TokenIncorrect = _error("TokenIncorrect", "M_TOKEN_INCORRECT", 400, "The token is incorrect")
SessionExpired = _error("SessionExpired", "M_SESSION_EXPIRED", 400, "The session has expired")
SessionNotValidated = _error(
    "SessionNotValidated", "M_SESSION_NOT_VALIDATED", 400, "The session has not been validated"
)
ThreepidInUse = _error("ThreepidInUse", "M_THREEPID_IN_USE", 400, "Address already in use")
Unauthorized = _error("Unauthorized", "M_UNAUTHORIZED", 401, "Unauthorized")
Forbidden = _error("Forbidden", "M_FORBIDDEN", 403, "Forbidden")
# A known caller acting for someone else, or from a homeserver that is not allowed
# (Tchap's Sydent branch and Sydent answer this, not M_FORBIDDEN).
CallerNotAllowed = _error("CallerNotAllowed", "M_UNAUTHORIZED", 403, "Not allowed for this caller")
BindingNotPermitted = _error(
    "BindingNotPermitted", "M_BINDING_NOT_PERMITTED", 400, "This binding is not permitted"
)
TermsNotSigned = _error(
    "TermsNotSigned", "M_TERMS_NOT_SIGNED", 403, "Terms of service have not been accepted"
)
InvalidPepper = _error("InvalidPepper", "M_INVALID_PEPPER", 400, "Unknown or invalid pepper")
LimitExceeded = _error("LimitExceeded", "M_LIMIT_EXCEEDED", 429, "Too many requests")
# A load balancer should take the instance out of rotation.
Unhealthy = _error("Unhealthy", "M_UNKNOWN", 503, "The service cannot answer")
# A dependency (database, Redis) cannot answer now: try again after Retry-After.
Unavailable = _error(
    "Unavailable", "M_UNKNOWN", 503, "The service is temporarily unavailable, try again shortly"
)
# fmt: on
