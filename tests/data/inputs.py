"""Small inputs that prepare-data meets in the wild, made in memory: used by the data tests and
by ``benchmarks/fault_campaign.py`` (so nothing here imports pytest)."""

import io
import tarfile

from PIL import Image


def png(colour=(200, 30, 30), size=(20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """40 wide, 20 high as stored, with EXIF orientation 6: seen upright 20 wide, 40 high;
    the left half red, so upright the top half is red."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A tar archive of ``files`` (name -> bytes), in memory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
