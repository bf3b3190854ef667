"""The tiny SD1.5, SD3 and authors' folders of the identity check, written once and read by both
code versions: python results/identity/build_folders.py FOLDERS_DIR."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_models import build_tiny_druid_folder, build_tiny_sd3_folder, build_tiny_sd15_folder  # noqa: E402

root = Path(sys.argv[1])
build_tiny_sd15_folder(root / "sd15")
build_tiny_sd3_folder(root / "sd3")
build_tiny_druid_folder(root / "druid")
