"""multipart/form-data bodies split into their named parts (TorchServe's and Seldon's form requests).

The stdlib's email parser does the MIME work; each caller decides what a part means to its protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FormPart", "form_parts"]


@dataclass(frozen=True, slots=True)
class FormPart:
    """One named field of a form: its decoded bytes, its file name (None for a plain field), its content type."""

    name: str
    content: bytes
    filename: str | None
    content_type: str  # the part's own, "text/plain" when it declares none


def form_parts(body: bytes, content_type: str) -> list[FormPart] | None:
    """The named parts of a multipart body with this Content-Type, in order; None if it is not multipart."""
    import email.parser  # the email package's policies: imported by the first form, not by every server's start
    import email.policy

    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", errors="replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    parts: list[FormPart] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue  # a part without a field name carries nothing a handler could be given
        payload = part.get_payload(decode=True)
        parts.append(FormPart(name, payload if isinstance(payload, bytes) else b"", part.get_filename(),
                              part.get_content_type()))
    return parts
