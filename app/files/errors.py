from app.core.errors import AppError, NotFound


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
