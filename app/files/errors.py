from app.core.errors import AppError, ErrorDetail, NotFound


class FileNotFound(NotFound):
    def __init__(self, file_id: int) -> None:
        super().__init__(f"File {file_id} not found")


class FileTooLarge(AppError):
    status, code = 413, "payload_too_large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"The file is larger than {max_bytes} bytes")


class NotMultipart(AppError):
    status, code = 415, "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("Send the file as multipart/form-data")


class UnsupportedFileType(AppError):
    status, code = 415, "unsupported_media_type"


class BadUpload(AppError):
    status, code = 400, "bad_request"


class RangeNotSatisfiable(AppError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__("The requested range is not satisfiable")
        self.headers = {"Content-Range": f"bytes */{size}"}


class QuotaExceeded(AppError):
    """413, not 507: the service has room, this user has used theirs (507 stays "storage full").
    The details carry the numbers for clients: the quota, the usage, what is left."""

    status = 413

    def __init__(self, code: str, message: str, numbers: dict[str, int]) -> None:
        super().__init__(
            message,
            details=[
                ErrorDetail(field=name, message=str(value), type="quota")
                for name, value in numbers.items()
            ],
        )
        self.code = code

    @classmethod
    def bytes(cls, quota: int, used: int, size: int, *, cut: bool = False) -> "QuotaExceeded":
        """`cut`: the read stopped at `size` bytes, the file is at least that large."""
        left = max(0, quota - used)
        shown = f"over {size - 1}" if cut else str(size)
        return cls(
            "storage_quota_exceeded",
            f"Storage quota exceeded: the file is {shown} bytes, you use {used} of your "
            f"{quota} bytes and {left} are left (USER_STORAGE_QUOTA_BYTES). Delete files to "
            "free space.",
            {"quota_bytes": quota, "used_bytes": used, "remaining_bytes": left,
             "file_bytes": size},
        )  # fmt: skip

    @classmethod
    def files(cls, quota: int, used: int) -> "QuotaExceeded":
        left = max(0, quota - used)
        return cls(
            "file_count_exceeded",
            f"File count quota exceeded: you have {used} of your {quota} files and {left} are "
            "left (USER_MAX_FILES). Delete files to free space.",
            {"quota_files": quota, "used_files": used, "remaining_files": left},
        )
