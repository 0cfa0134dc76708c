"""Thin entry point: `python cli.py ...` is `rwkv-export ...`."""

from rwkv_export.cli import main

if __name__ == "__main__":
    main()
