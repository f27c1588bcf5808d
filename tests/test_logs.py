"""Access-log lines never carry query strings (they hold addresses and tokens)."""

import logging

from identity.logs import DropQueryStrings


def test_query_string_is_dropped_from_access_log_lines():
    record = logging.LogRecord(
        "werkzeug",
        logging.INFO,
        __file__,
        1,
        '%s - - [date] "%s" %s %s',
        (
            "127.0.0.1",
            "GET /_matrix/identity/api/v1/validate/email/submitToken"
            "?sid=1&client_secret=s3cret&token=ABCD HTTP/1.1",
            "200",
            "-",
        ),
        None,
    )
    DropQueryStrings().filter(record)
    line = record.getMessage()
    assert "s3cret" not in line and "ABCD" not in line
    assert "GET /_matrix/identity/api/v1/validate/email/submitToken?… HTTP/1.1" in line
