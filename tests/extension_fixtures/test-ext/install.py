"""Runs at start-up (unless --skip-install) with the extension's folder as working directory."""
from pathlib import Path

marker = Path("installed.txt")
count = int(marker.read_text()) + 1 if marker.exists() else 1
marker.write_text(str(count))
print(f"test-ext install ok ({count})")
