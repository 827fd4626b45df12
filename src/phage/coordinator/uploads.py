"""Multipart uploads within the limits, for every HTTP edge that takes a workspace archive.

``POST /api/tasks`` (field ``workspace``) and sandrun's ``POST /submit`` (field
``files``) read the same kind of body; the limits and the refusals live here once,
each error naming the field the caller actually sent.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from phage.errors import InvalidInput, PayloadTooLarge


@asynccontextmanager
async def multipart_form(
    request: Request, *, max_request_bytes: int, max_workspace_bytes: int, archive_field: str, json_field: str
) -> AsyncIterator[FormData]:
    """The parsed form (closed afterwards); a body or field over its limit is refused before it is read."""
    limit = max_workspace_bytes + max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"upload is {declared} bytes; the workspace limit is {max_workspace_bytes}", field=archive_field
        )
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=max_request_bytes)
    except StarletteHTTPException as exc:  # Starlette's own multipart refusals, in our words
        if "maximum size" in str(exc.detail):
            raise PayloadTooLarge(
                f"a multipart field exceeds the limit of {max_request_bytes} bytes", field=json_field
            ) from None
        raise InvalidInput(f"malformed multipart body: {exc.detail}", field="body") from None
    try:
        yield form
    finally:
        await form.close()


async def read_archive(upload: object, *, field: str, limit: int, hint: str) -> bytes:
    """An uploaded archive's bytes, refusing a non-file field or more than ``limit`` bytes."""
    if not isinstance(upload, UploadFile):
        raise InvalidInput(f"{field} must be a file upload{hint}", field=field)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{field} exceeds the workspace limit of {limit} bytes", field=field)
    return data
